"""Jobs in Redis, shared by the API (submits, reads status) and the Celery workers (run jobs).

Keys (all expire `ttl` seconds after their last write, so nothing outlives its retention):

    deepshield:job:<id>                 the record, JSON (see server.jobs.base)
    deepshield:job:<id>:input:<index>   a photo as received
    deepshield:job:<id>:file:<index>.<kind>   a result file
    deepshield:job:<id>:lease           held by the worker running the job; expires unless renewed
    deepshield:cache:<sha256>           an outcome cached by photo + options (optional)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import redis

from server.jobs.base import ItemOutcome, UnknownTaskError, file_name

PREFIX = "deepshield"


class RedisJobStore:
    """Records, inputs, result files and worker leases of jobs in one Redis database."""

    def __init__(self, client: redis.Redis, *, ttl: int = 24 * 3600) -> None:
        self.client = client
        self.ttl = ttl

    @classmethod
    def from_url(cls, url: str, *, ttl: int = 24 * 3600) -> RedisJobStore:
        return cls(redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30), ttl=ttl)

    def _key(self, task_id: str, *parts: str) -> str:
        if not task_id.isalnum():
            raise UnknownTaskError(f"no batch job with id {task_id!r}")
        return ":".join((PREFIX, "job", task_id, *parts))

    # ---------------------------------------------------------------- records and files

    def save(self, record: Mapping[str, Any]) -> None:
        self.client.set(self._key(record["task_id"]), json.dumps(record), ex=self.ttl)

    def record(self, task_id: str) -> dict[str, Any]:
        raw = self.client.get(self._key(task_id))
        if raw is None:
            raise UnknownTaskError(f"no batch job with id {task_id!r} (finished jobs are kept for {self.ttl / 3600:g} hours)")
        return json.loads(raw)

    def put_input(self, task_id: str, index: int, data: bytes) -> None:
        self.client.set(self._key(task_id, "input", str(index)), data, ex=self.ttl)

    def get_input(self, task_id: str, index: int) -> bytes | None:
        return self.client.get(self._key(task_id, "input", str(index)))

    def drop_inputs(self, task_id: str, count: int) -> None:
        if count:
            self.client.delete(*(self._key(task_id, "input", str(i)) for i in range(count)))

    def put_file(self, task_id: str, index: int, kind: str, data: bytes) -> None:
        self.client.set(self._key(task_id, "file", file_name(index, kind)), data, ex=self.ttl)

    def get_file(self, task_id: str, index: int, kind: str) -> bytes:
        data = self.client.get(self._key(task_id, "file", file_name(index, kind)))
        if data is None:
            raise UnknownTaskError(f"the results of job {task_id!r} have expired")
        return data

    # ---------------------------------------------------------------- leases

    def acquire_lease(self, task_id: str, owner: str, seconds: int) -> bool:
        """Take the job for `owner` unless another live worker holds it."""
        key = self._key(task_id, "lease")
        if self.client.set(key, owner, nx=True, ex=seconds):
            return True
        return self.client.get(key) == owner.encode()

    def renew_lease(self, task_id: str, seconds: int) -> None:
        self.client.expire(self._key(task_id, "lease"), seconds)

    def release_lease(self, task_id: str) -> None:
        self.client.delete(self._key(task_id, "lease"))

    def lease_alive(self, task_id: str) -> bool:
        return bool(self.client.exists(self._key(task_id, "lease")))


class RedisResultCache:
    """Outcomes keyed by sha256(photo bytes + options), kept `ttl` seconds: the same photo with
    the same settings (seed included) is not attacked twice."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.client = client
        self.ttl = ttl

    @staticmethod
    def key(data: bytes, options: Mapping[str, Any]) -> str:
        digest = hashlib.sha256(data)
        digest.update(json.dumps(options, sort_keys=True).encode())
        return f"{PREFIX}:cache:{digest.hexdigest()}"

    def get(self, data: bytes, options: Mapping[str, Any]) -> ItemOutcome | None:
        stored = self.client.hgetall(self.key(data, options))
        if not stored or b"entry" not in stored:
            return None
        entry = json.loads(stored.pop(b"entry"))
        return ItemOutcome({**entry, "cached": True}, {k.decode(): v for k, v in stored.items()})

    def put(self, data: bytes, options: Mapping[str, Any], outcome: ItemOutcome) -> None:
        key = self.key(data, options)
        with self.client.pipeline() as pipe:
            pipe.hset(key, mapping={"entry": json.dumps(outcome.entry), **outcome.files})
            pipe.expire(key, self.ttl)
            pipe.execute()
