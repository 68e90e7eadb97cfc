"""A protected photo comes back upright and in the mode it went in: EXIF orientation, grayscale,
alpha, 16-bit. Each case protects through the real pipeline (tiny generator) and reads the file."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from deepshield import imaging
from deepshield.engine import Engine
from tests.conftest import encoded, noise, tiny_models

LEVELS = math.floor(0.05 * 127.5)  # the budget in 8-bit levels


@pytest.fixture
def engine(models_dir) -> Engine:
    return Engine(tiny_models(models_dir), device="cpu")


def _noise(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    return noise(width, height, seed, channels, low=30, high=226)


def _protect(engine: Engine, image: Image.Image, fmt: str = "PNG", **save: object) -> tuple[Image.Image, dict]:
    """Encode `image` as `fmt`, protect the bytes, return the protected PNG (read back) + report."""
    result = engine.protect(encoded(image, fmt, **save), model="tiny-cyclegan", iterations=2, seed=0)
    data, report = result.encode("PNG")
    written = Image.open(io.BytesIO(data))
    written.load()
    return written, report


def test_exif_rotated_jpeg_comes_out_upright_without_the_tag(engine):
    stored = Image.fromarray(_noise(24, 40, 3))  # 40 wide, 24 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the photo is 24 wide, 40 high upright
    data = encoded(stored, "JPEG", quality=95, exif=exif)
    written, report = _protect(engine, stored, "JPEG", quality=95, exif=exif)
    as_stored = Image.open(io.BytesIO(data)).convert("RGB")
    upright = np.asarray(as_stored.transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(imaging.load_photo(data).rgb, upright)
    assert written.size == (24, 40) and (report["width"], report["height"]) == (24, 40)
    assert written.getexif().get(0x0112) is None  # no tag left to rotate it a second time
    assert 0 < np.abs(np.asarray(written.convert("RGB"), dtype=int) - upright.astype(int)).max() <= LEVELS


def test_grayscale_stays_grayscale_with_a_gray_perturbation(engine):
    gray = Image.fromarray(_noise(32, 32, 1), mode="L")
    written, report = _protect(engine, gray)
    assert written.mode == "L"
    diff = np.asarray(written, dtype=int) - np.asarray(gray, dtype=int)
    assert 0 < np.abs(diff).max() <= LEVELS
    assert report["perturbation"]["linf_255"] == np.abs(diff).max()


def test_grayscale_with_alpha_keeps_both(engine):
    luma, alpha = _noise(32, 32, 1, seed=1), _noise(32, 32, 1, seed=2)
    image = Image.merge("LA", (Image.fromarray(luma, "L"), Image.fromarray(alpha, "L")))
    written, _ = _protect(engine, image)
    assert written.mode == "LA"
    assert np.array_equal(np.asarray(written.getchannel("A")), alpha)
    assert 0 < np.abs(np.asarray(written.getchannel("L"), dtype=int) - luma.astype(int)).max() <= LEVELS


def test_rgba_keeps_its_alpha_and_palette_transparency_becomes_rgba(engine):
    rgba = Image.fromarray(np.dstack([_noise(32, 32, 3), _noise(32, 32, 1, seed=3)]), mode="RGBA")
    written, _ = _protect(engine, rgba)
    assert written.mode == "RGBA"
    assert np.array_equal(np.asarray(written)[..., 3], np.asarray(rgba)[..., 3])
    palette = rgba.convert("RGB").quantize(16)
    palette.info["transparency"] = 0
    written, _ = _protect(engine, palette)
    assert written.mode == "RGBA"
    assert np.array_equal(np.asarray(written)[..., 3], np.asarray(palette.convert("RGBA"))[..., 3])


def test_16bit_grayscale_keeps_16_bits_and_its_low_byte(engine):
    wide = np.random.default_rng(4).integers(8000, 60000, (32, 32)).astype(np.uint16)
    written, report = _protect(engine, Image.fromarray(wide))
    assert written.mode in ("I;16", "I")  # PIL reads 16-bit PNGs back as either
    out = np.asarray(written, dtype=np.int64)
    delta = out - wide.astype(np.int64)
    assert np.all(delta % 257 == 0)  # whole 8-bit levels added: the input's fine detail is kept
    assert 0 < np.abs(delta).max() <= 257 * LEVELS
    # an 8-bit reader of the file sees exactly the pixels that were measured
    assert report["perturbation"]["linf_255"] == np.abs(delta).max() // 257


def test_modes_a_format_cannot_store_are_lowered(engine):
    wide = np.random.default_rng(5).integers(0, 65535, (32, 32)).astype(np.uint16)
    result = engine.protect(Image.fromarray(wide), model="tiny-cyclegan", iterations=1, seed=0)
    jpeg, _ = result.encode("JPEG")
    assert Image.open(io.BytesIO(jpeg)).mode == "L"
    webp, _ = result.encode("WEBP")
    assert Image.open(io.BytesIO(webp)).mode == "RGB"


@pytest.mark.parametrize("mode", ["1", "CMYK", "P"])
def test_other_modes_are_protected_as_rgb_or_gray(engine, mode):
    image = Image.fromarray(_noise(32, 32, 3)).convert(mode)
    written, _ = _protect(engine, image, "TIFF" if mode == "CMYK" else "PNG")
    assert written.mode == ("L" if mode == "1" else "RGB")
