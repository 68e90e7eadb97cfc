"""Imperceptibility controls: strength presets and the SSIM floor (perceptual mode)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from deepshield import metrics, perceptual
from deepshield.attacks import STRENGTHS
from deepshield.engine import Engine
from deepshield.errors import InvalidParameterError
from tests.conftest import run, tiny_models, write_photo


@pytest.fixture
def engine(models_dir) -> Engine:
    return Engine(tiny_models(models_dir), device="cpu")


def _photo(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    smooth = np.kron(rng.integers(40, 200, (4, 4, 3)), np.ones((12, 12, 1))).astype(np.uint8)  # flat patches: SSIM sees noise
    return Image.fromarray(smooth)


def _scaled(original: np.ndarray, protected: np.ndarray, scale: float) -> np.ndarray:
    """original + round(scale * (protected - original)) in float64 numpy: what hold_ssim's
    scaling must give."""
    delta = protected.astype(np.float64) - original.astype(np.float64)
    return np.clip(original.astype(np.float64) + np.round(scale * delta), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(STRENGTHS))
def test_strength_presets_set_epsilon_and_are_reported(engine, name):
    result = engine.protect(_photo(), model="tiny-cyclegan", epsilon=name, iterations=2, seed=0)
    levels = int(STRENGTHS[name] * 127.5 + 1e-9)
    assert (result.metrics["epsilon"], result.metrics["strength"]) == (STRENGTHS[name], name)
    assert result.metrics["perturbation"]["linf_255"] == levels  # PGD spends the whole budget


def test_unknown_preset_names_the_presets(engine):
    with pytest.raises(InvalidParameterError, match=r"low \(0.02 = 2.55/255\), medium \(0.05 = 6.38/255\), high \(0.1 = 12.75/255\)"):
        engine.protect(_photo(), model="tiny-cyclegan", epsilon="strong")


def test_ssim_floor_keeps_ssim_and_scales_as_little_as_possible(engine):
    free = engine.protect(_photo(1), model="tiny-cyclegan", epsilon=0.1, iterations=3, seed=0)
    free_ssim = free.metrics["perturbation"]["ssim"]
    floor = (1 + free_ssim) / 2
    held = engine.protect(_photo(1), model="tiny-cyclegan", epsilon=0.1, iterations=3, seed=0, ssim_floor=floor)
    scale = held.metrics["perceptual"]["scale"]
    assert held.metrics["perceptual"]["ssim_floor"] == floor
    assert held.metrics["perturbation"]["ssim"] >= floor > free_ssim
    assert 0 < scale < 1
    assert np.array_equal(held.protected_rgb, _scaled(free.original_rgb, free.protected_rgb, scale))
    # the bisection stops within its resolution of the largest scale that keeps the floor
    bigger = _scaled(free.original_rgb, free.protected_rgb, scale + 2 / 2**perceptual.BISECTION_STEPS)
    assert metrics.ssim(free.original_rgb, bigger) < floor
    # a floor the attack already meets changes nothing
    easy = engine.protect(_photo(1), model="tiny-cyclegan", epsilon=0.1, iterations=3, seed=0, ssim_floor=free_ssim / 2)
    assert easy.metrics["perceptual"]["scale"] == 1.0 and np.array_equal(easy.protected_rgb, free.protected_rgb)


@pytest.mark.parametrize("floor", [0, 1, 1.5, -0.2])
def test_ssim_floor_outside_0_1_is_refused(engine, floor):
    with pytest.raises(InvalidParameterError, match="ssim_floor must be between 0 and 1"):
        engine.protect(_photo(), model="tiny-cyclegan", ssim_floor=floor)


def test_cli_strength_and_ssim_floor(cli_env, tmp_path):
    source = write_photo(tmp_path / "a.png")
    proc = run(cli_env, "protect", str(source), "-o", str(tmp_path / "o.png"), "--model", "tiny", "--strength", "high",
               "--ssim-floor", "0.99", "--iterations", "2", "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())[0]
    assert (report["epsilon"], report["strength"]) == (0.1, "high")
    assert report["perturbation"]["ssim"] >= 0.99
    assert f"scaled by {report['perceptual']['scale']:.3f} to keep ssim >= 0.99" in proc.stdout
    both = run(cli_env, "protect", str(source), "-o", str(tmp_path / "o.png"), "--model", "tiny", "--strength", "low", "--epsilon", "0.1")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
