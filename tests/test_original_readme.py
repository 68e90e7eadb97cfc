"""The original service's README, replayed as written against the real server, with a models folder
in its layout (`models/stargan/200000-G.ckpt` + `config.json` ...) and its environment variables."""

from __future__ import annotations

import base64
import functools
import io
import re
import sys
import types
from pathlib import Path

import httpx
import pytest
from PIL import Image

import app as app_module
from deepshield.engine import Engine
from server.settings import Settings
from tests.conftest import REPO, SHARED, TINY_PARAMS, encoded, noise
from tests.original_layout import ORIGINAL_LAYOUT, save_state, write_original_layout
from tests.test_rest import wait_for

README = SHARED / "reference" / "original-service-README.md"
ORIGINAL_URL = "http://localhost:8000"
NO_REDIS = ("REDIS_URL", "CELERY_BROKER_URL")  # no Redis in this test: batch jobs run embedded (test_celery_jobs runs them on Redis)


def blocks(language: str) -> list[str]:
    """The README's fenced code blocks in `language`, in order."""
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def environment() -> dict[str, str]:
    """The "Environment Variables" block: NAME=value, comments dropped."""
    block = next(b for b in blocks("bash") if "SECRET_KEY=" in b)
    pairs = (line.split("#")[0].strip().partition("=") for line in block.splitlines())
    return {name: value for name, sep, value in pairs if sep}


def endpoints() -> list[tuple[str, str]]:
    """(method, path) of every endpoint the README lists."""
    return re.findall(r"^- `(GET|POST) (/[^`]*)`", README.read_text(encoding="utf-8"), flags=re.M)


@pytest.fixture
def original_server(serve, models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The server started as an original user would: their environment, `./models` in the
    original layout, `image.jpg` in the working directory."""
    write_original_layout(models_dir)
    monkeypatch.chdir(tmp_path)
    assert (tmp_path / "models") == models_dir
    Image.fromarray(noise(48, 40, seed=3)).save(tmp_path / "image.jpg", quality=95)
    for name, value in environment().items():
        if name not in NO_REDIS:
            monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert settings.preload_all and settings.max_image_dimension == 2048 and settings.max_batch_size == 10
    engine = Engine(device=settings.device, max_concurrent=settings.max_concurrent, max_queue=settings.max_queue_size)
    return serve(settings=settings, engine=engine)


def test_every_request_of_the_original_readme_works_as_written(original_server, tmp_path, monkeypatch):
    served = original_server
    shim = types.SimpleNamespace(post=functools.partial(httpx.post, timeout=120), get=functools.partial(httpx.get, timeout=120))
    monkeypatch.setitem(sys.modules, "requests", shim)  # the README uses requests; httpx takes the same calls
    single, batch = (code.replace(ORIGINAL_URL, served.base_url) for code in blocks("python")[:2])
    user = {"image_data1": base64.b64encode(encoded(Image.fromarray(noise(40, 40, seed=1)), "PNG")).decode(),
            "image_data2": base64.b64encode((tmp_path / "image.jpg").read_bytes()).decode()}

    exec(single, user)  # noqa: S102 - the README's own example
    assert user["response"].status_code == 200, user["response"].text
    assert Image.open(io.BytesIO(base64.b64decode(user["protected_image"]))).format == "JPEG"
    assert user["result"]["metrics"]["model"] == "stargan" and user["result"]["metrics"]["attack"] == "pgd"

    exec(batch, user)  # noqa: S102
    assert user["response"].status_code == 202, user["response"].text
    assert user["status_response"].status_code == 200
    status_url = f"/api/v1/protect/status/{user['task_id']}"
    wait_for(lambda: served.client.get(status_url).json()["status"] == "completed", 120)
    finished = served.client.get(status_url).json()
    assert [r["filename"] for r in finished["results"]] == ["image_1", "image_2"]
    assert all(r["status"] == "ok" and r["metrics"]["model"] == "stargan" and r["protected_image"] for r in finished["results"])

    for method, path in endpoints():
        url = path.replace("{task_id}", user["task_id"]).replace("{model_name}", "stargan")
        answer = served.client.request(method, url, json={"image": user["image_data1"], "model_type": "stargan"} if "protect/image" in url else
                                       {"images": [user["image_data1"]], "protection_config": {"model_type": "stargan"}} if "batch" in url else None)
        assert answer.status_code in (200, 202), f"{method} {url}: {answer.status_code} {answer.text[:300]}"
        if url.startswith("/api/v1/models/"):
            assert answer.json()["name"] == "stargan"
    for line in (line for block in blocks("bash") for line in block.splitlines() if line.startswith("curl ")):
        answer = served.client.get(line.split()[-1].replace(ORIGINAL_URL, ""))
        assert answer.status_code == 200, line


def test_the_original_models_folder_is_found(original_server):
    served = original_server
    rows = {row["name"]: row for row in served.client.get("/api/v1/models").json()}
    for folder, (filename, architecture, params, config) in ORIGINAL_LAYOUT.items():
        row = rows[folder]
        assert (row["architecture"], row["params"], row["status"], row["origin"]) == (architecture, params, "cached", "models_dir"), row
        assert row["image_size"] == 32 and row["weights"]["filename"] == filename
    assert rows["stargan"]["labels"] == ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]
    assert rows["ganimation"]["labels"] == [f"label_{i}" for i in range(17)]  # no labels in config.json: one-hot per condition value
    assert rows["cyclegan"]["description"] == "horse to zebra"
    for model_type in ORIGINAL_LAYOUT:
        body = {"image": base64.b64encode((Path.cwd() / "image.jpg").read_bytes()).decode(), "model_type": model_type,
                "attack_params": {"iterations": 1, "seed": 0}, "return_deepfakes": False}
        answer = served.client.post("/api/v1/protect/image", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["metrics"]["model"] == model_type


def test_batch_takes_both_shapes_and_answers_synchronously(original_server):
    served = original_server
    photo = base64.b64encode((Path.cwd() / "image.jpg").read_bytes()).decode()
    options = {"model_type": "cyclegan", "attack_params": {"iterations": 1, "seed": 0}, "return_deepfakes": False}
    answer = served.client.post("/api/v1/protect/batch", json={
        "images": [photo, {"filename": "mine.jpg", "image": photo}, "not base64!"], "protection_config": options, "async_processing": False})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "completed" and body["progress"] == {"done": 3, "total": 3} and body["processing_time"] > 0
    ok, named, bad = body["results"]
    assert (ok["filename"], ok["status"], named["filename"], named["status"]) == ("image_1", "ok", "mine.jpg", "ok")
    assert Image.open(io.BytesIO(base64.b64decode(named["protected_image"]))).size == (48, 40)
    assert named["metrics"]["model"] == "cyclegan" and (bad["status"], bad["error"]) == ("error", "invalid_image")
    top_level = served.client.post("/api/v1/protect/batch", json={"images": [photo], **options})
    assert top_level.status_code == 202 and top_level.json()["task_id"]
    both = served.client.post("/api/v1/protect/batch", json={"images": [photo], "model_type": "cyclegan", "protection_config": options})
    assert both.status_code == 422 and "not both" in both.json()["message"]


def exported() -> dict[str, str]:
    """The README's `export NAME=value` lines (troubleshooting and tuning)."""
    lines = (line.split("#")[0].strip() for block in blocks("bash") for line in block.splitlines())
    return dict(line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export "))


def test_every_original_variable_is_documented_and_read(monkeypatch):
    names = {**environment(), **exported()}
    assert {"CACHE_MODELS", "WORKERS", "PRELOAD_MODELS", "SECRET_KEY", "BATCH_TIMEOUT_SECONDS"} <= set(names)
    ours = (REPO / "README.md").read_text(encoding="utf-8")
    assert [name for name in names if f"`{name}`" not in ours] == []
    for name, value in names.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert (settings.max_batch_size, settings.cache_models, settings.preload_all, settings.preload_models) == (2, False, False, [])
    assert (settings.max_image_size_mb, settings.max_image_dimension, settings.batch_timeout_seconds) == (5, 1024, 300)
    assert settings.supported_formats == ("jpeg", "png", "webp") and settings.log_level == "INFO"
    assert app_module.create_engine(settings).max_loaded == 1  # CACHE_MODELS=false: one model in memory at a time
    monkeypatch.delenv("LOG_LEVEL")
    monkeypatch.setenv("DEBUG", "true")
    monkeypatch.setenv("PRELOAD_MODELS", "stargan, tiny-cyclegan")
    settings = Settings.from_env()
    assert settings.log_level == "DEBUG" and settings.preload_models == ["stargan", "tiny-cyclegan"] and not settings.preload_all
    for name, bad in (("CACHE_MODELS", "maybe"), ("SUPPORTED_FORMATS", "jpeg,svg"), ("BATCH_TIMEOUT_SECONDS", "soon")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=name):
            Settings.from_env()
        monkeypatch.delenv(name)


@pytest.mark.parametrize("value", ["true", "false", "stargan"])
def test_preload_models_true_loads_every_model_on_the_server(make_engine, models_dir, monkeypatch, value):
    save_state(models_dir / "stargan" / "200000-G.ckpt", "stargan", TINY_PARAMS["stargan"], seed=0)
    monkeypatch.setenv("PRELOAD_MODELS", value)
    engine = make_engine()
    app_module.preload(engine, Settings.from_env()).join(timeout=60)
    loaded = {name for name in engine.specs if engine.is_loaded(name)}
    expected = {"true": {"tiny-cyclegan", "tiny-stargan", "stargan"}, "false": set(), "stargan": {"stargan"}}[value]
    assert loaded == expected  # `true`: what is on the server (not tiny-missing, not the Hub's tiny-hub)


def test_supported_formats_refuse_other_images(serve):
    served = serve(Settings(default_model="tiny-cyclegan", supported_formats=("jpeg", "png")))
    gif = base64.b64encode(encoded(Image.fromarray(noise(32, 32)), "GIF")).decode()
    refused = served.client.post("/api/v1/protect/image", json={"image": gif})
    assert refused.status_code == 415 and "GIF" in refused.json()["message"] and "jpeg, png" in refused.json()["message"]
