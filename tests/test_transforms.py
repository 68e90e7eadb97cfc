"""Differentiable transformations for EOT attacks, and the robustness report on real ones."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deepshield import attacks, imaging, metrics
from deepshield import transforms as T
from deepshield.models import get_architecture
from deepshield.robustness import (
    REAL_TRANSFORMS,
    ROBUSTNESS_KEYS,
    generator_deepfake,
    robustness_report,
    shifted_crop,
)
from deepshield.weights import freeze
from tests.conftest import FACES, TINY_PARAMS

RANDOM_TRANSFORMS = {
    "jpeg": T.DiffJPEG((50, 95)),
    "jpeg_cubic": T.DiffJPEG((50, 95), rounding="cubic"),
    "jpeg444": T.DiffJPEG(75, subsampling="4:4:4"),
    "resize": T.RandomResize((0.5, 0.9)),
    "blur": T.RandomGaussianBlur((0.5, 1.5)),
    "shift": T.RandomShift(0.03),
    "box": T.BoxBlur(5),
    "sharing": T.sharing_transforms(3),
}


def batch(*shape: int, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random images in [-1, 1] (noise upsampled, plus a little fine noise)."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    coarse = torch.rand(b, c, max(1, h // 4), max(1, w // 4), generator=g) * 2 - 1
    x = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return (0.9 * x + 0.1 * (torch.rand(shape, generator=g) * 2 - 1)).clamp(-1, 1)


@pytest.mark.parametrize("name", sorted(RANDOM_TRANSFORMS))
def test_shape_range_and_gradient(name):
    x = batch(3, 3, 37, 52).requires_grad_(True)  # odd sizes: JPEG pads to whole MCUs
    out = RANDOM_TRANSFORMS[name](x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= -1 and out.max() <= 1
    (grad,) = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), x)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    for sample in grad:  # every sample of the batch gets a gradient
        assert sample.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(RANDOM_TRANSFORMS))
def test_seeded_reproducibility(name):
    x = batch(4, 3, 32, 32)
    first = RANDOM_TRANSFORMS[name](x, torch.Generator().manual_seed(7))
    second = RANDOM_TRANSFORMS[name](x, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


def test_randomness_is_per_sample():
    x = batch(1, 3, 32, 32).repeat(6, 1, 1, 1)  # six copies of one image
    for transform in (T.DiffJPEG((20, 95)), T.RandomResize(), T.RandomGaussianBlur(), T.RandomShift()):
        out = transform(x, torch.Generator().manual_seed(3))
        assert len({tuple(o.flatten()[:200].tolist()) for o in out}) > 1, transform


def test_quantization_tables_follow_ijg_scaling():
    luma, chroma = T.quantization_tables(torch.tensor([50.0, 75.0, 100.0, 10.0]))
    assert luma[0, 0, 0] == 16 and chroma[0, 0, 0] == 17  # quality 50 = the standard tables
    assert luma[1, 0, 0] == 8 and luma[1, 7, 7] == 50  # 75: scale 50%
    assert (luma[2] == 1).all() and (chroma[2] == 1).all()
    assert luma[3].max() == 255  # baseline clamp


def pil_jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


# Mean abs error (in /255 units) of DiffJPEG's forward pass against PIL's encoder + decoder; measured
# 0.47-0.54 (q75) and 0.30-0.55 (q50) on these crops. The dev photos are JPEGs themselves: the crop
# offset breaks their 8x8 grid, as any edit does (re-compressing on the same grid at exactly half the
# quality hits rounding ties that no float DCT reproduces).
@pytest.mark.parametrize("quality", [75, 50])
def test_differentiable_jpeg_matches_pil(quality):
    errors = []
    for name in ("face_001.jpg", "face_006.jpg", "face_020.jpg"):
        rgb = np.ascontiguousarray(imaging.load_photo(FACES / name).rgb[3:, 5:])
        ours = imaging.to_uint8(T.jpeg(imaging.to_tensor(rgb), quality)).astype(np.float64)
        real = pil_jpeg(rgb, quality).astype(np.float64)
        error = np.abs(ours - real).mean()
        change = np.abs(real - rgb.astype(np.float64)).mean()
        assert error < 0.8, f"{name}: {error:.3f}/255 from PIL's JPEG"
        assert error < change / 2, f"{name}: the emulation is not closer to PIL than the input is"
        errors.append(error)
    assert np.mean(errors) < 0.7


def test_jpeg_grid_offset_compresses_a_crop_on_the_photo_grid():
    photo_x = batch(1, 3, 64, 80, seed=2)
    whole = T.jpeg(photo_x, 60)[:, :, 3:, 5:]
    aligned = T.jpeg(photo_x[:, :, 3:, 5:], 60, grid_offset=(3, 5))
    misaligned = T.jpeg(photo_x[:, :, 3:, 5:], 60)
    inside = (slice(None), slice(None), slice(16 - 3 + 2, None), slice(16 - 5 + 2, None))  # whole MCUs
    assert torch.allclose(aligned[inside], whole[inside], atol=1e-4)
    assert not torch.allclose(misaligned[inside], whole[inside], atol=1e-2)


def test_blur_and_resize_remove_high_frequencies():
    x = batch(2, 3, 64, 64)
    noise = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.2 - 0.1
    x = (x + noise).clamp(-1, 1)

    def high_energy(image: torch.Tensor) -> float:
        spectrum = torch.fft.fftshift(torch.fft.fft2(image), dim=(-2, -1)).abs() ** 2
        yy, xx = torch.meshgrid(torch.arange(64) - 32, torch.arange(64) - 32, indexing="ij")
        return float(spectrum[..., (yy.abs() > 16) | (xx.abs() > 16)].sum())

    base = high_energy(x)
    g = torch.Generator().manual_seed(0)
    for transform in (T.RandomGaussianBlur((0.5, 1.5)), T.GaussianBlur(1.0), T.BoxBlur(3), T.RandomResize((0.5, 0.9)), T.DiffJPEG(50)):
        assert high_energy(transform(x, g)) < 0.6 * base, transform
    # stronger blur, less energy; means are preserved (normalised kernels)
    assert high_energy(T.GaussianBlur(1.5)(x)) < high_energy(T.GaussianBlur(0.5)(x))
    assert torch.allclose(T.GaussianBlur(1.0)(x).mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.02)
    flat = torch.full((1, 3, 20, 20), 0.3)
    for transform in (T.GaussianBlur(1.0), T.BoxBlur(4), T.RandomResize(), T.RandomShift()):
        assert torch.allclose(transform(flat, g), flat, atol=1e-5), transform


def test_shift_moves_content():
    x = torch.zeros(1, 3, 40, 40)
    x[:, :, 20, 20] = 1.0
    out = T.RandomShift(0.1)(x, torch.Generator().manual_seed(0))
    peak = torch.nonzero(out[0, 0] == out[0, 0].max())[0]
    assert tuple(peak.tolist()) != (20, 20)
    assert torch.equal(T.RandomShift(0.0)(x), x) or torch.allclose(T.RandomShift(0.0)(x), x, atol=1e-6)


def test_spread_spectrum_schedule_cycles_through_distinct_blurs():
    blurs = [T.spread_spectrum_blurs(step) for step in range(len(T.SPREAD_SPECTRUM_BLURS))]
    assert len({repr(b) for b in blurs}) == len(blurs) >= 8
    assert {type(b) for b in blurs} == {T.GaussianBlur, T.BoxBlur}
    assert all(type(a) is not type(b) for a, b in itertools.pairwise(blurs[:9]))  # kinds alternate
    assert T.spread_spectrum_blurs(len(blurs)) is blurs[0]
    x = batch(1, 3, 32, 32)
    outputs = [b(x) for b in blurs]
    assert all(not torch.allclose(a, b) for i, a in enumerate(outputs) for b in outputs[i + 1 :])


def test_scheduled_objective_feeds_the_attack_core():
    seen: list[str] = []

    def schedule(step: int) -> T.Transform:
        blur = T.spread_spectrum_blurs(step)
        seen.append(repr(blur))
        return blur

    def objective(inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([(x - 0.2).pow(2).flatten(1).mean(1) for x in inputs])

    x = [batch(1, 3, 24, 24)]
    config = attacks.preset("pgd", epsilon=0.05, iterations=4)
    adversarial = attacks.linf_attack(T.scheduled_objective(objective, schedule), x, config, seed=0)
    assert seen == [repr(T.spread_spectrum_blurs(i)) for i in range(4)]
    assert (adversarial[0] - x[0]).abs().max() <= 0.05 + 1e-6
    robust = T.scheduled_objective(objective, T.sharing_transforms, seed=1)
    assert robust(x).shape == (1,)
    adversarial = attacks.linf_attack(robust, x, config, seed=0)
    assert objective(adversarial) > objective(x)


def test_the_sharing_cycle_is_mostly_jpeg_and_repeats():
    cycle = [T.sharing_transforms(step) for step in range(len(T.SHARING_TRANSFORMS))]
    jpegs = [t for t in cycle if isinstance(t, T.DiffJPEG)]
    assert len(jpegs) > len(cycle) / 2 and {t.quality for t in jpegs} == {(75, 75), (50, 95)}
    assert {type(t) for t in cycle} == {T.DiffJPEG, T.RandomResize, T.RandomGaussianBlur, T.RandomShift}
    assert T.sharing_transforms(len(cycle)) is cycle[0]


# ----------------------------------------------------------------------------- robustness report


@pytest.fixture(scope="module")
def tiny_deepfake():
    torch.manual_seed(0)
    generator = freeze(get_architecture("cyclegan").build(**TINY_PARAMS["cyclegan"]))
    return generator_deepfake(generator, 32)


def photo(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return imaging.to_uint8(batch(1, 3, height, width, seed=seed))


def test_report_has_every_key_with_finite_values(tiny_deepfake):
    original = photo()
    noise = np.random.default_rng(0).integers(-6, 7, original.shape)
    protected = np.clip(original.astype(int) + noise, 0, 255).astype(np.uint8)
    box = imaging.center_square(*original.shape[:2])
    report = robustness_report(original, protected, box, tiny_deepfake)
    assert tuple(report) == ROBUSTNESS_KEYS == ("jpeg90", "jpeg75", "jpeg50", "resize50", "blur1", "shift")
    for key, entry in report.items():
        for field in ("mse", "l1", "mse_vs_clean", "transform_mse"):
            assert math.isfinite(entry[field]) and entry[field] >= 0, (key, field)
        assert entry["mse"] > 0, key  # the noise changes the deepfake
        assert entry["disrupted"] == (entry["mse"] > metrics.DISRUPTION_THRESHOLD)


def test_identity_protection_is_never_disrupted(tiny_deepfake):
    original = photo(seed=3)
    box = imaging.center_square(*original.shape[:2])
    report = robustness_report(original, original.copy(), box, tiny_deepfake)
    assert set(report) == set(ROBUSTNESS_KEYS)
    for key, entry in report.items():
        assert entry["mse"] == 0 and entry["l1"] == 0 and entry["disrupted"] is False, key
        assert entry["mse_vs_clean"] == entry["transform_mse"], key
    assert report["jpeg50"]["transform_mse"] > 0  # the reference is the transformed original


def test_real_transforms_keep_shape_and_change_pixels():
    original = photo(49, 67, seed=4)  # odd sizes
    for key, transform in REAL_TRANSFORMS.items():
        out = transform(original)
        assert out.shape == original.shape and out.dtype == np.uint8, key
        assert not np.array_equal(out, original), key


def test_shifted_crop_pads_where_the_box_leaves_the_photo():
    image = photo(40, 40)
    (moved,), box = shifted_crop([image], (0, 0, 40), (4, 4))
    assert moved.shape == (44, 44, 3) and box == (4, 4, 40)
    assert np.array_equal(moved[:40, :40], image)
    (inside,), box = shifted_crop([photo(40, 60)], (0, 10, 40), (0, 4))
    assert inside.shape == (40, 60, 3) and box == (0, 14, 40)
