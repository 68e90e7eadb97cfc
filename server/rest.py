"""REST API v1 (DESIGN.md s.3): protect one photo or a batch, models, attack config, health.
The work behind the routes is the shared service layer (server/service.py).

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

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

import deepshield
from deepshield import attacks
from deepshield.engine import Engine
from deepshield.errors import DeepshieldError
from server.jobs import (
    JobBackend,
    JobInput,
    JobNotFinishedError,
    JobQueueFullError,
    UnknownTaskError,
    create_backend,
    results,
)
from server.jobs.inline import InlineJobs
from server.ratelimit import SlidingWindowLimiter
from server.redact import scrub
from server.schemas import (
    RANDOM_START_RULE,
    STEP_SIZE_MAX,
    BatchAccepted,
    BatchResults,
    ErrorResponse,
    ProtectBatchRequest,
    ProtectImageRequest,
    ProtectImageResponse,
    VerifyRequest,
)
from server.service import (
    BUSY_RETRY_AFTER,
    PREFIX,
    ApiError,
    ProtectService,
    encoded_budget,
    error_response,
    from_deepshield,
    job_input,
)
from server.settings import Settings

log = logging.getLogger(__name__)

SMALL_BODY = 64 * 1024  # bodies of routes that take no image
JSON_SLACK = 64 * 1024  # field names, options, data-URL prefix


# ------------------------------------------------------------------------------------ errors


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


def body_limit(path: str, settings: Settings) -> int:
    """The largest request body a route accepts."""
    if path == f"{PREFIX}/protect/image":
        return encoded_budget(settings.max_image_bytes) + JSON_SLACK
    if path == f"{PREFIX}/protect/batch":
        return settings.max_batch_size * encoded_budget(settings.max_image_bytes) + JSON_SLACK
    if path == f"{PREFIX}/verify":  # the original and the shared copy
        return 2 * encoded_budget(settings.max_image_bytes) + JSON_SLACK
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


# ------------------------------------------------------------------------------------ router

_ERROR_TEXT = {
    400: "The image is not valid base64 or not a decodable image.",
    401: "Model management needs the admin token (Authorization: Bearer ...).",
    403: "Wrong admin token.",
    404: "Unknown model or task.",
    409: "The model's weights are not on the server yet: POST /api/v1/models/{name}/load.",
    413: "Request body, image file or image dimensions above the server's limits.",
    415: "Image format not in SUPPORTED_FORMATS.",
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

    @router.post(f"{PREFIX}/protect/image", response_model=ProtectImageResponse, responses=errors(400, 404, 409, 413, 415, 422, 429, 503), tags=["protect"], summary="Protect one photo")
    async def protect_image(body: ProtectImageRequest) -> dict[str, Any]:
        """Adds an adversarial perturbation so the chosen generator's deepfake of the photo fails."""
        begin = time.perf_counter()
        result = await run_in_threadpool(service.protect, body.image, body)
        return {**result, "processing_time": round(time.perf_counter() - begin, 4)}

    @router.post(
        f"{PREFIX}/protect/batch",
        response_model=BatchAccepted,
        status_code=202,
        responses={**errors(404, 409, 413, 422, 429, 503), 200: {"model": BatchResults, "description": "async_processing false: the results"}},
        tags=["protect"],
        summary="Protect several photos",
    )
    async def protect_batch(body: ProtectBatchRequest) -> Any:
        """Starts a background job and answers at once (poll the status URL for the results), or
        with `async_processing: false` runs the photos now and answers with their results."""
        begin = time.perf_counter()
        if len(body.images) > settings.max_batch_size:
            raise ApiError(422, "invalid_request", f"{len(body.images)} images in one batch; this server takes at most {settings.max_batch_size}")
        options = body.options()
        model = service.resolve_model(options.model_type)
        await run_in_threadpool(service.ensure_ready, model)
        options_json = options.model_dump(mode="json") | {"model_type": model}
        inputs = [job_input(image.filename, image.image, settings) for image in body.images]
        if not body.async_processing:
            return await run_in_threadpool(batch_now, inputs, options_json, begin)
        try:
            task_id = await run_in_threadpool(jobs.submit, inputs, options_json)
        except JobQueueFullError as error:
            raise ApiError(503, "server_busy", str(error), {"Retry-After": str(BUSY_RETRY_AFTER * 6)}) from None
        return {"task_id": task_id, "status": "queued", "total": len(body.images), "status_url": f"{PREFIX}/protect/status/{task_id}"}

    def batch_now(inputs: list[JobInput], options: dict[str, Any], begin: float) -> JSONResponse:
        """The job run in this thread (InlineJobs), answered like a finished job's status."""
        inline = InlineJobs(service.process_items)
        view = results.status_view(inline, inline.submit(inputs, options), PREFIX)
        fields = ("status", "progress", "results")
        return JSONResponse({**{k: view[k] for k in fields}, "processing_time": round(time.perf_counter() - begin, 4)})

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
        """The one place that may download weights; runs in a worker thread. `name` is a model name
        or an architecture name (as `model_type`); the answer names the model loaded. Needs the
        admin token when the server has one (DEEPSHIELD_ADMIN_TOKEN)."""
        require_admin(request)
        name = await run_in_threadpool(engine.resolve, name)
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
        name = engine.resolve(name)
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
