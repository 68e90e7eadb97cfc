"""Does the protection survive what happens to a shared photo? Re-measure the disruption after
real, non-differentiable transformations of the written 8-bit image.

Transformations (fixed names, DESIGN.md-style contract):

- `jpeg90`, `jpeg75`, `jpeg50`: PIL (libjpeg) encode + decode at that quality, 4:2:0 chroma
  subsampling (PIL's default, what photo sites and messengers use).
- `resize50`: PIL resize to half the width and height and back, bicubic both ways (Pillow's
  default filter; antialiased on the way down).
- `blur1`: PIL `ImageFilter.GaussianBlur(radius=1)`: Pillow's radius is the standard deviation
  (sigma 1 px), implemented as repeated extended box blurs with that variance, edges replicated.
- `shift`: the deepfaker's face crop moved by `shift` pixels (default 4 down and 4 right)
  before preprocessing; where the moved box leaves the photo, the photo is edge-padded.

Reference. `mse` compares deepfake(T(protected)) with deepfake(T(original)): the same
transformation applied to the unprotected photo. That isolates what the perturbation still does
after T. The paper's reference, the deepfake of the clean untransformed photo, would also count
what T alone does to the deepfake (JPEG 50 or a shifted crop change the output of an unprotected
photo too; for the shift, the outputs are not even aligned), so a transformation could look like
"protection" while the perturbation is gone. That number is reported as well, as `mse_vs_clean`,
with `transform_mse` = how far T alone moves the clean deepfake. `disrupted` uses `mse`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import Tensor

from deepshield import imaging, metrics, views

Box = tuple[int, int, int]
"""(top, left, side) of the square region the model sees, in the photo's pixels."""

DeepfakeFn = Callable[[np.ndarray, Box], Tensor]
"""(uint8 RGB [H, W, 3], box) -> generator outputs [N, 3, s, s] on [-1, 1] for that crop."""

ROBUSTNESS_KEYS = ("jpeg90", "jpeg75", "jpeg50", "resize50", "blur1", "shift")
DEFAULT_SHIFT = (4, 4)  # (down, right) in the photo's pixels


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Encode with PIL at `quality` (4:2:0) and decode. uint8 [H, W, 3] -> same shape."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="JPEG", quality=int(quality), subsampling="4:2:0")
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def resize_roundtrip(rgb: np.ndarray, factor: float = 0.5) -> np.ndarray:
    """Resize by `factor` and back to the original size with PIL bicubic. uint8 [H, W, 3]."""
    height, width = rgb.shape[:2]
    small = (max(1, round(width * factor)), max(1, round(height * factor)))
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).resize(small, Image.Resampling.BICUBIC)
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8).copy()


def gaussian_blur(rgb: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """PIL Gaussian blur with standard deviation `sigma` px. uint8 [H, W, 3] -> same shape."""
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).filter(ImageFilter.GaussianBlur(radius=sigma))
    return np.asarray(image, dtype=np.uint8).copy()


REAL_TRANSFORMS: Mapping[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg90": partial(jpeg_roundtrip, quality=90),
    "jpeg75": partial(jpeg_roundtrip, quality=75),
    "jpeg50": partial(jpeg_roundtrip, quality=50),
    "resize50": partial(resize_roundtrip, factor=0.5),
    "blur1": partial(gaussian_blur, sigma=1.0),
}
"""Image-space transformations by report key (`shift` moves the crop box instead)."""


def shifted_crop(images: Sequence[np.ndarray], box: Box, shift: tuple[int, int] = DEFAULT_SHIFT) -> tuple[list[np.ndarray], Box]:
    """Move `box` by shift = (down, right) pixels. Where the moved box leaves the photo, every
    image is edge-padded so that the box stays inside; returns (images, moved box)."""
    top, left, side = box
    height, width = images[0].shape[:2]
    top, left = top + int(shift[0]), left + int(shift[1])
    pad_top, pad_left = max(0, -top), max(0, -left)
    pad_bottom, pad_right = max(0, top + side - height), max(0, left + side - width)
    if pad_top or pad_left or pad_bottom or pad_right:
        widths = ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0))
        images = [np.pad(image, widths, mode="edge") for image in images]
    return list(images), views.moved(box, top + pad_top, left + pad_left)


def _distance(fake: Tensor, reference: Tensor) -> float:
    return float(torch.mean((fake.detach().float() - reference.detach().float()) ** 2))


def robustness_report(
    original_rgb: np.ndarray,
    protected_rgb: np.ndarray,
    box: Box,
    deepfake: DeepfakeFn,
    *,
    keys: Sequence[str] = ROBUSTNESS_KEYS,
    shift: tuple[int, int] = DEFAULT_SHIFT,
) -> dict[str, dict[str, Any]]:
    """Disruption of the written protected photo after each real transformation.

    original_rgb, protected_rgb: uint8 [H, W, 3] of the same shape; box: the crop the model sees;
    deepfake(rgb, box): generator outputs for that image and crop (see `generator_deepfake`).
    Returns {key: {"mse", "l1", "disrupted", "mse_vs_clean", "transform_mse"}} for every key in
    `keys` (default: jpeg90, jpeg75, jpeg50, resize50, blur1, shift), on [-1, 1]; `mse` and `l1`
    compare with the deepfake of the equally transformed original (see the module docstring),
    `disrupted` is mse > `metrics.DISRUPTION_THRESHOLD`.
    """
    if original_rgb.shape != protected_rgb.shape:
        raise ValueError(f"shapes differ: {original_rgb.shape} vs {protected_rgb.shape}")
    unknown = [k for k in keys if k != "shift" and k not in REAL_TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transformation {unknown[0]!r}; choose from {', '.join(ROBUSTNESS_KEYS)}")
    report: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        clean = deepfake(original_rgb, box)
        for key in keys:
            if key == "shift":
                (original_t, protected_t), box_t = shifted_crop([original_rgb, protected_rgb], box, shift)
            else:
                transform = REAL_TRANSFORMS[key]
                original_t, protected_t, box_t = transform(original_rgb), transform(protected_rgb), box
            reference = deepfake(original_t, box_t)
            fake = deepfake(protected_t, box_t)
            report[key] = {
                **metrics.disruption_metrics(fake, reference),
                "mse_vs_clean": _distance(fake, clean),
                "transform_mse": _distance(reference, clean),
            }
    return report


def generator_deepfake(
    generator: torch.nn.Module,
    image_size: int,
    conditions: Tensor | None = None,
    *,
    device: torch.device | str | None = None,
) -> DeepfakeFn:
    """A `DeepfakeFn` for one generator: the square `box` (levelled by its turn,
    `views.crop_square`), the model's `center_crop_resize` to `image_size`, then the generator
    (once per condition row [T, c_dim] when conditional)."""
    if device is None:
        parameter = next(generator.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")

    def deepfake(rgb: np.ndarray, box: Box) -> Tensor:
        x = imaging.to_tensor(views.crop_square(rgb, box), device)
        batch = imaging.center_crop_resize(x, image_size)
        if conditions is None:
            return generator(batch)
        vectors = conditions.to(device)
        return generator(batch.expand(vectors.shape[0], -1, -1, -1), vectors)

    return deepfake


FRAMING_VIEWS = 8
"""Unseen views the report's `framings` measures (drawn from the evaluation seed)."""
FramesDeepfakeFn = Callable[[Tensor], Tensor]
"""Model inputs [N, 3, s, s] on [-1, 1] -> outputs [N, T, 3, s, s] (T targets; 1 if unconditional)."""


def frames_deepfake(generator: torch.nn.Module, conditions: Tensor | None = None) -> FramesDeepfakeFn:
    """A `FramesDeepfakeFn` for one generator: every frame once per condition row [T, c_dim]
    (the rows on the generator's device), or once when unconditional."""

    def deepfake(frames: Tensor) -> Tensor:
        if conditions is None:
            return generator(frames).unsqueeze(1)
        count = conditions.shape[0]
        outputs = generator(frames.repeat_interleave(count, dim=0), conditions.to(frames.device).repeat(frames.shape[0], 1))
        return outputs.view(frames.shape[0], count, *outputs.shape[1:])

    return deepfake


def deepfakes_of_views(rgb: np.ndarray, drawn: Sequence[views.View], size: int, deepfake: FramesDeepfakeFn, device: torch.device | str = "cpu") -> Tensor:
    """The deepfakes [N, T, 3, size, size] in [-1, 1] of each view in `drawn` rendered from `rgb`
    (uint8 [H, W, 3]) with the maker's tools (`views.render`)."""
    with torch.no_grad():
        return deepfake(torch.cat([imaging.to_tensor(views.render(rgb, v, size), device) for v in drawn]))


def views_mse(fakes: Tensor, clean: Tensor) -> Tensor:
    """Per view [N]: the mean over targets of mse(fake, clean) between deepfakes [N, T, 3, s, s];
    a view is disrupted above `metrics.DISRUPTION_THRESHOLD`."""
    return ((fakes.float() - clean.float()) ** 2).flatten(2).mean(dim=2).mean(dim=1)


def tone_matched_mse(fakes: Tensor, clean: Tensor) -> Tensor:
    """Per view [N]: `views_mse` of deepfakes [N, T, 3, s, s] once each channel's mean difference
    is removed, i.e. after a colour correction that gave the fakes the clean ones' brightness and
    colour balance: the part of the disruption such a correction cannot undo."""
    difference = fakes.float() - clean.float()
    return views_mse(difference - difference.mean(dim=(-2, -1), keepdim=True), torch.zeros_like(difference))


def framings_report(
    original_rgb: np.ndarray,
    protected_rgb: np.ndarray,
    drawn: Sequence[views.View],
    size: int,
    deepfake: FramesDeepfakeFn,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, Any], list[tuple[np.ndarray, np.ndarray, views.View]]]:
    """The disruption in the deepfake maker's framings: each view in `drawn` rendered with the
    maker's tools (`views.render`) from the original and from the protected photo (uint8
    [H, W, 3]), plainly and after a JPEG 75 of the whole photo first (`views_mse`), and the plain
    views again after a colour correction (`tone_matched_mse`). Returns ({"views",
    "share_disrupted", "mse" (mean), "jpeg75": {"share_disrupted", "mse"}, "tone_matched":
    {"share_disrupted", "mse"}}, [(deepfake of the original's view, of the protected view, the
    view)] uint8 [s, s, 3] of the first target, for the plain views)."""
    report: dict[str, Any] = {"views": len(drawn)}
    examples = []
    for label, quality in ((None, None), ("jpeg75", 75)):
        shared = list(drawn) if quality is None else [replace(v, jpeg=quality) for v in drawn]
        clean = deepfakes_of_views(original_rgb, shared, size, deepfake, device)
        fakes = deepfakes_of_views(protected_rgb, shared, size, deepfake, device)
        entry = share_and_mean(views_mse(fakes, clean))
        if label is None:
            report.update(entry)
            report["tone_matched"] = share_and_mean(tone_matched_mse(fakes, clean))
            examples = [(imaging.to_uint8(clean[k, 0]), imaging.to_uint8(fakes[k, 0]), drawn[k]) for k in range(len(drawn))]
        else:
            report[label] = entry
    return report, examples


def share_and_mean(mse: Tensor) -> dict[str, float]:
    """Per-view mse [N] -> the share of views disrupted and their mean mse."""
    return {"share_disrupted": float((mse > metrics.DISRUPTION_THRESHOLD).float().mean()), "mse": float(mse.mean())}
