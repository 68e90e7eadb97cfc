"""Batch jobs behind one interface (`JobBackend`): embedded threads with a disk store by
default, Celery workers over Redis when CELERY_BROKER_URL or REDIS_URL is set."""

from __future__ import annotations

from pathlib import Path

from server.jobs.base import (
    COMPLETED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    ItemOutcome,
    ItemProcessor,
    JobBackend,
    JobInput,
    JobNotFinishedError,
    JobQueueFullError,
    UnknownTaskError,
    default_data_dir,
)
from server.jobs.embedded import EmbeddedJobs
from server.settings import Settings

__all__ = [
    "COMPLETED", "FAILED", "FINISHED", "INTERRUPTED", "QUEUED", "RUNNING",
    "EmbeddedJobs", "ItemOutcome", "ItemProcessor", "JobBackend", "JobInput",
    "JobNotFinishedError", "JobQueueFullError", "UnknownTaskError", "create_backend",
]


def create_backend(settings: Settings, process: ItemProcessor, *, workers: int = 1) -> JobBackend:
    """Celery over Redis when `settings.broker_url` is set (the workers process the photos;
    `process` is unused here), else embedded worker threads storing jobs in DEEPSHIELD_DATA_DIR."""
    if settings.broker_url:
        from server.jobs.celery_jobs import CeleryJobs, make_celery
        from server.jobs.redis_store import RedisJobStore

        store = RedisJobStore.from_url(settings.redis_url, ttl=int(settings.job_retention_hours * 3600))
        return CeleryJobs(make_celery(settings), store, max_pending=settings.max_queue_size)
    root = Path(settings.data_dir) if settings.data_dir else default_data_dir()
    return EmbeddedJobs(
        process, root, workers=workers, max_pending=settings.max_queue_size, ttl_seconds=settings.job_retention_hours * 3600
    )
