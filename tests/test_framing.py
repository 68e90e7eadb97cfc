"""The framing-robust protection on tiny generators: the whole photo carries the perturbation,
inside the budget; face views follow the faces; unseen framings are measured as documented."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepshield import faces, framing, robustness, views
from deepshield.engine import Engine
from deepshield.errors import InvalidParameterError
from deepshield.faces import FaceBox
from tests.conftest import HAIR, TINY_PARAMS, make_spec, save_tiny, tiny_models


@pytest.fixture
def engine(models_dir: Path) -> Engine:
    save_tiny(models_dir, "tiny-face", "stargan", seed=3)
    specs = {
        **tiny_models(models_dir),
        "tiny-face": make_spec("tiny-face", "stargan", TINY_PARAMS["stargan"], fmt="official", filename="tiny-face.safetensors",
                               targets=HAIR, face_crop={"margin": 0.3, "shift_y": -0.1}),
    }
    return Engine(specs, device="cpu", precision="fp32")


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 236, (height, width, 3), dtype=np.uint8)


def protect(engine: Engine, original: np.ndarray, **options: object):
    return engine.protect(Image.fromarray(original), **options)


def changed(result, original: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(result.protected, dtype=int) - original.astype(int)).max(axis=2)


def test_framing_perturbs_the_whole_photo_inside_the_budget(engine):
    original = photo(96, 48)  # plain PGD perturbs only the centred 48x48 square of this photo
    plain = protect(engine, original, model="tiny-cyclegan", iterations=2, seed=0)
    robust = protect(engine, original, model="tiny-cyclegan", iterations=2, seed=0, robust="framing")
    assert plain.metrics["perturbation"]["area"] == pytest.approx(0.5, abs=0.02)
    diff = changed(robust, original)
    assert diff.max() <= math.floor(0.05 * 127.5)
    assert robust.metrics["perturbation"]["area"] == pytest.approx((diff > 0).mean()) and (diff > 0).mean() > 0.9
    for band in (diff[:, :24], diff[:, 72:]):  # the bands plain PGD leaves untouched
        assert (band > 0).mean() > 0.9
    assert robust.metrics["robust"] == "framing" and robust.metrics["momentum"] == framing.MOMENTUM
    assert robust.metrics["lookahead"] is framing.LOOKAHEAD and plain.metrics["lookahead"] is False
    # the report echoes what was asked and gives the steps that ran: STEPS_PER_ITERATION smaller
    # ones per iteration asked for
    assert (robust.metrics["iterations"], robust.metrics["step_size"]) == (2, 0.01)
    assert robust.metrics["steps"] == {"count": 2 * framing.STEPS_PER_ITERATION, "size": pytest.approx(0.01 * framing.STEP_SCALE)}


def test_framing_fgsm_stays_one_step_of_epsilon(engine):
    result = protect(engine, photo(48, 48), model="tiny-cyclegan", attack="fgsm", seed=0, robust="framing")
    assert result.metrics["steps"] == {"count": 1, "size": 0.05}


def test_framing_raises_the_loss_over_unseen_views(engine):
    """The attack works: its loss over views it never drew ends far above the loss of a random
    perturbation of the same budget (plain PGD's start)."""
    original = photo(80, 64, seed=5)
    robust = protect(engine, original, model="tiny-cyclegan", iterations=6, seed=1, robust="framing", check_robustness=True)
    noisy = np.clip(original.astype(int) + np.random.default_rng(0).integers(-6, 7, original.shape), 0, 255).astype(np.uint8)
    model = engine.load("tiny-cyclegan").generator
    drawn = views.ThreatModel().framing_only().sample(64, 80, 8, torch.Generator().manual_seed(views.EVALUATION_SEED + 1))

    def deepfake(frames: torch.Tensor) -> torch.Tensor:
        return model(frames).unsqueeze(1)

    attacked, _ = robustness.framings_report(original, robust.protected_rgb, drawn, 32, deepfake)
    random_noise, _ = robustness.framings_report(original, noisy, drawn, 32, deepfake)
    assert attacked["mse"] > 2 * random_noise["mse"]
    assert robust.metrics["robustness"]["framings"]["mse"] == pytest.approx(attacked["mse"], rel=1e-5)  # the report measured these views


def test_unseen_framings_are_measured_with_the_makers_tools(engine):
    """framings_report compares the deepfakes of the maker's renderings of each view, plainly,
    after JPEG 75 of the whole photo and after a colour correction: here with an identity
    'generator', against numpy."""
    original = photo(70, 50, seed=2)
    protected = np.clip(original.astype(int) + np.random.default_rng(1).integers(-6, 7, original.shape), 0, 255).astype(np.uint8)
    drawn = views.ThreatModel().framing_only().sample(50, 70, 5, torch.Generator().manual_seed(7))
    report, examples = robustness.framings_report(original, protected, drawn, 24, lambda frames: frames.unsqueeze(1))
    difference = [(views.render(protected, v, 24) / 127.5) - (views.render(original, v, 24) / 127.5) for v in drawn]
    expected = [np.mean(d**2) for d in difference]
    assert report["views"] == 5 and report["mse"] == pytest.approx(np.mean(expected), rel=1e-5)
    assert report["share_disrupted"] == np.mean(np.array(expected) > 0.05)
    after = [np.mean(((views.render(protected, replace(v, jpeg=75), 24) / 127.5) - (views.render(original, replace(v, jpeg=75), 24) / 127.5)) ** 2) for v in drawn]
    assert report["jpeg75"]["mse"] == pytest.approx(np.mean(after), rel=1e-5)
    left = [np.mean((d - d.mean(axis=(0, 1))) ** 2) for d in difference]  # each channel's mean difference removed
    assert report["tone_matched"]["mse"] == pytest.approx(np.mean(left), rel=1e-5) and report["tone_matched"]["mse"] < report["mse"]
    assert report["tone_matched"]["share_disrupted"] == np.mean(np.array(left) > 0.05)
    assert len(examples) == 5 and examples[0][0].shape == (24, 24, 3)


def test_tone_matching_removes_a_uniform_colour_shift_and_keeps_structure():
    """tone_matched_mse drops each channel's mean difference (a brighter, warmer deepfake) and keeps
    the rest: a checkerboard with no mean passes through whole."""
    clean = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    shift = torch.tensor([0.3, -0.2, 0.1]).view(1, 1, 3, 1, 1)
    checker = 0.25 * ((torch.arange(8).view(8, 1) + torch.arange(8).view(1, 8)) % 2 * 2 - 1).float()
    assert robustness.views_mse(clean + shift, clean)[0] == pytest.approx((0.09 + 0.04 + 0.01) / 3)
    assert torch.allclose(robustness.tone_matched_mse(clean + shift, clean), torch.zeros(2), atol=1e-6)
    both = robustness.tone_matched_mse(clean + shift + checker, clean)
    assert torch.allclose(both, torch.full((2,), 0.0625), atol=1e-6)
    assert torch.allclose(both, robustness.views_mse(clean + checker, clean), atol=1e-6)


def test_the_report_measures_views_the_attack_never_drew(engine):
    height, width = 64, 80
    attack_draws = views.DEFAULT_THREAT_MODEL.sample(height, width, 40, torch.Generator().manual_seed(3))
    report_draws = views.DEFAULT_THREAT_MODEL.framing_only().sample(height, width, 8, torch.Generator().manual_seed(views.EVALUATION_SEED + 3))
    assert not {v.box() for v in report_draws} & {v.box() for v in attack_draws}


def test_face_views_are_centred_on_each_face_and_the_rest_is_perturbed_too(engine, monkeypatch):
    found = [FaceBox(26, 18, 54, 50), FaceBox(95, 35, 115, 58)]
    boxes = [faces.crop_box(f, 140, 64, margin=0.3, shift_y=-0.1) for f in found]
    drawn_around: list[list[views.Box]] = []
    centres: list[tuple[float, float]] = []
    sample = views.ThreatModel.sample

    def spy(self, height, width, count, generator, faces=(), first=0):
        drawn_around.append(list(faces))
        drawn = sample(self, height, width, count, generator, faces, first)
        centres.extend((v.cy, v.cx) for v in drawn)
        return drawn

    monkeypatch.setattr(views.ThreatModel, "sample", spy)
    monkeypatch.setattr(faces, "detect_faces", lambda rgb: found)
    original = photo(140, 64, seed=4)
    result = protect(engine, original, model="tiny-face", iterations=1, seed=0, robust="framing")
    assert result.metrics["crop"] == "faces" and len(result.metrics["faces"]) == 2
    assert drawn_around and all(around == boxes for around in drawn_around)
    # however few views a step draws, the steps go round the faces: every face is attacked
    for top, left, side in boxes:
        assert any(abs(cy - top - side / 2) <= 0.11 * side and abs(cx - left - side / 2) <= 0.11 * side for cy, cx in centres)
    assert (changed(result, original) > 0).mean() > 0.9  # the random start covers the photo, faces or not


def test_framing_works_with_ensembles_and_grayscale(engine):
    gray = np.repeat(photo(60, 40, seed=6)[:, :, :1], 3, axis=2)
    result = engine.protect(Image.fromarray(gray[:, :, 0], mode="L"), model=["tiny-cyclegan", "tiny-stargan"], iterations=2, seed=0, robust="framing")
    assert result.protected.mode == "L"
    assert set(result.metrics["disruption"]["per_model"]) == {"tiny-cyclegan", "tiny-stargan"}
    assert result.metrics["perturbation"]["area"] > 0.9


def test_unknown_robust_mode_names_framing(engine):
    with pytest.raises(InvalidParameterError, match="framing"):
        protect(engine, photo(32, 32), model="tiny-cyclegan", robust="everything")
