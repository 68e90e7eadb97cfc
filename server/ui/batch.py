"""The Batch tab: many photos (or zips of photos) as one batch job, the same jobs as
POST /api/v1/protect/batch; the public `/protect_batch` call."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from server import uploads
from server.jobs import FINISHED, JobInput, JobQueueFullError, results
from server.ui.context import PRIVATE, HandlerContext, upload_root, user_errors
from server.ui.params import attack_options, cell
from server.ui.widgets import DEFAULT_ITERATIONS, DEFAULT_ROBUST, DEFAULT_STEP_SIZE, AttackControls, attack_controls

JOB_POLL_S = 0.25  # how often the batch view reads its job's progress
REPORT_COLUMNS = ["input", "output", "faces", "linf_255", "psnr", "ssim", "mse", "disrupted", "mse after JPEG 75", "seconds"]


def job_options(options: dict[str, Any]) -> dict[str, Any]:
    """Engine keywords (from `attack_options`) -> the options of a batch job, in the shape of
    the REST API's ProtectOptions, so UI and REST jobs run the same way."""
    epsilon = options["epsilon"]
    budget = {"strength": epsilon.lower()} if isinstance(epsilon, str) else {"epsilon": epsilon}
    params = {key: options[key] for key in ("iterations", "step_size", "seed", "targets", "ssim_floor") if options[key] is not None}
    params |= {"detect_faces": options["detect_faces"], "robust": options["robust"] or "off", "check_robustness": options["check_robustness"]}
    if options.get("faces") is not None:
        params["faces"] = options["faces"]
    return {"model_type": options["model"], "attack_method": options["attack"], "attack_params": {**budget, **params},
            "output_format": "png", "return_deepfakes": False}


def report_rows(report: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """The per-image report as rows of REPORT_COLUMNS."""
    rows = []
    for item in report or []:
        p, d = item.get("perturbation", {}), item.get("disruption", {})
        jpeg75 = (item.get("robustness") or {}).get("jpeg75")
        output = item.get("output") or f"error: {item.get('error')}"
        rows.append([item.get("input"), output, len(item.get("faces") or []), p.get("linf_255"), cell(p.get("psnr"), 2),
                     cell(p.get("ssim")), cell(d.get("mse")), cell(d.get("disrupted")), cell(jpeg75["mse"] if jpeg75 else None),
                     cell(item.get("seconds"), 2)])
    return rows


class BatchHandlers(HandlerContext):
    """The Batch tab's event: `/protect_batch`."""

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
        with user_errors():
            self._rate_limit(request)
            workdir = self.store.new_dir()
            if isinstance(images, dict):
                images = [images]
            batch = uploads.collect_batch(images, workdir / "inputs", self.settings, root=upload_root())
            options = attack_options(
                model, attack, epsilon, iterations, step_size, seed, targets, detect_faces, robust, check_robustness, ssim_floor, faces
            )
            self._require_local_weights(options["model"])
            try:
                task_id = self.jobs.submit([JobInput(u.name, u.path.read_bytes()) for u in batch], job_options(options))
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


@dataclass
class BatchTab:
    """The Batch tab's components that its events read or write."""

    files: gr.File
    controls: AttackControls
    faces: gr.Textbox
    button: gr.Button
    gallery: gr.Gallery
    archive: gr.File
    table: gr.Dataframe
    report: gr.JSON


def layout(handlers: BatchHandlers) -> BatchTab:
    """Lay the tab out (inside the page's gr.Tabs)."""
    with gr.Tab("Batch", id="batch"):
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                files = gr.File(file_count="multiple", file_types=["image", ".zip"],
                                label=f"Photos or a .zip of photos (up to {handlers.settings.max_batch_size})", elem_id="batch-files")
                controls = attack_controls(handlers, "batch", check_robustness=False)
                faces = gr.Textbox(label="Faces to protect in every photo (numbers as each report lists them, e.g. 0,2; empty = all)",
                                   elem_id="batch-faces")
                button = gr.Button("Protect all", variant="primary", elem_id="batch-button")
            with gr.Column(scale=3):
                gallery = gr.Gallery(label="Protected photos", columns=4, format="png", elem_id="batch-gallery")
                archive = gr.File(label="Protected photos (.zip of PNGs under the original names, with report.json)", interactive=False, elem_id="batch-zip")
                table = gr.Dataframe(headers=REPORT_COLUMNS, label="Per-image report", interactive=False, elem_id="batch-table")
                with gr.Accordion("Full report (JSON)", open=False):
                    report = gr.JSON(label="Report", elem_id="batch-report")
    return BatchTab(files, controls, faces, button, gallery, archive, table, report)


def wire(tab: BatchTab, handlers: BatchHandlers) -> None:
    """The public `/protect_batch` call (raw inputs), then its report as a table (private)."""
    tab.button.click(
        handlers.protect_batch,
        inputs=[tab.files, *tab.controls.api_inputs(), tab.faces],
        outputs=[tab.gallery, tab.archive, tab.report],
        api_name="protect_batch", preprocess=False, **handlers.engine_events(),
    ).success(report_rows, inputs=tab.report, outputs=tab.table, **PRIVATE)
