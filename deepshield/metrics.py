"""Perturbation, quality and disruption metrics (DESIGN.md section 1).

Perturbation norms are on the [-1, 1] scale the attacks use (also given in /255 units);
PSNR and SSIM compare the written 8-bit file with the input on [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import Tensor

DISRUPTION_THRESHOLD = 0.05  # the paper: an output with mse > 0.05 on [-1, 1] counts as disrupted


def perturbation_metrics(original: np.ndarray, protected: np.ndarray) -> dict[str, float | None]:
    """original, protected: uint8 [H, W, C] arrays of the same shape.

    Returns linf and l2 of the perturbation on [-1, 1], linf in /255 units, psnr (dB, None when
    the images are identical) and ssim on [0, 1].
    """
    if original.shape != protected.shape:
        raise ValueError(f"shapes differ: {original.shape} vs {protected.shape}")
    diff = protected.astype(np.float64) - original.astype(np.float64)  # in 0..255 units
    linf_255 = float(np.abs(diff).max()) if diff.size else 0.0
    mse01 = float(np.mean((diff / 255.0) ** 2)) if diff.size else 0.0
    return {
        "linf": linf_255 / 127.5,
        "l2": float(np.sqrt(np.sum((diff / 127.5) ** 2))),
        "linf_255": linf_255,
        "psnr": None if mse01 == 0 else 10 * math.log10(1.0 / mse01),
        "ssim": ssim(original, protected),
    }


def ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    """Mean SSIM of two uint8 [H, W, C] images on [0, 1]; None when smaller than 3 px."""
    side = min(a.shape[0], a.shape[1])
    if side < 3:
        return None
    window = min(7, side if side % 2 else side - 1)
    return float(
        structural_similarity(a.astype(np.float64) / 255.0, b.astype(np.float64) / 255.0, data_range=1.0, channel_axis=2, win_size=window)
    )


def disruption_metrics(fake_protected: Tensor, fake_original: Tensor) -> dict[str, float | bool]:
    """Mean over all samples of mse and l1 between deepfakes of the protected and the original
    photo, on [-1, 1]. Tensors [N, 3, H, W]; `disrupted` when mse > 0.05."""
    diff = (fake_protected.detach().float() - fake_original.detach().float())
    mse = float(torch.mean(diff**2))
    return {"mse": mse, "l1": float(torch.mean(diff.abs())), "disrupted": mse > DISRUPTION_THRESHOLD}
