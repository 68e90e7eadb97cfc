"""In-process batch jobs: a bounded queue, worker threads and a task store.

The interface is deliberately small (`submit`, `status`) so a Celery backend can replace it
later. The store knows nothing about images or the engine: every item goes through the
`process` callable given at construction, which returns the item's result as a dict (with at
least `"status": "ok" | "error"`). An exception escaping `process` is logged and recorded as an
`internal_error` item, never shown to the client.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

ItemProcessor = Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]
"""(item, options) -> result dict with "status" "ok" or "error"."""

QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"


class UnknownTaskError(LookupError):
    """No job has this id (never existed, or expired from the store)."""


class JobQueueFullError(RuntimeError):
    """Too many jobs are waiting already; retry later."""


@dataclass
class _Job:
    task_id: str
    items: list[Mapping[str, Any]]
    options: Mapping[str, Any]
    state: str = QUEUED
    results: list[dict[str, Any]] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "status": self.state,
            "progress": {"done": len(self.results), "total": len(self.items)},
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "results": [dict(r) for r in self.results],
        }


class JobStore:
    """Thread-safe job queue and store.

    workers: jobs processed at once (each processes its items one after the other);
    max_pending: jobs allowed to wait before `submit` refuses with JobQueueFullError;
    keep / ttl_seconds: finished jobs kept for status queries (the oldest are dropped first);
    results hold base64 images, so keep this small.
    """

    def __init__(
        self,
        process: ItemProcessor,
        *,
        workers: int = 1,
        max_pending: int = 16,
        keep: int = 16,
        ttl_seconds: float = 1800.0,
    ) -> None:
        self._process = process
        self._workers = max(1, workers)
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=max(1, max_pending))
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._keep = keep
        self._ttl = ttl_seconds

    def submit(self, items: Sequence[Mapping[str, Any]], options: Mapping[str, Any]) -> str:
        """Queue a job of `items` processed with `options`; return its task id at once."""
        job = _Job(task_id=uuid.uuid4().hex, items=list(items), options=dict(options))
        with self._lock:
            self._prune()
            self._start_workers()
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise JobQueueFullError(f"{self._queue.maxsize} batch jobs are already waiting; retry in a minute") from None
            self._jobs[job.task_id] = job
        return job.task_id

    def status(self, task_id: str) -> dict[str, Any]:
        """state (queued / running / completed / failed), progress {done, total}, finished items."""
        with self._lock:
            job = self._jobs.get(task_id)
            if job is None:
                raise UnknownTaskError(f"no batch job with id {task_id!r} (finished jobs are kept for {self._ttl / 60:.0f} minutes)")
            return job.snapshot()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    # ---------------------------------------------------------------- workers

    def _start_workers(self) -> None:
        while len(self._threads) < self._workers:
            thread = threading.Thread(target=self._work, name=f"deepshield-jobs-{len(self._threads)}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                self._run(job)
            finally:
                self._queue.task_done()

    def _run(self, job: _Job) -> None:
        with self._lock:
            job.state, job.started_at = RUNNING, time.time()
        for index, item in enumerate(job.items):
            try:
                result = dict(self._process(item, job.options))
            except Exception:  # the processor maps expected errors itself; this is a bug
                log.exception("batch item failed unexpectedly", extra={"task_id": job.task_id, "item": index})
                result = {"status": "error", "error": "internal_error", "message": "internal error while protecting this image"}
            with self._lock:
                job.results.append({"index": index, **result})
        with self._lock:
            ok = any(r.get("status") == "ok" for r in job.results)
            job.state = COMPLETED if ok or not job.items else FAILED
            job.finished_at = time.time()

    def _prune(self) -> None:
        """Drop finished jobs past the TTL, then the oldest finished ones beyond `keep`."""
        now = time.time()
        finished = [j for j in self._jobs.values() if j.finished_at is not None]
        expired = {j.task_id for j in finished if now - j.finished_at > self._ttl}  # type: ignore[operator]
        surplus = len(finished) - len(expired) - self._keep
        for job in finished:
            if surplus <= 0:
                break
            if job.task_id not in expired:
                expired.add(job.task_id)
                surplus -= 1
        for task_id in expired:
            del self._jobs[task_id]
