"""Celery workers for batch jobs (used when CELERY_BROKER_URL or REDIS_URL is set).

    celery -A server.worker worker --loglevel INFO      # one job at a time per worker (GPU: 1)
    celery -A server.worker flower                       # watch them on http://localhost:5555

A worker reads the job's photos and record from Redis, runs them through the same engine and
options as the embedded backend (server.jobs.base.run_job), and writes every result and the
record back after each chunk. Messages are acknowledged only when a job finished (acks late) and
returned to the queue when the worker process dies, so a killed worker's job runs again on the
next free worker and resumes after its last saved chunk; while nobody runs it, the API shows it
as queued, not running (the running worker holds a lease it renews every few seconds).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from functools import cache
from typing import Any

from celery import Task

from server.jobs.base import FINISHED, INTERRUPTED, JobInput, JobIO, run_job
from server.jobs.celery_jobs import TASK_NAME, make_celery
from server.jobs.redis_store import RedisJobStore, RedisResultCache
from server.settings import Settings

log = logging.getLogger(__name__)

LEASE_SECONDS = int(os.environ.get("DEEPSHIELD_LEASE_SECONDS", "30"))  # a dead worker's job shows as queued after this
MAX_ATTEMPTS = 3  # a job that took its worker down this many times fails instead of looping


settings = Settings.from_env()
app = make_celery(settings)


@cache
def _service() -> Any:
    """The engine and protection service of this worker process (built on first use)."""
    from deepshield.engine import Engine
    from server.service import ProtectService

    engine = Engine(device=settings.device, max_concurrent=1, max_queue=1)
    return ProtectService(engine, settings)


@cache
def _store() -> RedisJobStore:
    return RedisJobStore.from_url(settings.redis_url or settings.broker_url, ttl=int(settings.job_retention_hours * 3600))


@app.task(name=TASK_NAME, bind=True, max_retries=None)
def protect_batch(self: Task, task_id: str) -> str:
    """Run (or resume) job `task_id`; returns its final status."""
    store = _store()
    record = store.record(task_id)
    if record["status"] in FINISHED:
        return record["status"]
    owner = f"{socket.gethostname()}:{os.getpid()}:{self.request.id}"
    if not store.acquire_lease(task_id, owner, LEASE_SECONDS):
        raise self.retry(countdown=LEASE_SECONDS)  # a live worker runs it (a redelivered copy): look again later
    try:
        if record["attempts"] >= MAX_ATTEMPTS:
            record.update(
                status=INTERRUPTED, finished_at=time.time(), current=None,
                note=f"the job stopped its worker {record['attempts']} times (out of memory?); giving up",
            )
            store.save(record)
            return record["status"]
        if record["attempts"]:
            record["note"] = f"resumed after its worker stopped (attempt {record['attempts'] + 1})"
        with _renewing(store, task_id):
            run_job(record, _job_io(store, task_id, record), _service().process_items)
        store.drop_inputs(task_id, len(record["items"]))
        return record["status"]
    finally:
        store.release_lease(task_id)


def _job_io(store: RedisJobStore, task_id: str, record: dict[str, Any]) -> JobIO:
    def read_input(index: int) -> JobInput:
        item = record["items"][index]
        data = store.get_input(task_id, index)
        if data is None:
            return JobInput(item["filename"], error={"error": "expired", "message": "the uploaded photo expired before a worker got to it"})
        return JobInput(item["filename"], data)

    cache = RedisResultCache(store.client, settings.result_cache_ttl) if settings.result_cache_ttl > 0 else None
    return JobIO(read_input, lambda i, kind, data: store.put_file(task_id, i, kind, data), store.save, cache=cache)


class _renewing:
    """Renew the job's lease every LEASE_SECONDS / 3 while the block runs."""

    def __init__(self, store: RedisJobStore, task_id: str) -> None:
        self._store, self._task_id = store, task_id
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{task_id}", daemon=True)

    def _renew(self) -> None:
        while not self._done.wait(LEASE_SECONDS / 3):
            try:
                self._store.renew_lease(self._task_id, LEASE_SECONDS)
            except Exception:  # noqa: BLE001 - Redis away for a moment: the next renewal may work
                log.warning("could not renew the lease of job %s", self._task_id)

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()
