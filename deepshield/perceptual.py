"""Perceptual mode: shrink a perturbation until the protected photo keeps an SSIM floor.

The attack spends its whole L-inf budget; on smooth skin that can show. With a floor, the 8-bit
perturbation is scaled by the largest factor in [0, 1] (bisection, 1/2^steps resolution) for
which the SSIM reported for the photo (`metrics.ssim`, whole image) stays at or above it.
"""

from __future__ import annotations

import numpy as np
import torch

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


def scaled(original: np.ndarray, protected: np.ndarray, scale: float) -> np.ndarray:
    """original + round(scale * (protected - original)); uint8 [H, W, C] in and out."""
    delta = protected.astype(np.float64) - original.astype(np.float64)
    return np.clip(original.astype(np.float64) + np.round(scale * delta), 0, 255).astype(np.uint8)


def hold_ssim(
    original: np.ndarray, protected: np.ndarray, floor: float, steps: int = BISECTION_STEPS, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, float]:
    """(the protected photo with SSIM >= floor, the scale applied to its perturbation).

    original, protected: uint8 [H, W, 3]. Scaling never leaves the budget (|scale| <= 1). The
    SSIM runs on `device`.
    """
    ssim = metrics.ssim(original, protected, device)
    if ssim is None or ssim >= floor:
        return protected, 1.0
    low, high = 0.0, 1.0  # ssim(low) >= floor > ssim(high)
    for _ in range(steps):
        middle = (low + high) / 2
        value = metrics.ssim(original, scaled(original, protected, middle), device)
        low, high = (middle, high) if value is not None and value >= floor else (low, middle)
    return scaled(original, protected, low), low
