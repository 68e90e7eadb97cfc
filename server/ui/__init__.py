"""The Gradio UI over the shared engine: one module per tab (protect, batch, verify, models,
about), each with its layout, handlers and events; `context` and `params` hold what their
handlers share, `widgets` the attack controls of Protect and Batch.

The public Gradio API is DESIGN.md s.3: `/protect`, `/protect_batch`, `/verify` and `/models`;
every other event is private. No tensor code lives here: the engine returns PIL images,
uint8 arrays and plain dicts, and the only arithmetic is numpy on 8-bit images.
"""

from __future__ import annotations

import gradio as gr

from deepshield.engine import Engine
from server.jobs import JobBackend
from server.ratelimit import SlidingWindowLimiter
from server.settings import Settings
from server.ui import about, batch, models, protect, verify
from server.ui.batch import BatchHandlers
from server.ui.context import OutputStore
from server.ui.models import ModelHandlers
from server.ui.protect import ProtectHandlers, metrics_rows
from server.ui.verify import VerifyHandlers

__all__ = ["Handlers", "OutputStore", "build_demo", "metrics_rows"]


class Handlers(ProtectHandlers, BatchHandlers, VerifyHandlers, ModelHandlers):
    """Every tab's event handlers, bound to one engine; each returns plain values for Gradio components."""


def build_demo(engine: Engine, settings: Settings, jobs: JobBackend, limiter: SlidingWindowLimiter | None = None) -> gr.Blocks:
    """The deepshield UI on `engine`, batch jobs on `jobs`, rate limit shared with the REST API
    through `limiter`; queue limits from `settings`. Mount it with
    `gr.mount_gradio_app(api, demo, path="/")`."""
    handlers = Handlers(engine, settings, jobs, limiter)
    with gr.Blocks(title="deepshield", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# deepshield\nAdd an imperceptible adversarial perturbation to a photo so that image-translation "
            "deepfake generators (StarGAN, GANimation, CycleGAN) produce garbage instead of a convincing fake "
            "(*Disrupting Deepfakes*, Ruiz et al. 2020)."
        )
        with gr.Tabs():
            protect_tab = protect.layout(handlers)
            batch_tab = batch.layout(handlers)
            verify_tab = verify.layout(handlers)
            models_tab = models.layout(handlers)
            about.layout()
        # Events are wired once every tab exists: Protect and Models refresh the model dropdowns of all three.
        dropdowns = [protect_tab.controls.model, batch_tab.controls.model, models_tab.choice]
        protect.wire(protect_tab, handlers, dropdowns)
        batch.wire(batch_tab, handlers)
        verify.wire(verify_tab, handlers)
        models.wire(models_tab, handlers, dropdowns, demo)

    # Gradio copies a file named by an input payload into its cache only if it was uploaded, but
    # it checks that only once the app has "launched", and gr.mount_gradio_app never sets the flag:
    # without this, {"path": "/any/file", "meta": ...} would be copied in and processed. (Payloads
    # without `meta` skip Gradio's check entirely; the handlers refuse those themselves.)
    demo.has_launched = True
    # Gradio refuses every event with max_size=0, so "no waiting line" keeps one place.
    demo.queue(default_concurrency_limit=settings.max_concurrent, max_size=max(1, settings.max_queue_size))
    return demo
