"""Admission: at most `max_concurrent` protections run at once, and at most `max_queue` callers
wait for a slot; beyond that a caller is refused as busy, unless it queues on its own side
(`Admission.caller_queue`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from deepshield.errors import ServerBusyError

READY_POLL_S = 0.02  # how often a pooled request checks whether another one attacked its photo
_CALLER_QUEUES: ContextVar[bool] = ContextVar("deepshield_caller_queues", default=False)  # see Admission.caller_queue


class Admission:
    """The concurrency limit every protection runs under, and the bounded line of callers waiting
    for a slot (`max_concurrent`, `max_queue`: from DEEPSHIELD_MAX_CONCURRENT, DEEPSHIELD_MAX_QUEUE
    when not given)."""

    def __init__(self, max_concurrent: int | None = None, max_queue: int | None = None) -> None:
        self.max_concurrent = max(1, max_concurrent or int(os.environ.get("DEEPSHIELD_MAX_CONCURRENT", "1")))
        self.max_queue = max(0, max_queue if max_queue is not None else int(os.environ.get("DEEPSHIELD_MAX_QUEUE", "16")))
        self._lock = threading.RLock()
        self._slots = threading.BoundedSemaphore(self.max_concurrent)
        self._waiting = 0
        self._running = 0

    @contextmanager
    def admission(self, ready: threading.Event | None = None) -> Iterator[bool]:
        """Run under the concurrency limit; refuse at once when `max_queue` callers already wait
        (unless the caller bounds its own waiting line, see `caller_queue`). Yields True once a
        slot is held; with `ready`, stops waiting and yields False (no slot) when it is set.

        Every entry point (UI, REST, CLI, Python) goes through here, so nothing bypasses the limit.
        """
        with self._lock:
            if not _CALLER_QUEUES.get() and self._waiting >= self.max_queue and self._running >= self.max_concurrent:
                raise ServerBusyError(
                    f"the server is busy: {self._running} protection(s) running and {self._waiting} waiting "
                    f"(limit {self.max_queue}); retry in a few seconds"
                )
            self._waiting += 1
        acquired = False
        try:
            while not acquired and not (ready is not None and ready.is_set()):
                acquired = self._slots.acquire(timeout=None if ready is None else READY_POLL_S)
        finally:
            with self._lock:
                self._waiting -= 1
        if not acquired:
            yield False
            return
        with self._lock:
            self._running += 1
        try:
            yield True
        finally:
            with self._lock:
                self._running -= 1
            self._slots.release()

    @staticmethod
    @contextmanager
    def caller_queue() -> Iterator[None]:
        """Calls made inside wait for a slot however many others wait: for callers that already
        hold a place in a bounded queue of their own (the UI's Gradio queue), so a request it
        admitted is never turned away as busy afterwards."""
        token = _CALLER_QUEUES.set(True)
        try:
            yield
        finally:
            _CALLER_QUEUES.reset(token)

    @property
    def queue_depth(self) -> int:
        """Callers waiting for a slot."""
        return self._waiting

    @property
    def running(self) -> int:
        return self._running
