"""The perturbation metrics computed with torch agree with their reference definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from deepshield import metrics


def _pair(shape: tuple[int, ...], seed: int, noise: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth uint8 image and a copy with uniform noise of +-noise levels."""
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(30, 220, (shape[0] // 4 + 1, shape[1] // 4 + 1, shape[2])), np.ones((4, 4, 1)))[: shape[0], : shape[1]]
    noisy = base + rng.integers(-noise, noise + 1, shape)
    return base.astype(np.uint8), np.clip(noisy, 0, 255).astype(np.uint8)


def _scikit_ssim(a: np.ndarray, b: np.ndarray) -> float:
    side = min(a.shape[:2])
    window = min(7, side if side % 2 else side - 1)
    return structural_similarity(a / 255.0, b / 255.0, data_range=1.0, channel_axis=2, win_size=window)


@pytest.mark.parametrize(
    ("shape", "noise"),
    [((96, 128, 3), 6), ((64, 64, 3), 40), ((33, 17, 1), 12), ((5, 9, 3), 90), ((3, 4, 3), 200), ((200, 150, 3), 1)],
)
def test_ssim_matches_scikit_image(shape, noise):
    a, b = _pair(shape, seed=sum(shape), noise=noise)
    assert metrics.ssim(a, b) == pytest.approx(_scikit_ssim(a, b), abs=1e-5)
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("band_pixels", [1, 500, 4000])
def test_ssim_in_row_bands_matches_scikit_image(monkeypatch, band_pixels):
    """Bands of one row, of a few rows and of uneven height give the same mean as one pass."""
    monkeypatch.setattr(metrics, "SSIM_BAND_PIXELS", band_pixels)
    a, b = _pair((101, 67, 3), seed=5, noise=20)
    assert metrics.ssim(a, b) == pytest.approx(_scikit_ssim(a, b), abs=1e-5)


def test_ssim_of_images_under_three_pixels_is_none():
    a, b = _pair((2, 40, 3), seed=0, noise=10)
    assert metrics.ssim(a, b) is None


def test_perturbation_norms_are_exact():
    a, b = _pair((120, 90, 3), seed=1, noise=9)
    diff = b.astype(np.float64) - a.astype(np.float64)
    report = metrics.perturbation_metrics(a, b)
    assert report["linf_255"] == np.abs(diff).max() and report["linf"] == np.abs(diff).max() / 127.5
    assert report["l2"] == pytest.approx(np.sqrt(np.sum((diff / 127.5) ** 2)), rel=1e-12)
    assert report["psnr"] == pytest.approx(10 * math.log10(1 / np.mean((diff / 255) ** 2)), rel=1e-12)
    assert report["ssim"] == pytest.approx(_scikit_ssim(a, b), abs=1e-5)


def test_identical_images_have_no_psnr_and_zero_norms():
    a, _ = _pair((16, 16, 3), seed=2, noise=0)
    report = metrics.perturbation_metrics(a, a.copy())
    assert (report["linf"], report["l2"], report["psnr"]) == (0.0, 0.0, None)
    assert report["ssim"] == pytest.approx(1.0)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.perturbation_metrics(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))
