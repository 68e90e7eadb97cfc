"""Server settings from environment variables (names of the original service README where they exist).

Every variable is listed in README.md ("Server settings") and in `.env.example`.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
IMAGE_FORMATS = ("png", "jpeg", "webp", "tiff", "bmp", "gif")


def _env(*names: str, default: str) -> str:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return value
    return default


def _int(*names: str, default: int, minimum: int = 0) -> int:
    raw = _env(*names, default=str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{names[0]} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{names[0]} must be at least {minimum}, got {value}")
    return value


def _float(*names: str, default: float) -> float:
    raw = _env(*names, default=str(default))
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{names[0]} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{names[0]} must be positive, got {value}")
    return value


def _list(*names: str, default: str) -> list[str]:
    return [item.strip() for item in _env(*names, default=default).split(",") if item.strip()]


def _bool(name: str, default: bool) -> bool:
    raw = _env(name, default=str(default)).lower()
    if raw not in _TRUE | _FALSE:
        raise ValueError(f"{name} must be true or false, got {raw!r}")
    return raw in _TRUE


def _preload() -> tuple[bool, list[str]]:
    """PRELOAD_MODELS: true = every model whose weights are on the server, false = none, or names."""
    raw = _env("PRELOAD_MODELS", default="").strip()
    if raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE, []
    return False, _list("PRELOAD_MODELS", default="")


def _formats() -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys("jpeg" if f.lower() == "jpg" else f.lower() for f in _list("SUPPORTED_FORMATS", default=",".join(IMAGE_FORMATS))))
    unknown = [f for f in wanted if f not in IMAGE_FORMATS]
    if unknown:
        raise ValueError(f"SUPPORTED_FORMATS: unknown format {unknown[0]!r}; choose from {', '.join(IMAGE_FORMATS)}")
    return wanted


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 7860
    log_level: str = "INFO"
    device: str = "auto"
    default_model: str = "cyclegan-vintage"
    preload_all: bool = False
    preload_models: list[str] = field(default_factory=list)
    cache_models: bool = True
    max_concurrent: int = 1
    max_queue_size: int = 16
    rate_limit_per_minute: int = 60
    allowed_origins: list[str] = field(default_factory=list)
    max_image_size_mb: float = 10.0
    max_image_dimension: int = 4096
    max_batch_size: int = 16
    supported_formats: tuple[str, ...] = IMAGE_FORMATS
    batch_timeout_seconds: float = 300.0
    share: bool = False
    data_dir: str = ""
    broker_url: str = ""
    redis_url: str = ""
    result_cache_ttl: int = 0
    job_retention_hours: float = 24.0
    visibility_timeout: int = 3600
    worker_concurrency: int = 1
    admin_token: str = field(default="", repr=False)  # a secret: never logged, never in public()

    @classmethod
    def from_env(cls) -> Settings:
        """Read the environment; raises ValueError naming the variable when a value is malformed."""
        preload_all, preload_models = _preload()
        return cls(
            host=_env("HOST", default="0.0.0.0"),
            port=_int("PORT", "GRADIO_SERVER_PORT", default=7860, minimum=1),
            log_level=_env("LOG_LEVEL", default="DEBUG" if _bool("DEBUG", False) else "INFO").upper(),
            device=_env("DEEPSHIELD_DEVICE", "DEVICE", default="auto"),
            default_model=_env("DEFAULT_MODEL", default="cyclegan-vintage"),
            preload_all=preload_all,
            preload_models=preload_models,
            cache_models=_bool("CACHE_MODELS", True),
            max_concurrent=_int("DEEPSHIELD_MAX_CONCURRENT", "MAX_CONCURRENT", default=1, minimum=1),
            max_queue_size=_int("MAX_QUEUE_SIZE", "DEEPSHIELD_MAX_QUEUE", default=16),
            rate_limit_per_minute=_int("RATE_LIMIT_PER_MINUTE", default=60),
            allowed_origins=_list("ALLOWED_ORIGINS", default=""),
            max_image_size_mb=_float("MAX_IMAGE_SIZE_MB", default=10.0),
            max_image_dimension=_int("MAX_IMAGE_DIMENSION", default=4096, minimum=1),
            max_batch_size=_int("MAX_BATCH_SIZE", default=16, minimum=1),
            supported_formats=_formats(),
            batch_timeout_seconds=_float("BATCH_TIMEOUT_SECONDS", default=300.0),
            share=_env("GRADIO_SHARE", default="0").lower() in _TRUE,
            data_dir=_env("DEEPSHIELD_DATA_DIR", default=""),
            broker_url=_env("CELERY_BROKER_URL", "REDIS_URL", default=""),
            redis_url=_env("REDIS_URL", "CELERY_BROKER_URL", default=""),
            result_cache_ttl=_int("RESULT_CACHE_TTL", default=0),
            job_retention_hours=_float("JOB_RETENTION_HOURS", default=24.0),
            visibility_timeout=_int("CELERY_VISIBILITY_TIMEOUT", default=3600, minimum=1),
            worker_concurrency=_int("CELERY_WORKER_CONCURRENCY", default=1, minimum=1),
            admin_token=_env("DEEPSHIELD_ADMIN_TOKEN", "ADMIN_TOKEN", default=""),
        )

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_size_mb * 1024 * 1024)

    def public(self) -> dict[str, Any]:
        """What /health may show (no secrets live here, but keep the surface small)."""
        return {
            "max_concurrent": self.max_concurrent,
            "max_queue_size": self.max_queue_size,
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "max_image_size_mb": self.max_image_size_mb,
            "max_image_dimension": self.max_image_dimension,
            "max_batch_size": self.max_batch_size,
            "supported_formats": list(self.supported_formats),
            "job_backend": "celery" if self.broker_url else "embedded",
            "model_management": "admin token" if self.admin_token else "open",
        }

    def admin_allowed(self, token: str | None) -> bool:
        """Model management (load / unload) is open without DEEPSHIELD_ADMIN_TOKEN, else needs it."""
        return not self.admin_token or hmac.compare_digest((token or "").encode(), self.admin_token.encode())
