"""Verify: is a protected photo still protected after sharing? Tiny generators, real files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from deepshield.engine import Engine
from deepshield.errors import InvalidImageError, InvalidParameterError
from tests.conftest import tiny_models


@pytest.fixture
def engine(models_dir) -> Engine:
    return Engine(tiny_models(models_dir), device="cpu")


def _photo(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _shared(image: Image.Image, fmt: str = "JPEG", scale: float = 1.0, **save: object) -> bytes:
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=fmt, **save)
    return buffer.getvalue()


def test_a_lossless_copy_reports_the_protection_itself(engine):
    original = _photo()
    result = engine.protect(original, model="tiny-cyclegan", iterations=3, seed=0)
    check = engine.verify(original, _shared(result.protected, "PNG"), models=["tiny-cyclegan"]).checks[0]
    assert check.mse == pytest.approx(result.metrics["disruption"]["mse"], rel=1e-4)
    assert check.mse == pytest.approx(check.mse_vs_clean)


def test_the_unprotected_original_shared_the_same_way_is_not_disrupted(engine):
    original = _photo(seed=1)
    shared = _shared(Image.open(io.BytesIO(original)), quality=70)
    result = engine.verify(original, shared, models=["tiny-cyclegan", "tiny-stargan"])
    assert result.header["shared"]["jpeg_quality"] == 70
    assert [c.mse for c in result.checks] == [0.0, 0.0]  # the baseline reproduces the sharing exactly
    assert all(c.mse_vs_clean > 0 for c in result.checks)  # while JPEG alone did move the deepfakes
    assert not result.protected


def test_a_resized_recompressed_copy_is_compared_at_its_own_size(engine):
    original = _photo(64, 64, seed=2)
    result = engine.protect(original, model="tiny-stargan", epsilon=0.1, iterations=5, seed=0)
    verdict = engine.verify(original, _shared(result.protected, scale=0.75, quality=90), models=["tiny-stargan"])
    report = verdict.report()
    assert (report["shared"]["width"], report["shared"]["height"], report["scale"]) == (48, 48, 0.75)
    assert report["models"][0]["mse"] > 0
    assert report["protected"] == verdict.checks[0].disrupted
    assert verdict.checks[0].deepfake_shared.size == verdict.checks[0].deepfake_baseline.size == (32, 32)


def test_default_models_are_the_photo_models_with_weights_here(engine):
    original = _photo(seed=3)
    assert engine.photo_models() == ["tiny-cyclegan", "tiny-stargan"]
    assert [c.model for c in engine.verify(original, original).checks] == ["tiny-cyclegan", "tiny-stargan"]


def test_cropped_copies_and_bad_files_are_refused(engine):
    original = _photo(48, 40, seed=4)
    cropped = _shared(Image.open(io.BytesIO(original)).crop((0, 0, 40, 40)), "PNG")
    with pytest.raises(InvalidImageError, match="framing"):
        engine.verify(original, cropped)
    with pytest.raises(InvalidImageError, match="not a recognised image"):
        engine.verify(original, b"not an image")
    with pytest.raises(InvalidParameterError, match="several"):
        engine.verify(original, original, models=["tiny-cyclegan", "tiny-stargan"], targets=["Male"])


def test_a_grayscale_jpeg_copy_is_reproduced_in_grayscale(engine):
    gray = Image.fromarray(np.random.default_rng(7).integers(0, 256, (40, 48), dtype=np.uint8), mode="L")
    buffer = io.BytesIO()
    gray.save(buffer, format="PNG")
    shared = io.BytesIO()
    gray.save(shared, format="JPEG", quality=60)
    result = engine.verify(buffer.getvalue(), shared.getvalue(), models=["tiny-cyclegan"])
    assert result.header["shared"]["jpeg_quality"] == 60
    assert result.checks[0].mse == 0.0  # the unprotected photo shared the same way: nothing left to measure
