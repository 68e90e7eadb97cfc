"""The protection pipeline: photos, the squares each model sees and an ensemble of loaded models
in; the attack, run on one device in passes sized to its memory; protected photos with their
deepfakes and reports out."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from deepshield import attacks, faces, framing, imaging, memory, metrics, perceptual, robustness, transforms, views
from deepshield.errors import InvalidParameterError, OutOfMemoryError
from deepshield.faces import FaceBox
from deepshield.model_cache import LoadedModel

log = logging.getLogger("deepshield.engine")  # the name its warnings have always been logged under

GPU_PASS_PHOTOS = 8
PASS_MEMORY_SHARE = 0.8
"""Share of the device's free memory a pass is planned to fill."""
PEAK_PER_KEPT = 3.0
"""A pass's peak memory over what its backward keeps (`memory.activation_bytes`): 0.97-1.6 for a
bare forward + backward (StarGAN 128, CycleGAN 256, fp32 and bf16, 8 samples), up to 3.0 for a
whole protection at batch 1 on CPU (crops, references, metrics, allocator slack; bench/RESULTS.md)."""
CPU_PASS_PIXELS = 8 * 128 * 128
"""Generator inputs (samples x pixels) per forward/backward pass on a CPU: past about eight
128 px samples, time per sample grows (measured on StarGAN: 0.12 s at <= 8, 0.15 s at 16, 0.23 s
at 40 per 128 px sample on 2 cores), as activations stop fitting the caches."""


@dataclass
class ProtectionResult:
    """The protected photo (8-bit, full resolution), the two deepfakes and the report.

    `metrics` holds the report fields of DESIGN.md s.3 measured on the 8-bit image (what a
    lossless file stores); `save()` returns them re-measured when the format is lossy.
    """

    protected: Image.Image
    deepfake_original: Image.Image
    deepfake_protected: Image.Image
    metrics: dict[str, Any]
    original: imaging.Photo = field(repr=False)
    protected_rgb: np.ndarray = field(repr=False)
    _remeasure: Callable[[np.ndarray], dict[str, Any]] = field(repr=False)
    framing_examples: list[tuple[Image.Image, Image.Image, str]] = field(default_factory=list, repr=False)
    """With `check_robustness`: unseen framings of the shared photo as (deepfake of the original's
    view, deepfake of the protected view, what the view is)."""

    def encode(self, fmt: str = "PNG") -> tuple[bytes, dict[str, Any]]:
        """The protected photo as a file in `fmt` (PNG, JPEG, WEBP, TIFF, BMP) and the metrics
        measured on exactly those bytes."""
        data = imaging.encode(self.protected_rgb, self.original, fmt)
        written = imaging.decode_rgb(data)
        if np.array_equal(written, self.protected_rgb):
            return data, {**self.metrics, "output_format": fmt}
        return data, {**self.metrics, **self._remeasure(written), "output_format": fmt}

    @property
    def original_rgb(self) -> np.ndarray:
        """The input's upright 8-bit RGB pixels, uint8 [H, W, 3]."""
        return self.original.rgb

    def save(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Write the protected photo (format from the suffix, PNG by default); return the metrics
        measured on the file actually written."""
        data, measured = self.encode(imaging.output_format(path))
        imaging.write_atomic(path, data)
        return measured


Box = tuple[int, int, int]
"""(top, left, side) of a square a model sees, in full-resolution pixels."""


@dataclass
class Job:
    """One photo of a request: the squares each model sees (one per face, or the centred square;
    a face's square is levelled by the face's roll) and the smallest region holding every pixel
    they read, which is what the attack perturbs."""

    photo: imaging.Photo
    original: Tensor  # [1, 3, H, W] in [-1, 1] on the device
    boxes: list[list[Box]]  # per model
    faces: list[FaceBox]  # every face found, left to right (the report's numbering)
    protected: list[int]  # indices into `faces` of those the face models' squares are on
    top: int = field(init=False)  # the perturbed region: rows top:bottom, columns left:right
    left: int = field(init=False)
    bottom: int = field(init=False)
    right: int = field(init=False)
    mask: Tensor = field(init=False, repr=False)  # [1, 1, h, w] True where some model looks

    def __post_init__(self) -> None:
        squares = [box for per_model in self.boxes for box in per_model]
        height, width = self.original.shape[-2:]
        bounds = [views.square_bounds(box, height, width) for box in squares]
        self.top, self.left = min(b[0] for b in bounds), min(b[1] for b in bounds)
        self.bottom, self.right = max(b[2] for b in bounds), max(b[3] for b in bounds)
        mask = torch.zeros(self.bottom - self.top, self.right - self.left, dtype=torch.bool)
        for box in squares:
            mask |= views.square_mask(box, self.top, self.left, *mask.shape)
        self.mask = mask.view(1, 1, *mask.shape).to(self.original.device)

    def region(self, x: Tensor | None = None) -> Tensor:
        """The perturbed region of x [1, 3, H, W] (default: the original): [1, 3, h, w], or
        [1, 1, h, w] for a grayscale photo, whose perturbation must stay gray."""
        x = self.original if x is None else x
        region = x[:, :, self.top : self.bottom, self.left : self.right]
        return region[:, :1] if self.photo.grayscale else region

    def crops(self, index: int, region: Tensor) -> list[Tensor]:
        """The squares model `index` sees, cut from a region tensor (gradients flow through)."""
        region = region.expand(-1, 3, -1, -1)
        return [views.crop_square_tensor(region, box, self.top, self.left) for box in self.boxes[index]]

    def paste(self, region: Tensor) -> Tensor:
        full = self.original.clone()
        window = full[:, :, self.top : self.bottom, self.left : self.right]
        window.copy_(torch.where(self.mask, region.expand(-1, 3, -1, -1), window))
        return full


@dataclass
class Ensemble:
    """The generators of one request with their resolutions and target conditions."""

    models: list[LoadedModel]
    sizes: list[int]
    conditions: list[tuple[list[str], Tensor | None]]

    def targets(self, index: int) -> int:
        vectors = self.conditions[index][1]
        return 1 if vectors is None else vectors.shape[0]

    def kept_bytes(self, squares: Sequence[Sequence[int]], dtype: torch.dtype | None, *, each_target: bool = True) -> int:
        """Bytes a pass keeps for its backward: `squares[j][i]` squares (faces) of photo j go
        through model i, each once per target (`each_target`) or under one target (a view of
        the framing mode)."""
        return sum(
            count * (self.targets(i) if each_target else 1) * self.models[i].kept_bytes(self.sizes[i], dtype)
            for photo in squares
            for i, count in enumerate(photo)
        )

    def deepfakes(self, index: int, jobs: list[Job], regions: list[Tensor]) -> Tensor:
        """Outputs of model `index` for every (image, face, target): [sum(F_i) * T, 3, s, s]."""
        crops = [c for job, region in zip(jobs, regions) for c in job.crops(index, region)]
        batch = torch.cat([imaging.center_crop_resize(c, self.sizes[index]) for c in crops])
        count = self.targets(index)
        return self.generate(index, batch.repeat_interleave(count, dim=0), torch.arange(count).repeat(len(crops)))

    def generate(self, index: int, batch: Tensor, picks: Tensor) -> Tensor:
        """Model `index` on inputs [N, 3, s, s] in [-1, 1], sample n under target `picks[n]`
        (ignored by an unconditional model): [N, 3, s, s]."""
        _, vectors = self.conditions[index]
        model = self.models[index]
        # Compiled passes serve the attack's gradient steps only: references and reports stay
        # eager (one graph per shape to compile, and a CUDA graph's output is used before its next replay).
        generator = model.attack_forward if torch.is_grad_enabled() else model.generator
        if vectors is None:
            return generator(batch)
        return generator(batch, vectors[picks.to(vectors.device)])

    def framed_faces(self, job: Job) -> list[list[Box]]:
        """Per model, the squares its views are jittered around: each face's model crop for a
        face model when faces were found, else none (framings of the whole photo)."""
        return [job.boxes[i] if model.spec.face_crop and job.faces else [] for i, model in enumerate(self.models)]

    def all_deepfakes(self, jobs: list[Job], regions: list[Tensor]) -> list[Tensor]:
        return [self.deepfakes(i, jobs, regions) for i in range(len(self.models))]

    def split(self, index: int, jobs: list[Job], outputs: Tensor) -> list[Tensor]:
        """Model `index`'s outputs (or per-output values) cut per job."""
        counts = [len(job.boxes[index]) * self.targets(index) for job in jobs]
        return list(outputs.split(counts))

    def objective(self, jobs: list[Job], references: list[Tensor]) -> attacks.Objective:
        """Per-image distance [B] from the clean deepfakes, averaged over faces, targets, models."""

        def distance(regions: list[Tensor]) -> Tensor:
            per_model = []
            for index, (fake, ref) in enumerate(zip(self.all_deepfakes(jobs, regions), references)):
                per_output = attacks.output_distance(fake, ref)
                per_model.append(torch.stack([d.mean() for d in self.split(index, jobs, per_output)]))
            return torch.stack(per_model).mean(dim=0)

        return distance

    def disruption(self, fakes: list[Tensor], references: list[Tensor]) -> dict[str, Any]:
        """Disruption report of one image: fakes/references [F * T, 3, s, s] per model, ordered
        face by face with the T targets of each face together."""
        reports = {}
        for index, (model, (labels, _), fake, clean) in enumerate(zip(self.models, self.conditions, fakes, references)):
            report = metrics.disruption_metrics(fake, clean)
            count = self.targets(index)
            if labels:
                report["per_target"] = {label: metrics.disruption_metrics(fake[t::count], clean[t::count]) for t, label in enumerate(labels)}
            reports[model.spec.name] = report
        if len(reports) == 1:
            return next(iter(reports.values()))
        mse = float(np.mean([r["mse"] for r in reports.values()]))
        l1 = float(np.mean([r["l1"] for r in reports.values()]))
        return {"mse": mse, "l1": l1, "disrupted": mse > metrics.DISRUPTION_THRESHOLD, "per_model": reports}

    def describe(self) -> dict[str, Any]:
        names = [m.spec.name for m in self.models]
        if len(names) == 1:
            return {"model": names[0], "targets": self.conditions[0][0], "image_size": self.sizes[0]}
        return {
            "model": names,
            "targets": {n: c[0] for n, c in zip(names, self.conditions)},
            "image_size": dict(zip(names, self.sizes)),
        }


@dataclass(frozen=True)
class Plan:
    """A protection's checked settings: attack, loaded models, per-chunk options, and the key
    under which single-photo requests with these settings are pooled."""

    config: attacks.AttackConfig
    ensemble: Ensemble
    chunk_options: dict[str, Any]
    key: str


class RegionAttack:
    """The paper's attack on each model's squares (the faces, or the centred square), optionally
    through the sharing transformations (`robust` "eot" / "spread-spectrum", one per iteration)."""

    def __init__(self, robust: str | None) -> None:
        self.schedule = {"eot": transforms.sharing_transforms, "spread-spectrum": transforms.spread_spectrum_blurs}.get(robust or "")

    def pixels(self, ensemble: Ensemble) -> int:
        """Generator input pixels of one photo's pass with one square (the largest model's)."""
        return max(ensemble.targets(i) * size * size for i, size in enumerate(ensemble.sizes))

    def kept_bytes(self, ensemble: Ensemble, squares: Sequence[Sequence[int]], dtype: torch.dtype | None) -> int:
        """Bytes a pass keeps for its backward: `squares[j][i]` squares of photo j, model i."""
        return ensemble.kept_bytes(squares, dtype)

    def configure(self, config: attacks.AttackConfig) -> attacks.AttackConfig:
        return config

    def attack(self, jobs: list[Job], ensemble: Ensemble, references: list[Tensor], config: attacks.AttackConfig, seeds: list[int],
               on_step: attacks.StepCallback | None, passes: Callable[[attacks.Objective], attacks.Objective]) -> list[Tensor]:
        """The adversarial photos [1, 3, H, W] in [-1, 1]; `passes` wraps the generators' passes."""
        objective = passes(ensemble.objective(jobs, references))
        if self.schedule is not None:
            objective = transforms.scheduled_objective(objective, self.schedule, seed=seeds)
        regions = attacks.linf_attack(objective, [job.region() for job in jobs], config, seed=seeds, on_step=on_step)
        return [job.paste(region) for job, region in zip(jobs, regions)]


class WholePhotoAttack:
    """`robust="framing"`: one perturbation of the whole photo over views of the threat model
    (`deepshield.framing`), `framing.VIEWS_PER_STEP` per model and step."""

    def pixels(self, ensemble: Ensemble) -> int:
        return max(framing.VIEWS_PER_STEP * size * size for size in ensemble.sizes)

    def kept_bytes(self, ensemble: Ensemble, squares: Sequence[Sequence[int]], dtype: torch.dtype | None) -> int:
        """Bytes a pass keeps: each photo's views under one target each, whatever its squares."""
        return ensemble.kept_bytes([[framing.VIEWS_PER_STEP] * len(ensemble.models)] * len(squares), dtype, each_target=False)

    def configure(self, config: attacks.AttackConfig) -> attacks.AttackConfig:
        """Momentum, and for the iterative attacks `framing.STEPS_PER_ITERATION` smaller steps per
        iteration asked for (FGSM stays one step of epsilon)."""
        if config.name == "fgsm":
            return replace(config, momentum=framing.MOMENTUM)
        steps = config.iterations * framing.STEPS_PER_ITERATION
        return replace(config, momentum=framing.MOMENTUM, lookahead=framing.LOOKAHEAD, iterations=steps, step_size=config.step_size * framing.STEP_SCALE)

    def attack(self, jobs: list[Job], ensemble: Ensemble, references: list[Tensor], config: attacks.AttackConfig, seeds: list[int],
               on_step: attacks.StepCallback | None, passes: Callable[[attacks.Objective], attacks.Objective]) -> list[Tensor]:
        threat = views.DEFAULT_THREAT_MODEL
        whole = [framing.WholePhoto.of(job.original, job.photo.grayscale, ensemble.sizes, ensemble.framed_faces(job), threat) for job in jobs]
        targets = [ensemble.targets(i) for i in range(len(ensemble.models))]
        objective = passes(framing.objective(whole, ensemble.sizes, ensemble.generate, seeds, threat, targets))
        deltas = attacks.linf_attack(objective, [w.start() for w in whole], config, seed=seeds, on_step=on_step)
        return [w.full_resolution(job.original, delta) for w, job, delta in zip(whole, jobs, deltas)]


def attack_strategy(robust: str | None) -> RegionAttack | WholePhotoAttack:
    """How a protection mode attacks: the whole photo for "framing", each model's squares else."""
    return WholePhotoAttack() if robust == "framing" else RegionAttack(robust)


class Pipeline:
    """Attacks photos on `device`, the generators' passes under autocast to `autocast_dtype`
    (None: fp32), as many photos to a pass as its memory holds, and measures each result."""

    def __init__(self, device: torch.device, autocast_dtype: torch.dtype | None) -> None:
        self.device = device
        self.autocast_dtype = autocast_dtype

    def images_per_pass(self, ensemble: Ensemble, robust: str | None = None) -> int:
        """How many photos of a request to attack together (`photos_per_pass`; one face per
        photo assumed; every target is a sample, or with `robust="framing"` every view)."""
        strategy = attack_strategy(robust)
        return self.photos_per_pass(strategy.pixels(ensemble), strategy.kept_bytes(ensemble, [[1] * len(ensemble.models)], self.autocast_dtype))

    def photos_per_pass(self, pixels: int, kept: int) -> int:
        """How many photos to attack together when one photo's pass has `pixels` generator input
        pixels (samples x height x width, the largest model's) and keeps `kept` bytes for its
        backward: as many as fit in the device's free memory (`PASS_MEMORY_SHARE` of it, at
        `PEAK_PER_KEPT` times the kept bytes), and at most `GPU_PASS_PHOTOS` on a GPU or, on a
        CPU, as many as keep a pass within `CPU_PASS_PIXELS`."""
        fitting = max(1, int(PASS_MEMORY_SHARE * memory.free_bytes(self.device) // (PEAK_PER_KEPT * kept)))
        if self.device.type != "cpu":
            return min(fitting, GPU_PASS_PHOTOS)
        return min(fitting, max(1, CPU_PASS_PIXELS // pixels))

    def _jobs(self, photos: list[imaging.Photo], ensemble: Ensemble, use_faces: bool, chosen: Sequence[int] | None) -> list[Job]:
        jobs = []
        for photo in photos:
            boxes, found, protected = model_squares(photo.rgb, ensemble.models, use_faces, chosen)
            jobs.append(Job(photo, imaging.to_tensor(photo.rgb, self.device), boxes, found, protected))
        return jobs

    def protect_fitting(self, photos: list[imaging.Photo], ensemble: Ensemble, config: attacks.AttackConfig, seeds: list[int],
                        on_step: attacks.StepCallback | None, **options: Any) -> list[ProtectionResult]:
        """`_protect_chunk`, halving the chunk whenever the device runs out of memory (each
        photo keeps its own seed, so the split does not change what it gets)."""
        try:
            return self._protect_chunk(photos, ensemble, config, seeds, on_step, **options)
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(photos) == 1:
                raise OutOfMemoryError(
                    f"{photos[0].name}: one photo does not fit in the {self.device.type} memory with this model; "
                    "free memory (unload other models) or use a smaller image_size"
                ) from None
            half = len(photos) // 2
            log.warning("out of memory with %d photos in one pass; splitting into %d + %d", len(photos), half, len(photos) - half)
            first = self.protect_fitting(photos[:half], ensemble, config, seeds[:half], on_step, **options)
            return first + self.protect_fitting(photos[half:], ensemble, config, seeds[half:], on_step, **options)

    def _protect_chunk(
        self,
        photos: list[imaging.Photo],
        ensemble: Ensemble,
        config: attacks.AttackConfig,
        seeds: list[int],
        on_step: attacks.StepCallback | None,
        *,
        detect_faces: bool,
        faces: Sequence[int] | None = None,
        robust: str | None,
        check_robustness: bool,
        ssim_floor: float | None,
    ) -> list[ProtectionResult]:
        started = time.perf_counter()
        jobs = self._jobs(photos, ensemble, detect_faces, faces)
        strategy = attack_strategy(robust)
        kept = strategy.kept_bytes(ensemble, [[len(boxes) for boxes in job.boxes] for job in jobs], self.autocast_dtype)
        if kept > memory.free_bytes(self.device):  # would fail mid-pass, or wake the kernel's OOM killer on a CPU
            raise torch.OutOfMemoryError(f"a pass over {len(jobs)} photo(s) keeps about {kept / 2**30:.1f} GiB")
        regions = [job.region() for job in jobs]
        with torch.no_grad():
            references = ensemble.all_deepfakes(jobs, regions)
        asked, config = config, strategy.configure(config)

        def passes(objective: attacks.Objective) -> attacks.Objective:
            if self.autocast_dtype is None:
                return objective
            return _autocast(objective, self.device.type, self.autocast_dtype)  # the generators' passes; sharing transforms stay fp32

        adversarial = strategy.attack(jobs, ensemble, references, config, seeds, on_step, passes)
        seconds = (time.perf_counter() - started) / len(jobs)
        header = {
            **ensemble.describe(),
            "attack": config.name,
            "epsilon": config.epsilon,
            "epsilon_255": config.epsilon * 127.5,
            "strength": attacks.strength_name(config.epsilon),
            "iterations": asked.iterations,
            "step_size": asked.step_size,
            "steps": {"count": config.iterations, "size": config.step_size},
            "random_start": config.random_start,
            "momentum": config.momentum,
            "lookahead": config.lookahead,
            "robust": robust or False,
            "device": self.device.type,
            "precision": "fp32" if self.autocast_dtype is None else "bf16",
            "seconds": round(seconds, 4),
        }
        per_job = list(zip(*[ensemble.split(i, jobs, ref) for i, ref in enumerate(references)]))
        results = []
        for job, perturbed, own, photo_seed in zip(jobs, adversarial, per_job, seeds):
            protected = imaging.quantize_within_budget(job.photo.rgb, perturbed, config.epsilon)
            scale = 1.0
            if ssim_floor is not None:
                protected, scale = perceptual.hold_ssim(job.photo.rgb, protected, ssim_floor, device=self.device)
            result = self._result(job, protected, ensemble, list(own), {**header, "seed": photo_seed})
            if ssim_floor is not None:
                result.metrics["perceptual"] = {"ssim_floor": ssim_floor, "scale": scale}
            if check_robustness:
                result.metrics["robustness"], result.framing_examples = self._robustness(job, protected, ensemble, photo_seed)
            results.append(result)
        return results

    def _robustness(self, job: Job, protected: np.ndarray, ensemble: Ensemble, seed: int) -> tuple[dict[str, Any], list[tuple[Image.Image, Image.Image, str]]]:
        """The first model's disruption after each real transformation, averaged over its
        squares (faces), and in `robustness.FRAMING_VIEWS` unseen framings of the maker (drawn
        from `views.EVALUATION_SEED` + `seed`); see `deepshield.robustness`. Returns the
        report and the framings' deepfake pairs (first target) with a caption each."""
        model = ensemble.models[0]
        size, (_, conditions) = ensemble.sizes[0], ensemble.conditions[0]
        deepfake = robustness.generator_deepfake(model.generator, size, conditions)
        reports = [robustness.robustness_report(job.photo.rgb, protected, box, deepfake) for box in job.boxes[0]]
        merged: dict[str, Any] = {}
        for key in robustness.ROBUSTNESS_KEYS:
            mse = float(np.mean([r[key]["mse"] for r in reports]))
            merged[key] = {
                "mse": mse,
                "l1": float(np.mean([r[key]["l1"] for r in reports])),
                "disrupted": mse > metrics.DISRUPTION_THRESHOLD,
                "mse_vs_clean": float(np.mean([r[key]["mse_vs_clean"] for r in reports])),
            }
        height, width = job.photo.rgb.shape[:2]
        generator = torch.Generator().manual_seed(views.EVALUATION_SEED + seed)
        drawn = views.DEFAULT_THREAT_MODEL.framing_only().sample(height, width, robustness.FRAMING_VIEWS, generator, ensemble.framed_faces(job)[0])
        per_target = robustness.frames_deepfake(model.generator, conditions)
        merged["framings"], examples = robustness.framings_report(job.photo.rgb, protected, drawn, size, per_target, self.device)
        shown = [(Image.fromarray(clean), Image.fromarray(fake), _caption(view)) for clean, fake, view in examples]
        return merged, shown

    def _result(self, job: Job, protected: np.ndarray, ensemble: Ensemble, references: list[Tensor], header: dict[str, Any]) -> ProtectionResult:
        """Measure an 8-bit protected image against the original and its clean deepfakes."""

        def measure(rgb: np.ndarray) -> tuple[dict[str, Any], list[Tensor]]:
            with torch.no_grad():
                region = job.region(imaging.to_tensor(rgb, self.device))
                fakes = ensemble.all_deepfakes([job], [region])
            report = {
                "perturbation": metrics.perturbation_metrics(job.photo.rgb, rgb, self.device),
                "disruption": ensemble.disruption(fakes, references),
            }
            return report, fakes

        measured, fakes = measure(protected)
        width, height = job.photo.size
        face_models = any(m.spec.face_crop for m in ensemble.models)
        crop = {
            "faces": [{"index": i, **f.as_dict(), "protected": i in job.protected} for i, f in enumerate(job.faces)],
            "crop": "faces" if job.protected else "centre",
        }
        if face_models and not job.faces:
            crop["note"] = "no face found: the largest centred square was protected"
        return ProtectionResult(
            protected=imaging.as_photo_mode(protected, job.photo),
            deepfake_original=Image.fromarray(imaging.to_uint8(references[0][0])),
            deepfake_protected=Image.fromarray(imaging.to_uint8(fakes[0][0])),
            metrics={"input": job.photo.name, **header, "width": width, "height": height, **crop, **measured},
            original=job.photo,
            protected_rgb=protected,
            _remeasure=lambda rgb: measure(rgb)[0],
        )


def _autocast(objective: attacks.Objective, device_type: str, dtype: torch.dtype) -> attacks.Objective:
    """Run the objective's generator passes under autocast; the loss comes back in fp32."""

    def run(inputs: list[Tensor]) -> Tensor:
        with torch.autocast(device_type, dtype=dtype):
            loss = objective(inputs)
        return loss.float()

    return run


def model_squares(
    rgb: np.ndarray, models: Sequence[LoadedModel], use_faces: bool, chosen: Sequence[int] | None = None
) -> tuple[list[list[Box]], list[FaceBox], list[int]]:
    """Every model's squares on a photo uint8 [H, W, 3]: one per protected face for face models
    (manifest `face_crop`; aligned on the face's landmarks, `faces.crop_box`), else (or when no
    face is found) the largest centred square. `chosen`: indices of the faces to protect, in the
    left-to-right order faces are found and reported (None: all).
    Returns (boxes per model, every face found (empty when no face model asked), the indices
    protected)."""
    height, width = rgb.shape[:2]
    wants_faces = use_faces and any(m.spec.face_crop for m in models)
    found = faces.detect_faces(rgb) if wants_faces else []
    try:
        protected = faces.select(found, chosen)
    except ValueError as error:
        raise InvalidParameterError(str(error)) from None
    boxes = []
    for model in models:
        crop = model.spec.face_crop
        if crop and protected:
            boxes.append([faces.crop_box(f, width, height, margin=crop["margin"], shift_y=crop.get("shift_y", 0.0)) for f in protected])
        else:
            boxes.append([imaging.center_square(height, width)])
    return boxes, found, [found.index(f) for f in protected]


def _caption(view: views.View) -> str:
    """A short description of a maker's view for the UI: crop box, turn and filter."""
    top, left, side = view.box()
    turn = f", turned {view.angle:+.0f} deg" if view.angle else ""
    return f"{side} px square at ({left}, {top}){turn}, {view.filter}"
