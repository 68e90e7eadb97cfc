"""Perceptual mode: shrink a perturbation until the protected photo keeps an SSIM floor.

The attack spends its whole L-inf budget; on smooth skin that can show. With a floor, the 8-bit
perturbation is scaled by the largest factor in [0, 1] (bisection, 1/2^steps resolution) for
which the SSIM reported for the photo (`metrics.ssim`, whole image) stays at or above it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from deepshield import metrics
from deepshield.errors import InvalidParameterError

BISECTION_STEPS = 7  # scale resolution 1/128


def check_floor(floor: float | None) -> float | None:
    """None (off) or a floor in (0, 1); anything else is an InvalidParameterError."""
    if floor is None:
        return None
    if not (0.0 < float(floor) < 1.0):
        raise InvalidParameterError(f"ssim_floor must be between 0 and 1 (e.g. 0.95), got {floor}")
    return float(floor)


def hold_ssim(
    original: np.ndarray, protected: np.ndarray, floor: float, steps: int = BISECTION_STEPS, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, float]:
    """(the protected photo with SSIM >= floor, the scale applied to its perturbation).

    original, protected: uint8 [H, W, 3]. Scaling never leaves the budget (|scale| <= 1). The
    bisection runs on `device`: the photos cross once each way.
    """
    base, full = metrics.pixels_on(original, device), metrics.pixels_on(protected, device)
    delta = full.float() - base.float()
    ssim = metrics.ssim_of_pixels(base, full)
    if ssim is None or ssim >= floor:
        return protected, 1.0
    low, high = 0.0, 1.0  # ssim(low) >= floor > ssim(high)
    for _ in range(steps):
        middle = (low + high) / 2
        value = metrics.ssim_of_pixels(base, _scaled(base, delta, middle))
        low, high = (middle, high) if value is not None and value >= floor else (low, middle)
    return _as_rgb(_scaled(base, delta, low)), low


def _scaled(base: Tensor, delta: Tensor, scale: float) -> Tensor:
    """uint8 base [C, 1, H, W] plus round(scale * float delta), clipped to 0..255 (exact: scale
    is a multiple of 1/2^steps and delta a whole number of levels)."""
    return (base.float() + torch.round(scale * delta)).clamp(0, 255).to(torch.uint8)


def _as_rgb(pixels: Tensor) -> np.ndarray:
    """uint8 [C, 1, H, W] -> uint8 [H, W, C] numpy."""
    return pixels[:, 0].permute(1, 2, 0).contiguous().cpu().numpy()
