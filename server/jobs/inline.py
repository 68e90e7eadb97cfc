"""A job run in the caller's thread and kept in memory: a batch request with
`async_processing: false` answers with its results instead of a task id. Same job loop
(`run_job`), same results view as the background backends."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from server.jobs.base import ItemProcessor, JobInput, JobIO, UnknownTaskError, new_record, run_job


class InlineJobs:
    """`submit` runs the whole job before it returns; records and files live in this object."""

    kind = "inline"
    pending = 0

    def __init__(self, process: ItemProcessor) -> None:
        self._process = process
        self._records: dict[str, dict[str, Any]] = {}
        self._files: dict[tuple[str, int, str], bytes] = {}

    def submit(self, inputs: Sequence[JobInput], options: Mapping[str, Any]) -> str:
        task_id = uuid.uuid4().hex
        record = new_record(task_id, self.kind, inputs, options)

        def write_file(index: int, kind: str, data: bytes) -> None:
            self._files[task_id, index, kind] = data

        run_job(record, JobIO(lambda index: inputs[index], write_file, lambda _record: None), self._process)
        self._records[task_id] = record
        return task_id

    def status(self, task_id: str) -> dict[str, Any]:
        try:
            return copy.deepcopy(self._records[task_id])
        except KeyError:
            raise UnknownTaskError(f"no job {task_id!r} in this request") from None

    def read_file(self, task_id: str, index: int, kind: str) -> bytes:
        return self._files[task_id, index, kind]

    def close(self) -> None:
        self._records.clear()
        self._files.clear()
