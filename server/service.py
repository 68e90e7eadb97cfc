"""The protection service that the REST API, the UI and the batch workers share (below all three).

`ProtectService` turns a base64 photo and request options into a protected file and its report,
and processes the chunks of batch jobs; `ApiError` is what it raises for the client (JSON
`{"error": kind, "message": message}`). Blocking: callers run it in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError

from deepshield import imaging
from deepshield.engine import Engine, ProtectionResult
from deepshield.errors import (
    CopyNotLocatedError,
    DeepshieldError,
    InvalidImageError,
    InvalidParameterError,
    OutOfMemoryError,
    ServerBusyError,
    UnknownModelError,
    WeightsError,
)
from server import observability
from server.jobs.base import ItemOutcome, JobInput
from server.redact import scrub
from server.schemas import ProtectOptions, VerifyRequest
from server.settings import IMAGE_FORMATS, Settings

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
BASE64_WRAP = 1.02  # tolerate line-wrapped base64 (76 chars + newline)
BUSY_RETRY_AFTER = 5  # seconds a client should wait after a 503 busy
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


# ------------------------------------------------------------------------------------ errors


class ApiError(HTTPException):
    """An error the client gets as JSON `{"error": kind, "message": message}`."""

    def __init__(self, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=dict(headers or {}))
        self.kind = kind
        self.message = message

    def response(self) -> JSONResponse:
        return error_response(self.status_code, self.kind, self.message, self.headers)


def error_response(status: int, kind: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": kind, "message": message, **extra}, status_code=status, headers=dict(headers or {}))


def from_deepshield(error: DeepshieldError) -> ApiError:
    """Map an engine error to its status code; messages are the engine's, minus server paths."""
    message = scrub(str(error))
    if isinstance(error, ServerBusyError):
        return ApiError(503, "server_busy", message, {"Retry-After": str(BUSY_RETRY_AFTER)})
    if isinstance(error, InvalidImageError):
        return ApiError(400, "invalid_image", message)
    if isinstance(error, CopyNotLocatedError):
        return ApiError(422, f"copy_{error.kind}", message)
    if isinstance(error, InvalidParameterError):
        return ApiError(422, "invalid_parameter", message)
    if isinstance(error, UnknownModelError):
        return ApiError(404, "unknown_model", message)
    if isinstance(error, WeightsError):
        return ApiError(503, "weights_unavailable", message)
    if isinstance(error, OutOfMemoryError):
        return ApiError(413, "too_large_for_device", message)
    log.error("server configuration error: %s", error)  # ManifestError and the like
    return ApiError(500, "internal_error", "the server is misconfigured; the operator has been told in the logs")


def encoded_budget(max_bytes: int) -> int:
    """Bytes that base64 of a `max_bytes` file can take inside a JSON string."""
    return math.ceil(max_bytes * 4 / 3 * BASE64_WRAP) + 1024


# ------------------------------------------------------------------------------------ images


def decode_image(text: str, settings: Settings, label: str = "image") -> bytes:
    """base64 (or a data URL) -> file bytes, checking the size before decoding and the
    dimensions from the header only (no pixel is decoded here)."""
    text = text.strip()
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ApiError(400, "invalid_image", f"{label}: a data URL must look like data:image/png;base64,<data>")
    limit = settings.max_image_bytes
    if len(text) > encoded_budget(limit):
        raise _image_too_large(label, f"about {len(text) * 3 // 4 / 1e6:.2f} MB", settings)
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_image", f"{label}: not valid base64 (use the standard alphabet A-Z a-z 0-9 + / with = padding)") from None
    return check_image_bytes(data, settings, label)


def check_image_bytes(data: bytes, settings: Settings, label: str = "image") -> bytes:
    """`data` if it is a non-empty image file within the size and dimension limits (header only)."""
    limit = settings.max_image_bytes
    if not data:
        raise ApiError(400, "invalid_image", f"{label}: the image is empty")
    if len(data) > limit:
        raise _image_too_large(label, f"{len(data) / 1e6:.2f} MB", settings)
    width, height, kind = _header(data, label)
    if kind in IMAGE_FORMATS and kind not in settings.supported_formats:  # others: the decoder refuses them (400)
        raise ApiError(415, "unsupported_media_type", f"{label}: {kind.upper()} images are not accepted here (SUPPORTED_FORMATS: {', '.join(settings.supported_formats)})")
    if max(width, height) > settings.max_image_dimension:
        raise ApiError(
            413,
            "image_too_large",
            f"{label}: {width}x{height} pixels is larger than this server accepts ({settings.max_image_dimension} pixels a side); downscale it first",
        )
    return data


def _image_too_large(label: str, size: str, settings: Settings) -> ApiError:
    return ApiError(413, "image_too_large", f"{label}: the image is {size}, above the limit of {settings.max_image_size_mb:g} MB; send a smaller file")


def _header(data: bytes, label: str) -> tuple[int, int, str]:
    """(width, height, format name in lower case) from the file header; PIL decodes no pixels until `load()`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return (*image.size, {"mpo": "jpeg"}.get(str(image.format).lower(), str(image.format).lower()))
    except UnidentifiedImageError:
        raise ApiError(400, "invalid_image", f"{label}: not a recognised image format (PNG, JPEG, WebP, TIFF, BMP, GIF)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(413, "image_too_large", f"{label}: the image claims enormous dimensions (a decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError):
        raise ApiError(400, "invalid_image", f"{label}: the image header is truncated or corrupt") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_b64(image: Image.Image) -> str:
    return _b64(_png(image))


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, NaN / infinity as null."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------------ service


class ProtectService:
    """What the endpoints and batch jobs do with the engine; blocking, run it in a thread."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    def resolve_model(self, model_type: str | None) -> str:
        """The model a request names (DEFAULT_MODEL when none): a model name, or an architecture
        name meaning its models-folder model, else its first manifest entry (`Engine.resolve`)."""
        return self.engine.resolve(model_type or self.settings.default_model)

    def ensure_ready(self, name: str) -> None:
        """Protection never downloads: refuse models whose weights are not on this server."""
        if self.engine.spec(name).preprocessing == "label_map":
            raise ApiError(
                422,
                "invalid_parameter",
                f"model {name!r} translates semantic label maps, not photos, so there is nothing in a photo to protect against it; pick a photo model",
            )
        status, reason = self.engine.status(name)
        if status in ("loaded", "cached"):
            return
        if status == "downloadable":
            raise ApiError(
                409,
                "model_not_ready",
                f"model {name!r} is not loaded or cached on this server: POST {PREFIX}/models/{name}/load first "
                "(it downloads the weights once), then retry",
            )
        raise ApiError(409, "model_not_ready", f"model {name!r} cannot be used: its weights are not on this server ({scrub(reason)}); ask the operator")

    def protect(self, image: str, options: ProtectOptions, label: str = "image") -> dict[str, Any]:
        """Decode, check, protect and encode one photo; raises ApiError / DeepshieldError."""
        model = self.resolve_model(options.model_type)
        self.ensure_ready(model)
        data = decode_image(image, self.settings, label)
        result = self.engine.protect(data, **self._engine_options(model, options))
        outcome = self._outcome(result, model, options, label)
        files = {k: _b64(v) for k, v in outcome.files.items()}
        return {
            "protected_image": files["protected"],
            "mime_type": outcome.entry["mime_type"],
            "deepfake_original": files.get("deepfake_original"),
            "deepfake_protected": files.get("deepfake_protected"),
            "metrics": outcome.entry["metrics"],
        }

    @staticmethod
    def _engine_options(model: str, options: ProtectOptions) -> dict[str, Any]:
        params = options.attack_params
        return {
            "model": model,
            "attack": options.attack(),
            "epsilon": params.epsilon,
            "iterations": params.iterations,
            "step_size": params.step_size,
            "seed": params.seed,
            "targets": params.targets,
            "detect_faces": params.detect_faces,
            "faces": params.faces,
            "robust": None if params.robust == "off" else params.robust,
            "check_robustness": params.check_robustness,
            "ssim_floor": params.ssim_floor,
            "allow_download": False,
        }

    def _outcome(self, result: ProtectionResult, model: str, options: ProtectOptions, label: str) -> ItemOutcome:
        """The encoded file (and the deepfakes as PNG when asked for) with its report."""
        observability.record_attack(result.metrics["seconds"], model, result.metrics["attack"], engine=self.engine)
        file_bytes, metrics = result.encode(FORMATS[options.output_format])
        metrics["input"] = label
        files = {"protected": file_bytes}
        if options.return_deepfakes:
            files.update(deepfake_original=_png(result.deepfake_original), deepfake_protected=_png(result.deepfake_protected))
        return ItemOutcome({"status": "ok", "mime_type": MIME[options.output_format], "metrics": jsonable(metrics)}, files)

    def process_items(self, inputs: Sequence[JobInput], options: Mapping[str, Any], on_step: Callable[[int, int], None]) -> list[ItemOutcome]:
        """A chunk of a batch job (see server.jobs.base.ItemProcessor): each photo is checked on
        its own (a bad one becomes an error outcome naming it), the good ones are attacked in one
        engine batch. Waits up to BATCH_TIMEOUT_SECONDS for a free slot instead of failing when busy."""
        parsed = ProtectOptions.model_validate(options)
        started = time.perf_counter()
        outcomes: list[ItemOutcome | None] = [None] * len(inputs)
        try:
            model = self.resolve_model(parsed.model_type)
            self.ensure_ready(model)
        except ApiError as error:
            return [_error_outcome(error)] * len(inputs)
        except DeepshieldError as error:
            return [_error_outcome(from_deepshield(error))] * len(inputs)
        good: dict[int, imaging.Photo] = {}  # decoded once here, attacked as they are
        for k, item in enumerate(inputs):
            try:
                if item.error:
                    raise ApiError(400, item.error["error"], item.error["message"])
                good[k] = imaging.load_photo(check_image_bytes(item.data, self.settings, item.filename), name=item.filename)
            except ApiError as error:
                outcomes[k] = _error_outcome(error)
            except DeepshieldError as error:
                outcomes[k] = _error_outcome(from_deepshield(error))
        for k, result in zip(good, self._protect_waiting(list(good.values()), model, parsed, on_step)):
            if isinstance(result, ApiError):
                outcomes[k] = _error_outcome(result)
            else:
                outcomes[k] = self._outcome(result, model, parsed, inputs[k].filename)
                outcomes[k].entry["processing_time"] = round((time.perf_counter() - started) / max(1, len(good)), 4)
        return [o for o in outcomes if o is not None]

    def _protect_waiting(
        self, images: list[imaging.Photo], model: str, options: ProtectOptions, on_step: Callable[[int, int], None]
    ) -> list[ProtectionResult | ApiError]:
        """engine.protect_batch of `images`, retried while the server is busy; when the batch
        fails, each photo alone, so the error lands on the photo that caused it."""
        if not images:
            return []
        deadline = time.monotonic() + self.settings.batch_timeout_seconds
        kwargs = {**self._engine_options(model, options), "on_step": lambda step, steps, _loss: on_step(step, steps)}
        while True:
            try:
                return list(self.engine.protect_batch(images, batch_size=len(images), **kwargs))
            except ServerBusyError as error:
                if time.monotonic() > deadline:
                    return [from_deepshield(error)] * len(images)
                time.sleep(1.0)
            except DeepshieldError as error:
                if len(images) == 1:
                    return [from_deepshield(error)]
                return [r for image in images for r in self._protect_waiting([image], model, options, on_step)]

    def verify(self, body: VerifyRequest) -> dict[str, Any]:
        """Decode both photos, check the models are here, compare (see deepshield.verify)."""
        names = [self.resolve_model(m) for m in body.models] if body.models else None
        for name in names or []:
            self.ensure_ready(name)
        original = decode_image(body.original, self.settings, "original")
        shared = decode_image(body.shared, self.settings, "shared")
        result = self.engine.verify(original, shared, models=names, allow_download=False)
        report = result.report()
        if body.return_deepfakes:
            for entry, check in zip(report["models"], result.checks):
                entry["deepfake_baseline"], entry["deepfake_shared"] = _png_b64(check.deepfake_baseline), _png_b64(check.deepfake_shared)
        return jsonable(report)


def job_input(filename: str, image: str, settings: Settings) -> JobInput:
    """A batch photo as received; one that cannot be decoded is kept as an error entry."""
    try:
        return JobInput(filename, decode_image(image, settings, filename))
    except ApiError as error:
        return JobInput(filename, error={"error": error.kind, "message": error.message})


def _error_outcome(error: ApiError) -> ItemOutcome:
    return ItemOutcome({"status": "error", "error": error.kind, "message": error.message})
