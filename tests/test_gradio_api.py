"""The Gradio API (DESIGN.md s.3) end to end: a real uvicorn server and the real gradio_client."""

from __future__ import annotations

import io
import json
import math
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from deepshield import framing
from deepshield.engine import Engine
from deepshield.robustness import ROBUSTNESS_KEYS
from deepshield.manifest import load_manifest
from server import ui
from server.settings import Settings
from bench.copies import Sharing
from tests.conftest import FACES, HAIR, REPO, TINY_PARAMS, dev_photo, make_spec, tiny_models
from tests.live_server import build_app, running
from tests.original_layout import save_state

EPSILON = 0.05
LEVELS = math.floor(EPSILON * 127.5)  # the written 8-bit budget: 6 levels out of 255
ERROR_TIMEOUT_S = 30


@dataclass
class Served:
    url: str
    engine: Engine
    client: Client
    models_dir: Path



@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the module: the real manifest plus three tiny models (one a face model),
    and a models-folder model `folder-stargan` (seen while DEEPSHIELD_MODELS_DIR names its folder)."""
    root = tmp_path_factory.mktemp("gradio-api")
    (root / "models").mkdir()
    specs = {**load_manifest(), **tiny_models(root / "models")}
    specs["tiny-face"] = make_spec("tiny-face", "stargan", TINY_PARAMS["stargan"], fmt="official", filename="tiny-stargan.safetensors",
                                   targets=HAIR, face_crop={"margin": 0.245, "shift_y": -0.126})
    save_state(root / "models" / "folder-stargan" / "200000-G.ckpt", "stargan", TINY_PARAMS["stargan"], seed=7)
    (root / "models" / "folder-stargan" / "config.json").write_text(json.dumps({"image_size": 32}))
    # max_queue=0: nothing waits inside the engine, so a held slot makes the next request "busy".
    engine = Engine(specs, device="cpu", max_concurrent=1, max_queue=0)
    settings = Settings(max_concurrent=1, max_queue_size=4, max_batch_size=8, log_level="WARNING")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DEEPSHIELD_MODELS_DIR", str(root / "models"))
        env.setenv("DEEPSHIELD_CACHE_DIR", str(root / "cache"))
        engine.load("tiny-cyclegan")
        engine.load("tiny-stargan")
        engine.load("tiny-face")
        app = build_app(engine, settings)
    with running(app) as url:
        client = Client(url, verbose=False, download_files=str(root / "downloads"), analytics_enabled=False)
        yield Served(url, engine, client, root / "models")


def photo_file(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def rgb(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=int)


def assert_report(metrics: dict, epsilon: float = EPSILON) -> None:
    assert set(metrics["perturbation"]) >= {"linf", "l2", "linf_255", "psnr", "ssim"}
    assert set(metrics["disruption"]) >= {"mse", "l1", "disrupted"}
    assert 0 < metrics["perturbation"]["linf"] <= epsilon
    assert metrics["perturbation"]["linf_255"] <= math.floor(epsilon * 127.5)


def test_the_api_page_lists_exactly_the_endpoints_in_the_fixed_order(served):
    info = served.client.view_api(print_info=False, return_format="dict")
    endpoints = info["named_endpoints"]
    assert set(endpoints) == {"/protect", "/protect_batch", "/verify", "/models"}
    options = ["model", "attack", "epsilon", "iterations", "step_size", "seed", "targets", "detect_faces", "robust", "check_robustness", "ssim_floor"]
    assert [p["parameter_name"] for p in endpoints["/protect"]["parameters"]] == ["image", *options, "faces"]
    assert [p["parameter_name"] for p in endpoints["/protect_batch"]["parameters"]] == ["images", *options, "faces"]
    assert [p["parameter_name"] for p in endpoints["/verify"]["parameters"]] == ["original", "shared", "models"]
    assert len(endpoints["/protect"]["returns"]) == 4 and len(endpoints["/protect_batch"]["returns"]) == 3
    assert len(endpoints["/verify"]["returns"]) == 2
    assert endpoints["/models"]["parameters"] == []


def test_protect_returns_the_protected_png_both_deepfakes_and_the_report(served, tmp_path):
    source = photo_file(tmp_path / "portrait.jpg", 50, 40)
    protected, fake_original, fake_protected, metrics = served.client.predict(
        handle_file(str(source)), "tiny-cyclegan", "pgd", EPSILON, 3, 0.01, 0, [], api_name="/protect"
    )
    assert Path(protected).name == "portrait.protected.png"
    with Image.open(protected) as image:
        assert image.format == "PNG" and image.size == (50, 40)
    diff = np.abs(rgb(protected) - rgb(source))
    assert 0 < diff.max() <= LEVELS
    for fake in (fake_original, fake_protected):
        with Image.open(fake) as image:
            assert image.size == (32, 32)
    assert not np.array_equal(rgb(fake_original), rgb(fake_protected))
    assert_report(metrics)
    assert metrics["perturbation"]["linf"] == pytest.approx(diff.max() / 127.5)
    assert metrics["model"] == "tiny-cyclegan" and metrics["attack"] == "pgd" and metrics["seed"] == 0
    assert metrics["input"] == "portrait.jpg" and metrics["iterations"] == 3
    with urllib.request.urlopen(served.url + "metrics", timeout=10) as response:  # UI attacks are measured too
        assert 'deepshield_attack_seconds_count{attack="pgd",model="tiny-cyclegan"}' in response.read().decode()


def test_protect_defaults_and_targets_of_a_conditional_model(served, tmp_path):
    source = photo_file(tmp_path / "face.png", 36, 36, seed=1)
    # Only the six fixed inputs: seed and targets take their defaults (random, all targets).
    *_, everything = served.client.predict(handle_file(str(source)), "tiny-stargan", "ifgsm", 0.03, 2, 0.01, api_name="/protect")
    assert everything["targets"] == list(HAIR) and everything["attack"] == "ifgsm"
    assert isinstance(everything["seed"], int) and everything["seed"] >= 0  # default -1: a fresh seed, reported
    assert_report(everything, epsilon=0.03)
    *_, one = served.client.predict(handle_file(str(source)), "tiny-stargan", "fgsm", EPSILON, 1, 0.01, 7, ["Male"], api_name="/protect")
    assert one["targets"] == ["Male"] and list(one["disruption"]["per_target"]) == ["Male"]


def test_protect_options_added_after_the_fixed_ones(served, tmp_path):
    source = photo_file(tmp_path / "p.png", 40, 40, seed=3)
    *_, metrics = served.client.predict(
        handle_file(str(source)), "tiny-cyclegan", "pgd", "high", 2, 0.01, 0, [], False, "eot", True, 0.999, api_name="/protect"
    )
    assert (metrics["epsilon"], metrics["strength"], metrics["robust"]) == (0.1, "high", "eot")
    assert metrics["perturbation"]["ssim"] >= 0.999 and metrics["perceptual"]["ssim_floor"] == 0.999
    assert set(metrics["robustness"]) == {"jpeg90", "jpeg75", "jpeg50", "resize50", "blur1", "shift", "framings"}
    assert all(set(metrics["robustness"][k]) >= {"mse", "disrupted"} for k in ROBUSTNESS_KEYS)
    assert metrics["faces"] == [] and metrics["crop"] == "centre"
    assert "robust must be one of" in _error_of(served, handle_file(str(source)), "tiny-cyclegan", "pgd", EPSILON, 2, 0.01, 0, [], True, "magic")


def test_the_defaults_are_the_uis_framing_protection_with_its_report(served, tmp_path):
    source = photo_file(tmp_path / "wide.png", 64, 32, seed=8)
    *_, metrics = served.client.predict(handle_file(str(source)), "tiny-cyclegan", "pgd", EPSILON, 2, 0.01, 0, [], api_name="/protect")
    assert metrics["robust"] == "framing" and metrics["perturbation"]["area"] > 0.9
    assert metrics["robustness"]["framings"]["views"] == 8
    *_, plain = served.client.predict(handle_file(str(source)), "tiny-cyclegan", "pgd", EPSILON, 2, 0.01, 0, [], True, "off", False, 0,
                                      api_name="/protect")
    assert plain["robust"] is False and "robustness" not in plain and plain["perturbation"]["area"] <= 0.5 + 1e-9


def test_verify_shows_each_model_side_by_side(served, tmp_path):
    source = tmp_path / "me.png"
    dev_photo(width=160).save(source)
    protected, *_ = served.client.predict(handle_file(str(source)), "tiny-cyclegan", "pgd", 0.1, 3, 0.02, 0, [], api_name="/protect")
    (tmp_path / "shared.jpg").write_bytes(Sharing(box=(20, 0, 140, 120), mirrored=True, border=6, fill=(0, 0, 0), quality=80).apply(Image.open(protected)))
    gallery, report = served.client.predict(handle_file(str(source)), handle_file(str(tmp_path / "shared.jpg")), ["tiny-cyclegan", "tiny-stargan"],
                                            api_name="/verify")
    assert [m["model"] for m in report["models"]] == ["tiny-cyclegan", "tiny-stargan"]
    assert report["shared"]["jpeg_quality"] == 80 and report["shared"]["name"] == "shared.jpg"
    assert report["located"] == {"box": [20, 0, 140, 120], "scale": 1.0, "mirrored": True, "rotation": 0, "border": [6, 6, 6, 6]}
    assert len(gallery) == 4 and all(Image.open(entry["image"]).size == (32, 32) for entry in gallery)
    assert gallery[1]["caption"].startswith(f"tiny-cyclegan: deepfake of the shared copy (mse {report['models'][0]['mse']:.3f}")
    other = tmp_path / "other.png"
    dev_photo("face_009.jpg", width=240).save(other)
    assert "other.png does not show a part of me.png" in _error_of(served, handle_file(str(source)), handle_file(str(other)), [], api_name="/verify")


@pytest.mark.heavy
def test_protect_with_the_real_offline_model(served):
    photo = REPO / "examples" / "synthetic-portrait.png"
    protected, fake_original, fake_protected, metrics = served.client.predict(
        handle_file(str(photo)), "cyclegan-vintage", "pgd", EPSILON, 2, 0.01, 0, [], api_name="/protect"
    )
    assert rgb(protected).shape == rgb(photo).shape
    assert np.abs(rgb(protected) - rgb(photo)).max() <= LEVELS
    assert Image.open(fake_original).size == Image.open(fake_protected).size == (256, 256)
    assert_report(metrics)
    assert metrics["model"] == "cyclegan-vintage" and metrics["image_size"] == 256
    assert metrics["disruption"]["mse"] > 0


def test_protect_batch_keeps_names_and_never_trusts_zip_paths(served, tmp_path):
    a = photo_file(tmp_path / "a.jpg", 40, 30, seed=1)
    b = photo_file(tmp_path / "b.png", 33, 45, seed=2)
    archive = tmp_path / "more.zip"
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), 128, dtype=np.uint8)).save(buffer, format="PNG")
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("holiday/c.png", buffer.getvalue())
        bundle.writestr("../../evil.png", buffer.getvalue())  # zip-slip: must land as evil.png in the work folder
        bundle.writestr("/abs/a.png", buffer.getvalue())  # absolute, and the stem of a.jpg again
        bundle.writestr("notes.txt", b"not an image")
        bundle.writestr("__MACOSX/holiday/._c.png", b"resource fork")
    gallery, zip_path, report = served.client.predict(
        [handle_file(str(a)), handle_file(str(b)), handle_file(str(archive))], "tiny-cyclegan", "pgd", EPSILON, 2, 0.01, 0, [],
        api_name="/protect_batch",
    )
    expected = ["a.png", "b.png", "c.png", "evil.png", "a-2.png"]
    assert [item["input"] for item in report] == ["a.jpg", "b.png", "c.png", "evil.png", "a.png"]
    assert [item["output"] for item in report] == expected
    for item in report:
        assert_report(item)
    assert len(gallery) == 5 and all(Path(entry["image"]).is_file() for entry in gallery)
    with zipfile.ZipFile(zip_path) as bundle:
        assert bundle.namelist() == [*expected, "report.json"]
        job = json.loads(bundle.read("report.json"))
        assert job["task_id"] == report[0]["task_id"] and job["summary"] == {"total": 5, "ok": 5, "errors": 0}
        assert [r["output"] for r in job["results"]] == expected
        sizes = [Image.open(io.BytesIO(bundle.read(name))).size for name in expected]
        formats = {Image.open(io.BytesIO(bundle.read(name))).format for name in expected}
    assert sizes == [(40, 30), (33, 45), (20, 20), (20, 20), (20, 20)] and formats == {"PNG"}


def test_models_lists_the_manifest_with_statuses(served):
    rows = served.client.predict(api_name="/models")
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == set(served.engine.specs)
    for row in rows:
        assert set(row) >= {"name", "architecture", "image_size", "labels", "weights", "status", "reason"}
    assert by_name["tiny-cyclegan"]["status"] == "loaded"
    assert by_name["tiny-stargan"]["labels"] == list(HAIR)
    assert by_name["cyclegan-vintage"]["status"] in ("cached", "loaded")
    assert by_name["stargan-celeba-128"]["status"] == "downloadable"
    assert by_name["cyclegan-horse2zebra"]["status"] == "unavailable"
    reasons = " ".join(row["reason"] for row in rows)
    assert str(REPO) not in reasons and "site-packages" not in reasons  # server paths are scrubbed
    if by_name["cyclegan-vintage"]["status"] == "cached":  # loaded by an earlier test: then no reason is given
        assert by_name["cyclegan-vintage"]["reason"] == "weights at .../G_A2B_epoch33.pth"


def test_models_folder_models_are_listed_and_protect(served, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSHIELD_MODELS_DIR", str(served.models_dir))
    by_name = {row["name"]: row for row in served.client.predict(api_name="/models")}
    row = by_name["folder-stargan"]
    assert (row["status"], row["origin"], row["architecture"]) == ("cached", "models_dir", "stargan")
    assert row["labels"] == [f"label_{i}" for i in range(5)]
    _, _, _, metrics = served.client.predict(
        handle_file(photo_file(tmp_path / "in.png", 40, 36)), "folder-stargan", "pgd", EPSILON, 1, 0.01, 0, ["label_3"], api_name="/protect"
    )
    assert metrics["model"] == "folder-stargan" and metrics["targets"] == ["label_3"]
    assert_report(metrics)


def _error_of(served: Served, *args, api_name: str = "/protect") -> str:
    started = time.monotonic()
    with pytest.raises(AppError) as caught:
        served.client.submit(*args, api_name=api_name).result(timeout=ERROR_TIMEOUT_S)
    assert time.monotonic() - started < ERROR_TIMEOUT_S
    message = str(caught.value)
    assert "Traceback" not in message and "File \"" not in message
    return message


def test_bad_inputs_are_clear_errors_not_hangs(served, tmp_path):
    garbage = tmp_path / "holiday.png"
    garbage.write_bytes(b"this is not an image at all")
    good = photo_file(tmp_path / "ok.png", 32, 32)
    assert "holiday.png: not a recognised image format" in _error_of(served, handle_file(str(garbage)), "tiny-cyclegan", "pgd", EPSILON, 2, 0.01)
    assert "unknown model 'nope'" in _error_of(served, handle_file(str(good)), "nope", "pgd", EPSILON, 2, 0.01)
    assert "epsilon must be in" in _error_of(served, handle_file(str(good)), "tiny-cyclegan", "pgd", 0.9, 2, 0.01)
    assert "no target 'Bald'" in _error_of(served, handle_file(str(good)), "tiny-stargan", "pgd", EPSILON, 2, 0.01, None, ["Bald"])
    # Weights that would need a download: the request never downloads, it says where to load them.
    assert "load it in the Models tab" in _error_of(served, handle_file(str(good)), "stargan-celeba-128", "pgd", EPSILON, 2, 0.01)
    assert "holiday.png: not a recognised image format" in _error_of(served, [handle_file(str(garbage))], "tiny-cyclegan", "pgd", EPSILON, 2, 0.01, api_name="/protect_batch")
    # In a batch, a bad photo is reported by name and the others are still protected.
    gallery, _, report = served.client.predict(
        [handle_file(str(good)), handle_file(str(garbage))], "tiny-cyclegan", "pgd", EPSILON, 2, 0.01, api_name="/protect_batch"
    )
    assert len(gallery) == 1 and report[0]["output"] == "ok.png"
    assert report[1]["input"] == "holiday.png" and "holiday.png: not a recognised image format" in report[1]["error"]


def test_a_request_admitted_by_the_gradio_queue_waits_for_the_engine_instead_of_failing_busy(served, tmp_path):
    good = photo_file(tmp_path / "ok.png", 32, 32)
    with served.engine.admission():  # every slot taken and no waiting line of the engine's own (max_queue=0)
        job = served.client.submit(handle_file(str(good)), "tiny-cyclegan", "pgd", EPSILON, 2, 0.01, api_name="/protect")
        time.sleep(1.0)
        assert not job.done()  # it waits in its place: Gradio's queue (MAX_QUEUE_SIZE) bounds the line
    protected, *_ = job.result(timeout=ERROR_TIMEOUT_S)
    assert rgb(protected).shape == (32, 32, 3)


def test_the_ui_and_the_rest_api_share_one_rate_limit_per_client(make_engine, tmp_path):
    good = photo_file(tmp_path / "ok.png", 32, 32)
    settings = Settings(rate_limit_per_minute=3, default_model="tiny-cyclegan", log_level="WARNING")
    with running(build_app(make_engine(), settings)) as url:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"), analytics_enabled=False)
        for _ in range(2):
            client.predict(handle_file(str(good)), "tiny-cyclegan", "pgd", EPSILON, 1, 0.01, api_name="/protect")
        rest = httpx.post(f"{url.rstrip('/')}/api/v1/models/tiny-cyclegan/load", timeout=30)  # the third request of this client
        assert rest.status_code == 200, rest.text
        with pytest.raises(AppError) as caught:
            client.predict(handle_file(str(good)), "tiny-cyclegan", "pgd", EPSILON, 1, 0.01, api_name="/protect")
        assert "too many requests: at most 3 per minute per client" in str(caught.value) and "retry in" in str(caught.value)
        refused = httpx.post(f"{url.rstrip('/')}/api/v1/models/tiny-cyclegan/unload", timeout=30)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0


def test_progress_follows_the_attack_iterations(served, tmp_path):
    source = photo_file(tmp_path / "big.png", 256, 256)
    iterations = 120
    job = served.client.submit(handle_file(str(source)), "tiny-cyclegan", "pgd", EPSILON, iterations, 0.001, 0, [], api_name="/protect")
    seen: list[tuple[int, int]] = []
    while not job.done():
        status = job.status()
        for unit in status.progress_data or []:
            if unit.unit == "steps" and unit.index is not None and (not seen or seen[-1] != (unit.index, unit.length)):
                seen.append((unit.index, unit.length))
        time.sleep(0.02)
    metrics = job.result(timeout=60)[-1]
    assert seen, "no progress update reached the client"
    # the UI's default robust mode (framing) runs STEPS_PER_ITERATION sign steps per iteration asked for
    ran = iterations * framing.STEPS_PER_ITERATION
    assert metrics["robust"] == "framing" and metrics["steps"]["count"] == ran
    assert {length for _, length in seen} == {ran}
    steps = [index for index, _ in seen]
    assert steps == sorted(steps) and 1 <= steps[0] and steps[-1] <= ran


def test_a_request_cannot_name_a_server_file_as_its_input(served):
    """Gradio checks file inputs only when they carry `meta` and the app was launched, not
    mounted: the handlers accept nothing outside Gradio's upload folder themselves."""
    server_file = str(REPO / "examples" / "synthetic-portrait.png")
    for payload in ({"path": server_file}, {"path": server_file, "meta": {"_type": "gradio.FileData"}}):
        for api, value in (("protect", payload), ("protect_batch", [payload])):
            started = httpx.post(f"{served.url}gradio_api/call/{api}", json={"data": [value, "tiny-cyclegan", "pgd", EPSILON, 1, 0.01, 0, []]}, timeout=30)
            assert started.status_code == 200, started.text
            events = httpx.get(f"{served.url}gradio_api/call/{api}/{started.json()['event_id']}", timeout=60).text
            assert "event: error" in events and "event: complete" not in events, events[:500]


def test_ui_model_management_needs_the_admin_token_when_the_server_has_one(make_engine):
    engine = make_engine()
    handlers = ui.Handlers(engine, Settings(admin_token="tok"), jobs=None)
    for token in (None, "", "wrong"):
        with pytest.raises(gr.Error, match="admin token"):
            handlers.load("tiny-cyclegan", token, progress=lambda *_, **__: None)
        with pytest.raises(gr.Error, match="admin token"):
            handlers.unload("tiny-cyclegan", token)
    assert not engine.is_loaded("tiny-cyclegan")
    assert handlers.load("tiny-cyclegan", "tok", progress=lambda *_, **__: None).startswith("Loaded **tiny-cyclegan**")
    assert handlers.unload("tiny-cyclegan", "tok") == "Unloaded **tiny-cyclegan**."
    open_server = ui.Handlers(engine, Settings(), jobs=None)  # no token configured: open, as before
    assert open_server.load("tiny-cyclegan", None, progress=lambda *_, **__: None).startswith("Loaded")


def test_gradio_refuses_uploads_above_a_full_batch_zip(make_engine):
    settings = Settings(max_image_size_mb=0.05, max_batch_size=2, log_level="WARNING")  # a zip of two 50 kB photos at most
    limit = settings.max_batch_size * settings.max_image_bytes
    with running(build_app(make_engine(), settings)) as url:
        upload = f"{url.rstrip('/')}/gradio_api/upload"
        accepted = httpx.post(upload, files={"files": ("fits.zip", b"x" * (limit - 1024))}, timeout=30)
        refused = httpx.post(upload, files={"files": ("huge.zip", b"x" * (limit + 1024))}, timeout=30)
    assert accepted.status_code == 200, accepted.text
    assert refused.status_code == 413, refused.text


def test_protect_takes_face_numbers_last(served, tmp_path):
    """/protect's last parameter `faces` (issue 16): face numbers to protect; a photo with no face
    reports none whatever was chosen, and a value that is not a number is a clear error."""
    source = photo_file(tmp_path / "p.png", 40, 40, seed=3)
    *_, metrics = served.client.predict(
        handle_file(str(source)), "tiny-cyclegan", "pgd", EPSILON, 1, 0.01, 0, [], True, "off", False, 0, [0], api_name="/protect"
    )
    assert metrics["faces"] == [] and metrics["crop"] == "centre"
    error = _error_of(served, handle_file(str(source)), "tiny-cyclegan", "pgd", EPSILON, 1, 0.01, 0, [], True, "off", False, 0, "left")
    assert "face numbers" in error


def test_protect_batch_protects_the_chosen_face_numbers_in_every_photo(served, tmp_path, monkeypatch):
    """/protect_batch's last parameter `faces`: the same face numbers for each photo of the batch;
    the others are listed but left out, and a photo without that face number is that photo's error."""
    monkeypatch.setenv("DEEPSHIELD_MODELS_DIR", str(served.models_dir))  # tiny-face may have left the cache: reload from there
    two = tmp_path / "two.jpg"
    two.write_bytes((FACES / "face_008.jpg").read_bytes())
    one = tmp_path / "one.jpg"
    one.write_bytes((FACES / "face_001.jpg").read_bytes())
    _, _, report = served.client.predict(
        [handle_file(str(two)), handle_file(str(one))], "tiny-face", "pgd", EPSILON, 1, 0.01, 0, ["Male"], True, "off", False, 0, "1",
        api_name="/protect_batch",
    )
    assert [(f["index"], f["protected"]) for f in report[0]["faces"]] == [(0, False), (1, True)]
    assert "out of range" in report[1]["error"]  # face_001 has one face: that photo fails, the batch goes on


def test_the_protect_tab_shows_the_faces_found_and_ticks_each(make_engine):
    """On upload the Protect tab draws the faces found on the original and offers one ticked
    checkbox per face (value = the number /protect's `faces` takes); the metrics table lists
    each face with its box and score, protected or left out."""
    from tests.conftest import FACES

    handlers = ui.Handlers(make_engine(), Settings(), jobs=None)
    drawn, choice = handlers.faces_found(str(FACES / "face_009.jpg"))
    assert drawn.size == (1024, 538)  # shown at most 1024 px wide
    assert [value for _, value in choice["choices"]] == list(range(6)) and choice["value"] == list(range(6)) and choice["visible"]
    assert handlers.faces_found(None)[0] is None
    metrics = {"faces": [{"index": 0, "box": [1, 2, 30, 40], "score": 0.91, "protected": False},
                         {"index": 1, "box": [50, 2, 80, 40], "score": 0.88, "protected": True}]}
    rows = dict(ui.metrics_rows(metrics))
    assert rows["region protected"] == "1 of 2 faces: face 1"
    assert rows["face 0"] == "box [1, 2, 30, 40], score 0.91, left out" and rows["face 1"].endswith("protected")
