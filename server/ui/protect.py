"""The Protect tab: one photo, its deepfakes, the perturbation, the metrics and the framings grid;
the public `/protect` call."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from deepshield import faces as face_detection
from deepshield import imaging, png
from server import observability, uploads
from server.ui.context import PRIVATE, HandlerContext, upload_root, user_errors
from server.ui.params import attack_options, cell
from server.ui.widgets import DEFAULT_ITERATIONS, DEFAULT_ROBUST, DEFAULT_STEP_SIZE, AttackControls, attack_controls

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PHOTO = REPO / "examples" / "synthetic-portrait.png"
EXAMPLE_MODEL = "cyclegan-vintage"
FRAMINGS_SHOWN = 4  # framings in the tab's grid
FRAMINGS_CAPTIONS = "framings.json"
PREVIEW_SIDE = 1600  # the amplified-perturbation view is shown at most this large
ROBUSTNESS_LABELS = {"jpeg90": "JPEG 90", "jpeg75": "JPEG 75", "jpeg50": "JPEG 50", "resize50": "resize to 1/2 and back",
                     "blur1": "Gaussian blur 1 px", "shift": "crop shifted 4 px"}


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


def metrics_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """The report as (metric, value) rows for the UI table."""
    p, d = metrics.get("perturbation", {}), metrics.get("disruption", {})
    rows = [
        ["perturbation L2 (on [-1, 1])", cell(p.get("l2"))],
        ["perturbation L-inf (on [-1, 1])", cell(p.get("linf"))],
        ["perturbation L-inf (/255)", cell(p.get("linf_255"), 0)],
        ["PSNR (dB)", cell(p.get("psnr"), 2)],
        ["SSIM", cell(p.get("ssim"))],
        ["share of the photo perturbed", cell(p.get("area"), 3)],
        ["disruption mse", cell(d.get("mse"))],
        ["disruption l1", cell(d.get("l1"))],
        ["disrupted (mse > 0.05)", cell(d.get("disrupted"))],
        ["seconds", cell(metrics.get("seconds"), 2)],
        ["model / attack", f"{metrics.get('model')} / {metrics.get('attack')}"],
        ["epsilon (/255), strength", f"{cell(metrics.get('epsilon'))} ({cell(metrics.get('epsilon_255'), 1)}), {metrics.get('strength', '-')}"],
        ["iterations / step size", f"{metrics.get('iterations')} / {cell(metrics.get('step_size'))}"],
        ["robust attack", cell(metrics.get("robust") or "off")],
        ["seed", cell(metrics.get("seed"))],
        ["region protected", _region(metrics)],
        *_face_rows(metrics),
    ]
    if "perceptual" in metrics:
        q = metrics["perceptual"]
        rows.append([f"perceptual: scale for SSIM >= {q['ssim_floor']:g}", cell(q["scale"], 3)])
    robustness = dict(metrics.get("robustness") or {})
    framings = robustness.pop("framings", None)
    for key, value in robustness.items():
        verdict = "disrupted" if value["disrupted"] else "NOT disrupted"
        rows.append([f"after {ROBUSTNESS_LABELS.get(key, key)}: mse", f"{value['mse']:.4f} ({verdict})"])
    if framings:
        rows.append([f"{framings['views']} unseen framings: share disrupted", f"{framings['share_disrupted']:.0%} (mean mse {framings['mse']:.4f})"])
        rows.append(["... after JPEG 75 first", f"{framings['jpeg75']['share_disrupted']:.0%} (mean mse {framings['jpeg75']['mse']:.4f})"])
        tone = framings["tone_matched"]
        rows.append(["... after a colour correction of the deepfake", f"{tone['share_disrupted']:.0%} (mean mse {tone['mse']:.4f})"])
    return rows


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
        rows.append([f"face {face.get('index', i)}", f"box {face['box']}, score {cell(face.get('score'), 2)}, {state}"])
    return rows


class ProtectHandlers(HandlerContext):
    """The Protect tab's events: `/protect`, the faces found on upload, the details after."""

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
        with user_errors(), self.engine.caller_queue():
            self._rate_limit(request)
            upload = uploads.from_payload(image, upload_root())
            uploads.check_image_file(upload, self.settings)
            options = attack_options(
                model, attack, epsilon, iterations, step_size, seed, targets, detect_faces, robust, check_robustness, ssim_floor, faces
            )
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
        with user_errors():
            rgb = imaging.load_photo(image).rgb
            found = face_detection.detect_faces(rgb)
        choices = [(f"face {i}: {f.width}x{f.height} px at ({f.x0}, {f.y0}), score {f.score:.2f}", i) for i, f in enumerate(found)]
        drawn = face_detection.draw(rgb, found)
        return drawn, gr.update(choices=choices, value=[i for _, i in choices], visible=bool(found))

    def protect_details(self, original: str | None, protected: str | None, metrics: dict[str, Any] | None) -> tuple[Any, ...]:
        """UI extras after /protect: amplified perturbation, metrics table, download, dropdowns."""
        updates = self.model_dropdown_updates()
        if not (original and protected and metrics):
            return (None, [], None, [], *updates)
        with user_errors():
            original_path, protected_path = uploads.received(original, upload_root()), uploads.received(protected, upload_root())
            view = perturbation_view(imaging.load_photo(original_path).rgb, imaging.load_photo(protected_path).rgb)
            # written here by the parallel encoder: Gradio's own PNG writer took 0.56 s for a 1024 px view of noise
            view_path = imaging.write_atomic(self.store.new_dir() / "perturbation.png", png.encode(view))
            return (str(view_path), metrics_rows(metrics), str(protected_path), load_framings(self.store.framings_dir(protected_path)), *updates)


@dataclass
class ProtectTab:
    """The Protect tab's components that its events read or write."""

    controls: AttackControls
    button: gr.Button
    image: gr.Image
    protected: gr.Image
    faces_drawn: gr.Image
    faces_choice: gr.CheckboxGroup
    fake_original: gr.Image
    fake_protected: gr.Image
    perturbation: gr.Image
    metrics_table: gr.Dataframe
    download: gr.File
    framings: gr.Gallery
    report: gr.JSON


def layout(handlers: ProtectHandlers) -> ProtectTab:
    """Lay the tab out (inside the page's gr.Tabs)."""
    with gr.Tab("Protect", id="protect"):
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                controls = attack_controls(handlers, "protect", check_robustness=True)
                button = gr.Button("Protect", variant="primary", elem_id="protect-button")
            with gr.Column(scale=3):
                with gr.Row(equal_height=True):
                    image = gr.Image(
                        type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"],
                        label="Original photo", elem_id="original-image",
                    )
                    protected = gr.Image(type="filepath", format="png", label="Protected (PNG, full resolution)",
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
                framings = gr.Gallery(
                    label="Unseen framings of a deepfake maker: deepfake of the original | of the protected photo",
                    columns=FRAMINGS_SHOWN // 2, object_fit="contain", height="auto", format="png", interactive=False,
                    elem_id="framings-gallery",
                )
                with gr.Accordion("Full report (JSON)", open=False):
                    report = gr.JSON(label="Report", elem_id="metrics-json")
        if EXAMPLE_PHOTO.is_file() and EXAMPLE_MODEL in handlers.engine.specs:
            gr.Examples(
                examples=[[str(EXAMPLE_PHOTO), EXAMPLE_MODEL]],
                inputs=[image, controls.model],
                label="Example (generated portrait, offline model)",
                cache_examples=False,
                elem_id="protect-examples",
            )
    return ProtectTab(controls, button, image, protected, faces_drawn, faces_choice, fake_original, fake_protected,
                      perturbation, metrics_table, download, framings, report)


def wire(tab: ProtectTab, handlers: ProtectHandlers, dropdowns: list[gr.Dropdown]) -> None:
    """The faces found on upload (private), the public `/protect` call (raw inputs: the handler
    validates them with the engine's own messages), then its details, which also refresh the
    model `dropdowns` of every tab."""
    tab.image.change(handlers.faces_found, inputs=tab.image, outputs=[tab.faces_drawn, tab.faces_choice], show_progress="hidden", **PRIVATE)
    tab.button.click(
        handlers.protect,
        inputs=[tab.image, *tab.controls.api_inputs(), tab.faces_choice],
        outputs=[tab.protected, tab.fake_original, tab.fake_protected, tab.report],
        api_name="protect", preprocess=False, **handlers.engine_events(),
    ).success(
        handlers.protect_details,
        inputs=[tab.image, tab.protected, tab.report],
        outputs=[tab.perturbation, tab.metrics_table, tab.download, tab.framings, *dropdowns], show_progress_on=tab.perturbation, **PRIVATE,
    )
