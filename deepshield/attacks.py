"""L-infinity attacks: one iterative core, FGSM / I-FGSM / PGD as presets of it.

The core knows nothing about generators: it maximises any per-sample objective of a list of
input tensors (images may differ in size) inside an L-inf ball, clamped to the valid range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from deepshield.errors import InvalidParameterError

Objective = Callable[[list[Tensor]], Tensor]
"""Maps the current adversarial inputs to a per-sample loss [B] to maximise."""

StepCallback = Callable[[int, int, Tensor], None]
"""Called after every step with (step, total steps, per-sample loss [B] where the step's gradient was taken)."""

LOWER, UPPER = -1.0, 1.0
EPSILON_RANGE = (0.0, 0.5)  # on [-1, 1]; 0.5 is 64/255, far past imperceptible
MAX_ITERATIONS = 1000
SEED_NOISE = 1e-3  # FGSM / I-FGSM start: at exactly x the gradient of the loss is zero
STRENGTHS = {"low": 0.02, "medium": 0.05, "high": 0.1}
"""Strength presets: epsilon on [-1, 1]; x 127.5 gives levels of 255 (2.55, 6.4, 12.75)."""


def resolve_epsilon(value: float | str) -> float:
    """An epsilon on [-1, 1], or a strength preset name (low / medium / high) -> epsilon."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in STRENGTHS:
            return STRENGTHS[key]
        try:
            return float(key)
        except ValueError:
            presets = ", ".join(f"{n} ({e:g} = {e * 127.5:.2f}/255)" for n, e in STRENGTHS.items())
            raise InvalidParameterError(f"epsilon must be a number or a strength preset: {presets}; got {value!r}") from None
    return float(value)


def strength_name(epsilon: float) -> str:
    """The preset an epsilon is (low / medium / high), else "custom"."""
    return next((n for n, e in STRENGTHS.items() if abs(e - epsilon) < 1e-9), "custom")


@dataclass(frozen=True, kw_only=True)
class AttackConfig:
    """Budget and schedule on the [-1, 1] scale (0.05 is 6.4/255 of the pixel range)."""

    epsilon: float = 0.05
    step_size: float = 0.01
    iterations: int = 10
    random_start: bool = True
    name: str = "pgd"
    momentum: float = 0.0
    """0 for the paper's attacks; above, each step follows the sign of a running sum of the
    gradients, each scaled to unit mean magnitude (MI-FGSM): steady under random views."""
    lookahead: bool = False
    """With momentum: take each gradient where the momentum is about to carry the iterate,
    `x + step_size * momentum * velocity` (projected), instead of at `x` itself (Nesterov, as in
    NI-FGSM). The step still starts from `x`."""

    def validate(self) -> AttackConfig:
        low, high = EPSILON_RANGE
        if not (low < self.epsilon <= high):
            raise InvalidParameterError(f"epsilon must be in ({low}, {high}] on the [-1, 1] scale (0.05 = 6.4/255), got {self.epsilon}")
        if not (0 < self.step_size <= 2 * high):
            raise InvalidParameterError(f"step_size must be in (0, {2 * high}], got {self.step_size}")
        if not (1 <= self.iterations <= MAX_ITERATIONS) or int(self.iterations) != self.iterations:
            raise InvalidParameterError(f"iterations must be an integer in [1, {MAX_ITERATIONS}], got {self.iterations}")
        if not (0 <= self.momentum < 1):
            raise InvalidParameterError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.lookahead and not self.momentum:
            raise InvalidParameterError("lookahead needs a momentum above 0")
        return self


def preset(name: str, *, epsilon: float | str = 0.05, iterations: int | None = None, step_size: float | None = None) -> AttackConfig:
    """The paper's attacks: `fgsm` (one step of size epsilon; iterations and step_size do not
    apply), `ifgsm` (k signed steps of size a), `pgd` (I-FGSM from a uniform random start).
    Defaults: epsilon 0.05, k 10, a 0.01. `epsilon` may name a strength preset (`STRENGTHS`)."""
    epsilon = resolve_epsilon(epsilon)
    key = str(name).lower().replace("-", "").replace("_", "")
    if key == "fgsm":
        return AttackConfig(epsilon=epsilon, step_size=epsilon, iterations=1, random_start=False, name="fgsm").validate()
    if key not in ("ifgsm", "pgd"):
        raise InvalidParameterError(f"unknown attack {name!r}: use fgsm, ifgsm or pgd")
    base = AttackConfig(epsilon=epsilon, random_start=key == "pgd", name=key)
    return replace(
        base,
        iterations=base.iterations if iterations is None else iterations,
        step_size=base.step_size if step_size is None else step_size,
    ).validate()


ATTACKS = ("fgsm", "ifgsm", "pgd")


def _start(x: Tensor, config: AttackConfig, generator: torch.Generator) -> Tensor:
    """Initial point: uniform in the epsilon ball (PGD) or a tiny seeded perturbation."""
    radius = config.epsilon if config.random_start else min(SEED_NOISE, config.epsilon)
    # Drawn on the CPU so a seed gives the same start on every device.
    noise = torch.empty(x.shape, dtype=torch.float32).uniform_(-radius, radius, generator=generator)
    return (x + noise.to(device=x.device, dtype=x.dtype)).clamp(LOWER, UPPER)


def linf_attack(
    objective: Objective,
    inputs: Sequence[Tensor],
    config: AttackConfig,
    *,
    seed: int | Sequence[int] | None = None,
    on_step: StepCallback | None = None,
) -> list[Tensor]:
    """Maximise `objective` over inputs within `||x_adv - x||_inf <= epsilon`, x_adv in [-1, 1].

    inputs: tensors in [-1, 1] (any shapes; they are never modified).
    seed: one seed for all inputs' starts, drawn in turn, or one seed per input (each input then
    starts exactly as it would alone with its seed, whatever else is in the batch).
    Returns new detached tensors of the same shapes.
    """
    config.validate()
    originals = [x.detach() for x in inputs]
    if isinstance(seed, Sequence):
        if len(seed) != len(originals):
            raise ValueError(f"{len(seed)} seeds for {len(originals)} inputs")
        adversarial = [_start(x, config, torch.Generator().manual_seed(s)) for x, s in zip(originals, seed)]
    else:
        generator = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
        adversarial = [_start(x, config, generator) for x in originals]
    velocity = [torch.zeros_like(x) for x in originals] if config.momentum else []
    for step in range(config.iterations):
        if config.lookahead:
            probes = [project(x + config.step_size * config.momentum * v, x0, config.epsilon) for x, v, x0 in zip(adversarial, velocity, originals)]
        else:
            probes = adversarial
        current = [x.requires_grad_(True) for x in probes]
        loss = objective(current)
        gradients = torch.autograd.grad(loss.sum(), current)
        with torch.no_grad():
            if config.momentum:
                velocity = [config.momentum * v + g / g.abs().mean().clamp_min(1e-12) for v, g in zip(velocity, gradients)]
                gradients = velocity
            adversarial = [
                project(x + config.step_size * g.sign(), x0, config.epsilon)
                for x, g, x0 in zip(adversarial, gradients, originals)
            ]
        if on_step is not None:
            on_step(step + 1, config.iterations, loss.detach())
    return adversarial


def project(x: Tensor, original: Tensor, epsilon: float) -> Tensor:
    """Project onto the L-inf ball of radius epsilon around `original` and the valid range."""
    return torch.clamp(original + torch.clamp(x - original, -epsilon, epsilon), LOWER, UPPER).detach()


def output_distance(output: Tensor, reference: Tensor) -> Tensor:
    """Per-sample mean squared error [B] between generator outputs (the paper's objective)."""
    return F.mse_loss(output, reference, reduction="none").flatten(1).mean(dim=1)
