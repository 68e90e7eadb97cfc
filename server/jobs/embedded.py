"""The default job backend: worker threads in the server process, every job on disk.

    <root>/<task_id>/job.json          the record (written atomically after every change)
    <root>/<task_id>/inputs/<index>    the photos as received (removed once the job finished)
    <root>/<task_id>/results/<index>.<kind>   protected photos and deepfakes

Nothing is kept only in memory, so a restart loses no finished result. A job found queued or
running at start-up was interrupted: it is queued again and resumes after its last saved chunk
when its inputs are all there, else it is marked `interrupted` with a note saying why.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from server.jobs.base import (
    FINISHED,
    INTERRUPTED,
    QUEUED,
    ItemProcessor,
    JobInput,
    JobIO,
    JobQueueFullError,
    UnknownTaskError,
    file_name,
    new_record,
    run_job,
)

log = logging.getLogger(__name__)

_RESUMED_NOTE = "interrupted by a server restart; resumed after its last saved photo"
_LOST_NOTE = "interrupted by a server restart and its uploaded photos were lost; submit it again"
SWEEP_SECONDS = 300.0  # an idle worker deletes expired jobs this often
_CRASHED_NOTE = "stopped by an internal error (logged on the server); submit it again"


class EmbeddedJobs:
    """Jobs run by `workers` threads of this process, stored under `root`.

    max_pending: jobs allowed to wait before `submit` refuses (JobQueueFullError); finished jobs
    are deleted after `ttl_seconds`, and beyond the newest `keep` (oldest first).
    """

    kind = "embedded"

    def __init__(
        self,
        process: ItemProcessor,
        root: Path,
        *,
        workers: int = 1,
        max_pending: int = 16,
        keep: int = 256,
        ttl_seconds: float = 24 * 3600.0,
    ) -> None:
        self._process = process
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._workers = max(1, workers)
        self._max_pending = max(1, max_pending)
        self._queue: queue.Queue[str] = queue.Queue()
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._keep = keep
        self._ttl = ttl_seconds
        self._recover()

    # ---------------------------------------------------------------- interface

    def submit(self, inputs: Sequence[JobInput], options: Mapping[str, Any]) -> str:
        """Store the job's photos and record, queue it, and return its task id at once."""
        with self._lock:
            if self._queue.qsize() >= self._max_pending:
                raise JobQueueFullError(f"{self._max_pending} batch jobs are already waiting; retry in a minute")
        task_id = uuid.uuid4().hex
        staging = self.root / f".incoming-{task_id}"
        (staging / "inputs").mkdir(parents=True)
        for index, item in enumerate(inputs):
            (staging / "inputs" / str(index)).write_bytes(item.data)
        record = new_record(task_id, self.kind, inputs, options)
        _write_json(staging / "job.json", record)
        staging.rename(self.root / task_id)  # the job appears whole or not at all
        with self._lock:
            self._records[task_id] = record
        self._queue.put(task_id)
        return task_id

    def status(self, task_id: str) -> dict[str, Any]:
        with self._lock:
            self._prune()  # an expired job is gone, whether or not a new one came since
            return copy.deepcopy(self._record(task_id))

    def read_file(self, task_id: str, index: int, kind: str) -> bytes:
        with self._lock:
            self._record(task_id)  # a known job: never a path built from an unknown id
        return (self._dir(task_id) / "results" / file_name(index, kind)).read_bytes()

    def _record(self, task_id: str) -> dict[str, Any]:
        record = self._records.get(task_id)
        if record is None:
            raise UnknownTaskError(f"no batch job with id {task_id!r} (finished jobs are kept for {self._ttl / 3600:g} hours)")
        return record

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """Stop taking jobs and stop each running one after its chunk; they resume at the next start."""
        self._stopping.set()
        for _ in self._threads:
            self._queue.put("")

    # ---------------------------------------------------------------- workers

    def _dir(self, task_id: str) -> Path:
        if not task_id.isalnum():
            raise UnknownTaskError(f"no batch job with id {task_id!r}")
        return self.root / task_id

    def _start_workers(self) -> None:
        while len(self._threads) < self._workers:
            thread = threading.Thread(target=self._work, name=f"deepshield-jobs-{len(self._threads)}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                task_id = self._queue.get(timeout=SWEEP_SECONDS)
            except queue.Empty:  # idle: delete expired jobs from disk
                with self._lock:
                    self._prune()
                continue
            if task_id and not self._stopping.is_set():
                self._run(task_id)

    def _run(self, task_id: str) -> None:
        with self._lock:
            if task_id not in self._records:
                return
            record = copy.deepcopy(self._records[task_id])  # the worker's copy; status() reads the saved one
        folder = self._dir(task_id)

        def read_input(index: int) -> JobInput:
            return JobInput(record["items"][index]["filename"], (folder / "inputs" / str(index)).read_bytes())

        def write_file(index: int, kind: str, data: bytes) -> None:
            _write_bytes(folder / "results" / file_name(index, kind), data)

        def save(updated: dict[str, Any]) -> None:
            with self._lock:
                self._records[task_id] = copy.deepcopy(updated)
                _write_json(folder / "job.json", updated)

        try:
            run_job(record, JobIO(read_input, write_file, save, should_stop=self._stopping.is_set), self._process)
        except Exception:  # the processor maps expected errors itself; this is a bug
            log.exception("batch job failed unexpectedly", extra={"task_id": task_id})
            record.update(status=INTERRUPTED, finished_at=time.time(), current=None, note=_CRASHED_NOTE)
            save(record)
        if record["status"] in FINISHED:
            shutil.rmtree(folder / "inputs", ignore_errors=True)

    # ---------------------------------------------------------------- start-up and cleanup

    def _recover(self) -> None:
        """Load every stored job; queue again the interrupted ones that can resume."""
        for staging in self.root.glob(".incoming-*"):
            shutil.rmtree(staging, ignore_errors=True)  # a submit that never answered the client
        for path in sorted(self.root.glob("*/job.json"), key=lambda p: p.stat().st_mtime):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                log.warning("unreadable job record %s skipped", path)
                continue
            task_id = record.get("task_id", "")
            if record.get("status") not in FINISHED:
                done = {r["index"] for r in record["results"]}
                todo = [i for i, item in enumerate(record["items"]) if i not in done and not item.get("refused")]
                if all((path.parent / "inputs" / str(i)).is_file() for i in todo):
                    record.update(status=QUEUED, current=None, note=_RESUMED_NOTE)
                    self._queue.put(task_id)
                else:
                    record.update(status=INTERRUPTED, current=None, finished_at=time.time(), note=_LOST_NOTE)
                _write_json(path, record)
            self._records[task_id] = record
        if not self._queue.empty():
            log.info("resuming %d interrupted batch job(s)", self._queue.qsize())
        self._prune()
        self._start_workers()

    def _prune(self) -> None:
        """Delete finished jobs past the TTL, then the oldest finished ones beyond `keep`."""
        now = time.time()
        finished = sorted((r for r in self._records.values() if r["status"] in FINISHED), key=lambda r: r["finished_at"] or 0)
        expired = [r for r in finished if now - (r["finished_at"] or now) > self._ttl]
        kept = [r for r in finished if r not in expired]
        expired += kept[: max(0, len(kept) - self._keep)]
        for record in expired:
            del self._records[record["task_id"]]
            shutil.rmtree(self.root / record["task_id"], ignore_errors=True)


def _write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    _write_bytes(path, json.dumps(record).encode())
