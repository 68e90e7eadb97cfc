"""What the handlers of every tab share: engine, settings, jobs, rate limit and output folders,
the model choices, and the translation of errors into messages for the page."""

from __future__ import annotations

import atexit
import hashlib
import html
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr

from deepshield.engine import DEFAULT_MODEL, Engine
from deepshield.errors import DeepshieldError, WeightsError
from server.jobs import JobBackend
from server.ratelimit import SlidingWindowLimiter
from server.redact import scrub
from server.settings import Settings

log = logging.getLogger("deepshield.ui")

PRIVATE: dict[str, Any] = {"api_visibility": "private"}  # an event that is no part of the public Gradio API


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn engine and upload errors into `gr.Error` with their actionable message; anything
    unexpected is logged with its traceback and reported without one."""
    try:
        yield
    except gr.Error:
        raise
    except DeepshieldError as error:
        raise gr.Error(html.escape(scrub(str(error)), quote=False), print_exception=False) from None
    except Exception:
        log.exception("unexpected error in a UI handler")
        raise gr.Error("unexpected server error; the details are in the server log", print_exception=False) from None


def upload_root() -> Path:
    """Where Gradio keeps uploads and its copies of outputs (GRADIO_TEMP_DIR or <tmp>/gradio).
    Requests may only name files in there: with gr.mount_gradio_app (and for file payloads
    without a `meta` field) Gradio itself does not enforce it."""
    return Path(gr.utils.get_upload_folder())


class OutputStore:
    """Per-request folders for files handed to Gradio (which copies them into its own cache);
    folders older than `max_age_s` are removed whenever a new one is made."""

    def __init__(self, root: Path | None = None, max_age_s: float = 3600.0) -> None:
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="deepshield-ui-"))
            atexit.register(shutil.rmtree, root, True)
        self.root = root
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._framings: dict[str, Path] = {}  # sha256 of a protected photo -> its framings folder

    def new_dir(self) -> Path:
        with self._lock:
            cutoff = time.time() - self.max_age_s
            for old in self.root.iterdir():
                try:
                    if old.stat().st_mtime < cutoff:
                        shutil.rmtree(old, ignore_errors=True)
                except OSError:
                    pass
            self._framings = {digest: folder for digest, folder in self._framings.items() if folder.parent.exists()}
            path = self.root / uuid.uuid4().hex
            path.mkdir(parents=True)
            return path

    def framings_dir(self, protected: Path, *, new: bool = False) -> Path | None:
        """The folder of the framings grid of a protected photo: made beside the photo by the
        /protect call (`new`), found again by the UI's follow-up from the bytes of Gradio's copy
        of the photo; None when there is none."""
        digest = hashlib.sha256(protected.read_bytes()).hexdigest()
        with self._lock:
            if new:
                self._framings[digest] = protected.parent / "framings"
            return self._framings.get(digest)


class HandlerContext:
    """The state and checks every tab's handlers use; the tabs' handler classes extend it."""

    def __init__(
        self, engine: Engine, settings: Settings, jobs: JobBackend, limiter: SlidingWindowLimiter | None = None, store: OutputStore | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.jobs = jobs
        self.limiter = limiter or SlidingWindowLimiter(settings.rate_limit_per_minute)
        self.store = store or OutputStore()

    def engine_events(self) -> dict[str, Any]:
        """Event options of the calls that run the engine: one concurrency group, MAX_CONCURRENT wide."""
        return {"concurrency_id": "engine", "concurrency_limit": self.settings.max_concurrent}

    def model_choices(self) -> list[tuple[str, str]]:
        choices = []
        for name, spec in self.engine.specs.items():
            status, _ = self.engine.status(name)
            note = "label maps only" if spec.preprocessing == "label_map" else status
            choices.append((f"{name} ({note})", name))
        return choices

    def model_dropdown_updates(self) -> tuple[Any, Any, Any]:
        """Fresh choices for the protect, batch and models-tab model dropdowns."""
        choices = self.model_choices()
        return gr.update(choices=choices), gr.update(choices=choices), gr.update(choices=choices)

    def default_model(self) -> str:
        names = list(self.engine.specs)
        if self.settings.default_model in self.engine.specs:
            return self.settings.default_model
        return DEFAULT_MODEL if DEFAULT_MODEL in self.engine.specs else names[0]

    def all_labels(self) -> list[str]:
        labels: list[str] = []
        for spec in self.engine.specs.values():
            labels += [label for label in spec.labels if label not in labels]
        return labels

    def targets_update(self, model: str | None) -> dict[str, Any]:
        """The target control for a model: StarGAN attributes, GANimation expressions, or hidden."""
        spec = self.engine.specs.get(model or "")
        if spec is None or not spec.conditional:
            return gr.update(choices=[], value=[], visible=False)
        if spec.architecture == "ganimation":
            label, info = "Expressions to protect against", "GANimation action-unit presets; none ticked = all, attacked jointly"
        else:
            label, info = "Attributes to protect against", f"{spec.architecture} target attributes; none ticked = all, attacked jointly"
        return gr.update(choices=spec.labels, value=[], visible=True, label=label, info=info)

    def _rate_limit(self, request: gr.Request | None) -> None:
        """The per-client budget that the REST API's POST routes count too (RATE_LIMIT_PER_MINUTE)."""
        client = request.client.host if request is not None and request.client else "unknown"
        if (wait := self.limiter.hit(client)) is not None:
            raise gr.Error(
                f"too many requests: at most {self.limiter.limit} per minute per client (this page and the API together); retry in {wait} s",
                print_exception=False,
            )

    def _require_local_weights(self, model: str) -> None:
        """Requests never download: point the user at the Models tab instead."""
        status, _ = self.engine.status(model)
        if status == "downloadable":
            source = self.engine.spec(model).weights.describe()
            raise WeightsError(
                f"model {model!r} is not on this server yet: load it in the Models tab first (downloads {source}), "
                f"or run `python -m deepshield fetch {model}` on the server"
            )
