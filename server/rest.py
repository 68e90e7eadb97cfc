"""REST API v1 (DESIGN.md s.3): protect one photo or a batch, models, attack config, health.

Every route goes through `GuardedRoute`, which in this order: refuses a client over the rate
limit (429, POST routes only), refuses a body whose Content-Length, or whose streamed size,
exceeds the route's budget (413) before anything is read or decoded, then maps every error to
JSON `{"error": kind, "message": text}`. Engine calls run in worker threads, so the event loop
keeps answering /health while attacks run; the engine's `admission()` is the shared
concurrency limit of the UI, REST and batch jobs alike.

Rate limiting (POST routes: protect image / batch, model load / unload; GETs such as status
polling are free) counts per client = the TCP peer, `request.client.host`. X-Forwarded-For is not
read here because any client can forge it; uvicorn's proxy-headers support already replaces
`request.client` with the X-Forwarded-For client when the peer is a trusted proxy
(`FORWARDED_ALLOW_IPS`, default 127.0.0.1). Behind a remote reverse proxy, set
FORWARDED_ALLOW_IPS to its address, or every user shares the proxy's budget.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import time
import warnings
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

import deepshield
from deepshield import attacks, imaging
from deepshield.engine import Engine, ProtectionResult
from deepshield.errors import (
    DeepshieldError,
    InvalidImageError,
    InvalidParameterError,
    OutOfMemoryError,
    ServerBusyError,
    UnknownModelError,
    WeightsError,
)
from server import observability
from server.jobs import (
    JobBackend,
    JobInput,
    JobNotFinishedError,
    JobQueueFullError,
    UnknownTaskError,
    create_backend,
    results,
)
from server.jobs.base import ItemOutcome
from server.ratelimit import SlidingWindowLimiter
from server.redact import scrub
from server.schemas import (
    RANDOM_START_RULE,
    STEP_SIZE_MAX,
    BatchAccepted,
    ErrorResponse,
    ProtectBatchRequest,
    ProtectImageRequest,
    ProtectImageResponse,
    ProtectOptions,
    VerifyRequest,
)
from server.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
SMALL_BODY = 64 * 1024  # bodies of routes that take no image
JSON_SLACK = 64 * 1024  # field names, options, data-URL prefix
BASE64_WRAP = 1.02  # tolerate line-wrapped base64 (76 chars + newline)
BUSY_RETRY_AFTER = 5  # seconds a client should wait after a 503 busy
BATCH_BUSY_WAIT = 300.0  # a batch item waits this long for a free slot before failing
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


_KIND_BY_STATUS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def _validation_response(error: RequestValidationError) -> JSONResponse:
    """422 in the API's shape; never echoes the input (it may be megabytes of base64)."""
    details = []
    for item in error.errors():
        loc = [str(part) for part in item.get("loc", ()) if part != "body"]
        field = ".".join(loc) or "body"
        message = "the body is not valid JSON" if item.get("type") == "json_invalid" else str(item.get("msg", "invalid"))
        details.append({"field": field, "message": message})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:3]) or "invalid request"
    return error_response(422, "invalid_request", summary, details=details)


# ------------------------------------------------------------------------------------ guard


def _encoded_budget(max_bytes: int) -> int:
    """Bytes that base64 of a `max_bytes` file can take inside a JSON string."""
    return math.ceil(max_bytes * 4 / 3 * BASE64_WRAP) + 1024


def body_limit(path: str, settings: Settings) -> int:
    """The largest request body a route accepts."""
    if path == f"{PREFIX}/protect/image":
        return _encoded_budget(settings.max_image_bytes) + JSON_SLACK
    if path == f"{PREFIX}/protect/batch":
        return settings.max_batch_size * _encoded_budget(settings.max_image_bytes) + JSON_SLACK
    if path == f"{PREFIX}/verify":  # the original and the shared copy
        return 2 * _encoded_budget(settings.max_image_bytes) + JSON_SLACK
    return SMALL_BODY


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"the request body is larger than this endpoint accepts ({limit / 1e6:.2f} MB): send a smaller image "
        "(MAX_IMAGE_SIZE_MB applies to each image) or fewer images per batch",
    )


def _limited(request: Request, limit: int) -> Request:
    """The request with a body reader that refuses more than `limit` bytes (chunked uploads)."""
    received = 0
    receive = request.receive

    async def limited_receive() -> Any:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
        return message

    return Request(request.scope, limited_receive)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def make_route_class(settings: Settings, limiter: SlidingWindowLimiter) -> type[APIRoute]:
    """An APIRoute that rate-limits, size-limits and maps errors to JSON (see module docstring)."""

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handle = super().get_route_handler()
            limit = body_limit(self.path_format, settings)
            rate_limited = "POST" in self.methods

            async def guarded(request: Request) -> Response:
                try:
                    if rate_limited and (wait := limiter.hit(_client(request))) is not None:
                        raise ApiError(
                            429,
                            "rate_limited",
                            f"too many requests: at most {limiter.limit} per minute per client, all POST endpoints of this API together; retry in {wait} s",
                            {"Retry-After": str(wait)},
                        )
                    declared = request.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise _too_large(limit)
                    return await handle(_limited(request, limit))
                except ApiError as error:
                    return error.response()
                except RequestValidationError as error:
                    return _validation_response(error)
                except DeepshieldError as error:
                    return from_deepshield(error).response()
                except HTTPException as error:
                    kind = _KIND_BY_STATUS.get(error.status_code, "http_error")
                    return error_response(error.status_code, kind, str(error.detail), error.headers)
                except Exception:
                    log.exception("unhandled error in %s %s", request.method, request.url.path)
                    return error_response(500, "internal_error", "internal server error; it has been logged, retry later or report it")

            return guarded

    return GuardedRoute


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
    if len(text) > _encoded_budget(limit):
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
    width, height = _header_size(data, label)
    if max(width, height) > settings.max_image_dimension:
        raise ApiError(
            413,
            "image_too_large",
            f"{label}: {width}x{height} pixels is larger than this server accepts ({settings.max_image_dimension} pixels a side); downscale it first",
        )
    return data


def _image_too_large(label: str, size: str, settings: Settings) -> ApiError:
    return ApiError(413, "image_too_large", f"{label}: the image is {size}, above the limit of {settings.max_image_size_mb:g} MB; send a smaller file")


def _header_size(data: bytes, label: str) -> tuple[int, int]:
    """(width, height) from the file header; PIL decodes no pixels until `load()`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
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
        """A manifest name as is; an architecture name -> the first manifest entry of it."""
        name = model_type or self.settings.default_model
        if name in self.engine.specs:
            return name
        key = name.lower()
        for spec in self.engine.specs.values():
            architecture = spec.architecture.lower()
            if key in (architecture, architecture.split("-")[0]):
                return spec.name
        architectures = sorted({s.architecture.split("-")[0] for s in self.engine.specs.values()})
        raise ApiError(
            404,
            "unknown_model",
            f"unknown model {name!r}: use a name from GET {PREFIX}/models ({', '.join(self.engine.specs)}) or an architecture ({', '.join(architectures)})",
        )

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
        engine batch. Waits up to BATCH_BUSY_WAIT for a free slot instead of failing when busy."""
        parsed = ProtectOptions.model_validate(options)
        started = time.perf_counter()
        outcomes: list[ItemOutcome | None] = [None] * len(inputs)
        try:
            model = self.resolve_model(parsed.model_type)
            self.ensure_ready(model)
        except ApiError as error:
            return [_error_outcome(error)] * len(inputs)
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
        deadline = time.monotonic() + BATCH_BUSY_WAIT
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



def _job_input(filename: str, image: str, settings: Settings) -> JobInput:
    """A batch photo as received; one that cannot be decoded is kept as an error entry."""
    try:
        return JobInput(filename, decode_image(image, settings, filename))
    except ApiError as error:
        return JobInput(filename, error={"error": error.kind, "message": error.message})


def _error_outcome(error: ApiError) -> ItemOutcome:
    return ItemOutcome({"status": "error", "error": error.kind, "message": error.message})


# ------------------------------------------------------------------------------------ router

_ERROR_TEXT = {
    400: "The image is not valid base64 or not a decodable image.",
    401: "Model management needs the admin token (Authorization: Bearer ...).",
    403: "Wrong admin token.",
    404: "Unknown model or task.",
    409: "The model's weights are not on the server yet: POST /api/v1/models/{name}/load.",
    413: "Request body, image file or image dimensions above the server's limits.",
    422: "A parameter is missing or out of range.",
    429: "Rate limited; see the Retry-After header.",
    500: "Unexpected server error (logged server-side).",
    503: "Server busy (see Retry-After) or weights unavailable.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error codes (500 always), all in the ErrorResponse shape."""
    return {code: {"model": ErrorResponse, "description": _ERROR_TEXT[code]} for code in sorted({*codes, 500})}


def attack_methods() -> dict[str, Any]:
    """The three attacks with their parameter ranges and defaults."""
    low, high = attacks.EPSILON_RANGE
    epsilon = {"min_exclusive": low, "max": high, "default": 0.05, "scale": "[-1, 1]: 0.05 = 6.4/255"}
    iterations = {"min": 1, "max": attacks.MAX_ITERATIONS, "default": 10}
    step_size = {"min_exclusive": 0.0, "max": STEP_SIZE_MAX, "default": 0.01}
    return {
        "default": "pgd",
        "random_start_rule": RANDOM_START_RULE,
        "strengths": {name: {"epsilon": e, "epsilon_255": round(e * 127.5, 2)} for name, e in attacks.STRENGTHS.items()},
        "robust": {
            "off": "the plain attack (default)",
            "eot": "optimises through differentiable JPEG (75, and random qualities), down/up-scaling, blur and crop shifts, one per iteration, so the protection survives sharing",
            "spread-spectrum": "cycles Gaussian and box blurs of several sizes (the paper's defence against blurring)",
            "framing": "perturbs the whole photo and optimises over the deepfake maker's framings (any crop, scale, resize filter; "
            "jittered, turned face crops) after sharing (JPEG, downscaling, blur)",
        },
        "methods": [
            {
                "name": "fgsm",
                "description": "Fast gradient sign method: one step of size epsilon. Fast, but rarely disrupts on its own.",
                "random_start": False,
                "parameters": {"epsilon": epsilon, "iterations": {"fixed": 1}, "step_size": {"fixed": "epsilon"}},
            },
            {
                "name": "ifgsm",
                "description": "Iterative FGSM: `iterations` signed-gradient steps of `step_size`, each projected onto the epsilon ball.",
                "random_start": False,
                "parameters": {"epsilon": epsilon, "iterations": iterations, "step_size": step_size},
            },
            {
                "name": "pgd",
                "description": "Projected gradient descent: I-FGSM from a uniform random start in the epsilon ball (the default).",
                "random_start": True,
                "parameters": {"epsilon": epsilon, "iterations": iterations, "step_size": step_size},
            },
        ],
    }


def create_router(
    engine: Engine, settings: Settings, jobs: JobBackend | None = None, limiter: SlidingWindowLimiter | None = None
) -> APIRouter:
    """The REST API v1 routes, /health included, bound to `engine` and `settings`; batch jobs go
    to `jobs` (default: the backend `settings` choose, see server.jobs.create_backend); POST
    requests count against `limiter` (default: one of RATE_LIMIT_PER_MINUTE for this router)."""
    service = ProtectService(engine, settings)
    jobs = jobs or create_backend(settings, service.process_items, workers=engine.max_concurrent)
    limiter = limiter or SlidingWindowLimiter(settings.rate_limit_per_minute, window=60.0)
    router = APIRouter(route_class=make_route_class(settings, limiter))
    started = time.time()

    @router.post(f"{PREFIX}/protect/image", response_model=ProtectImageResponse, responses=errors(400, 404, 409, 413, 422, 429, 503), tags=["protect"], summary="Protect one photo")
    async def protect_image(body: ProtectImageRequest) -> dict[str, Any]:
        """Adds an adversarial perturbation so the chosen generator's deepfake of the photo fails."""
        begin = time.perf_counter()
        result = await run_in_threadpool(service.protect, body.image, body)
        return {**result, "processing_time": round(time.perf_counter() - begin, 4)}

    @router.post(f"{PREFIX}/protect/batch", response_model=BatchAccepted, status_code=202, responses=errors(404, 409, 413, 422, 429, 503), tags=["protect"], summary="Protect several photos")
    async def protect_batch(body: ProtectBatchRequest) -> dict[str, Any]:
        """Starts a background job and answers at once; poll the status URL for the results."""
        if len(body.images) > settings.max_batch_size:
            raise ApiError(422, "invalid_request", f"{len(body.images)} images in one batch; this server takes at most {settings.max_batch_size}")
        model = service.resolve_model(body.model_type)
        await run_in_threadpool(service.ensure_ready, model)
        options = body.model_dump(mode="json", exclude={"images"}) | {"model_type": model}
        inputs = [_job_input(image.filename, image.image, settings) for image in body.images]
        try:
            task_id = await run_in_threadpool(jobs.submit, inputs, options)
        except JobQueueFullError as error:
            raise ApiError(503, "server_busy", str(error), {"Retry-After": str(BUSY_RETRY_AFTER * 6)}) from None
        return {"task_id": task_id, "status": "queued", "total": len(body.images), "status_url": f"{PREFIX}/protect/status/{task_id}"}

    @router.post(f"{PREFIX}/verify", responses=errors(400, 404, 409, 413, 422, 429, 503), tags=["protect"], summary="Is a shared copy still protected?")
    async def verify(body: VerifyRequest) -> dict[str, Any]:
        """Compares each model's deepfake of the shared copy with its deepfake of the original shared
        the same way (the shared size and JPEG tables): `models[].mse`, `disrupted`, and `protected`
        when every model is still disrupted."""
        return await run_in_threadpool(service.verify, body)

    @router.get(f"{PREFIX}/protect/status/{{task_id}}", responses=errors(404), tags=["protect"], summary="Batch job status and results")
    def protect_status(task_id: str, images: bool = True) -> dict[str, Any]:
        """status (queued, running, completed, failed = every photo failed, interrupted), progress
        {done, total}, the photo being attacked (`current`), per-photo results (the files inlined as
        base64 unless `images=false`), and `result_urls` (zip and JSON report) once finished."""
        try:
            return results.status_view(jobs, task_id, PREFIX, images=images)
        except UnknownTaskError as error:
            raise ApiError(404, "unknown_task", str(error)) from None

    @router.get(
        f"{PREFIX}/protect/result/{{task_id}}",
        responses={**errors(404, 409), 200: {"content": {"application/zip": {}, "application/json": {}}}},
        tags=["protect"],
        summary="A finished batch job's results: a zip or a JSON report",
    )
    def protect_result(task_id: str, format: Literal["zip", "json"] = "zip") -> Response:
        """`format=zip` (default): the protected photos under their input names (`a.jpg` -> `a.png`),
        the deepfakes when asked for, and report.json; `format=json`: the report alone."""
        try:
            if format == "json":
                return JSONResponse(results.report(jobs, task_id))
            headers = {"Content-Disposition": f'attachment; filename="deepshield-{task_id}.zip"'}
            return Response(results.archive(jobs, task_id), media_type="application/zip", headers=headers)
        except UnknownTaskError as error:
            raise ApiError(404, "unknown_task", str(error)) from None
        except JobNotFinishedError as error:
            raise ApiError(409, "not_finished", str(error), {"Retry-After": str(BUSY_RETRY_AFTER)}) from None

    @router.get(f"{PREFIX}/models", tags=["models"], summary="Every model and its status")
    def list_models() -> list[dict[str, Any]]:
        """As `python -m deepshield models --json`: status loaded / cached / downloadable / unavailable."""
        return [{**row, "reason": scrub(row["reason"])} for row in engine.list_models()]

    def require_admin(request: Request) -> None:
        """With DEEPSHIELD_ADMIN_TOKEN set, model management needs `Authorization: Bearer <token>`."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if settings.admin_token and scheme.lower() != "bearer":
            raise ApiError(401, "unauthorized", "loading and unloading models needs the admin token: send Authorization: Bearer <DEEPSHIELD_ADMIN_TOKEN>",
                           {"WWW-Authenticate": "Bearer"})
        if not settings.admin_allowed(token.strip()):
            raise ApiError(403, "forbidden", "wrong admin token")

    @router.post(f"{PREFIX}/models/{{name}}/load", responses=errors(401, 403, 404, 429, 503), tags=["models"], summary="Load a model (downloading its weights if needed)")
    async def load_model(name: str, request: Request) -> dict[str, Any]:
        """The one place that may download weights; runs in a worker thread. Needs the admin token
        when the server has one (DEEPSHIELD_ADMIN_TOKEN)."""
        require_admin(request)
        engine.spec(name)
        begin = time.perf_counter()
        model = await run_in_threadpool(engine.load, name, allow_download=True)
        return {
            "name": name,
            "status": "loaded",
            "device": engine.device.type,
            "weights_format": model.weights_format,
            "weights_sha256": model.weights_sha256,
            "num_parameters": model.num_parameters,
            "seconds": round(time.perf_counter() - begin, 3),
        }

    @router.post(f"{PREFIX}/models/{{name}}/unload", responses=errors(401, 403, 404, 429), tags=["models"], summary="Free a model's memory")
    def unload_model(name: str, request: Request) -> dict[str, Any]:
        """Needs the admin token when the server has one (DEEPSHIELD_ADMIN_TOKEN)."""
        require_admin(request)
        engine.spec(name)
        unloaded = engine.unload(name)
        return {"name": name, "unloaded": unloaded, "status": engine.status(name)[0]}

    @router.get(f"{PREFIX}/config/attack-methods", tags=["config"], summary="Attacks, parameter ranges and defaults")
    async def config_attack_methods() -> dict[str, Any]:
        return attack_methods()

    def health() -> dict[str, Any]:
        """Liveness and load: version, device, loaded models, queue, limits, uptime."""
        return {
            "status": "ok",
            "version": deepshield.__version__,
            "device": engine.device.type,
            "default_model": settings.default_model,
            "models_loaded": [name for name in engine.specs if engine.is_loaded(name)],
            "queue": {
                "depth": engine.queue_depth,
                "running": engine.running,
                "max_concurrent": engine.max_concurrent,
                "max_queue": engine.max_queue,
                "batch_jobs_waiting": jobs.pending,
                "batch_backend": jobs.kind,
            },
            "limits": settings.public(),
            "uptime_seconds": round(time.time() - started, 1),
        }

    # sync: engine.is_loaded takes the engine lock, which a model load holds; keep it off the loop.
    router.add_api_route(f"{PREFIX}/health", health, methods=["GET"], tags=["health"], summary="Health and load")
    router.add_api_route("/health", health, methods=["GET"], tags=["health"], summary="Health and load (same as /api/v1/health)")

    @router.api_route(f"{PREFIX}/{{path:path}}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown_endpoint(path: str, request: Request) -> JSONResponse:
        """Anything else under /api/v1 gets the API's JSON error, not the UI's HTML 404."""
        return error_response(404, "not_found", f"no endpoint {request.method} {PREFIX}/{path}; see /docs for the API")

    return router
