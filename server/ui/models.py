"""The Models tab: every model's status, loading and unloading (admin token), the public
`/models` call."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import gradio as gr

from deepshield.errors import InvalidParameterError
from server.redact import scrub
from server.ui.context import PRIVATE, HandlerContext, user_errors

MODEL_COLUMNS = ["model", "status", "image size", "labels", "device", "source", "why"]


class ModelHandlers(HandlerContext):
    """The Models tab's events: `/models`, its table, load and unload."""

    def models(self) -> list[dict[str, Any]]:
        """Every manifest model with its status, as `python -m deepshield models --json`."""
        with user_errors():
            return [{**row, "reason": scrub(row["reason"])} for row in self.engine.list_models()]

    def models_table(self, rows: list[dict[str, Any]] | None) -> list[list[Any]]:
        table = []
        for row in rows or []:
            spec = self.engine.specs.get(row["name"])
            source = scrub(spec.weights.describe() if spec else str(row.get("weights")))
            device = self.engine.device.type if row["status"] == "loaded" else f"- (loads on {self.engine.device.type})"
            table.append([row["name"], row["status"], row["image_size"], ", ".join(row["labels"]) or "-", device, source, row["reason"]])
        return table

    def refresh(self) -> tuple[Any, ...]:
        """(model list JSON, table, protect / batch / models-tab dropdown choices)."""
        rows = self.models()
        return rows, self.models_table(rows), *self.model_dropdown_updates()

    def render_models(self, rows: list[dict[str, Any]] | None) -> tuple[Any, ...]:
        return self.models_table(rows), *self.model_dropdown_updates()

    def load(self, name: str | None, token: str | None = None, request: gr.Request | None = None, progress: gr.Progress = gr.Progress()) -> str:
        """Load a model (downloading its weights if needed): an explicit user action, which
        needs the admin token when the server has one."""
        with user_errors():
            self._rate_limit(request)
            self._require_admin(token)
            if not name:
                raise InvalidParameterError("choose a model to load")
            progress(0.0, desc=f"loading {name} (downloading its weights if needed)")
            started = time.perf_counter()
            model = self.engine.load(name, allow_download=True)
            return (
                f"Loaded **{name}** on {self.engine.device.type} in {time.perf_counter() - started:.1f} s "
                f"({model.num_parameters:,} parameters, weights {model.weights_path.name}, sha256 {model.weights_sha256[:12]}...)."
            )

    def unload(self, name: str | None, token: str | None = None, request: gr.Request | None = None) -> str:
        with user_errors():
            self._rate_limit(request)
            self._require_admin(token)
            if not name:
                raise InvalidParameterError("choose a model to unload")
            self.engine.spec(name)
            if self.engine.unload(name):
                return f"Unloaded **{name}**."
            return f"**{name}** was not loaded."

    def _require_admin(self, token: str | None) -> None:
        if not self.settings.admin_allowed(token):
            raise gr.Error("loading and unloading models needs this server's admin token (DEEPSHIELD_ADMIN_TOKEN)", print_exception=False)


@dataclass
class ModelsTab:
    """The Models tab's components that its events read or write."""

    table: gr.Dataframe
    choice: gr.Dropdown
    load: gr.Button
    unload: gr.Button
    refresh: gr.Button
    admin_token: gr.Textbox
    status: gr.Markdown
    listing: gr.JSON


def layout(handlers: ModelHandlers) -> ModelsTab:
    """Lay the tab out (inside the page's gr.Tabs)."""
    with gr.Tab("Models", id="models"):
        table = gr.Dataframe(headers=MODEL_COLUMNS, label="Models", interactive=False, wrap=True, max_height=720,
                             column_widths=["14%", "11%", "6%", "14%", "10%", "18%", "27%"], elem_id="models-table")
        with gr.Row():
            choice = gr.Dropdown(handlers.model_choices(), value=handlers.default_model(), label="Model", scale=2)
            load = gr.Button("Load (may download)", scale=1)
            unload = gr.Button("Unload", scale=1)
            refresh = gr.Button("Refresh", scale=1)
        admin_token = gr.Textbox(label="Admin token (DEEPSHIELD_ADMIN_TOKEN): needed to load or unload models on this server",
                                 type="password", visible=bool(handlers.settings.admin_token), elem_id="admin-token")
        status = gr.Markdown()
        with gr.Accordion("Model list (JSON, as `models --json`)", open=False):
            listing = gr.JSON(label="Models")
    return ModelsTab(table, choice, load, unload, refresh, admin_token, status, listing)


def wire(tab: ModelsTab, handlers: ModelHandlers, dropdowns: list[gr.Dropdown], demo: gr.Blocks) -> None:
    """The public `/models` call (Refresh), then the UI-only model management and fresh statuses
    whenever the page opens, each also refreshing the model `dropdowns` of every tab."""
    tab.refresh.click(handlers.models, outputs=tab.listing, api_name="models").success(
        handlers.render_models, inputs=tab.listing, outputs=[tab.table, *dropdowns], show_progress="hidden", **PRIVATE
    )
    refresh_outputs = [tab.listing, tab.table, *dropdowns]
    quiet = {"show_progress": "hidden", **PRIVATE}
    tab.load.click(handlers.load, inputs=[tab.choice, tab.admin_token], outputs=tab.status, **PRIVATE).then(
        handlers.refresh, outputs=refresh_outputs, **quiet
    )
    tab.unload.click(handlers.unload, inputs=[tab.choice, tab.admin_token], outputs=tab.status, **PRIVATE).then(
        handlers.refresh, outputs=refresh_outputs, **quiet
    )
    demo.load(handlers.refresh, outputs=refresh_outputs, **quiet)
