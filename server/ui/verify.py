"""The Verify tab: is a shared copy of a protected photo still protected? The public `/verify` call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from deepshield import imaging
from deepshield.verify import located_in_words
from server import uploads
from server.ui.context import PRIVATE, HandlerContext, upload_root, user_errors
from server.ui.params import cell

VERIFY_COLUMNS = ["model", "mse vs the original shared the same way", "still disrupted", "mse vs the clean original", "faces"]


def verify_rows(report: dict[str, Any] | None) -> tuple[str, list[list[Any]]]:
    """(verdict markdown, table rows) of a verify report."""
    if not report:
        return "", []
    rows = [[m["model"], cell(m["mse"]), cell(m["disrupted"]), cell(m["mse_vs_clean"]), len(m["faces"]) or "centre"] for m in report["models"]]
    shared = report["shared"]
    quality = f", JPEG quality about {shared['jpeg_quality']}" if shared.get("jpeg_quality") else ""
    head = f"Shared copy: {shared['width']}x{shared['height']} {shared.get('format') or ''}{quality}; {located_in_words(report['located'])}. "
    if report["protected"]:
        return head + "**Still protected**: every model's deepfake of the shared copy is disrupted.", rows
    lost = [m["model"] for m in report["models"] if not m["disrupted"]]
    return head + f"**Protection lost** against: {', '.join(lost)}.", rows


LOCATED_COLOUR = (255, 64, 64)


def draw_located(original: str | None, report: dict[str, Any] | None, max_side: int = 1024) -> Image.Image | None:
    """The original photo (upright, at most `max_side` px) with the box the shared copy shows."""
    if not original or not report or "located" not in report:
        return None
    image = Image.fromarray(imaging.load_photo(original).rgb)
    factor = min(1.0, max_side / max(image.size))
    if factor < 1:
        image = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS)
    x0, y0, x1, y1 = (v * factor for v in report["located"]["box"])
    ImageDraw.Draw(image).rectangle((x0, y0, x1 - 1, y1 - 1), outline=LOCATED_COLOUR, width=max(2, round(max(image.size) / 300)))
    return image


class VerifyHandlers(HandlerContext):
    """The Verify tab's event: `/verify`."""

    def verify(
        self, original: Any, shared: Any, models: Any = None, request: gr.Request | None = None
    ) -> tuple[list[tuple[Image.Image, str]], dict[str, Any]]:
        """Is a shared copy of a protected photo still protected? Returns (gallery: per model the
        deepfake of the original shared the same way, then of the shared copy; the report)."""
        with user_errors(), self.engine.caller_queue():
            self._rate_limit(request)
            before = uploads.from_payload(original, upload_root())
            after = uploads.from_payload(shared, upload_root())
            for upload in (before, after):
                uploads.check_image_file(upload, self.settings)
            if isinstance(models, str):
                models = [models]
            names = [str(m) for m in models] if models else None
            for name in names or []:
                self.engine.spec(name)
                self._require_local_weights(name)
            result = self.engine.verify(str(before.path), after.path.read_bytes(), models=names, allow_download=False, names=(before.name, after.name))
            report = result.report()
            gallery = []
            for check in result.checks:
                verdict = "still disrupted" if check.disrupted else "NOT disrupted"
                gallery.append((check.deepfake_baseline, f"{check.model}: deepfake of the original, shared the same way"))
                gallery.append((check.deepfake_shared, f"{check.model}: deepfake of the shared copy (mse {check.mse:.3f}, {verdict})"))
            return gallery, report


@dataclass
class VerifyTab:
    """The Verify tab's components that its events read or write."""

    original: gr.Image
    shared: gr.Image
    models: gr.CheckboxGroup
    button: gr.Button
    verdict: gr.Markdown
    gallery: gr.Gallery
    table: gr.Dataframe
    report: gr.JSON
    located: gr.Image


def layout(handlers: VerifyHandlers) -> VerifyTab:
    """Lay the tab out (inside the page's gr.Tabs)."""
    with gr.Tab("Verify", id="verify"):
        gr.Markdown(
            "Protected a photo and shared it? Give the original and the copy as it came back from the site or a "
            "screenshot (recompressed, resized, cropped, mirrored, turned by quarters, in a border): the copy is found "
            "in the original, and each model's deepfake of the copy is compared with its deepfake of the original "
            "shared the same way (same crop, size, mirror, turn, border and JPEG tables)."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                original = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                    label="Original photo (before protection)", elem_id="verify-original")
                shared = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                  label="Protected photo as shared", elem_id="verify-shared")
                photo_models = [(label, name) for label, name in handlers.model_choices()
                                if handlers.engine.specs[name].preprocessing != "label_map"]
                models = gr.CheckboxGroup(photo_models, value=[], label="Models",
                                          info="none ticked = every photo model on this server", elem_id="verify-models")
                button = gr.Button("Verify", variant="primary", elem_id="verify-button")
            with gr.Column(scale=3):
                verdict = gr.Markdown(elem_id="verify-verdict")
                located = gr.Image(label="Where the shared copy sits in the original", interactive=False, format="png", elem_id="verify-located")
                gallery = gr.Gallery(label="Per model: deepfake of the original shared the same way | of the shared copy",
                                     columns=2, format="png", elem_id="verify-gallery")
                table = gr.Dataframe(headers=VERIFY_COLUMNS, label="Per model", interactive=False, elem_id="verify-table")
                with gr.Accordion("Full report (JSON)", open=False):
                    report = gr.JSON(label="Report", elem_id="verify-report")
    return VerifyTab(original, shared, models, button, verdict, gallery, table, report, located)


def wire(tab: VerifyTab, handlers: VerifyHandlers) -> None:
    """The public `/verify` call (raw inputs), then its verdict, table and located box (private)."""
    done = tab.button.click(
        handlers.verify,
        inputs=[tab.original, tab.shared, tab.models],
        outputs=[tab.gallery, tab.report],
        api_name="verify", preprocess=False, **handlers.engine_events(),
    )
    done.success(verify_rows, inputs=tab.report, outputs=[tab.verdict, tab.table], **PRIVATE)
    done.success(draw_located, inputs=[tab.original, tab.report], outputs=tab.located, **PRIVATE)
