"""The real offline model (`cyclegan-vintage`, weights from the vintagify wheel) on real photos."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from deepshield.engine import Engine
from tests.conftest import REPO, faces

pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu")


def test_vintage_weights_are_verified_and_load(engine):
    model = engine.load("cyclegan-vintage")
    assert model.weights_sha256 == engine.spec("cyclegan-vintage").weights.sha256
    assert model.num_parameters == 11388675
    assert model.weights_format == "vintagify"


def test_pgd_defaults_disrupt_every_dev_photo_within_budget(engine):
    photos = faces()
    assert len(photos) >= 20
    results = engine.protect_batch(photos, model="cyclegan-vintage", attack="pgd", epsilon=0.05, iterations=10, step_size=0.01, seed=0, batch_size=4)
    levels = math.floor(0.05 * 127.5)
    for path, result in zip(photos, results):
        original = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), dtype=int)
        written = np.asarray(result.protected.convert("RGB"), dtype=int)
        assert written.shape == original.shape, path.name
        assert np.abs(written - original).max() <= levels, path.name
        assert result.metrics["disruption"]["mse"] > 0.05, (path.name, result.metrics["disruption"])
        assert result.metrics["perturbation"]["ssim"] > 0.7, path.name


def test_cli_protect_on_a_real_photo_writes_a_png_within_budget(tmp_path):
    source = faces()[0]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "deepshield", "protect", str(source), "-o", str(tmp_path / "p.png"), "--seed", "0", "--report", str(tmp_path / "r.json")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    (report,) = json.loads((tmp_path / "r.json").read_text())
    written = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"), dtype=int)
    original = np.asarray(Image.open(source).convert("RGB"), dtype=int)
    assert np.abs(written - original).max() / 127.5 <= 0.05
    assert report["disruption"]["disrupted"] is True
    assert report["model"] == "cyclegan-vintage" and report["attack"] == "pgd"


def test_the_robust_attack_beats_the_plain_one_after_real_jpeg_75(engine):
    """Same photos (the first three CelebA-size crops of faces-dev, for speed), budget (2.55/255),
    iterations and seeds: after a real PIL JPEG 75 round trip, the robust attack's perturbation
    still moves the deepfake measurably more, on every photo."""
    photos = [p for p in faces() if Image.open(p).size == (178, 218)][:3]
    assert len(photos) == 3
    options = {"model": "cyclegan-vintage", "attack": "pgd", "epsilon": 0.02, "iterations": 10, "step_size": 0.004, "seed": 0,
               "batch_size": 3, "check_robustness": True}
    plain = np.array([r.metrics["robustness"]["jpeg75"]["mse"] for r in engine.protect_batch(photos, **options)])
    robust = np.array([r.metrics["robustness"]["jpeg75"]["mse"] for r in engine.protect_batch(photos, robust="eot", **options)])
    print("jpeg75 mse plain", plain, "robust", robust)
    assert (robust > 1.1 * plain).all()
    assert np.exp(np.mean(np.log(robust / plain))) > 1.3  # geometric mean of the gains
