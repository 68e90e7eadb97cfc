"""A job's results as the clients get them: the status view, the JSON report and the zip."""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from typing import Any

from server.jobs.base import FINISHED, JobBackend, JobNotFinishedError

FILE_FIELDS = {"protected": "protected_image", "deepfake_original": "deepfake_original", "deepfake_protected": "deepfake_protected"}


def result_urls(prefix: str, task_id: str) -> dict[str, str]:
    return {"zip": f"{prefix}/protect/result/{task_id}", "report": f"{prefix}/protect/result/{task_id}?format=json"}


def status_view(jobs: JobBackend, task_id: str, prefix: str, *, images: bool = True) -> dict[str, Any]:
    """The record, with each finished photo's files inlined as base64 (`protected_image`, and
    `deepfake_original` / `deepfake_protected` when asked for) unless `images` is False, and
    `result_urls` once the job finished."""
    record = jobs.status(task_id)
    record.pop("options", None)
    for entry in record["results"]:
        for kind in entry.pop("files", []) if images else []:
            entry[FILE_FIELDS[kind]] = base64.b64encode(jobs.read_file(task_id, entry["index"], kind)).decode("ascii")
        if entry["status"] == "ok" and "mime_type" in entry:
            entry.setdefault("deepfake_original", None)
            entry.setdefault("deepfake_protected", None)
    record["result_urls"] = result_urls(prefix, task_id) if record["status"] in FINISHED else None
    return record


def report(jobs: JobBackend, task_id: str) -> dict[str, Any]:
    """The finished job without file contents: options and per-photo results (names in the zip)."""
    record = _finished(jobs, task_id)
    ok = [r for r in record["results"] if r["status"] == "ok"]
    return {
        "task_id": task_id,
        "status": record["status"],
        "note": record["note"],
        "created_at": record["created_at"],
        "finished_at": record["finished_at"],
        "options": record["options"],
        "summary": {"total": len(record["items"]), "ok": len(ok), "errors": len(record["results"]) - len(ok)},
        "results": record["results"],
    }


def archive(jobs: JobBackend, task_id: str) -> bytes:
    """A zip of the protected photos under their output names (`a.jpg` -> `a.png`), the
    deepfakes when they were asked for (`<stem>.deepfake_original.png`, ...), and report.json."""
    summary = report(jobs, task_id)
    stamp = time.gmtime(summary["finished_at"])[:6]  # the same bytes every time it is fetched

    def add(name: str, data: bytes | str) -> None:
        bundle.writestr(zipfile.ZipInfo(name, date_time=stamp), data)

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as bundle:
        for entry in summary["results"]:
            if entry["status"] != "ok":
                continue
            stem = entry["output"].rsplit(".", 1)[0]
            for kind in entry["files"]:
                add(entry["output"] if kind == "protected" else f"{stem}.{kind}.png", jobs.read_file(task_id, entry["index"], kind))
        add("report.json", json.dumps(summary, indent=2))
    return buffer.getvalue()


def _finished(jobs: JobBackend, task_id: str) -> dict[str, Any]:
    record = jobs.status(task_id)
    if record["status"] not in FINISHED:
        progress = record["progress"]
        raise JobNotFinishedError(
            f"job {task_id} is {record['status']} ({progress['done']} of {progress['total']} photos done); poll its status and fetch the results when it has finished"
        )
    return record
