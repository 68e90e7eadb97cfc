"""deepshield web app: the Gradio UI and the REST API of the original service on one FastAPI app.

    python app.py              # http://0.0.0.0:7860 (Hugging Face Spaces convention)
    python app.py --share      # also ask Gradio for a public share link (or GRADIO_SHARE=1)

Settings come from the environment (README "Server settings", `.env.example`). This file only
wires parts together; the UI lives in server/ui/ (a module per tab), the REST API in
server/rest.py, and all tensor work in the deepshield package.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

import gradio as gr
from fastapi import FastAPI

from deepshield.engine import Engine
from deepshield.errors import DeepshieldError
from server import observability, rest, serving, service, ui
from server.jobs import create_backend
from server.ratelimit import SlidingWindowLimiter
from server.settings import Settings


def create_engine(settings: Settings) -> Engine:
    """CACHE_MODELS=false keeps one model in memory at a time (the last used)."""
    return Engine(
        device=settings.device,
        max_concurrent=settings.max_concurrent,
        max_queue=settings.max_queue_size,
        **({} if settings.cache_models else {"max_loaded": 1}),
    )


def preload_names(engine: Engine, settings: Settings) -> list[str]:
    """PRELOAD_MODELS: `true` = every model whose weights are on the server (not downloaded),
    else the names given (model or architecture names, resolved as `model_type` is)."""
    if settings.preload_all:
        return [row["name"] for row in engine.list_models() if row["status"] in ("loaded", "cached")]
    return settings.preload_models


def preload(engine: Engine, settings: Settings) -> threading.Thread:
    """Load PRELOAD_MODELS in the background (downloading named ones if needed) so the page serves at once."""
    log = logging.getLogger("deepshield.preload")

    def run() -> None:
        for name in preload_names(engine, settings):
            try:
                engine.load(engine.resolve(name))
                log.info("preloaded model %s", name)
            except DeepshieldError as error:
                log.error("could not preload model %s: %s", name, error)

    thread = threading.Thread(target=run, name="deepshield-preload", daemon=True)
    thread.start()
    return thread


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """The FastAPI app: REST API under /api/v1, /health, /metrics, /docs, and the UI at /."""
    settings = settings or Settings.from_env()
    engine = engine or create_engine(settings)
    api = FastAPI(
        title="deepshield",
        description="Protect photos against image-translation deepfakes (Disrupting Deepfakes, Ruiz et al. 2020).",
        version="0.1.0",
        docs_url="/docs",
        redoc_url="/redoc",
    )
    observability.install(api, engine, settings)
    jobs = create_backend(settings, service.ProtectService(engine, settings).process_items, workers=engine.max_concurrent)
    api.router.on_shutdown.append(jobs.close)  # embedded jobs stop after their chunk and resume at the next start
    limiter = SlidingWindowLimiter(settings.rate_limit_per_minute)  # one budget per client for the UI and REST
    api.include_router(rest.create_router(engine, settings, jobs, limiter))
    demo = ui.build_demo(engine, settings, jobs, limiter)
    if settings.preload_all or settings.preload_models:
        preload(engine, settings)
    # The largest file the UI takes: a zip of a full batch; single photos are checked again
    # against MAX_IMAGE_SIZE_MB. Gradio refuses bigger uploads (413) before writing them to disk.
    return gr.mount_gradio_app(api, demo, path="/", max_file_size=settings.max_batch_size * settings.max_image_bytes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the deepshield web app.")
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link (needs internet)")
    parser.add_argument("--host", help="bind address (default HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (default PORT or 7860)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    host, port = args.host or settings.host, args.port or settings.port
    return serving.serve(create_app, settings, host=host, port=port, share=args.share or settings.share)


if __name__ == "__main__":
    sys.exit(main())
