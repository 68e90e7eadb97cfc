"""The framing-robust protection (`robust="framing"`): one perturbation of the whole photo,
optimised over views drawn from the threat model (`deepshield.views`), so that it holds
wherever and however a deepfake maker frames the shared photo.

The perturbation is parametrised at low resolution and upsampled (bilinear, so it stays inside
the L-inf budget) to the photo's working scale and, once the attack is done, to the photo's full
resolution. The scales follow the smallest square a view can take (`views.smallest_side`): the
working copy gives it `WORK_RATIO` x the model's input side in pixels, the perturbation
`PARAM_RATIO` x. Detail finer than the model's pixels is lost to every view's resize, and a smooth
perturbation survives resizing filters and JPEG; a photo of any size costs the same per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from deepshield import attacks, views

VIEWS_PER_STEP = 1
"""Views per model drawn at each sign step (one generator pass over all of them)."""
STEPS_PER_ITERATION = 4
"""Sign steps per iteration asked for, so that an iteration costs as many generator passes as one
step of `VIEWS_PER_STEP * STEPS_PER_ITERATION` views. At the same cost, more steps over fewer views
keep more unseen framings disrupted (bench/RESULTS.md: 4 x 1 view 81%, 2 x 2 views 69%, 1 x 4 views
56%)."""
STEP_SCALE = 0.35
"""Each step's size relative to the step size asked for (the steps are more, so each is smaller)."""
MOMENTUM = 0.9
"""The attack's gradient momentum in this mode (`attacks.AttackConfig.momentum`): the sign
steps follow the expectation over views instead of the last draw."""
LOOKAHEAD = True
"""Each gradient is taken where the momentum is about to carry the perturbation
(`attacks.AttackConfig.lookahead`): at the same generator passes, more unseen framings stay
disrupted (bench/RESULTS.md, "Looking ahead along the momentum")."""
WORK_RATIO = 0.75
PARAM_RATIO = 0.375


@dataclass
class WholePhoto:
    """A photo at its working scale and the shape of its perturbation.

    `working` [1, C, h, w] in [-1, 1] (C = 1 for a grayscale photo, whose perturbation stays
    gray), `scale` working pixels per photo pixel, `faces[i]` the squares (photo pixels) model i
    frames with jitter, empty for framings of the whole photo.
    """

    working: Tensor
    scale: float
    param_shape: tuple[int, int]
    faces: list[list[views.Box]]
    full_shape: tuple[int, int]

    @classmethod
    def of(cls, original: Tensor, grayscale: bool, sizes: Sequence[int], faces: list[list[views.Box]], threat: views.ThreatModel) -> WholePhoto:
        """original [1, 3, H, W] in [-1, 1]; `sizes` and `faces` per model."""
        height, width = original.shape[-2:]
        smallest = min(views.smallest_side(height, width, threat, boxes) / size for size, boxes in zip(sizes, faces))
        scale = min(1.0, WORK_RATIO / smallest)
        param = min(1.0, PARAM_RATIO / smallest)
        x = original[:, :1] if grayscale else original
        if scale < 1:
            x = F.interpolate(x, size=_scaled(height, width, scale), mode="bilinear", align_corners=False, antialias=True)
        return cls(x, scale, _scaled(height, width, param), faces, (height, width))

    def start(self) -> Tensor:
        """The attack's origin in perturbation space: zeros [1, C, *param_shape]."""
        return self.working.new_zeros(1, self.working.shape[1], *self.param_shape)

    def perturbed(self, delta: Tensor) -> Tensor:
        """The working copy with perturbation `delta` [1, C, *param_shape] added, in [-1, 1]."""
        return (self.working + _upsample(delta, self.working.shape[-2:])).clamp(-1, 1)

    def full_resolution(self, original: Tensor, delta: Tensor) -> Tensor:
        """original [1, 3, H, W] plus the perturbation at full resolution, in [-1, 1]."""
        return (original + _upsample(delta, self.full_shape).expand(-1, 3, -1, -1)).clamp(-1, 1)


def _scaled(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, round(height * scale)), max(1, round(width * scale))


def _upsample(delta: Tensor, shape: Sequence[int]) -> Tensor:
    if tuple(delta.shape[-2:]) == tuple(shape):
        return delta
    return F.interpolate(delta, size=tuple(shape), mode="bilinear", align_corners=False)


def objective(
    photos: list[WholePhoto],
    sizes: Sequence[int],
    deepfake: Callable[[int, Tensor, Tensor], Tensor],
    seeds: Sequence[int],
    threat: views.ThreatModel,
    targets: Sequence[int],
) -> attacks.Objective:
    """Per-photo loss [B]: the mean over models and `VIEWS_PER_STEP` fresh views per model of the
    distance between the deepfake of the perturbed view and that of the same view of the clean
    photo. `deepfake(i, frames [N, 3, s, s], target_indices [N])` runs model i; `targets[i]`
    is its number of targets (a view takes one at random). Photo j draws from `seeds[j]`; face
    views go round the faces across steps, so every face is attacked however few views a step
    draws."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    views_per_step = VIEWS_PER_STEP
    drawn_before = 0

    def loss(deltas: list[Tensor]) -> Tensor:
        nonlocal drawn_before
        perturbed_photos = [photo.perturbed(delta) for photo, delta in zip(photos, deltas, strict=True)]  # once for all models
        per_model = []
        for index, size in enumerate(sizes):
            clean, adversarial, chosen = [], [], []
            for photo, perturbed, generator in zip(photos, perturbed_photos, generators, strict=True):
                height, width = photo.full_shape
                drawn = threat.sample(height, width, views_per_step, generator, photo.faces[index], first=drawn_before)
                clean += [views.frame(photo.working, v, size, photo.scale) for v in drawn]
                adversarial += [views.frame(perturbed, v, size, photo.scale) for v in drawn]
                chosen.append(torch.randint(targets[index], (len(drawn),), generator=generator))
            picks = torch.cat(chosen)
            with torch.no_grad():
                references = deepfake(index, torch.cat(clean), picks)
            distances = attacks.output_distance(deepfake(index, torch.cat(adversarial), picks), references)
            per_model.append(distances.view(len(photos), views_per_step).mean(dim=1))
        drawn_before += views_per_step
        return torch.stack(per_model).mean(dim=0)

    return loss
