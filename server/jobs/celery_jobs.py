"""The Celery job backend, API side: jobs go to Redis and run on `celery -A server.worker worker`
processes (see server/worker.py), which may live on other machines."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery

from server.jobs.base import RUNNING, JobInput, JobQueueFullError, new_record
from server.jobs.redis_store import RedisJobStore
from server.settings import Settings

TASK_NAME = "deepshield.protect_batch"
QUEUE = "celery"  # Celery's default queue: a Redis list of that name holds the waiting messages
REQUEUED_NOTE = "the worker running this job stopped; the job is queued again and resumes after its last saved photo on the next free worker"



def make_celery(settings: Settings) -> Celery:
    """The Celery app of the API (sends tasks) and of the workers (runs them)."""
    app = Celery("deepshield", broker=settings.broker_url, backend=settings.redis_url or settings.broker_url)
    app.conf.update(
        task_default_queue=QUEUE,
        task_acks_late=True,  # acknowledge when the job finished, not when it started
        task_reject_on_worker_lost=True,  # a killed worker process puts its job back in the queue
        worker_prefetch_multiplier=1,  # a worker holds no job it is not running
        worker_concurrency=settings.worker_concurrency,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_track_started=True,
        worker_send_task_events=True,  # Flower
        task_send_sent_event=True,
        result_expires=int(settings.job_retention_hours * 3600),
    )
    return app


class CeleryJobs:
    """Submit jobs as Celery tasks; status and results come from Redis (the workers write them)."""

    kind = "celery"

    def __init__(self, app: Celery, store: RedisJobStore, *, max_pending: int = 16) -> None:
        self.app = app
        self.store = store
        self._max_pending = max(1, max_pending)

    def submit(self, inputs: Sequence[JobInput], options: Mapping[str, Any]) -> str:
        """Store the photos and the record in Redis, then queue the task; returns its id."""
        if self.pending >= self._max_pending:
            raise JobQueueFullError(f"{self._max_pending} batch jobs are already waiting; retry in a minute")
        task_id = uuid.uuid4().hex
        for index, item in enumerate(inputs):
            if not item.error:
                self.store.put_input(task_id, index, item.data)
        self.store.save(new_record(task_id, self.kind, inputs, options))
        self.app.send_task(TASK_NAME, args=[task_id], task_id=task_id)
        return task_id

    def status(self, task_id: str) -> dict[str, Any]:
        """The record; a job marked running whose worker's lease expired is shown as queued
        again (its message is redelivered: acks late), never as running forever."""
        record = self.store.record(task_id)
        if record["status"] == RUNNING and not self.store.lease_alive(task_id):
            record.update(status="queued", current=None, note=REQUEUED_NOTE)
        return record

    def read_file(self, task_id: str, index: int, kind: str) -> bytes:
        return self.store.get_file(task_id, index, kind)

    @property
    def pending(self) -> int:
        return int(self.store.client.llen(QUEUE))

    def close(self) -> None:
        self.store.client.close()
