"""What both job backends share: states, errors, the job record, and the loop that runs a job.

A job is a list of photos protected with one set of options. Its *record* is a JSON-able dict
that both backends store (on disk or in Redis) and that `GET /protect/status/{task_id}` shows:

    {"task_id", "backend", "status", "created_at", "started_at", "finished_at",
     "progress": {"done", "total"}, "current": {"first", "last", "step", "steps"} | None,
     "attempts", "note", "options", "items": [{"filename", "output", "refused"?}], "results": [...]}

`results` holds one entry per finished photo in input order: `{"index", "filename", "output",
"status": "ok", "mime_type", "metrics", "processing_time", "files": [...]}` or `{"index",
"filename", "status": "error", "error", "message"}`. The bytes of each result (`files`: the
protected photo and, when asked for, the two deepfakes) live beside the record, never in it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from deepshield.weights import cache_dir
from server.uploads import output_names

QUEUED, RUNNING, COMPLETED, FAILED, INTERRUPTED = "queued", "running", "completed", "failed", "interrupted"
FINISHED = frozenset({COMPLETED, FAILED, INTERRUPTED})
CHUNK = 4  # photos attacked together in one batched pass; progress is saved after each chunk
PROGRESS_SAVE_S = 0.5  # the attack step in progress is saved at most this often
OUTPUT_SUFFIX = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


class UnknownTaskError(LookupError):
    """No job has this id (never existed, or expired from the store)."""


class JobQueueFullError(RuntimeError):
    """Too many jobs are waiting already; retry later."""


class JobNotFinishedError(RuntimeError):
    """The job's results are asked for before it finished."""


@dataclass(frozen=True)
class JobInput:
    """One photo of a job: the file as received and the name the user gave it. `error` is set
    (`{"error": kind, "message": text}`) when it was refused on arrival; `data` is then empty."""

    filename: str
    data: bytes = b""
    error: Mapping[str, str] | None = None


@dataclass
class ItemOutcome:
    """What processing one photo gave: its `results` entry (without `index`, `output`, `files`)
    and the bytes of its files by kind ("protected", "deepfake_original", "deepfake_protected")."""

    entry: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


StepCallback = Callable[[int, int], None]
"""(step, steps) of the chunk being attacked."""

ItemProcessor = Callable[[Sequence[JobInput], Mapping[str, Any], StepCallback], list[ItemOutcome]]
"""(a chunk of inputs, the job's options, on_step) -> one outcome per input, in order. Expected
errors become `status: "error"` outcomes; an exception means a bug (or a lost device)."""


class JobBackend(Protocol):
    """The interface the REST API and the Gradio batch view use; see `create_backend`."""

    kind: str

    def submit(self, inputs: Sequence[JobInput], options: Mapping[str, Any]) -> str: ...

    def status(self, task_id: str) -> dict[str, Any]: ...

    def read_file(self, task_id: str, index: int, kind: str) -> bytes: ...

    @property
    def pending(self) -> int: ...

    def close(self) -> None: ...


def new_record(task_id: str, backend: str, inputs: Sequence[JobInput], options: Mapping[str, Any]) -> dict[str, Any]:
    """The record of a job just submitted (queued, nothing done)."""
    suffix = OUTPUT_SUFFIX.get(str(options.get("output_format", "png")), ".png")
    names = output_names((i.filename for i in inputs), suffix=suffix)
    return {
        "task_id": task_id,
        "backend": backend,
        "status": QUEUED,
        "created_at": time.time(),
        "started_at": None,
        "finished_at": None,
        "progress": {"done": 0, "total": len(inputs)},
        "current": None,
        "attempts": 0,
        "note": None,
        "options": dict(options),
        "items": [
            {"filename": i.filename, "output": name, **({"refused": dict(i.error)} if i.error else {})} for i, name in zip(inputs, names)
        ],
        "results": [],
    }


class ResultCache(Protocol):
    """Finished outcomes keyed by the photo's bytes and the job's options (see redis_store)."""

    def get(self, data: bytes, options: Mapping[str, Any]) -> ItemOutcome | None: ...

    def put(self, data: bytes, options: Mapping[str, Any], outcome: ItemOutcome) -> None: ...


@dataclass
class JobIO:
    """Where a running job reads its inputs and writes its files and record (backend-specific)."""

    read_input: Callable[[int], JobInput]  # a photo not refused on arrival
    write_file: Callable[[int, str, bytes], None]
    save: Callable[[dict[str, Any]], None]
    cache: ResultCache | None = None
    should_stop: Callable[[], bool] = lambda: False


def run_job(record: dict[str, Any], io: JobIO, process: ItemProcessor, chunk: int = CHUNK) -> dict[str, Any]:
    """Process the photos of `record` that have no result yet, `chunk` at a time, saving the
    record after each chunk (so a crash loses at most one chunk) and, at most every
    PROGRESS_SAVE_S, the attack step in progress. Finishes the record (completed, or failed when every photo failed) unless
    `io.should_stop()` asks to stop first; then it stays running for the next start to resume."""
    record.update(status=RUNNING, started_at=record.get("started_at") or time.time(), attempts=record.get("attempts", 0) + 1)
    io.save(record)
    done = {r["index"] for r in record["results"]}
    todo = [i for i in range(len(record["items"])) if i not in done]
    while todo:
        if io.should_stop():
            return record
        batch, todo = todo[:chunk], todo[chunk:]
        outcomes = _cached_or_processed(batch, record, io, process)
        for index, outcome in zip(batch, outcomes):
            _store_outcome(record, index, outcome, io)
        record["results"].sort(key=lambda r: r["index"])
        record["progress"]["done"] = len(record["results"])
        record["current"] = None
        io.save(record)
    ok = any(r["status"] == "ok" for r in record["results"])
    record.update(status=COMPLETED if ok or not record["items"] else FAILED, finished_at=time.time(), current=None)
    io.save(record)
    return record


def _cached_or_processed(batch: list[int], record: dict[str, Any], io: JobIO, process: ItemProcessor) -> list[ItemOutcome]:
    refusals = [record["items"][i].get("refused") for i in batch]
    inputs = [JobInput(record["items"][i]["filename"], error=no) if no else io.read_input(i) for i, no in zip(batch, refusals)]
    options = record["options"]
    outcomes: list[ItemOutcome | None] = [
        refused(x) if x.error else io.cache.get(x.data, options) if io.cache else None for x in inputs
    ]
    missing = [k for k, o in enumerate(outcomes) if o is None]
    if missing:
        first, last = batch[missing[0]] + 1, batch[missing[-1]] + 1
        saved = 0.0

        def on_step(step: int, steps: int) -> None:
            nonlocal saved
            record["current"] = {"first": first, "last": last, "step": step, "steps": steps}
            if time.monotonic() - saved >= PROGRESS_SAVE_S:  # a step can take milliseconds on a GPU
                io.save(record)
                saved = time.monotonic()

        for k, outcome in zip(missing, process([inputs[k] for k in missing], options, on_step)):
            outcomes[k] = outcome
            if io.cache and outcome.entry.get("status") == "ok":
                io.cache.put(inputs[k].data, options, outcome)
    return [o for o in outcomes if o is not None]


def _store_outcome(record: dict[str, Any], index: int, outcome: ItemOutcome, io: JobIO) -> None:
    for kind, data in outcome.files.items():
        io.write_file(index, kind, data)
    item = record["items"][index]
    entry = {"index": index, "filename": item["filename"], **outcome.entry}
    if entry.get("status") == "ok":
        entry.update(output=item["output"], files=sorted(outcome.files))
        entry["metrics"] = {**entry["metrics"], "input": item["filename"]}  # a cached outcome may come from another upload
    record["results"] = [r for r in record["results"] if r["index"] != index] + [entry]


def refused(job_input: JobInput) -> ItemOutcome:
    """The outcome of an input refused on arrival."""
    return ItemOutcome({"status": "error", **dict(job_input.error or {})})


def file_name(index: int, kind: str) -> str:
    """The stored name of a result file (the same in every backend)."""
    return f"{index:05d}.{kind}"


def default_data_dir() -> Path:
    """Where the embedded backend keeps jobs: `$DEEPSHIELD_CACHE_DIR/jobs` (or ~/.cache/deepshield/jobs)."""
    return cache_dir() / "jobs"
