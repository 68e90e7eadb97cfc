"""Batch jobs on the embedded backend: status, results (zip and JSON report), limits, and a
server killed mid-job that resumes the job after a restart with its finished results intact."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from server.service import ProtectService
from server.jobs import EmbeddedJobs, JobInput, UnknownTaskError
from server.settings import Settings
from tests.conftest import REPO, Served
from tests.test_rest import FAST, assert_error, b64, png, unb64, wait_for

STARTUP_TIMEOUT_S = 90


def submit(served: Served, images: list[dict[str, str]], **fields: Any) -> dict[str, Any]:
    response = served.client.post("/api/v1/protect/batch", json={"images": images, **FAST, **fields})
    assert response.status_code == 202, response.text
    return response.json()


def finished(client: httpx.Client, task_id: str, timeout: float = 60) -> dict[str, Any]:
    status: dict[str, Any] = {}

    def done() -> bool:
        status.update(client.get(f"/api/v1/protect/status/{task_id}").json())
        return status["status"] in ("completed", "failed", "interrupted")

    wait_for(done, timeout)
    return status


def test_results_come_as_a_zip_and_a_json_report(serve):
    served = serve()
    images = [{"filename": "holiday/a.jpg", "image": b64(png(40, 30, seed=1))}, {"filename": "b.png", "image": "%%%"}]
    job = submit(served, images, output_format="jpeg", return_deepfakes=True)
    status = finished(served.client, job["task_id"])
    assert status["status"] == "completed" and status["backend"] == "embedded" and status["progress"] == {"done": 2, "total": 2}
    ok, bad = status["results"]
    assert ok["output"] == "a.jpg" and ok["mime_type"] == "image/jpeg" and unb64(ok["protected_image"]).format == "JPEG"
    assert unb64(ok["deepfake_original"]).format == "PNG" and bad["error"] == "invalid_image"
    assert status["result_urls"] == {"zip": f"/api/v1/protect/result/{job['task_id']}", "report": f"/api/v1/protect/result/{job['task_id']}?format=json"}

    bare = served.client.get(job["status_url"], params={"images": "false"}).json()
    assert "protected_image" not in bare["results"][0] and bare["results"][0]["files"] == ["deepfake_original", "deepfake_protected", "protected"]

    archive = served.client.get(status["result_urls"]["zip"])
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as bundle:
        assert sorted(bundle.namelist()) == ["a.deepfake_original.png", "a.deepfake_protected.png", "a.jpg", "report.json"]
        assert bundle.read("a.jpg") == base64.b64decode(ok["protected_image"])
        inside = json.loads(bundle.read("report.json"))
    report = served.client.get(status["result_urls"]["report"]).json()
    assert report == inside and report["summary"] == {"total": 2, "ok": 1, "errors": 1}
    assert report["options"]["output_format"] == "jpeg" and report["results"][1]["message"].startswith("b.png: not valid base64")
    assert_error(served.client.get("/api/v1/protect/result/0123456789abcdef"), 404, "unknown_task")
    assert_error(served.client.get("/api/v1/protect/result/../../etc"), 404, "not_found")


def test_results_of_an_unfinished_job_are_refused_with_a_retry_hint(serve, make_engine):
    engine = make_engine()
    served = serve(Settings(default_model="tiny-cyclegan"), engine)
    with engine.admission():  # the only slot is taken: the job waits for it
        job = submit(served, [{"image": b64(png())}])
        refused = served.client.get(f"/api/v1/protect/result/{job['task_id']}")
        assert refused.status_code == 409 and refused.headers["Retry-After"] == "5"
        assert refused.json()["error"] == "not_finished" and "0 of 1 photos done" in refused.json()["message"]
        assert served.client.get(job["status_url"]).json()["result_urls"] is None
    assert finished(served.client, job["task_id"])["status"] == "completed"


def test_a_full_job_queue_refuses_with_a_retry_hint(serve, make_engine):
    engine = make_engine()
    served = serve(Settings(default_model="tiny-cyclegan", max_queue_size=1), engine)
    with engine.admission():
        first = submit(served, [{"image": b64(png())}])
        wait_for(lambda: served.client.get(first["status_url"]).json()["status"] == "running")  # taken by the worker
        second = submit(served, [{"image": b64(png())}])  # waits in the queue
        refused = served.client.post("/api/v1/protect/batch", json={"images": [{"image": b64(png())}], **FAST})
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
        assert refused.json()["error"] == "server_busy" and "retry" in refused.json()["message"]
    for job in (first, second):
        assert finished(served.client, job["task_id"])["status"] == "completed"


# ---------------------------------------------------------------------------- restarts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def app_process(env: dict[str, str], log: Path) -> Iterator[httpx.Client]:
    """`python app.py` on a free loopback port; SIGKILLed when the block ends (a crash, not a shutdown)."""
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the app did not start"
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield client
    finally:
        client.close()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)


def test_a_killed_server_loses_no_result_and_resumes_its_job(cli_env, tmp_path):
    env = {**cli_env, "DEEPSHIELD_DATA_DIR": str(tmp_path / "data"), "DEFAULT_MODEL": "tiny", "DEEPSHIELD_MAX_CONCURRENT": "1"}
    log = tmp_path / "app.log"
    quick = [{"filename": "done.png", "image": b64(png(24, 24, seed=9))}]
    slow = [{"filename": f"p{i}.png", "image": b64(png(96, 96, seed=i))} for i in range(8)]
    slow_options = {"attack_params": {"iterations": 150, "seed": 3}, "return_deepfakes": False}
    with app_process(env, log) as client:
        done_job = client.post("/api/v1/protect/batch", json={"images": quick, **FAST}).json()
        before = finished(client, done_job["task_id"])
        zip_before = client.get(before["result_urls"]["zip"]).content
        job = client.post("/api/v1/protect/batch", json={"images": slow, **slow_options}).json()
        wait_for(lambda: client.get(job["status_url"]).json()["progress"]["done"] >= 4, 120)  # the first chunk is saved
        saved = client.get(job["status_url"], params={"images": "false"}).json()
        assert saved["status"] == "running"  # and the server dies in the middle of the second chunk
    with app_process(env, log) as client:
        assert client.get(f"/api/v1/protect/result/{done_job['task_id']}").content == zip_before
        after = finished(client, job["task_id"], timeout=180)
    assert after["status"] == "completed" and after["progress"] == {"done": 8, "total": 8} and after["attempts"] == 2
    assert "interrupted by a server restart" in after["note"]
    assert [r["filename"] for r in after["results"]] == [f"p{i}.png" for i in range(8)]
    assert all(r["status"] == "ok" for r in after["results"])
    first_chunk = [{k: r[k] for k in ("index", "metrics", "processing_time")} for r in saved["results"]]
    assert [{k: r[k] for k in ("index", "metrics", "processing_time")} for r in after["results"][: len(first_chunk)]] == first_chunk
    assert all(Image.open(io.BytesIO(base64.b64decode(r["protected_image"]))).size == (96, 96) for r in after["results"])
    assert not (tmp_path / "data" / job["task_id"] / "inputs").exists()  # inputs are dropped once the job finished


def test_a_job_whose_inputs_are_gone_is_marked_interrupted_not_lost(cli_env, tmp_path):
    env = {**cli_env, "DEEPSHIELD_DATA_DIR": str(tmp_path / "data"), "DEFAULT_MODEL": "tiny"}
    log = tmp_path / "app.log"
    slow = [{"filename": f"p{i}.png", "image": b64(png(96, 96, seed=i))} for i in range(8)]
    with app_process(env, log) as client:
        job = client.post("/api/v1/protect/batch", json={"images": slow, "attack_params": {"iterations": 150}}).json()
        wait_for(lambda: client.get(job["status_url"]).json()["status"] == "running", 60)
    for stored in (tmp_path / "data" / job["task_id"] / "inputs").iterdir():
        os.remove(stored)
    with app_process(env, log) as client:
        status = client.get(job["status_url"]).json()
    assert status["status"] == "interrupted" and "submit it again" in status["note"] and status["finished_at"] is not None


def test_finished_jobs_expire_from_disk_and_status(make_engine, tmp_path):
    service = ProtectService(make_engine(), Settings(default_model="tiny-cyclegan"))
    jobs = EmbeddedJobs(service.process_items, tmp_path / "jobs", ttl_seconds=1.0)
    options = {**FAST, "model_type": "tiny-cyclegan"}
    task_id = jobs.submit([JobInput("a.png", png(32, 32))], options)
    wait_for(lambda: jobs.status(task_id)["status"] == "completed")
    assert jobs.read_file(task_id, 0, "protected").startswith(b"\x89PNG")
    time.sleep(1.2)
    with pytest.raises(UnknownTaskError, match="kept for"):
        jobs.status(task_id)  # expired at the next look, even with no new job since
    assert not (tmp_path / "jobs" / task_id).exists()
    jobs.close()
