"""Verify: is a protected photo still protected after it was shared, cropped, resized, mirrored,
turned or framed? Tiny generators, real photos from the development set."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bench.copies import Sharing
from deepshield import imaging, locate
from deepshield.engine import Engine
from deepshield.errors import CopyNotLocatedError, InvalidImageError, InvalidParameterError
from deepshield.verify import baseline, read_shared
from tests.conftest import dev_photo, encoded, tiny_models


@pytest.fixture
def engine(models_dir) -> Engine:
    return Engine(tiny_models(models_dir), device="cpu")


def as_png(image: Image.Image) -> bytes:
    return encoded(image.convert("RGB"), "PNG")


COPIES = {
    "crop": Sharing(box=(40, 30, 250, 200)),
    "scale 0.3": Sharing(scale=0.3, quality=90),
    "scale 1.8 crop": Sharing(box=(100, 60, 260, 220), scale=1.8),
    "mirror": Sharing(box=(10, 20, 300, 230), mirrored=True, quality=85),
    "rot90": Sharing(box=(0, 40, 200, 240), rotation=90),
    "rot180 mirror": Sharing(box=(60, 0, 320, 200), mirrored=True, rotation=180, scale=0.7),
    "rot270": Sharing(box=(30, 30, 290, 210), rotation=270, scale=1.2, quality=75),
    "border": Sharing(box=(20, 20, 300, 220), scale=0.8, border=20, fill=(255, 255, 255)),
    "black border": Sharing(border=12, fill=(0, 0, 0), quality=70),
    "jpeg 40": Sharing(box=(50, 40, 280, 230), quality=40),
    "everything": Sharing(box=(70, 20, 230, 180), mirrored=True, rotation=90, scale=0.6, border=8, fill=(32, 32, 36), quality=40, filter="lanczos"),
}


@pytest.mark.parametrize("sharing", COPIES.values(), ids=COPIES.keys())
def test_the_copy_is_located_within_a_pixel_of_the_truth(sharing):
    image = dev_photo()
    copy = imaging.decode_rgb(sharing.apply(image))
    found = locate.locate(np.asarray(image), copy)
    truth = sharing.box or (0, 0, image.width, image.height)
    assert (found.mirrored, found.rotation) == (sharing.mirrored, sharing.rotation)
    assert max(abs(a - b) for a, b in zip(found.box, truth)) * sharing.scale <= 1.5  # px of the copy
    assert found.border == (sharing.border,) * 4
    assert found.scale == pytest.approx(sharing.scale, rel=0.02)
    if sharing.border:
        assert np.abs(np.subtract(found.fill, sharing.fill)).max() <= 3


def test_the_baseline_is_the_original_shared_the_same_way():
    """With the framing located exactly, the baseline is byte for byte the original taken through
    the true crop, mirror, turn, resize, border and JPEG (the copy's own tables)."""
    image = dev_photo()
    sharing = Sharing(box=(40, 20, 280, 220), mirrored=True, rotation=270, scale=0.5, border=10, fill=(0, 0, 0), quality=40)
    protected = np.clip(np.asarray(image, dtype=np.int16) + np.random.default_rng(0).integers(-6, 7, (image.height, image.width, 3)), 0, 255)
    copy = read_shared(sharing.apply(Image.fromarray(protected.astype(np.uint8))), name="shared.jpg")
    original = imaging.load_photo(image)
    location = locate.locate(original.rgb, copy.photo.rgb)
    assert location.box == sharing.box
    framed, recompressed = baseline(original, copy, location)
    assert np.array_equal(framed, np.asarray(sharing.framed(image)))
    assert np.array_equal(recompressed, imaging.decode_rgb(sharing.apply(image)))


def test_a_lossless_copy_reports_the_protection_itself(engine):
    original = as_png(dev_photo(width=160))
    result = engine.protect(original, model="tiny-cyclegan", iterations=3, seed=0)
    verdict = engine.verify(original, as_png(result.protected), models=["tiny-cyclegan"])
    assert verdict.header["located"] == {"box": [0, 0, 160, 120], "scale": 1.0, "mirrored": False, "rotation": 0, "border": [0, 0, 0, 0]}
    check = verdict.checks[0]
    assert check.mse == pytest.approx(result.metrics["disruption"]["mse"], rel=1e-4)
    assert check.mse == pytest.approx(check.mse_vs_clean)


def test_the_unprotected_original_shared_the_same_way_is_not_disrupted(engine):
    """Cropped, mirrored, turned, framed and recompressed: the baseline reproduces it exactly."""
    image = dev_photo()
    sharing = Sharing(box=(30, 10, 290, 230), mirrored=True, rotation=90, border=6, fill=(255, 255, 255), quality=70)
    result = engine.verify(as_png(image), sharing.apply(image), models=["tiny-cyclegan", "tiny-stargan"])
    assert result.header["shared"]["jpeg_quality"] == 70
    assert result.header["located"]["box"] == list(sharing.box)
    # the border's colour is taken from the JPEG copy (254 where it was 255): all else is exact
    assert all(c.mse < 1e-4 for c in result.checks)
    assert all(c.mse_vs_clean > 100 * c.mse for c in result.checks)  # while JPEG alone did move the deepfakes
    assert not result.protected


def test_a_cropped_recompressed_copy_is_judged_under_its_framing(engine):
    original = as_png(dev_photo(width=256))
    result = engine.protect(original, model="tiny-stargan", epsilon=0.1, iterations=5, seed=0)
    sharing = Sharing(box=(20, 10, 220, 170), scale=0.75, mirrored=True, quality=90)
    verdict = engine.verify(original, sharing.apply(result.protected), models=["tiny-stargan"])
    report = verdict.report()
    assert (report["shared"]["width"], report["shared"]["height"], report["scale"]) == (150, 120, 0.75)
    assert report["located"]["mirrored"] and report["models"][0]["mse"] > 0
    assert report["protected"] == verdict.checks[0].disrupted
    assert verdict.checks[0].deepfake_shared.size == verdict.checks[0].deepfake_baseline.size == (32, 32)


def test_default_models_are_the_photo_models_with_weights_here(engine):
    original = as_png(dev_photo(width=160))
    assert engine.photo_models() == ["tiny-cyclegan", "tiny-stargan"]
    assert [c.model for c in engine.verify(original, original).checks] == ["tiny-cyclegan", "tiny-stargan"]


def _turned(image: Image.Image, degrees: float) -> bytes:
    return as_png(image.rotate(degrees, resample=Image.Resampling.BICUBIC))


REFUSALS = {
    "too_small": (lambda image: as_png(image.resize((24, 18))), "too small to locate"),
    "not_this_photo": (lambda image: as_png(dev_photo("face_009.jpg")), "shared does not show a part of original "),
    "too_altered": (lambda image: _turned(image, 20), "turned by 20.0 degrees"),
}


@pytest.mark.parametrize("kind", REFUSALS)
def test_a_copy_that_cannot_be_located_is_refused_saying_why(engine, kind):
    make, message = REFUSALS[kind]
    image = dev_photo()
    with pytest.raises(CopyNotLocatedError, match=message) as refused:
        engine.verify(as_png(image), make(image), models=["tiny-cyclegan"])
    assert refused.value.kind == kind and "\n" not in str(refused.value)


def test_a_stretched_or_recoloured_copy_is_too_altered():
    image = dev_photo()
    stretched = imaging.decode_rgb(as_png(image.resize((320, 180))))
    with pytest.raises(CopyNotLocatedError, match="stretched"):
        locate.locate(np.asarray(image), stretched)
    negative = 255 - np.asarray(image)
    with pytest.raises(CopyNotLocatedError) as refused:
        locate.locate(np.asarray(image), negative)
    assert refused.value.kind in ("too_altered", "not_this_photo")


def test_bad_files_and_settings_are_refused(engine):
    original = as_png(dev_photo(width=160))
    with pytest.raises(InvalidImageError, match="not a recognised image"):
        engine.verify(original, b"not an image")
    with pytest.raises(InvalidParameterError, match="several"):
        engine.verify(original, original, models=["tiny-cyclegan", "tiny-stargan"], targets=["Male"])


def test_a_grayscale_jpeg_copy_is_reproduced_in_grayscale(engine):
    gray = dev_photo("face_002.jpg", width=240).convert("L")
    shared = io.BytesIO()
    gray.crop((20, 30, 220, 290)).save(shared, format="JPEG", quality=60)
    result = engine.verify(encoded(gray, "PNG"), shared.getvalue(), models=["tiny-cyclegan"])
    assert result.header["shared"]["jpeg_quality"] == 60
    assert result.header["located"]["box"] == [20, 30, 220, 290]
    assert result.checks[0].mse == 0.0  # the unprotected photo shared the same way: nothing left to measure


def test_face_models_judge_each_face_levelled_in_the_copys_framing(models_dir):
    """A face turned 25 degrees, shared cropped and recompressed: verify finds the face on the
    baseline and feeds the model its levelled square (`views.crop_square`), not the upright one."""
    import cv2

    from deepshield.pipeline import model_squares
    from deepshield.robustness import generator_deepfake
    from tests.conftest import HAIR, TINY_PARAMS, make_spec

    face_model = make_spec("tiny-face", "stargan", TINY_PARAMS["stargan"], fmt="official", filename="tiny-stargan.safetensors",
                           targets=HAIR, face_crop={"margin": 0.245, "shift_y": -0.126})
    engine = Engine({**tiny_models(models_dir), "tiny-face": face_model}, device="cpu", precision="fp32")
    rgb = np.asarray(dev_photo("face_016.jpg", width=400))
    tilted = cv2.warpAffine(rgb, cv2.getRotationMatrix2D((200, 195), 25, 1.0), (rgb.shape[1], rgb.shape[0]), borderMode=cv2.BORDER_REPLICATE)
    sharing = Sharing(box=(30, 20, 380, 370), scale=0.8, quality=80)
    copy = read_shared(sharing.apply(Image.fromarray(tilted)))
    result = engine.verify(Image.fromarray(tilted), sharing.apply(Image.fromarray(tilted)), models=["tiny-face"], targets=["Male"])
    (check,) = result.checks
    assert len(check.faces) == 1 and result.header["located"]["box"] == list(sharing.box)
    _, recompressed = baseline(imaging.load_photo(Image.fromarray(tilted)), copy, locate.locate(tilted, copy.photo.rgb))
    model = engine.load("tiny-face")
    (squares,), _, _ = model_squares(recompressed, [model], True)
    (square,) = squares
    assert square.angle < -15
    deepfake = generator_deepfake(model.generator, 32, model.conditions(["Male"])[1])
    reported = np.asarray(check.deepfake_baseline, dtype=float)
    levelled = imaging.to_uint8(deepfake(recompressed, square)[0]).astype(float)
    upright = imaging.to_uint8(deepfake(recompressed, tuple(square))[0]).astype(float)
    assert np.abs(reported - levelled).mean() < 0.2 * np.abs(reported - upright).mean()
