"""Perturbation, quality and disruption metrics (DESIGN.md section 1).

Perturbation norms are on the [-1, 1] scale the attacks use (also given in /255 units);
PSNR and SSIM compare the written 8-bit file with the input on [0, 1]. They run with torch on
the device given (the engine's), so that a GPU machine computes them on the GPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DISRUPTION_THRESHOLD = 0.05  # the paper: an output with mse > 0.05 on [-1, 1] counts as disrupted
SSIM_WINDOW = 7  # scikit-image's structural_similarity defaults: 7x7 uniform window,
SSIM_K1, SSIM_K2 = 0.01, 0.03  # these constants and the sample (N - 1) covariance


def perturbation_metrics(original: np.ndarray, protected: np.ndarray, device: torch.device | str = "cpu") -> dict[str, float | None]:
    """original, protected: uint8 [H, W, C] arrays of the same shape.

    Returns linf and l2 of the perturbation on [-1, 1], linf in /255 units, psnr (dB, None when
    the images are identical), ssim on [0, 1], and `area`: the share of the pixels changed in
    any channel (0..1).
    """
    if original.shape != protected.shape:
        raise ValueError(f"shapes differ: {original.shape} vs {protected.shape}")
    a, b = pixels_on(original, device), pixels_on(protected, device)
    diff = b.int() - a.int()  # in 0..255 units, exact
    count = diff.numel()
    linf_255, squares = torch.stack([diff.abs().max().double(), diff.square().sum(dtype=torch.float64)]).tolist() if count else (0.0, 0.0)
    mse01 = squares / 255.0**2 / max(count, 1)
    area = float((diff != 0).any(dim=0).float().mean()) if count else 0.0
    return {
        "linf": linf_255 / 127.5,
        "l2": math.sqrt(squares) / 127.5,
        "linf_255": linf_255,
        "psnr": None if mse01 == 0 else 10 * math.log10(1.0 / mse01),
        "ssim": ssim_of_pixels(a, b),
        "area": area,
    }


def ssim(a: np.ndarray, b: np.ndarray, device: torch.device | str = "cpu") -> float | None:
    """Mean SSIM of two uint8 [H, W, C] images on [0, 1]; None when smaller than 3 px.

    The definition of scikit-image's `structural_similarity(..., data_range=1, channel_axis=2)`:
    a uniform 7x7 window (the largest odd one below 7 on smaller images), sample covariances,
    the mean over the pixels whose window lies inside the image and over the channels.
    """
    return ssim_of_pixels(pixels_on(a, device), pixels_on(b, device))


def pixels_on(rgb: np.ndarray, device: torch.device | str) -> Tensor:
    """uint8 [H, W, C] (or [H, W]) as a uint8 tensor [C, 1, H, W] on `device`, the layout
    `ssim_of_pixels` takes."""
    pixels = rgb if rgb.ndim == 3 else rgb[:, :, None]
    if not pixels.flags.writeable:  # e.g. np.asarray(PIL image): torch wants memory it may write
        pixels = pixels.copy()
    pixels = torch.from_numpy(pixels)
    return pixels.to(device).permute(2, 0, 1).unsqueeze(1)


SSIM_BAND_PIXELS = 1 << 21
"""Window positions one band of `ssim_of_pixels` works on (about 2 megapixels per channel: ~100
MB of fp32 intermediates), so a 14-megapixel photo costs no more memory than a small one."""


def ssim_of_pixels(a: Tensor, b: Tensor) -> float | None:
    """`ssim` of uint8 [C, 1, H, W] tensors from `pixels_on`, in fp32 with fp64 sums, one
    channel and one band of rows at a time."""
    height, width = a.shape[-2:]
    side = min(height, width)
    if side < 3:
        return None
    window = min(SSIM_WINDOW, side if side % 2 else side - 1)
    rows = height - window + 1  # window positions per column
    band = max(1, SSIM_BAND_PIXELS // width)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for channel in range(a.shape[0]):
        for first in range(0, rows, band):
            last = min(rows, first + band)
            span = slice(first, last + window - 1)
            total += _ssim_sum(a[channel : channel + 1, :, span], b[channel : channel + 1, :, span], window)
    return float(total / (a.shape[0] * rows * (width - window + 1)))


def _ssim_sum(a: Tensor, b: Tensor, window: int) -> Tensor:
    """Sum (fp64) of the SSIM index over the valid window positions of uint8 [1, 1, h, w] tiles."""
    x, y = a.float() / 255.0, b.float() / 255.0
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [1, 5, h, w]
    means = F.avg_pool2d(F.avg_pool2d(stack, (1, window), stride=1), (window, 1), stride=1)  # separable box filter, valid part
    mx, my, mxx, myy, mxy = means.unbind(1)
    covariance = window**2 / (window**2 - 1)
    vx, vy, vxy = covariance * (mxx - mx * mx), covariance * (myy - my * my), covariance * (mxy - mx * my)
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    index = (2 * mx * my + c1) * (2 * vxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return index.sum(dtype=torch.float64)


def disruption_metrics(fake_protected: Tensor, fake_original: Tensor) -> dict[str, float | bool]:
    """Mean over all samples of mse and l1 between deepfakes of the protected and the original
    photo, on [-1, 1]. Tensors [N, 3, H, W]; `disrupted` when mse > 0.05."""
    diff = (fake_protected.detach().float() - fake_original.detach().float())
    mse = float(torch.mean(diff**2))
    return {"mse": mse, "l1": float(torch.mean(diff.abs())), "disrupted": mse > DISRUPTION_THRESHOLD}
