"""The REST API, /health, /metrics, docs and CORS against a real uvicorn server on loopback.

Each test builds its own app (FastAPI + observability.install + rest.create_router, as app.py
does minus the Gradio mount) around an engine of tiny generators, serves it with uvicorn in a
thread and talks to it with httpx. Every response of every test is checked for stack traces
and server paths when the test ends.
"""

from __future__ import annotations

import base64
import io
import json
import math
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

import app as app_module
from deepshield import attacks
from deepshield.engine import Engine
from deepshield.robustness import ROBUSTNESS_KEYS
from server import service
from server.ratelimit import SlidingWindowLimiter
from server.settings import Settings
from bench.copies import Sharing
from tests.conftest import (
    HAIR,
    REPO,
    Served,
    dev_photo,
    encoded,
)

FAST = {"attack_params": {"iterations": 2, "seed": 0}}  # keeps tiny-model attacks in milliseconds
LEVELS = math.floor(0.05 * 127.5)  # the default budget in 8-bit levels


# ------------------------------------------------------------------------------------ helpers
# (the `serve` and `make_engine` fixtures live in conftest.py)


def png(width: int = 40, height: int = 30, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def protect(served: Served, image: str | None = None, **fields: Any) -> httpx.Response:
    body = {"image": image if image is not None else b64(png()), **FAST, **fields}
    return served.client.post("/api/v1/protect/image", json=body)


def raw_post_status(served: Served, path: str, *, declared: int, sent: bytes) -> int:
    """POST with a Content-Length of `declared` bytes but send only `sent`: a server that waited
    for the body would hang; one that checks the header answers at once."""
    host, port = served.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
        conn.sendall(head.encode() + sent)
        status_line = conn.makefile("rb").readline().decode()
    return int(status_line.split()[1])


def assert_error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == kind and body["message"], body
    return body


def wait_for(task: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not task():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def held_slot(engine: Engine) -> tuple[threading.Event, threading.Thread]:
    """Occupy the engine's only slot from another thread until the returned event is set."""
    release, holding = threading.Event(), threading.Event()

    def hold() -> None:
        with engine.admission():
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert holding.wait(5)
    return release, thread


# ------------------------------------------------------------------------------------ protect/image


def test_protect_image_returns_the_file_its_metrics_and_the_deepfakes(serve):
    served = serve()
    source = png(40, 30)
    response = protect(served, b64(source))
    assert response.status_code == 200, response.text
    body = response.json()
    protected = unb64(body["protected_image"])
    assert protected.format == "PNG" and protected.size == (40, 30) and body["mime_type"] == "image/png"
    diff = np.abs(np.asarray(protected.convert("RGB"), dtype=int) - np.asarray(Image.open(io.BytesIO(source)), dtype=int))
    assert 0 < diff.max() <= LEVELS
    metrics = body["metrics"]
    assert metrics["model"] == "tiny-cyclegan" and metrics["attack"] == "pgd" and metrics["seed"] == 0 and metrics["iterations"] == 2
    assert metrics["perturbation"]["linf"] == pytest.approx(diff.max() / 127.5)
    assert set(metrics["disruption"]) >= {"mse", "l1", "disrupted"} and metrics["output_format"] == "PNG"
    assert unb64(body["deepfake_original"]).size == unb64(body["deepfake_protected"]).size == (32, 32)
    assert body["processing_time"] >= metrics["seconds"] > 0


def test_jpeg_output_is_remeasured_on_the_jpeg_file(serve):
    served = serve()
    source = png(32, 32, seed=4)
    body = protect(served, b64(source), output_format="JPEG", return_deepfakes=False).json()
    written = unb64(body["protected_image"])
    assert written.format == "JPEG" and body["mime_type"] == "image/jpeg"
    diff = np.abs(np.asarray(written.convert("RGB"), dtype=int) - np.asarray(Image.open(io.BytesIO(source)), dtype=int))
    assert body["metrics"]["perturbation"]["linf"] == pytest.approx(diff.max() / 127.5)
    assert body["metrics"]["output_format"] == "JPEG"
    assert body["deepfake_original"] is None and body["deepfake_protected"] is None


def test_data_url_architecture_alias_and_targets(serve):
    served = serve()
    body = protect(served, "data:image/png;base64," + b64(png()), model_type="stargan", attack_params={"iterations": 1, "targets": ["Male"]}).json()
    assert body["metrics"]["model"] == "tiny-stargan"  # first stargan entry of the manifest
    assert list(body["metrics"]["disruption"]["per_target"]) == ["Male"]
    assert protect(served, model_type="CycleGAN").json()["metrics"]["model"] == "tiny-cyclegan"
    assert_error(protect(served, model_type="stargan", attack_params={"targets": ["Bald"]}), 422, "invalid_parameter")


def test_issue4_options_strength_faces_robust_report_and_ssim_floor(serve):
    served = serve()
    params = {"iterations": 2, "seed": 0, "strength": "high", "detect_faces": False, "robust": "eot", "check_robustness": True, "ssim_floor": 0.999}
    metrics = protect(served, attack_params=params).json()["metrics"]
    assert (metrics["epsilon"], metrics["strength"], metrics["robust"]) == (0.1, "high", "eot")
    assert list(metrics["robustness"]) == ["jpeg90", "jpeg75", "jpeg50", "resize50", "blur1", "shift", "framings"]
    assert all(isinstance(metrics["robustness"][k]["mse"], float) and isinstance(metrics["robustness"][k]["disrupted"], bool) for k in ROBUSTNESS_KEYS)
    assert metrics["perturbation"]["ssim"] >= 0.999 and metrics["perceptual"]["ssim_floor"] == 0.999
    assert metrics["faces"] == [] and metrics["crop"] == "centre"
    both = protect(served, attack_params={"epsilon": 0.05, "strength": "low"})
    assert "not both" in assert_error(both, 422, "invalid_request")["message"]
    assert_error(protect(served, attack_params={"robust": "magic"}), 422, "invalid_request")
    assert_error(protect(served, attack_params={"ssim_floor": 1.2}), 422, "invalid_request")


def test_framing_protects_the_whole_photo_over_rest(serve):
    served = serve()
    wide = b64(png(64, 32))  # plain PGD perturbs only its centred 32x32 square
    params = {"iterations": 2, "seed": 0, "robust": "framing", "check_robustness": True}
    metrics = protect(served, wide, attack_params=params).json()["metrics"]
    assert metrics["robust"] == "framing" and metrics["perturbation"]["area"] > 0.9
    framings = metrics["robustness"]["framings"]
    assert framings["views"] == 8 and 0 <= framings["share_disrupted"] <= 1 and 0 <= framings["jpeg75"]["share_disrupted"] <= 1
    plain = protect(served, wide, attack_params={"iterations": 2, "seed": 0}).json()["metrics"]
    assert plain["perturbation"]["area"] <= 0.5 + 1e-9


def test_verify_compares_the_shared_copy_per_model(serve):
    """A turned, downscaled, recompressed copy is located and judged; copies that cannot be
    located are 422s that say why."""
    served = serve()
    source = encoded(dev_photo(width=160), "PNG")
    body = protect(served, b64(source), attack_params={"iterations": 3, "seed": 0, "epsilon": 0.1}).json()
    shared = Sharing(box=(10, 10, 150, 110), rotation=270, scale=0.75, quality=85).apply(unb64(body["protected_image"]))
    response = served.client.post("/api/v1/verify", json={"original": b64(source), "shared": b64(shared), "models": ["tiny-cyclegan"]})
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["shared"]["width"], report["shared"]["jpeg_quality"], report["scale"]) == (75, 85, 0.75)
    assert report["located"] == {"box": [10, 10, 150, 110], "scale": 0.75, "mirrored": False, "rotation": 270, "border": [0, 0, 0, 0]}
    (entry,) = report["models"]
    assert entry["model"] == "tiny-cyclegan" and report["protected"] is entry["disrupted"]
    assert unb64(entry["deepfake_baseline"]).size == unb64(entry["deepfake_shared"]).size == (32, 32)
    another = served.client.post("/api/v1/verify", json={"original": b64(source), "shared": b64(encoded(dev_photo("face_009.jpg", width=240), "PNG"))})
    assert "does not show a part of original" in assert_error(another, 422, "copy_not_this_photo")["message"]
    tiny = served.client.post("/api/v1/verify", json={"original": b64(source), "shared": b64(encoded(dev_photo(width=24), "PNG"))})
    assert "too small to locate" in assert_error(tiny, 422, "copy_too_small")["message"]
    assert_error(served.client.post("/api/v1/verify", json={"original": b64(source), "shared": b64(source), "models": ["nope"]}), 404, "unknown_model")
    assert_error(served.client.post("/api/v1/verify", json={"original": b64(source), "shared": b64(source), "models": ["tiny-hub"]}), 409, "model_not_ready")


def test_verify_takes_two_photos_at_the_upload_limit(serve):
    served = serve(Settings(default_model="tiny-cyclegan", max_image_size_mb=1))
    photo = png(600, 500, seed=3)  # random pixels: about 900 kB, so the body is about 2.4 MB of base64
    assert 800_000 < len(photo) < 2**20
    body = {"original": b64(photo), "shared": b64(photo), "models": ["tiny-cyclegan"], "return_deepfakes": False}
    response = served.client.post("/api/v1/verify", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["models"][0]["mse"] == 0  # the same file: nothing changed
    too_big = {**body, "shared": b64(png(700, 600, seed=4))}  # above MAX_IMAGE_SIZE_MB
    assert "above the limit of 1 MB" in assert_error(served.client.post("/api/v1/verify", json=too_big), 413, "image_too_large")["message"]


@pytest.mark.parametrize(
    ("method", "random_start", "ran"),
    [("ifgsm", True, "pgd"), ("pgd", False, "ifgsm"), ("ifgsm", None, "ifgsm"), ("I-FGSM", None, "ifgsm"), ("fgsm", False, "fgsm")],
)
def test_random_start_picks_the_iterative_variant(serve, method, random_start, ran):
    served = serve()
    params = {"iterations": 2, "seed": 0} | ({} if random_start is None else {"random_start": random_start})
    metrics = protect(served, attack_method=method, attack_params=params).json()["metrics"]
    assert metrics["attack"] == ran and metrics["random_start"] is (ran == "pgd")


def test_bad_requests_get_json_errors_without_echoing_the_input(serve):
    served = serve()
    assert "base64" in assert_error(protect(served, "not base64!!"), 400, "invalid_image")["message"]
    assert "image format" in assert_error(protect(served, b64(b"hello, I am not an image")), 400, "invalid_image")["message"]
    assert_error(protect(served, "data:image/png," + b64(png())), 400, "invalid_image")
    secret = b64(png(8, 8, seed=9))
    big_epsilon = assert_error(protect(served, secret, attack_params={"epsilon": 0.9}), 422, "invalid_request")
    assert big_epsilon["details"][0]["field"] == "attack_params.epsilon" and "0.5" in big_epsilon["message"]
    assert secret[:40] not in json.dumps(big_epsilon)  # FastAPI's default 422 would echo the whole input
    assert_error(protect(served, attack_params={"iterations": 0}), 422, "invalid_request")
    assert_error(protect(served, attack_method="deepfool"), 422, "invalid_request")
    assert "random start" in assert_error(protect(served, attack_method="fgsm", attack_params={"random_start": True}), 422, "invalid_request")["message"]
    assert_error(protect(served, output_format="gif"), 422, "invalid_request")
    missing = served.client.post("/api/v1/protect/image", json={"model_type": "tiny-cyclegan"})
    assert assert_error(missing, 422, "invalid_request")["details"][0]["field"] == "image"
    garbled = served.client.post("/api/v1/protect/image", content=b'{"image": ', headers={"content-type": "application/json"})
    assert "JSON" in assert_error(garbled, 422, "invalid_request")["message"]
    unknown = assert_error(protect(served, model_type="stylegan9"), 404, "unknown_model")
    assert "tiny-cyclegan" in unknown["message"]


def test_unexpected_errors_are_a_generic_500_and_logged(serve, monkeypatch, caplog):
    served = serve()

    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("kaboom in /srv/secret/checkpoints")

    monkeypatch.setattr(served.engine, "protect", explode)
    body = assert_error(protect(served), 500, "internal_error")
    assert "kaboom" not in json.dumps(body) and "/srv" not in json.dumps(body)
    assert any("unhandled error" in r.getMessage() and r.exc_info for r in caplog.records)


# ------------------------------------------------------------------------------------ limits


def test_body_over_the_size_limit_is_refused_before_decoding(serve, monkeypatch):
    served = serve(Settings(default_model="tiny-cyclegan", max_image_size_mb=0.05))  # 52 KB per image
    decoded = []
    real_decode = service.decode_image
    monkeypatch.setattr(service, "decode_image", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    huge = "A" * 200_000
    assert_error(protect(served, huge), 413, "payload_too_large")
    chunked = served.client.post(
        "/api/v1/protect/image", content=iter([b'{"image": "', b"A" * 100_000, b"A" * 100_000, b'"}']), headers={"content-type": "application/json"}
    )
    assert chunked.request.headers["transfer-encoding"] == "chunked" and "content-length" not in chunked.request.headers
    assert_error(chunked, 413, "payload_too_large")
    batch = served.client.post("/api/v1/protect/batch", json={"images": [{"image": huge}] * 20})
    assert_error(batch, 413, "payload_too_large")
    assert decoded == []
    assert raw_post_status(served, "/api/v1/protect/image", declared=10_000_000, sent=b'{"image": "') == 413  # the header alone decides
    # Within the body budget but more than 52 KB once decoded: refused before the image is opened.
    noise = np.random.default_rng(0).integers(0, 256, 60_000, dtype=np.uint8).tobytes()
    assert "MB" in assert_error(protect(served, b64(noise)), 413, "image_too_large")["message"]


def test_dimensions_are_checked_from_the_header_before_the_engine(serve, monkeypatch):
    served = serve(Settings(default_model="tiny-cyclegan", max_image_dimension=64))
    calls = []
    monkeypatch.setattr(served.engine, "protect", lambda *a, **k: calls.append(1))
    body = assert_error(protect(served, b64(png(100, 20))), 413, "image_too_large")
    assert "100x20" in body["message"] and "64" in body["message"]
    assert calls == []


def test_rate_limit_answers_429_with_retry_after(serve):
    served = serve(Settings(default_model="tiny-cyclegan", rate_limit_per_minute=3))
    for _ in range(3):
        assert_error(protect(served, "!!"), 400, "invalid_image")  # cheap requests count too
    limited = assert_error(protect(served, "!!"), 429, "rate_limited")
    assert 1 <= int(served.client.post("/api/v1/protect/image", json={}).headers["retry-after"]) <= 60
    assert "3 per minute" in limited["message"]
    assert_error(served.client.post("/api/v1/protect/batch", json={}), 429, "rate_limited")
    assert served.client.get("/health").status_code == 200  # GETs are never limited
    assert_error(served.client.get("/api/v1/protect/status/nope"), 404, "unknown_task")


def test_rate_limit_zero_is_off(serve):
    served = serve(Settings(default_model="tiny-cyclegan", rate_limit_per_minute=0))
    assert all(protect(served, "!!").status_code == 400 for _ in range(8))


def test_busy_server_answers_503_with_retry_after(serve, make_engine):
    served = serve(engine=make_engine(max_concurrent=1, max_queue=0))
    release, holder = held_slot(served.engine)
    try:
        busy = protect(served)
        assert_error(busy, 503, "server_busy")
        assert int(busy.headers["retry-after"]) > 0
    finally:
        release.set()
        holder.join()
    assert protect(served).status_code == 200


def test_health_answers_while_a_protection_waits_for_a_slot(serve, make_engine):
    served = serve(engine=make_engine(max_concurrent=1, max_queue=4))
    release, holder = held_slot(served.engine)
    outcome: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: outcome.append(protect(served)))
    waiting.start()
    try:
        wait_for(lambda: served.engine.queue_depth == 1)
        started = time.perf_counter()
        health = served.client.get("/api/v1/health").json()
        assert time.perf_counter() - started < 2
        assert health["queue"]["depth"] == 1 and health["queue"]["running"] == 1
        assert "deepshield_queue_depth 1.0" in served.client.get("/metrics").text
    finally:
        release.set()
        holder.join()
    waiting.join(30)
    assert outcome and outcome[0].status_code == 200


def test_missing_weights_say_what_to_do(serve):
    served = serve()
    hub = assert_error(protect(served, model_type="tiny-hub"), 409, "model_not_ready")
    assert "POST /api/v1/models/tiny-hub/load first" in hub["message"]
    local = assert_error(protect(served, model_type="tiny-missing"), 409, "model_not_ready")
    assert "not-here.pth" in local["message"]
    assert_error(served.client.post("/api/v1/protect/batch", json={"images": [{"image": b64(png())}], "model_type": "tiny-missing"}), 409, "model_not_ready")
    failed_load = assert_error(served.client.post("/api/v1/models/tiny-missing/load"), 503, "weights_unavailable")
    assert "not-here.pth" in failed_load["message"]


def test_sliding_window_frees_a_slot_when_the_oldest_hit_leaves_it():
    now = [1000.0]
    limiter = SlidingWindowLimiter(2, window=60, clock=lambda: now[0])
    assert limiter.hit("a") is None
    now[0] += 20
    assert limiter.hit("a") is None and limiter.hit("b") is None  # clients are counted apart
    assert limiter.hit("a") == 40  # the first hit leaves the window 40 s from now
    now[0] += 40
    assert limiter.hit("a") is None and limiter.hit("a") == 20


# ------------------------------------------------------------------------------------ batch


def test_batch_job_runs_to_completion_with_per_image_results(serve):
    served = serve()
    images = [
        {"filename": "a.png", "image": b64(png(40, 30, seed=1))},
        {"filename": "broken.png", "image": "%%%"},
        {"filename": "b.png", "image": b64(png(24, 36, seed=2))},
        {"filename": "text.png", "image": b64(b"plain text")},
    ]
    accepted = served.client.post("/api/v1/protect/batch", json={"images": images, **FAST, "return_deepfakes": False})
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert job["status"] == "queued" and job["total"] == 4 and job["status_url"].endswith(job["task_id"])
    status: dict[str, Any] = {}

    def finished() -> bool:
        status.update(served.client.get(job["status_url"]).json())
        return status["status"] in ("completed", "failed")

    wait_for(finished)
    assert status["status"] == "completed" and status["progress"] == {"done": 4, "total": 4}
    results = status["results"]
    assert [r["filename"] for r in results] == ["a.png", "broken.png", "b.png", "text.png"]
    assert [r["status"] for r in results] == ["ok", "error", "ok", "error"]
    assert unb64(results[0]["protected_image"]).size == (40, 30) and unb64(results[2]["protected_image"]).size == (24, 36)
    assert results[0]["metrics"]["input"] == "a.png" and results[0]["metrics"]["perturbation"]["linf"] <= 0.05
    assert results[1]["error"] == "invalid_image" and "base64" in results[1]["message"]
    assert results[3]["error"] == "invalid_image" and "text.png" in results[3]["message"]
    assert "deepfake_original" not in results[0] or results[0]["deepfake_original"] is None
    assert_error(served.client.get("/api/v1/protect/status/0123456789abcdef"), 404, "unknown_task")


def test_batch_limits_and_an_all_failed_job(serve):
    served = serve(Settings(default_model="tiny-cyclegan", max_batch_size=2))
    three = [{"image": b64(png())}] * 3
    assert "at most 2" in assert_error(served.client.post("/api/v1/protect/batch", json={"images": three}), 422, "invalid_request")["message"]
    assert_error(served.client.post("/api/v1/protect/batch", json={"images": []}), 422, "invalid_request")
    task = served.client.post("/api/v1/protect/batch", json={"images": [{"image": "??"}]}).json()["task_id"]
    wait_for(lambda: served.client.get(f"/api/v1/protect/status/{task}").json()["status"] in ("completed", "failed"))
    assert served.client.get(f"/api/v1/protect/status/{task}").json()["status"] == "failed"


# ------------------------------------------------------------------------------------ models, config, health


def test_models_list_load_and_unload(serve):
    served = serve()
    rows = {row["name"]: row for row in served.client.get("/api/v1/models").json()}
    assert rows["tiny-cyclegan"]["status"] == "cached" and rows["tiny-hub"]["status"] == "downloadable"
    assert rows["tiny-missing"]["status"] == "unavailable" and rows["tiny-stargan"]["labels"] == list(HAIR)
    loaded = served.client.post("/api/v1/models/tiny-cyclegan/load")
    assert loaded.status_code == 200 and loaded.json()["status"] == "loaded" and loaded.json()["num_parameters"] > 0
    assert {r["name"]: r["status"] for r in served.client.get("/api/v1/models").json()}["tiny-cyclegan"] == "loaded"
    assert served.client.get("/health").json()["models_loaded"] == ["tiny-cyclegan"]
    assert served.client.post("/api/v1/models/tiny-cyclegan/unload").json() == {"name": "tiny-cyclegan", "unloaded": True, "status": "cached"}
    assert served.client.get("/health").json()["models_loaded"] == []
    assert_error(served.client.post("/api/v1/models/nope/load"), 404, "unknown_model")
    assert_error(served.client.post("/api/v1/models/nope/unload"), 404, "unknown_model")


def test_model_management_needs_the_admin_token_when_the_server_has_one(serve):
    served = serve(Settings(default_model="tiny-cyclegan", admin_token="s3cret-token"))
    missing = assert_error(served.client.post("/api/v1/models/tiny-cyclegan/load"), 401, "unauthorized")
    assert "Authorization: Bearer" in missing["message"]
    wrong = {"Authorization": "Bearer guess"}
    assert_error(served.client.post("/api/v1/models/tiny-cyclegan/load", headers=wrong), 403, "forbidden")
    assert_error(served.client.post("/api/v1/models/tiny-cyclegan/unload", headers=wrong), 403, "forbidden")
    assert served.client.get("/health").json()["models_loaded"] == []
    right = {"Authorization": "Bearer s3cret-token"}
    assert served.client.post("/api/v1/models/tiny-cyclegan/load", headers=right).json()["status"] == "loaded"
    assert served.client.post("/api/v1/models/tiny-cyclegan/unload", headers=right).json()["unloaded"] is True
    health = served.client.get("/health").text
    assert "s3cret-token" not in health and '"model_management":"admin token"' in health


def test_attack_methods_config(serve):
    config = serve().client.get("/api/v1/config/attack-methods").json()
    methods = {m["name"]: m for m in config["methods"]}
    assert list(methods) == list(attacks.ATTACKS) and config["default"] == "pgd"
    epsilon = methods["pgd"]["parameters"]["epsilon"]
    assert (epsilon["min_exclusive"], epsilon["max"], epsilon["default"]) == (*attacks.EPSILON_RANGE, 0.05)
    assert methods["ifgsm"]["parameters"]["iterations"] == {"min": 1, "max": attacks.MAX_ITERATIONS, "default": 10}
    assert methods["pgd"]["random_start"] and not methods["ifgsm"]["random_start"]
    assert all(m["description"] for m in methods.values())
    assert config["strengths"]["low"] == {"epsilon": 0.02, "epsilon_255": 2.55}
    assert set(config["robust"]) == {"off", "eot", "spread-spectrum", "framing"}


def test_health_reports_version_device_queue_limits_and_uptime(serve):
    settings = Settings(default_model="tiny-cyclegan", max_batch_size=5, rate_limit_per_minute=7)
    served = serve(settings)
    for path in ("/health", "/api/v1/health"):
        health = served.client.get(path).json()
        assert health["status"] == "ok" and health["version"] == "0.1.0" and health["device"] == "cpu"
        assert health["limits"] == settings.public() and health["models_loaded"] == []
        assert health["queue"] == {"depth": 0, "running": 0, "max_concurrent": 1, "max_queue": 16, "batch_jobs_waiting": 0, "batch_backend": "embedded"}
        assert health["uptime_seconds"] >= 0


def test_prometheus_metrics_count_requests_and_attacks(serve):
    served = serve()
    served.client.get("/api/v1/health")
    served.client.get("/api/v1/protect/status/abc")
    assert protect(served).status_code == 200
    text = served.client.get("/metrics").text
    assert 'deepshield_http_requests_total{method="GET",path="/api/v1/health",status="200"} 1.0' in text
    assert 'deepshield_http_requests_total{method="GET",path="/api/v1/protect/status/{task_id}",status="404"} 1.0' in text
    assert 'deepshield_attack_seconds_count{attack="pgd",model="tiny-cyclegan"} 1.0' in text
    assert 'deepshield_http_request_duration_seconds_count{method="POST",path="/api/v1/protect/image"} 1.0' in text
    assert 'deepshield_model_loaded{model="tiny-cyclegan"} 1.0' in text and "deepshield_running 0.0" in text


def test_request_logs_are_json_lines(serve, capsys):
    served = serve()
    served.client.get("/api/v1/health", headers={"user-agent": "test"})
    time.sleep(0.05)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    (entry,) = [e for e in lines if e.get("logger") == "server.access" and e.get("path") == "/api/v1/health"]
    assert entry["method"] == "GET" and entry["status"] == 200 and entry["client"] == "127.0.0.1"
    assert entry["level"] == "INFO" and entry["duration_ms"] >= 0 and entry["time"].endswith("+00:00")


# ------------------------------------------------------------------------------------ docs, CORS


def test_docs_redoc_and_openapi_describe_every_field(serve):
    served = serve()
    assert "swagger-ui" in served.client.get("/docs").text
    assert "redoc" in served.client.get("/redoc").text.lower()
    schema = served.client.get("/openapi.json").json()
    for path in ("/api/v1/protect/image", "/api/v1/protect/batch", "/api/v1/protect/status/{task_id}", "/api/v1/models",
                 "/api/v1/models/{name}/load", "/api/v1/models/{name}/unload", "/api/v1/config/attack-methods", "/api/v1/health", "/health"):
        assert path in schema["paths"], path
    components = schema["components"]["schemas"]
    for model in ("ProtectImageRequest", "ProtectBatchRequest", "AttackParams", "BatchImage", "ProtectImageResponse"):
        properties = components[model]["properties"]
        undocumented = [name for name, prop in properties.items() if not prop.get("description")]
        assert properties and undocumented == [], (model, undocumented)
    assert "random_start" in components["AttackParams"]["properties"]
    assert "429" in schema["paths"]["/api/v1/protect/image"]["post"]["responses"]


def test_cors_only_for_allowed_origins(serve, make_engine):
    served = serve(Settings(default_model="tiny-cyclegan", allowed_origins=["https://ok.example"]))
    allowed = served.client.get("/api/v1/health", headers={"origin": "https://ok.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://ok.example"
    other = served.client.get("/api/v1/health", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    preflight = served.client.options(
        "/api/v1/protect/image", headers={"origin": "https://ok.example", "access-control-request-method": "POST", "access-control-request-headers": "content-type"}
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "https://ok.example"
    closed = serve(engine=make_engine())  # no ALLOWED_ORIGINS: no CORS headers at all
    assert "access-control-allow-origin" not in closed.client.get("/health", headers={"origin": "https://ok.example"}).headers


def test_no_cross_origin_access_to_the_gradio_routes_either(serve, make_engine):
    settings, engine = Settings(default_model="tiny-cyclegan"), make_engine()
    served = serve(settings, engine, app_module.create_app(settings, engine))
    evil = {"origin": "https://evil.example"}
    for path in ("/config", "/gradio_api/info", "/api/v1/health"):
        response = served.client.get(path, headers=evil)
        assert response.status_code == 200 and "access-control-allow-origin" not in response.headers, path
    preflight = served.client.options("/gradio_api/queue/join", headers={**evil, "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers and preflight.status_code == 400


# ------------------------------------------------------------------------------------ real model and the full app


@pytest.mark.heavy
def test_real_cyclegan_vintage_protection_disrupts(serve):
    served = serve(Settings(), engine=Engine(device="cpu"))  # the real manifest; default model cyclegan-vintage
    source = (REPO / "examples" / "synthetic-portrait.png").read_bytes()
    response = served.client.post("/api/v1/protect/image", json={"image": b64(source), "attack_params": {"seed": 0}, "return_deepfakes": False})
    assert response.status_code == 200, response.text
    body = response.json()
    written = np.asarray(unb64(body["protected_image"]).convert("RGB"), dtype=int)
    original = np.asarray(Image.open(io.BytesIO(source)).convert("RGB"), dtype=int)
    assert written.shape == original.shape and np.abs(written - original).max() <= LEVELS
    assert body["metrics"]["model"] == "cyclegan-vintage" and body["metrics"]["disruption"]["disrupted"] is True


def test_full_app_serves_the_api_beside_the_ui(serve, make_engine):
    settings = Settings(default_model="tiny-cyclegan")
    engine = make_engine()
    served = serve(settings, engine, app_module.create_app(settings, engine))
    assert served.client.get("/health").json()["status"] == "ok"
    assert protect(served).status_code == 200
    assert_error(protect(served, attack_params={"epsilon": 2}), 422, "invalid_request")
    assert "deepshield_http_requests_total" in served.client.get("/metrics").text
    assert served.client.get("/").status_code == 200


def test_unknown_api_paths_get_a_json_404(serve):
    served = serve()
    for method, path in (("GET", "/api/v1/nope"), ("POST", "/api/v1/protect/nothing"), ("DELETE", "/api/v1/models/x/y")):
        response = served.client.request(method, path)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"] == "not_found" and "/docs" in response.json()["message"]


def test_faces_chooses_the_faces_to_protect_over_rest(serve, models_dir):
    """attack_params.faces = [0]: the report lists both faces of a two-person photo with box,
    landmarks and score, and only face 0 is protected; a number out of range is a 422."""
    from deepshield.faces import LANDMARKS
    from tests.conftest import FACES, TINY_PARAMS, make_spec, tiny_models

    spec = make_spec("tiny-face", "stargan", TINY_PARAMS["stargan"], fmt="official", filename="tiny-stargan.safetensors",
                     targets=HAIR, face_crop={"margin": 0.245, "shift_y": -0.126})
    served = serve(engine=Engine({**tiny_models(models_dir), "tiny-face": spec}, device="cpu"))
    image = b64((FACES / "face_008.jpg").read_bytes())
    params = {"iterations": 1, "seed": 0, "targets": ["Male"], "faces": [0]}
    metrics = protect(served, image, model_type="tiny-face", attack_params=params).json()["metrics"]
    assert [(f["index"], f["protected"]) for f in metrics["faces"]] == [(0, True), (1, False)]
    assert all(list(f["landmarks"]) == list(LANDMARKS) and 0.8 <= f["score"] <= 1 for f in metrics["faces"])
    bad = protect(served, image, model_type="tiny-face", attack_params={**params, "faces": [7]})
    assert "out of range" in assert_error(bad, 422, "invalid_parameter")["message"]
