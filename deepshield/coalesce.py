"""Single-photo requests that wait for the engine with the same settings, pooled so that whichever
of them gets a slot first attacks all of them in one batch (see Engine.protect).

Each request keeps its own seed (the attack starts every photo from its own generator), so a
photo gets the same attack pooled or alone: in fp32 the same perturbation up to floating-point
reassociation, in bf16 up to how the batch rounds (see Engine.protect_batch).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from deepshield import imaging


@dataclass(eq=False)
class Ticket:
    """One waiting request: its photo, seed and step callback; `done` is set with its outcome."""

    photo: imaging.Photo
    seed: int
    on_step: Callable[[int, int, Tensor], None] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class RequestPool:
    """Waiting tickets grouped by a key of their settings (everything but the photo and seed)."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[Ticket]] = {}
        self._lock = threading.Lock()

    def add(self, key: str, ticket: Ticket) -> None:
        with self._lock:
            self._waiting.setdefault(key, []).append(ticket)

    def claim(self, key: str, ticket: Ticket, limit: int) -> list[Ticket]:
        """`ticket` and up to `limit - 1` others with the same key, oldest first, taken out of the
        pool; empty when another request already claimed `ticket`."""
        with self._lock:
            waiting = self._waiting.get(key, [])
            if ticket not in waiting:
                return []
            waiting.remove(ticket)
            batch = [ticket, *waiting[: max(0, limit - 1)]]
            del waiting[: max(0, limit - 1)]
            if not waiting:
                self._waiting.pop(key, None)
            return batch

    def withdraw(self, key: str, ticket: Ticket) -> bool:
        """Take `ticket` out unprocessed; False when another request has already claimed it."""
        with self._lock:
            waiting = self._waiting.get(key, [])
            if ticket not in waiting:
                return False
            waiting.remove(ticket)
            if not waiting:
                self._waiting.pop(key, None)
            return True
