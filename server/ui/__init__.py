"""The Gradio UI over the shared engine (tabs Protect, Batch, Models, About), and `serve`.

The public Gradio API is exactly DESIGN.md s.3: `/protect`, `/protect_batch` and `/models`;
every other event is private. No tensor code lives here: the engine returns PIL images,
uint8 arrays and plain dicts, and the only arithmetic is numpy on 8-bit images.
"""

from __future__ import annotations

import atexit
import hashlib
import html
import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from deepshield import faces as face_detection
from deepshield import imaging, png
from deepshield.attacks import STRENGTHS
from deepshield.engine import DEFAULT_MODEL, Engine
from deepshield.errors import DeepshieldError, InvalidParameterError, WeightsError
from server import observability, uploads
from server.jobs import FINISHED, JobBackend, JobInput, JobQueueFullError, results
from server.ratelimit import SlidingWindowLimiter
from server.redact import scrub
from server.settings import Settings

log = logging.getLogger("deepshield.ui")

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PHOTO = REPO / "examples" / "synthetic-portrait.png"
EXAMPLE_MODEL = "cyclegan-vintage"

ATTACK_CHOICES = [("FGSM", "fgsm"), ("I-FGSM", "ifgsm"), ("PGD", "pgd")]
ROBUST_CHOICES = [("any framing, after sharing (whole photo)", "framing"), ("off", "off"), ("EOT: JPEG, resize, blur, shift", "eot"),
                  ("spread-spectrum: blurs", "spread-spectrum")]
DEFAULT_ROBUST = "framing"
FRAMINGS_SHOWN = 4  # framings in the Protect tab's grid
DEFAULT_STRENGTH = "medium"
DEFAULT_ITERATIONS = 10
DEFAULT_STEP_SIZE = 0.01
RANDOM_SEED = -1  # the seed control's "draw one" value (a Number field cannot stay empty)
JOB_POLL_S = 0.25  # how often the batch view reads its job's progress
PREVIEW_SIDE = 1600  # the amplified-perturbation view is shown at most this large


# ------------------------------------------------------------------------------ small helpers


def _strength_label(name: str) -> str:
    epsilon = STRENGTHS[name]
    return f"{name} (ε {epsilon:g} ≈ {epsilon * 127.5:.1f}/255)"


@contextmanager
def _user_errors() -> Iterator[None]:
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


def _upload_root() -> Path:
    """Where Gradio keeps uploads and its copies of outputs (GRADIO_TEMP_DIR or <tmp>/gradio).
    Requests may only name files in there: with gr.mount_gradio_app (and for file payloads
    without a `meta` field) Gradio itself does not enforce it."""
    return Path(gr.utils.get_upload_folder())


def _number(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}") from None


def _integer(value: Any, name: str) -> int:
    number = _number(value, name)
    if not number.is_integer():
        raise InvalidParameterError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _seed(value: Any) -> int | None:
    """None (draw one) for an empty or negative seed."""
    if value in (None, ""):
        return None
    seed = _integer(value, "seed")
    return seed if seed >= 0 else None


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise InvalidParameterError(f"{name} must be true or false, got {value!r}")


def _job_options(options: dict[str, Any]) -> dict[str, Any]:
    """Engine keywords (from `_attack_options`) -> the options of a batch job, in the shape of
    the REST API's ProtectOptions, so UI and REST jobs run the same way."""
    epsilon = options["epsilon"]
    budget = {"strength": epsilon.lower()} if isinstance(epsilon, str) else {"epsilon": epsilon}
    params = {key: options[key] for key in ("iterations", "step_size", "seed", "targets", "ssim_floor") if options[key] is not None}
    params |= {"detect_faces": options["detect_faces"], "robust": options["robust"] or "off", "check_robustness": options["check_robustness"]}
    if options.get("faces") is not None:
        params["faces"] = options["faces"]
    return {"model_type": options["model"], "attack_method": options["attack"], "attack_params": {**budget, **params},
            "output_format": "png", "return_deepfakes": False}


def _face_numbers(value: Any) -> list[int] | None:
    """/protect's `faces` (a list of numbers, or "0,2") -> engine `faces`; empty or None: all."""
    if value in (None, "", []):
        return None
    try:
        if isinstance(value, str):
            return face_detection.parse_numbers(value)
        return [int(p) for p in (value if isinstance(value, list | tuple) else [value]) if str(p).strip() != ""]
    except (TypeError, ValueError):
        raise InvalidParameterError(f"faces must be face numbers (0, 1, ...) as the report lists them, got {value!r}") from None


def _attack_options(
    model: Any, attack: Any, epsilon: Any, iterations: Any, step_size: Any, seed: Any, targets: Any,
    detect_faces: Any = True, robust: Any = "off", check_robustness: Any = False, ssim_floor: Any = 0,
) -> dict[str, Any]:
    """Raw API values (the protect events skip Gradio's preprocessing) -> engine keywords.
    Range checks are the engine's, so every entry point reports the same messages. `epsilon`
    may name a strength preset; robust "off" and ssim_floor 0 mean off."""
    if not model or not isinstance(model, str):
        raise InvalidParameterError("choose a model")
    if isinstance(targets, str):
        targets = [targets]
    floor = 0.0 if ssim_floor in (None, "") else _number(ssim_floor, "ssim_floor")
    return {
        "model": model,
        "attack": str(attack or "pgd"),
        "epsilon": epsilon.strip() if isinstance(epsilon, str) and epsilon.strip().lower() in STRENGTHS else _number(epsilon, "epsilon"),
        "iterations": None if iterations in (None, "") else _integer(iterations, "iterations"),
        "step_size": None if step_size in (None, "") else _number(step_size, "step_size"),
        "seed": _seed(seed),
        "targets": [str(t) for t in targets] if targets else None,
        "detect_faces": _flag(True if detect_faces is None else detect_faces, "detect_faces"),
        "robust": None if robust in (None, "", "off", False) else str(robust),
        "check_robustness": _flag(False if check_robustness is None else check_robustness, "check_robustness"),
        "ssim_floor": None if floor == 0 else floor,
    }


FRAMINGS_CAPTIONS = "framings.json"


def save_framings(directory: Path, examples: Sequence[tuple[Image.Image, Image.Image, str]]) -> None:
    """Write each framing's deepfake pair side by side (4 px white gap) as framing-<k>.png, and
    the captions, in `directory`: the grid the UI shows after /protect."""
    for index, (clean, fake, _) in enumerate(examples):
        left, right = np.asarray(clean.convert("RGB")), np.asarray(fake.convert("RGB"))
        gap = np.full((left.shape[0], 4, 3), 255, dtype=np.uint8)
        imaging.write_atomic(directory / f"framing-{index}.png", png.encode(np.hstack([left, gap, right])))
    if examples:
        imaging.write_atomic(directory / FRAMINGS_CAPTIONS, json.dumps([caption for _, _, caption in examples]).encode())


def load_framings(directory: Path | None) -> list[tuple[str, str]]:
    """(image path, caption) of the framings `save_framings` wrote in `directory`; [] if none."""
    captions = directory / FRAMINGS_CAPTIONS if directory is not None else None
    if captions is None or not captions.is_file():
        return []
    return [(str(directory / f"framing-{k}.png"), caption) for k, caption in enumerate(json.loads(captions.read_text()))]


def perturbation_view(original: np.ndarray, protected: np.ndarray, max_side: int = PREVIEW_SIDE) -> np.ndarray:
    """|protected - original| per channel, scaled so the largest change is full white."""
    diff = np.abs(protected.astype(np.int16) - original.astype(np.int16))
    peak = int(diff.max()) if diff.size else 0
    view = (diff * (255.0 / max(peak, 1))).round().astype(np.uint8)
    if max(view.shape[:2]) > max_side:
        preview = Image.fromarray(view)
        preview.thumbnail((max_side, max_side), Image.Resampling.BOX)
        view = np.asarray(preview)
    return view


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def metrics_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """The report as (metric, value) rows for the UI table."""
    p, d = metrics.get("perturbation", {}), metrics.get("disruption", {})
    rows = [
        ["perturbation L2 (on [-1, 1])", _fmt(p.get("l2"))],
        ["perturbation L-inf (on [-1, 1])", _fmt(p.get("linf"))],
        ["perturbation L-inf (/255)", _fmt(p.get("linf_255"), 0)],
        ["PSNR (dB)", _fmt(p.get("psnr"), 2)],
        ["SSIM", _fmt(p.get("ssim"))],
        ["share of the photo perturbed", _fmt(p.get("area"), 3)],
        ["disruption mse", _fmt(d.get("mse"))],
        ["disruption l1", _fmt(d.get("l1"))],
        ["disrupted (mse > 0.05)", _fmt(d.get("disrupted"))],
        ["seconds", _fmt(metrics.get("seconds"), 2)],
        ["model / attack", f"{metrics.get('model')} / {metrics.get('attack')}"],
        ["epsilon (/255), strength", f"{_fmt(metrics.get('epsilon'))} ({_fmt(metrics.get('epsilon_255'), 1)}), {metrics.get('strength', '-')}"],
        ["iterations / step size", f"{metrics.get('iterations')} / {_fmt(metrics.get('step_size'))}"],
        ["robust attack", _fmt(metrics.get("robust") or "off")],
        ["seed", _fmt(metrics.get("seed"))],
        ["region protected", _region(metrics)],
        *_face_rows(metrics),
    ]
    if "perceptual" in metrics:
        q = metrics["perceptual"]
        rows.append([f"perceptual: scale for SSIM >= {q['ssim_floor']:g}", _fmt(q["scale"], 3)])
    robustness = dict(metrics.get("robustness") or {})
    framings = robustness.pop("framings", None)
    for key, value in robustness.items():
        verdict = "disrupted" if value["disrupted"] else "NOT disrupted"
        rows.append([f"after {ROBUSTNESS_LABELS.get(key, key)}: mse", f"{value['mse']:.4f} ({verdict})"])
    if framings:
        rows.append([f"{framings['views']} unseen framings: share disrupted", f"{framings['share_disrupted']:.0%} (mean mse {framings['mse']:.4f})"])
        rows.append(["... after JPEG 75 first", f"{framings['jpeg75']['share_disrupted']:.0%} (mean mse {framings['jpeg75']['mse']:.4f})"])
    return rows


ROBUSTNESS_LABELS = {"jpeg90": "JPEG 90", "jpeg75": "JPEG 75", "jpeg50": "JPEG 50", "resize50": "resize to 1/2 and back",
                     "blur1": "Gaussian blur 1 px", "shift": "crop shifted 4 px"}


def _region(metrics: dict[str, Any]) -> str:
    if metrics.get("robust") == "framing":
        return "the whole photo, for any framing"
    found = metrics.get("faces") or []
    chosen = [f for f in found if f.get("protected", True)]
    if chosen:
        return f"{len(chosen)} of {len(found)} face{'s' if len(found) > 1 else ''}: " + ", ".join(f"face {f.get('index', i)}" for i, f in enumerate(chosen))
    return metrics.get("note") or "the centred square"


def _face_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """One metrics-table row per face found: box, score, protected or left out."""
    rows = []
    for i, face in enumerate(metrics.get("faces") or []):
        state = "protected" if face.get("protected", True) else "left out"
        rows.append([f"face {face.get('index', i)}", f"box {face['box']}, score {_fmt(face.get('score'), 2)}, {state}"])
    return rows


REPORT_COLUMNS = ["input", "output", "faces", "linf_255", "psnr", "ssim", "mse", "disrupted", "mse after JPEG 75", "seconds"]


def report_rows(report: Sequence[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for item in report or []:
        p, d = item.get("perturbation", {}), item.get("disruption", {})
        jpeg75 = (item.get("robustness") or {}).get("jpeg75")
        output = item.get("output") or f"error: {item.get('error')}"
        rows.append([item.get("input"), output, len(item.get("faces") or []), p.get("linf_255"), _fmt(p.get("psnr"), 2),
                     _fmt(p.get("ssim")), _fmt(d.get("mse")), _fmt(d.get("disrupted")), _fmt(jpeg75["mse"] if jpeg75 else None),
                     _fmt(item.get("seconds"), 2)])
    return rows


VERIFY_COLUMNS = ["model", "mse vs the original shared the same way", "still disrupted", "mse vs the clean original", "faces"]


def verify_rows(report: dict[str, Any] | None) -> tuple[str, list[list[Any]]]:
    """(verdict markdown, table rows) of a verify report."""
    if not report:
        return "", []
    rows = [[m["model"], _fmt(m["mse"]), _fmt(m["disrupted"]), _fmt(m["mse_vs_clean"]), len(m["faces"]) or "centre"] for m in report["models"]]
    shared = report["shared"]
    quality = f", JPEG quality about {shared['jpeg_quality']}" if shared.get("jpeg_quality") else ""
    head = f"Shared copy: {shared['width']}x{shared['height']} {shared.get('format') or ''}{quality} (scale {report['scale']:g} of the original). "
    if report["protected"]:
        return head + "**Still protected**: every model's deepfake of the shared copy is disrupted.", rows
    lost = [m["model"] for m in report["models"] if not m["disrupted"]]
    return head + f"**Protection lost** against: {', '.join(lost)}.", rows


MODEL_COLUMNS = ["model", "status", "image size", "labels", "device", "source", "why"]


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


# ------------------------------------------------------------------------------ handlers


class Handlers:
    """Event handlers bound to one engine; each returns plain values for Gradio components."""

    def __init__(
        self, engine: Engine, settings: Settings, jobs: JobBackend, limiter: SlidingWindowLimiter | None = None, store: OutputStore | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.jobs = jobs
        self.limiter = limiter or SlidingWindowLimiter(settings.rate_limit_per_minute)
        self.store = store or OutputStore()

    # ------------------------------------------------------------ models

    def model_choices(self) -> list[tuple[str, str]]:
        choices = []
        for name, spec in self.engine.specs.items():
            status, _ = self.engine.status(name)
            note = "label maps only" if spec.preprocessing == "label_map" else status
            choices.append((f"{name} ({note})", name))
        return choices

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

    def models(self) -> list[dict[str, Any]]:
        """Every manifest model with its status, as `python -m deepshield models --json`."""
        with _user_errors():
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
        choices = self.model_choices()
        return rows, self.models_table(rows), gr.update(choices=choices), gr.update(choices=choices), gr.update(choices=choices)

    def render_models(self, rows: list[dict[str, Any]] | None) -> tuple[Any, ...]:
        choices = self.model_choices()
        return self.models_table(rows), gr.update(choices=choices), gr.update(choices=choices), gr.update(choices=choices)

    def load(self, name: str | None, token: str | None = None, request: gr.Request | None = None, progress: gr.Progress = gr.Progress()) -> str:
        """Load a model (downloading its weights if needed): an explicit user action, which
        needs the admin token when the server has one."""
        with _user_errors():
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
        with _user_errors():
            self._rate_limit(request)
            self._require_admin(token)
            if not name:
                raise InvalidParameterError("choose a model to unload")
            self.engine.spec(name)
            if self.engine.unload(name):
                return f"Unloaded **{name}**."
            return f"**{name}** was not loaded."

    def _rate_limit(self, request: gr.Request | None) -> None:
        """The per-client budget that the REST API's POST routes count too (RATE_LIMIT_PER_MINUTE)."""
        client = request.client.host if request is not None and request.client else "unknown"
        if (wait := self.limiter.hit(client)) is not None:
            raise gr.Error(
                f"too many requests: at most {self.limiter.limit} per minute per client (this page and the API together); retry in {wait} s",
                print_exception=False,
            )

    def _require_admin(self, token: str | None) -> None:
        if not self.settings.admin_allowed(token):
            raise gr.Error("loading and unloading models needs this server's admin token (DEEPSHIELD_ADMIN_TOKEN)", print_exception=False)

    def _require_local_weights(self, model: str) -> None:
        """Requests never download: point the user at the Models tab instead."""
        status, _ = self.engine.status(model)
        if status == "downloadable":
            source = self.engine.spec(model).weights.describe()
            raise WeightsError(
                f"model {model!r} is not on this server yet: load it in the Models tab first (downloads {source}), "
                f"or run `python -m deepshield fetch {model}` on the server"
            )

    # ------------------------------------------------------------ verify

    def verify(
        self, original: Any, shared: Any, models: Any = None, request: gr.Request | None = None
    ) -> tuple[list[tuple[Image.Image, str]], dict[str, Any]]:
        """Is a shared copy of a protected photo still protected? Returns (gallery: per model the
        deepfake of the original shared the same way, then of the shared copy; the report)."""
        with _user_errors(), self.engine.caller_queue():
            self._rate_limit(request)
            before = uploads.from_payload(original, _upload_root())
            after = uploads.from_payload(shared, _upload_root())
            for upload in (before, after):
                uploads.check_image_file(upload, self.settings)
            if isinstance(models, str):
                models = [models]
            names = [str(m) for m in models] if models else None
            for name in names or []:
                self.engine.spec(name)
                self._require_local_weights(name)
            result = self.engine.verify(str(before.path), after.path.read_bytes(), models=names, allow_download=False)
            report = {**result.report()}
            report["original"]["name"], report["shared"]["name"] = before.name, after.name
            gallery = []
            for check in result.checks:
                verdict = "still disrupted" if check.disrupted else "NOT disrupted"
                gallery.append((check.deepfake_baseline, f"{check.model}: deepfake of the original, shared the same way"))
                gallery.append((check.deepfake_shared, f"{check.model}: deepfake of the shared copy (mse {check.mse:.3f}, {verdict})"))
            return gallery, report

    # ------------------------------------------------------------ protect

    def protect(
        self,
        image: Any,
        model: Any,
        attack: Any,
        epsilon: Any,
        iterations: Any = DEFAULT_ITERATIONS,
        step_size: Any = DEFAULT_STEP_SIZE,
        seed: Any = None,
        targets: Any = None,
        detect_faces: Any = True,
        robust: Any = DEFAULT_ROBUST,
        check_robustness: Any = True,
        ssim_floor: Any = 0,
        faces: Any = None,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[str, Image.Image, Image.Image, dict[str, Any]]:
        """Protect one photo. Returns (protected PNG, deepfake of the original, deepfake of the
        protected photo, report with `perturbation` and `disruption` measured on the PNG, the
        `faces` found (box, landmarks, score, protected or not) and, with check_robustness,
        `robustness` after real transformations). `faces`: numbers of the faces to protect, as the
        report numbers them; empty or None: every face."""
        with _user_errors(), self.engine.caller_queue():
            self._rate_limit(request)
            upload = uploads.from_payload(image, _upload_root())
            uploads.check_image_file(upload, self.settings)
            options = _attack_options(
                model, attack, epsilon, iterations, step_size, seed, targets, detect_faces, robust, check_robustness, ssim_floor
            )
            options["faces"] = _face_numbers(faces)
            self._require_local_weights(options["model"])
            progress(0.0, desc=f"loading {options['model']}")

            def on_step(step: int, total: int, _loss: Any) -> None:
                progress((step, total), desc="attack", unit="steps")

            result = self.engine.protect(str(upload.path), **options, on_step=on_step, allow_download=False)
            observability.record_attack(result.metrics["seconds"], options["model"], result.metrics["attack"], engine=self.engine)
            output = self.store.new_dir() / f"{Path(upload.name).stem or 'photo'}.protected.png"
            measured = result.save(output)
            if result.framing_examples:
                save_framings(self.store.framings_dir(output, new=True), result.framing_examples[:FRAMINGS_SHOWN])
            metrics = {**measured, "input": upload.name, "output": output.name}
            return str(output), result.deepfake_original, result.deepfake_protected, metrics

    def faces_found(self, image: str | None) -> tuple[Image.Image | None, Any]:
        """UI: the original with the faces found drawn and numbered, and one ticked checkbox per
        face (what /protect's `faces` takes)."""
        if not image:
            return None, gr.update(choices=[], value=[], visible=False)
        with _user_errors():
            rgb = imaging.load_photo(image).rgb
            found = face_detection.detect_faces(rgb)
        choices = [(f"face {i}: {f.width}x{f.height} px at ({f.x0}, {f.y0}), score {f.score:.2f}", i) for i, f in enumerate(found)]
        drawn = face_detection.draw(rgb, found)
        return drawn, gr.update(choices=choices, value=[i for _, i in choices], visible=bool(found))

    def protect_details(self, original: str | None, protected: str | None, metrics: dict[str, Any] | None) -> tuple[Any, ...]:
        """UI extras after /protect: amplified perturbation, metrics table, download, dropdowns."""
        choices = self.model_choices()
        updates = (gr.update(choices=choices), gr.update(choices=choices), gr.update(choices=choices))
        if not (original and protected and metrics):
            return (None, [], None, [], *updates)
        with _user_errors():
            original_path, protected_path = uploads.received(original, _upload_root()), uploads.received(protected, _upload_root())
            view = perturbation_view(imaging.load_photo(original_path).rgb, imaging.load_photo(protected_path).rgb)
            # written here by the parallel encoder: Gradio's own PNG writer took 0.56 s for a 1024 px view of noise
            view_path = imaging.write_atomic(self.store.new_dir() / "perturbation.png", png.encode(view))
            return (str(view_path), metrics_rows(metrics), str(protected_path), load_framings(self.store.framings_dir(protected_path)), *updates)

    def protect_batch(
        self,
        images: Any,
        model: Any,
        attack: Any,
        epsilon: Any,
        iterations: Any = DEFAULT_ITERATIONS,
        step_size: Any = DEFAULT_STEP_SIZE,
        seed: Any = None,
        targets: Any = None,
        detect_faces: Any = True,
        robust: Any = DEFAULT_ROBUST,
        check_robustness: Any = False,
        ssim_floor: Any = 0,
        faces: Any = None,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[list[tuple[str, str]], str, list[dict[str, Any]]]:
        """Protect many photos (files and/or zips of images) as a batch job (the same jobs as
        POST /api/v1/protect/batch). Returns (gallery, zip of `<stem>.png` files and report.json,
        per-image reports; a photo that failed has `error` instead of metrics). `faces`: the face
        numbers to protect in every photo, as each report numbers them; empty or None: every face."""
        with _user_errors():
            self._rate_limit(request)
            workdir = self.store.new_dir()
            if isinstance(images, dict):
                images = [images]
            batch = uploads.collect_batch(images, workdir / "inputs", self.settings, root=_upload_root())
            options = _attack_options(
                model, attack, epsilon, iterations, step_size, seed, targets, detect_faces, robust, check_robustness, ssim_floor
            )
            options["faces"] = _face_numbers(faces)
            self._require_local_weights(options["model"])
            try:
                task_id = self.jobs.submit([JobInput(u.name, u.path.read_bytes()) for u in batch], _job_options(options))
            except JobQueueFullError as error:
                raise gr.Error(str(error), print_exception=False) from None
            record = self._wait_for(task_id, progress)
            out_dir = workdir / "protected"
            out_dir.mkdir()
            gallery, report = [], []
            for entry in record["results"]:
                if entry["status"] != "ok":
                    report.append({"input": entry["filename"], "error": entry["message"], "task_id": task_id})
                    continue
                path = out_dir / entry["output"]
                path.write_bytes(self.jobs.read_file(task_id, entry["index"], "protected"))
                metrics = {**entry["metrics"], "input": entry["filename"], "output": entry["output"], "task_id": task_id}
                report.append(metrics)
                verdict = "disrupted" if metrics["disruption"]["disrupted"] else "not disrupted"
                gallery.append((str(path), f"{entry['output']}: mse {metrics['disruption']['mse']:.3f} ({verdict})"))
            if not gallery:
                raise gr.Error("no photo could be protected: " + "; ".join(html.escape(r["error"], quote=False) for r in report), print_exception=False)
            archive = workdir / "deepshield-protected.zip"
            archive.write_bytes(results.archive(self.jobs, task_id))
            return gallery, str(archive), report

    def _wait_for(self, task_id: str, progress: gr.Progress) -> dict[str, Any]:
        """Poll the job until it finished, showing its progress; its final record."""
        while True:
            record = self.jobs.status(task_id)
            done, total = record["progress"]["done"], record["progress"]["total"]
            if record["status"] in FINISHED:
                return record
            current = record.get("current")
            if current:
                share = (current["last"] - current["first"] + 1) * current["step"] / current["steps"]
                desc = f"images {current['first']}-{current['last']} of {total}: step {current['step']}/{current['steps']}"
                progress((done + share) / total, desc=desc)
            else:
                progress(done / total, desc=f"{record['status']}: {done} of {total} done")
            time.sleep(JOB_POLL_S)


# ------------------------------------------------------------------------------ layout


@dataclass
class AttackControls:
    """The model / target / attack / budget controls shared by the Protect and Batch tabs."""

    model: gr.Dropdown
    targets: gr.CheckboxGroup
    attack: gr.Radio
    strength: gr.Radio
    epsilon: gr.Slider
    iterations: gr.Slider
    step_size: gr.Slider
    random_start: gr.Checkbox
    seed: gr.Number
    detect_faces: gr.Checkbox
    robust: gr.Radio
    check_robustness: gr.Checkbox
    ssim_floor: gr.Slider

    def api_inputs(self) -> list[gr.components.Component]:
        """In the fixed API order after the image(s): model, attack, epsilon, iterations,
        step_size, the extras seed and targets, then (issue 4) detect_faces, robust,
        check_robustness and ssim_floor."""
        return [self.model, self.attack, self.epsilon, self.iterations, self.step_size, self.seed, self.targets,
                self.detect_faces, self.robust, self.check_robustness, self.ssim_floor]


def _attack_controls(handlers: Handlers, prefix: str, *, check_robustness: bool) -> AttackControls:
    """The attack settings of a tab; `check_robustness` is its checkbox's default (the Protect tab
    shows the framings grid from that report; a batch leaves it off, it costs time per photo)."""
    default_model = handlers.default_model()
    model = gr.Dropdown(
        handlers.model_choices(), value=default_model, label="Model", info="the generator to protect against (status in brackets)",
        elem_id=f"{prefix}-model",
    )
    labels = handlers.all_labels()  # every label is a valid API value; the UI shows the model's own
    targets = gr.CheckboxGroup(labels, value=[], label="Targets", visible=False, elem_id=f"{prefix}-targets")
    attack = gr.Radio(ATTACK_CHOICES, value="pgd", label="Attack", info="PGD = I-FGSM from a random start", elem_id=f"{prefix}-attack")
    strength = gr.Radio(
        [(_strength_label(name), name) for name in STRENGTHS], value=DEFAULT_STRENGTH, label="Strength",
        info="L-inf budget per pixel; higher is more robust and more visible", elem_id=f"{prefix}-strength",
    )
    robust = gr.Radio(ROBUST_CHOICES, value=DEFAULT_ROBUST, label="Survive sharing and cropping (robust attack)",
                      info="framing: the whole photo, protected wherever a deepfake maker crops it, after recompression; "
                           "off: the paper's plain attack on the centred square or the faces (fastest)",
                      elem_id=f"{prefix}-robust")
    check_robustness = gr.Checkbox(check_robustness, label="Check robustness: re-measure after JPEG 90/75/50, resize, blur, shifted crop, "
                                   "and in unseen framings",
                                   elem_id=f"{prefix}-check-robustness")
    with gr.Accordion("Advanced", open=False, elem_id=f"{prefix}-advanced"):
        detect_faces = gr.Checkbox(True, label="Protect every detected face (face models); off: the centred square",
                                   elem_id=f"{prefix}-detect-faces")
        ssim_floor = gr.Slider(0, 0.999, value=0, step=0.001, label="Perceptual mode: keep SSIM at least",
                               info="0 = off; otherwise the perturbation is scaled down until the photo's SSIM reaches this",
                               elem_id=f"{prefix}-ssim-floor")
        epsilon = gr.Slider(0.004, 0.5, value=STRENGTHS[DEFAULT_STRENGTH], step=0.001, label="Epsilon (on [-1, 1])",
                            info="0.05 = 6.4/255 of the pixel range", elem_id=f"{prefix}-epsilon")
        iterations = gr.Slider(1, 200, value=DEFAULT_ITERATIONS, step=1, label="Iterations", elem_id=f"{prefix}-iterations")
        step_size = gr.Slider(0.001, 0.1, value=DEFAULT_STEP_SIZE, step=0.001, label="Step size (on [-1, 1])", elem_id=f"{prefix}-step-size")
        random_start = gr.Checkbox(True, label="Random start (I-FGSM with a random start is PGD)", elem_id=f"{prefix}-random-start")
        seed = gr.Number(RANDOM_SEED, precision=0, minimum=RANDOM_SEED, label="Seed", info=f"{RANDOM_SEED} = random (the seed used is reported)",
                         elem_id=f"{prefix}-seed")
    controls = AttackControls(model, targets, attack, strength, epsilon, iterations, step_size, random_start, seed,
                              detect_faces, robust, check_robustness, ssim_floor)
    _wire_attack_controls(handlers, controls)
    return controls


def _wire_attack_controls(handlers: Handlers, c: AttackControls) -> None:
    """UI-only events keeping the controls consistent (all private: not part of the API)."""
    private: dict[str, Any] = {"api_visibility": "private", "queue": False, "show_progress": "hidden"}
    c.model.change(handlers.targets_update, inputs=c.model, outputs=c.targets, **private)
    c.strength.input(lambda name: STRENGTHS.get(name, STRENGTHS[DEFAULT_STRENGTH]), inputs=c.strength, outputs=c.epsilon, **private)
    c.epsilon.input(lambda eps: next((n for n, v in STRENGTHS.items() if abs(v - float(eps)) < 1e-9), None), inputs=c.epsilon, outputs=c.strength, **private)

    def attack_changed(attack: str) -> tuple[Any, Any, Any]:
        iterative = attack != "fgsm"
        note = None if iterative else "FGSM takes one step of size epsilon"
        return (
            gr.update(value=attack == "pgd", interactive=iterative),
            gr.update(interactive=iterative, info=note),
            gr.update(interactive=iterative, info=note),
        )

    c.attack.change(attack_changed, inputs=c.attack, outputs=[c.random_start, c.iterations, c.step_size], **private)
    c.random_start.input(lambda on, attack: "pgd" if on else ("ifgsm" if attack == "pgd" else attack), inputs=[c.random_start, c.attack], outputs=c.attack, **private)


def _about_markdown() -> str:
    return """
## Calling deepshield from code

The same engine serves this page, the REST API and the command line. With
[`gradio_client`](https://www.gradio.app/guides/getting-started-with-the-python-client):

```python
from gradio_client import Client, handle_file

client = Client("http://127.0.0.1:7860/")   # this server's address
protected, fake_original, fake_protected, metrics = client.predict(
    handle_file("me.jpg"), "cyclegan-vintage", "pgd", 0.05, 10, 0.01,   # image, model, attack, epsilon, iterations, step_size
    -1, [],                                                             # seed (-1 = random), targets (conditional models; [] = all)
    True, "framing", True, 0,   # detect faces, robust ("framing" | "off" | "eot" | "spread-spectrum"), check robustness, SSIM floor (0 = off)
    [],                         # faces: numbers of the faces to protect, as metrics["faces"] numbers them ([] = every face)
    api_name="/protect",
)
print(metrics["perturbation"], metrics["disruption"], metrics["faces"], metrics["robustness"]["framings"])
gallery, zip_path, report = client.predict(
    [handle_file("a.jpg"), handle_file("b.png")], "cyclegan-vintage", "pgd", 0.05, 10, 0.01, -1, [],
    api_name="/protect_batch",            # the same trailing options as /protect may follow; faces apply to every photo
)
pairs, verdict = client.predict(handle_file("me.jpg"), handle_file("me-from-the-site.jpg"), [], api_name="/verify")
models = client.predict(api_name="/models")   # as `python -m deepshield models --json`
```

`epsilon` and `step_size` are on the [-1, 1] scale of the paper (0.05 = 6.4/255); `epsilon` may
also be a strength preset: `low` (0.02 = 2.55/255), `medium` (0.05 = 6.38/255), `high` (0.1 =
12.75/255). `attack` is `fgsm`, `ifgsm` or `pgd` (PGD is I-FGSM from a random start). A model whose
weights are not on the server yet must be loaded in the **Models** tab (or with
`POST /api/v1/models/NAME/load`) first.

**REST API** (JSON, base64 images; interactive docs at [/docs](/docs) and [/redoc](/redoc)):
`POST /api/v1/protect/image`, `POST /api/v1/protect/batch`, `GET /api/v1/protect/status/{task_id}`,
`GET /api/v1/models`, `POST /api/v1/models/{name}/load`, `POST /api/v1/models/{name}/unload`,
`GET /api/v1/config/attack-methods`, `GET /api/v1/health`, `GET /health`, `GET /metrics` (Prometheus).

**Command line:** `python -m deepshield protect me.jpg -o me.protected.png --robust framing --check-robustness --report report.json`,
then after sharing `python -m deepshield verify me.jpg me-from-the-site.jpg`.

## What the protection does, and its limits

deepshield implements FGSM, I-FGSM and PGD from *Disrupting Deepfakes* (Ruiz, Bargal, Sclaroff, 2020):
a perturbation bounded in L-inf (at most epsilon per pixel) that pushes the generator's output on
the protected photo away from its output on the original. A deepfake counts as disrupted when the
mean squared difference of the two outputs exceeds 0.05 (on [-1, 1]).

- **White box.** The perturbation is optimised against the model chosen here. How well it
  transfers to other generators is not guaranteed.
- **Sharing weakens it.** JPEG recompression, resizing or blurring (for example by a social
  network) shrink the perturbation's effect, and a deepfake maker frames the photo their own way.
  *Survive sharing and cropping* (`framing`, the default) optimises over the maker's views of the
  whole photo (crops anywhere, any resize filter, jittered and turned face crops) after JPEG,
  downscaling and blur, and helps, but does not make it immune; *Check robustness* measures what
  is left after real JPEG 90/75/50, resizing, blur, a shifted crop and in unseen framings, and the
  **Verify** tab measures a copy that came back from a site. Share the lossless PNG when you can.
- **Where it is applied.** With `framing`, the whole photo carries the perturbation. The paper's
  plain attack perturbs only what deepshield's own framing shows the model: each detected face
  cropped as in the model's training data for face models (StarGAN, GANimation), else the largest
  centred square; the rest of the photo is left unchanged.
- Metrics (L2 / L-inf of the perturbation, PSNR, SSIM, disruption mse / l1) are measured on the
  written PNG.

Example photo: `examples/synthetic-portrait.png` (generated, not a real person).
"""


def build_demo(engine: Engine, settings: Settings, jobs: JobBackend, limiter: SlidingWindowLimiter | None = None) -> gr.Blocks:
    """The deepshield UI on `engine`, batch jobs on `jobs`, rate limit shared with the REST API
    through `limiter`; queue limits from `settings`. Mount it with
    `gr.mount_gradio_app(api, demo, path="/")`."""
    handlers = Handlers(engine, settings, jobs, limiter)
    engine_events: dict[str, Any] = {"concurrency_id": "engine", "concurrency_limit": settings.max_concurrent}
    private: dict[str, Any] = {"api_visibility": "private"}

    with gr.Blocks(title="deepshield", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# deepshield\nAdd an imperceptible adversarial perturbation to a photo so that image-translation "
            "deepfake generators (StarGAN, GANimation, CycleGAN) produce garbage instead of a convincing fake "
            "(*Disrupting Deepfakes*, Ruiz et al. 2020)."
        )
        with gr.Tabs():
            # -------------------------------------------------------------- Protect
            with gr.Tab("Protect", id="protect"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        protect_controls = _attack_controls(handlers, "protect", check_robustness=True)
                        protect_button = gr.Button("Protect", variant="primary", elem_id="protect-button")
                    with gr.Column(scale=3):
                        with gr.Row(equal_height=True):
                            image_in = gr.Image(
                                type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"],
                                label="Original photo", elem_id="original-image",
                            )
                            protected_out = gr.Image(type="filepath", format="png", label="Protected (PNG, full resolution)",
                                                     interactive=False, elem_id="protected-image")
                        with gr.Row():
                            faces_drawn = gr.Image(type="pil", format="png", label="Faces found (numbered; the ticked ones are protected)",
                                                   interactive=False, elem_id="faces-found")
                            faces_choice = gr.CheckboxGroup([], value=[], label="Faces to protect (face models; none ticked = every face)",
                                                            visible=False, elem_id="faces-choice")
                        with gr.Row(equal_height=True):
                            fake_original = gr.Image(type="pil", format="png", label="Deepfake of the original",
                                                     interactive=False, elem_id="deepfake-original")
                            fake_protected = gr.Image(type="pil", format="png", label="Deepfake of the protected photo",
                                                      interactive=False, elem_id="deepfake-protected")
                        with gr.Row():
                            perturbation = gr.Image(type="filepath", format="png", label="Perturbation |protected - original|, amplified",
                                                    interactive=False, elem_id="perturbation-image")
                            with gr.Column():
                                metrics_table = gr.Dataframe(headers=["metric", "value"], label="Metrics", interactive=False, wrap=True,
                                                             max_height=720, column_widths=["55%", "45%"], elem_id="metrics-table")
                                download = gr.File(label="Download the protected photo (lossless PNG)", interactive=False,
                                                   elem_id="protected-download")
                        framings_gallery = gr.Gallery(
                            label="Unseen framings of a deepfake maker: deepfake of the original | of the protected photo",
                            columns=FRAMINGS_SHOWN // 2, object_fit="contain", height="auto", format="png", interactive=False,
                            elem_id="framings-gallery",
                        )
                        with gr.Accordion("Full report (JSON)", open=False):
                            metrics_json = gr.JSON(label="Report", elem_id="metrics-json")
                if EXAMPLE_PHOTO.is_file() and EXAMPLE_MODEL in engine.specs:
                    gr.Examples(
                        examples=[[str(EXAMPLE_PHOTO), EXAMPLE_MODEL]],
                        inputs=[image_in, protect_controls.model],
                        label="Example (generated portrait, offline model)",
                        cache_examples=False,
                        elem_id="protect-examples",
                    )

            # -------------------------------------------------------------- Batch
            with gr.Tab("Batch", id="batch"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        files_in = gr.File(file_count="multiple", file_types=["image", ".zip"],
                                           label=f"Photos or a .zip of photos (up to {settings.max_batch_size})", elem_id="batch-files")
                        batch_controls = _attack_controls(handlers, "batch", check_robustness=False)
                        batch_faces = gr.Textbox(label="Faces to protect in every photo (numbers as each report lists them, e.g. 0,2; empty = all)",
                                                 elem_id="batch-faces")
                        batch_button = gr.Button("Protect all", variant="primary", elem_id="batch-button")
                    with gr.Column(scale=3):
                        gallery = gr.Gallery(label="Protected photos", columns=4, format="png", elem_id="batch-gallery")
                        batch_zip = gr.File(label="Protected photos (.zip of PNGs under the original names, with report.json)", interactive=False, elem_id="batch-zip")
                        batch_table = gr.Dataframe(headers=REPORT_COLUMNS, label="Per-image report", interactive=False, elem_id="batch-table")
                        with gr.Accordion("Full report (JSON)", open=False):
                            batch_report = gr.JSON(label="Report", elem_id="batch-report")

            # -------------------------------------------------------------- Verify
            with gr.Tab("Verify", id="verify"):
                gr.Markdown(
                    "Protected a photo and shared it? Give the original and the copy as it came back from the site "
                    "(recompressed, resized; same framing): each model's deepfake of the copy is compared with its "
                    "deepfake of the original shared the same way (same size, same JPEG tables)."
                )
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        verify_original = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                                   label="Original photo (before protection)", elem_id="verify-original")
                        verify_shared = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                                 label="Protected photo as shared", elem_id="verify-shared")
                        photo_models = [(label, name) for label, name in handlers.model_choices()
                                        if engine.specs[name].preprocessing != "label_map"]
                        verify_models = gr.CheckboxGroup(photo_models, value=[], label="Models",
                                                         info="none ticked = every photo model on this server", elem_id="verify-models")
                        verify_button = gr.Button("Verify", variant="primary", elem_id="verify-button")
                    with gr.Column(scale=3):
                        verify_verdict = gr.Markdown(elem_id="verify-verdict")
                        verify_gallery = gr.Gallery(label="Per model: deepfake of the original shared the same way | of the shared copy",
                                                    columns=2, format="png", elem_id="verify-gallery")
                        verify_table = gr.Dataframe(headers=VERIFY_COLUMNS, label="Per model", interactive=False, elem_id="verify-table")
                        with gr.Accordion("Full report (JSON)", open=False):
                            verify_report = gr.JSON(label="Report", elem_id="verify-report")

            # -------------------------------------------------------------- Models
            with gr.Tab("Models", id="models"):
                models_table = gr.Dataframe(headers=MODEL_COLUMNS, label="Models", interactive=False, wrap=True, max_height=720,
                                            column_widths=["14%", "11%", "6%", "14%", "10%", "18%", "27%"], elem_id="models-table")
                with gr.Row():
                    models_choice = gr.Dropdown(handlers.model_choices(), value=handlers.default_model(), label="Model", scale=2)
                    load_button = gr.Button("Load (may download)", scale=1)
                    unload_button = gr.Button("Unload", scale=1)
                    refresh_button = gr.Button("Refresh", scale=1)
                admin_token = gr.Textbox(label="Admin token (DEEPSHIELD_ADMIN_TOKEN): needed to load or unload models on this server",
                                         type="password", visible=bool(settings.admin_token), elem_id="admin-token")
                models_status = gr.Markdown()
                with gr.Accordion("Model list (JSON, as `models --json`)", open=False):
                    models_json = gr.JSON(label="Models")

            # -------------------------------------------------------------- About
            with gr.Tab("About", id="about"):
                gr.Markdown(_about_markdown())

        dropdowns = [protect_controls.model, batch_controls.model, models_choice]
        image_in.change(handlers.faces_found, inputs=image_in, outputs=[faces_drawn, faces_choice], show_progress="hidden", **private)

        # Public API (DESIGN.md s.3): /protect, /protect_batch, /models. Raw inputs: the handlers
        # validate them with the engine's own messages (a bad image is a gr.Error, not a traceback).
        protect_button.click(
            handlers.protect,
            inputs=[image_in, *protect_controls.api_inputs(), faces_choice],
            outputs=[protected_out, fake_original, fake_protected, metrics_json],
            api_name="protect", preprocess=False, **engine_events,
        ).success(
            handlers.protect_details,
            inputs=[image_in, protected_out, metrics_json],
            outputs=[perturbation, metrics_table, download, framings_gallery, *dropdowns], show_progress_on=perturbation, **private,
        )
        batch_button.click(
            handlers.protect_batch,
            inputs=[files_in, *batch_controls.api_inputs(), batch_faces],
            outputs=[gallery, batch_zip, batch_report],
            api_name="protect_batch", preprocess=False, **engine_events,
        ).success(report_rows, inputs=batch_report, outputs=batch_table, **private)
        verify_button.click(
            handlers.verify,
            inputs=[verify_original, verify_shared, verify_models],
            outputs=[verify_gallery, verify_report],
            api_name="verify", preprocess=False, **engine_events,
        ).success(verify_rows, inputs=verify_report, outputs=[verify_verdict, verify_table], **private)
        refresh_button.click(handlers.models, outputs=models_json, api_name="models").success(
            handlers.render_models, inputs=models_json, outputs=[models_table, *dropdowns], show_progress="hidden", **private
        )

        # UI-only: model management, and fresh statuses whenever the page opens
        refresh_outputs = [models_json, models_table, *dropdowns]
        quiet = {"show_progress": "hidden", **private}
        load_button.click(handlers.load, inputs=[models_choice, admin_token], outputs=models_status, **private).then(
            handlers.refresh, outputs=refresh_outputs, **quiet
        )
        unload_button.click(handlers.unload, inputs=[models_choice, admin_token], outputs=models_status, **private).then(
            handlers.refresh, outputs=refresh_outputs, **quiet
        )
        demo.load(handlers.refresh, outputs=refresh_outputs, **quiet)

    # Gradio copies a file named by an input payload into its cache only if it was uploaded, but
    # it checks that only once the app has "launched", and gr.mount_gradio_app never sets the flag:
    # without this, {"path": "/any/file", "meta": ...} would be copied in and processed. (Payloads
    # without `meta` skip Gradio's check entirely; the handlers refuse those themselves.)
    demo.has_launched = True
    # Gradio refuses every event with max_size=0, so "no waiting line" keeps one place.
    demo.queue(default_concurrency_limit=settings.max_concurrent, max_size=max(1, settings.max_queue_size))
    return demo


# ------------------------------------------------------------------------------ serving
