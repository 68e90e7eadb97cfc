"""Structured JSON logs, request logging, Prometheus metrics, CORS and a retry hint on Gradio's
queue-full refusals for the FastAPI app.

`install(api, engine, settings)` wires everything onto one app; each app gets its own
`CollectorRegistry`, so several apps can live in one process (tests). `record_attack` is the
one call the REST API and the UI make after a protection; importing this module has no side
effects.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deepshield.engine import Engine
from server.settings import Settings

access_log = logging.getLogger("server.access")

GRADIO_API = "/gradio_api/"
QUEUE_FULL_RETRY_AFTER = 5  # seconds, as REST's busy 503 (server.rest.BUSY_RETRY_AFTER)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ATTACK_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)

# ------------------------------------------------------------------------------------ logging

_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName", "color_message"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra={...}` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(entry, default=str)


class _StderrHandler(logging.Handler):
    """Writes to whatever `sys.stderr` is at the time of the call (test capture swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def configure_logging(level: str = "INFO") -> None:
    """Send the root logger's records to stderr as JSON lines at `level` (idempotent)."""
    level = str(level).upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)


# ------------------------------------------------------------------------------------ metrics


class AppMetrics:
    """The Prometheus metrics of one app, in a registry of its own."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.engine_ref = weakref.ref(engine)
        self.requests = Counter(
            "deepshield_http_requests", "HTTP requests by method, route template and status.", ["method", "path", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "deepshield_http_request_duration_seconds", "HTTP request latency by method and route template.", ["method", "path"],
            buckets=REQUEST_BUCKETS, registry=self.registry,
        )
        self.attack_seconds = Histogram(
            "deepshield_attack_seconds", "Attack time per image (the report's `seconds`) by model and attack.", ["model", "attack"],
            buckets=ATTACK_BUCKETS, registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine))


class _EngineCollector(Collector):
    """Engine gauges read at scrape time: queue depth, running attacks, loaded models."""

    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engine = self._engine()
        if engine is None:
            return
        yield GaugeMetricFamily("deepshield_queue_depth", "Protections waiting for a slot.", value=engine.queue_depth)
        yield GaugeMetricFamily("deepshield_running", "Protections running now.", value=engine.running)
        yield GaugeMetricFamily("deepshield_max_concurrent", "Protections allowed to run at once.", value=engine.max_concurrent)
        loaded = GaugeMetricFamily("deepshield_model_loaded", "1 when the model is in memory.", labels=["model"])
        for name in engine.specs:
            loaded.add_metric([name], 1.0 if engine.is_loaded(name) else 0.0)
        yield loaded
        yield GaugeMetricFamily("deepshield_models_loaded", "Models in memory.", value=sum(engine.is_loaded(n) for n in engine.specs))


_SINKS: weakref.WeakSet[AppMetrics] = weakref.WeakSet()
_SINKS_LOCK = threading.Lock()


def record_attack(seconds: float, model: str | list[str] | tuple[str, ...], attack: str, *, engine: Engine | None = None) -> None:
    """Observe one protected image's attack time (`result.metrics["seconds"]`).

    Recorded in the metrics of every installed app, or only of the apps serving `engine` when
    given. Safe to call from any thread; does nothing before `install`.
    """
    label = model if isinstance(model, str) else "+".join(model)
    with _SINKS_LOCK:
        sinks = list(_SINKS)
    for sink in sinks:
        if engine is None or sink.engine_ref() is engine:
            sink.attack_seconds.labels(model=label, attack=str(attack)).observe(float(seconds))


# ------------------------------------------------------------------------------------ middleware


def _route_template(scope: Scope) -> str:
    """The matched route's path template (bounded label set); `unmatched` for 404s."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(template) if template else "unmatched"


class ObservabilityMiddleware:
    """Times every HTTP request, counts it in Prometheus and writes one access-log line."""

    def __init__(self, app: ASGIApp, metrics: AppMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before responding

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            elapsed = time.perf_counter() - started
            method, template = scope["method"], _route_template(scope)
            self.metrics.requests.labels(method=method, path=template, status=str(status)).inc()
            self.metrics.latency.labels(method=method, path=template).observe(elapsed)
            client = scope.get("client")
            access_log.info(
                "%s %s %d",
                method,
                scope["path"],
                status,
                extra={
                    "method": method,
                    "path": scope["path"],
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "client": client[0] if client else None,
                },
            )


class RetryHintMiddleware:
    """Adds `Retry-After` to the Gradio API's 503s ("Queue is full. Max size is N ..."), which
    Gradio sends without one, so a refusal from either API says when to try again."""

    def __init__(self, app: ASGIApp, seconds: int = QUEUE_FULL_RETRY_AFTER) -> None:
        self.app = app
        self.header = (b"retry-after", str(seconds).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or GRADIO_API not in scope["path"]:
            await self.app(scope, receive, send)
            return

        async def send_with_hint(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    message = {**message, "headers": [*headers, self.header]}
            await send(message)

        await self.app(scope, receive, send_with_hint)


# ------------------------------------------------------------------------------------ install


def install(api: FastAPI, engine: Engine, settings: Settings) -> AppMetrics:
    """JSON logs at settings.log_level, request logging + metrics middleware, GET /metrics,
    CORS for settings.allowed_origins (no origins: no cross-origin access, the Gradio routes
    included), and Retry-After on
    the Gradio API's queue-full 503s."""
    configure_logging(settings.log_level)
    metrics = AppMetrics(engine)
    with _SINKS_LOCK:
        _SINKS.add(metrics)
    api.state.metrics = metrics

    api.add_middleware(RetryHintMiddleware)
    # Always installed, also with no origins: the mounted Gradio app answers cross-origin
    # requests with its own permissive policy unless its parent app configures CORS.
    api.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.allowed_origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["Retry-After"],
        max_age=600,
    )
    # Added last = outermost: preflights and CORS refusals are logged and counted too.
    api.add_middleware(ObservabilityMiddleware, metrics=metrics)

    @api.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        # Scraping reads engine state under its lock; keep that off the event loop.
        body = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return metrics
