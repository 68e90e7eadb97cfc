"""Batch jobs on Celery + Redis with the real parts: Debian's redis-server on a free loopback port,
`celery -A server.worker worker` processes, the app answering the REST API, and Flower."""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

import app as app_module
from deepshield.engine import Engine
from server.settings import Settings
from tests.conftest import REPO
from tests.live_server import running
from tests.test_jobs import finished, free_port
from tests.test_rest import png, wait_for

LEASE_S = 3  # how long a dead worker's job still shows as running
VISIBILITY_S = 8  # after this an unacknowledged job goes back to the queue


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server (no persistence) on a free loopback port."""
    server = shutil.which("redis-server")
    assert server, "redis-server is missing: .ci/run installs the Debian package redis-server"
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def celery_env(cli_env: dict[str, str], redis_url: str, tmp_path: Path) -> dict[str, str]:
    redis.Redis.from_url(redis_url).flushall()
    return {
        **cli_env,
        "REDIS_URL": redis_url,
        "DEFAULT_MODEL": "tiny",
        "RESULT_CACHE_TTL": "600",
        "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_S),
        "DEEPSHIELD_LEASE_SECONDS": str(LEASE_S),
        "DEEPSHIELD_CACHE_DIR": str(tmp_path / "worker-cache"),
    }


@pytest.fixture
def start_worker(celery_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """start_worker(name) -> a `celery -A server.worker worker` process (its own process group)."""
    workers: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"{name}.log").open("ab")
        command = [sys.executable, "-m", "celery", "-A", "server.worker", "worker", "--loglevel", "INFO", "-n", f"{name}@%h",
                   "--without-gossip", "--without-mingle"]
        process = subprocess.Popen(command, cwd=REPO, env=celery_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        workers.append(process)
        return process

    yield start
    for process in workers:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture
def api(celery_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    """The app (REST + UI) with jobs going to Celery, served on loopback."""
    for key in ("DEEPSHIELD_MANIFEST", "DEEPSHIELD_MODELS_DIR"):
        monkeypatch.setenv(key, celery_env[key])
    settings = Settings(default_model="tiny", broker_url=celery_env["REDIS_URL"], redis_url=celery_env["REDIS_URL"])
    with running(app_module.create_app(settings, Engine(device="cpu"))) as url, httpx.Client(base_url=url.rstrip("/"), timeout=60) as client:
        yield client


def photos(count: int, side: int = 32) -> list[dict[str, str]]:
    return [{"filename": f"p{i}.png", "image": base64.b64encode(png(side, side, seed=i)).decode()} for i in range(count)]


def submit(client: httpx.Client, images: list[dict[str, str]], **params: Any) -> dict[str, Any]:
    body = {"images": images, "attack_params": {"iterations": 2, "seed": 0, **params}, "return_deepfakes": False}
    response = client.post("/api/v1/protect/batch", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def test_a_batch_runs_on_a_celery_worker_through_redis(api, start_worker, celery_env):
    start_worker("w1")
    assert api.get("/health").json()["queue"]["batch_backend"] == "celery"
    job = submit(api, photos(3))
    status = finished(api, job["task_id"], timeout=120)
    assert status["status"] == "completed" and status["backend"] == "celery" and status["progress"] == {"done": 3, "total": 3}
    assert [r["status"] for r in status["results"]] == ["ok"] * 3 and not any(r.get("cached") for r in status["results"])
    with zipfile.ZipFile(io.BytesIO(api.get(status["result_urls"]["zip"]).content)) as bundle:
        assert bundle.namelist() == ["p0.png", "p1.png", "p2.png", "report.json"]
        first = bundle.read("p0.png")
    assert base64.b64decode(status["results"][0]["protected_image"]) == first
    store = redis.Redis.from_url(celery_env["REDIS_URL"])
    assert not store.keys(f"deepshield:job:{job['task_id']}:input:*")  # inputs dropped once done

    renamed = [{**photo, "filename": f"other-{photo['filename']}"} for photo in photos(3)]
    again = finished(api, submit(api, renamed)["task_id"], timeout=60)  # same photos, same settings and seed
    assert all(r["cached"] for r in again["results"])
    assert [r["metrics"]["input"] for r in again["results"]] == ["other-p0.png", "other-p1.png", "other-p2.png"]  # never another upload's name
    assert base64.b64decode(again["results"][0]["protected_image"]) == first
    assert submit(api, photos(1), seed=1)["task_id"]  # another seed is another key: not served from the cache


def test_a_killed_worker_leaves_its_job_queued_and_the_next_worker_finishes_it(api, start_worker):
    first = start_worker("doomed")
    job = submit(api, photos(8, side=96), iterations=150)
    wait_for(lambda: api.get(job["status_url"], params={"images": "false"}).json()["progress"]["done"] >= 4, 180)
    os.killpg(first.pid, signal.SIGKILL)  # the whole worker, as when its machine dies
    first.wait(timeout=30)
    time.sleep(LEASE_S + 1)
    orphaned = api.get(job["status_url"], params={"images": "false"}).json()
    assert orphaned["status"] == "queued" and "queued again" in orphaned["note"]  # not "running" forever
    assert orphaned["progress"]["done"] >= 4  # the saved chunk is kept
    start_worker("rescuer")
    status = finished(api, job["task_id"], timeout=240)
    assert status["status"] == "completed" and status["attempts"] == 2 and "resumed after its worker stopped" in status["note"]
    assert [r["filename"] for r in status["results"]] == [f"p{i}.png" for i in range(8)]
    assert all(r["status"] == "ok" for r in status["results"])
    kept = {r["index"]: r["processing_time"] for r in orphaned["results"]}
    assert {r["index"]: r["processing_time"] for r in status["results"] if r["index"] in kept} == kept  # not redone


def test_flower_sees_the_workers_and_their_tasks(api, start_worker, celery_env, tmp_path):
    start_worker("watched")
    job = submit(api, photos(1))
    finished(api, job["task_id"], timeout=120)
    port = free_port()
    env = {**celery_env, "FLOWER_UNAUTHENTICATED_API": "true"}
    log = (tmp_path / "flower.log").open("ab")
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "server.worker", "flower", "--address=127.0.0.1", f"--port={port}"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        workers: dict[str, Any] = {}

        def listed() -> bool:
            try:
                workers.update(httpx.get(f"http://127.0.0.1:{port}/api/workers", params={"refresh": "1"}, timeout=10).json())
            except (httpx.TransportError, ValueError):
                return False
            return any(name.startswith("watched@") for name in workers)

        wait_for(listed, 60)
        second = submit(api, photos(1), seed=5)
        finished(api, second["task_id"], timeout=120)
        tasks: dict[str, Any] = {}

        def seen() -> bool:
            tasks.update(httpx.get(f"http://127.0.0.1:{port}/api/tasks", timeout=10).json())
            return tasks.get(second["task_id"], {}).get("state") == "SUCCESS"

        wait_for(seen, 60)
        assert tasks[second["task_id"]]["name"] == "deepshield.protect_batch"
    finally:
        os.killpg(flower.pid, signal.SIGKILL)
        flower.wait(timeout=30)


def test_compose_runs_api_redis_scalable_workers_and_flower_on_this_celery_app():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"api", "worker", "flower", "redis"}
    assert services["worker"]["command"][:4] == ["celery", "-A", "server.worker", "worker"]
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]  # --scale worker=N needs both absent
    assert services["flower"]["command"][:4] == ["celery", "-A", "server.worker", "flower"]
    for name in ("api", "worker", "flower"):
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
