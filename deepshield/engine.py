"""The protect pipeline and the model cache that every entry point (CLI, Python, app) shares."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from deepshield import (
    attacks,
    faces,
    imaging,
    memory,
    metrics,
    perceptual,
    robustness,
    transforms,
)
from deepshield import verify as verification
from deepshield.admission import Admission
from deepshield.coalesce import RequestPool, Ticket
from deepshield.devices import pick_compile_mode, pick_device, pick_precision
from deepshield.errors import (
    InvalidParameterError,
    OutOfMemoryError,
    ServerBusyError,
)
from deepshield.faces import FaceBox
from deepshield.manifest import ModelSpec, load_manifest
from deepshield.model_cache import LoadedModel, ModelCache

log = logging.getLogger("deepshield.engine")

ImageInput = str | os.PathLike[str] | bytes | Image.Image | imaging.Photo
ProgressCallback = Callable[[int, int], None]
"""(images done, images total)"""

DEFAULT_MODEL = "cyclegan-vintage"
ROBUST_MODES = (None, "eot", "spread-spectrum")
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
class _Job:
    """One photo of a request: the squares each model sees (one per face, or the centred square)
    and the smallest region holding them all, which is what the attack perturbs."""

    photo: imaging.Photo
    original: Tensor  # [1, 3, H, W] in [-1, 1] on the device
    boxes: list[list[Box]]  # per model
    faces: list[FaceBox]
    top: int = field(init=False)  # the perturbed region: rows top:bottom, columns left:right
    left: int = field(init=False)
    bottom: int = field(init=False)
    right: int = field(init=False)
    mask: Tensor = field(init=False, repr=False)  # [1, 1, h, w] True where some model looks

    def __post_init__(self) -> None:
        squares = [box for per_model in self.boxes for box in per_model]
        self.top = min(t for t, _, _ in squares)
        self.left = min(left for _, left, _ in squares)
        self.bottom = max(t + side for t, _, side in squares)
        self.right = max(left + side for _, left, side in squares)
        mask = torch.zeros(1, 1, self.bottom - self.top, self.right - self.left, dtype=torch.bool, device=self.original.device)
        for t, left, side in squares:
            mask[:, :, t - self.top : t - self.top + side, left - self.left : left - self.left + side] = True
        self.mask = mask

    def region(self, x: Tensor | None = None) -> Tensor:
        """The perturbed region of x [1, 3, H, W] (default: the original): [1, 3, h, w], or
        [1, 1, h, w] for a grayscale photo, whose perturbation must stay gray."""
        x = self.original if x is None else x
        region = x[:, :, self.top : self.bottom, self.left : self.right]
        return region[:, :1] if self.photo.grayscale else region

    def crops(self, index: int, region: Tensor) -> list[Tensor]:
        """The squares model `index` sees, cut from a region tensor (gradients flow through)."""
        region = region.expand(-1, 3, -1, -1)
        return [region[:, :, t - self.top : t - self.top + side, left - self.left : left - self.left + side] for t, left, side in self.boxes[index]]

    def paste(self, region: Tensor) -> Tensor:
        full = self.original.clone()
        window = full[:, :, self.top : self.bottom, self.left : self.right]
        window.copy_(torch.where(self.mask, region.expand(-1, 3, -1, -1), window))
        return full


@dataclass
class _Ensemble:
    """The generators of one request with their resolutions and target conditions."""

    models: list[LoadedModel]
    sizes: list[int]
    conditions: list[tuple[list[str], Tensor | None]]

    def targets(self, index: int) -> int:
        vectors = self.conditions[index][1]
        return 1 if vectors is None else vectors.shape[0]

    def kept_bytes(self, squares: Sequence[Sequence[int]], dtype: torch.dtype | None) -> int:
        """Bytes a pass keeps for its backward: `squares[j][i]` squares (faces) of photo j go
        through model i, each once per target."""
        return sum(
            count * self.targets(i) * self.models[i].kept_bytes(self.sizes[i], dtype)
            for photo in squares
            for i, count in enumerate(photo)
        )

    def deepfakes(self, index: int, jobs: list[_Job], regions: list[Tensor]) -> Tensor:
        """Outputs of model `index` for every (image, face, target): [sum(F_i) * T, 3, s, s]."""
        crops = [c for job, region in zip(jobs, regions) for c in job.crops(index, region)]
        batch = torch.cat([imaging.center_crop_resize(c, self.sizes[index]) for c in crops])
        _, vectors = self.conditions[index]
        model = self.models[index]
        # Compiled passes serve the attack's gradient steps only: references and reports stay
        # eager (one graph per shape to compile, and a CUDA graph's output is used before its next replay).
        generator = model.attack_forward if torch.is_grad_enabled() else model.generator
        if vectors is None:
            return generator(batch)
        count = vectors.shape[0]
        return generator(batch.repeat_interleave(count, dim=0), vectors.repeat(len(crops), 1))

    def all_deepfakes(self, jobs: list[_Job], regions: list[Tensor]) -> list[Tensor]:
        return [self.deepfakes(i, jobs, regions) for i in range(len(self.models))]

    def split(self, index: int, jobs: list[_Job], outputs: Tensor) -> list[Tensor]:
        """Model `index`'s outputs (or per-output values) cut per job."""
        counts = [len(job.boxes[index]) * self.targets(index) for job in jobs]
        return list(outputs.split(counts))

    def objective(self, jobs: list[_Job], references: list[Tensor]) -> attacks.Objective:
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
class _Plan:
    """A protection's checked settings: attack, loaded models, per-chunk options, and the key
    under which single-photo requests with these settings are pooled."""

    config: attacks.AttackConfig
    ensemble: _Ensemble
    chunk_options: dict[str, Any]
    key: str


def _seed(seed: int | None) -> int:
    """`seed`, or a fresh one to report when None."""
    return int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())


class Engine:
    """Loads models on demand (LRU cache), runs attacks under a concurrency limit."""

    def __init__(
        self,
        manifest: Mapping[str, ModelSpec] | None = None,
        *,
        device: str | None = None,
        max_loaded: int = 4,
        max_concurrent: int | None = None,
        max_queue: int | None = None,
        precision: str | None = None,
        compile_mode: str | None = None,
        coalesce: bool | None = None,
    ) -> None:
        specs = manifest if manifest is not None else load_manifest()
        chosen = pick_device(device)
        self.autocast_dtype = pick_precision(chosen, precision)
        self._cache = ModelCache(specs, chosen, pick_compile_mode(compile_mode), max_loaded)
        self._admission = Admission(max_concurrent, max_queue)
        # Pooling requests pays off where a batch is cheaper per photo than one at a time: on a GPU.
        # On the 2-core build CPU it measured 0.91x (bench/coalesce_speed.py), so it is off there.
        self.coalesce = self.device.type == "cuda" if coalesce is None else coalesce
        self._pool = RequestPool()

    # ---------------------------------------------------------------- models

    @property
    def specs(self) -> dict[str, ModelSpec]:
        return self._cache.specs

    @property
    def device(self) -> torch.device:
        return self._cache.device

    @property
    def compile_mode(self) -> str | None:
        return self._cache.compile_mode

    @property
    def max_loaded(self) -> int:
        return self._cache.max_loaded

    def spec(self, name: str) -> ModelSpec:
        return self._cache.spec(name)

    def load(self, name: str, *, weights: str | os.PathLike[str] | None = None, allow_download: bool = True) -> LoadedModel:
        """Return the model, loading it (and downloading its weights if allowed) once."""
        return self._cache.load(name, weights=weights, allow_download=allow_download)

    def unload(self, name: str) -> bool:
        return self._cache.unload(name)

    def is_loaded(self, name: str) -> bool:
        return self._cache.is_loaded(name)

    def status(self, name: str) -> tuple[str, str]:
        """(`loaded` | `cached` | `downloadable` | `unavailable`, why)."""
        return self._cache.status(name)

    def list_models(self) -> list[dict[str, Any]]:
        return self._cache.list_models()

    def photo_models(self) -> list[str]:
        """Models that protect photos (not label maps) and whose weights are here or loaded."""
        return self._cache.photo_models()

    # ---------------------------------------------------------------- admission

    @property
    def max_concurrent(self) -> int:
        return self._admission.max_concurrent

    @property
    def max_queue(self) -> int:
        return self._admission.max_queue

    def admission(self, ready: threading.Event | None = None) -> AbstractContextManager[bool]:
        """Run under the concurrency limit (see `Admission.admission`): yields True once a slot is
        held, False when `ready` is set first. Every entry point goes through here."""
        return self._admission.admission(ready)

    @staticmethod
    def caller_queue() -> AbstractContextManager[None]:
        """Calls made inside wait for a slot however many others wait (see `Admission.caller_queue`)."""
        return Admission.caller_queue()

    @property
    def queue_depth(self) -> int:
        """Callers waiting for a slot."""
        return self._admission.queue_depth

    @property
    def running(self) -> int:
        return self._admission.running

    # ---------------------------------------------------------------- protection

    def protect(
        self,
        image: ImageInput,
        *,
        seed: int | None = None,
        on_step: attacks.StepCallback | None = None,
        progress: ProgressCallback | None = None,
        batch_size: int | None = None,
        **options: Any,
    ) -> ProtectionResult:
        """Protect one photo; options as `protect_batch`.

        With `coalesce` (the default on CUDA), requests with the same settings that wait for a
        slot at the same time are attacked together in one batch by whichever gets the slot
        first, each from its own seed, so each gets the attack it would have got alone (see
        `protect_batch` on how close the results are)."""
        if not self.coalesce:
            return self.protect_batch([image], seed=seed, on_step=on_step, progress=progress, batch_size=batch_size, **options)[0]
        plan = self._plan(**options)
        ticket = Ticket(imaging.load_photo(image), _seed(seed), on_step)
        self._pool.add(plan.key, ticket)
        try:
            with self.admission(ready=ticket.done) as admitted:
                limit = batch_size or self.images_per_pass(plan.ensemble)
                if admitted and (batch := self._pool.claim(plan.key, ticket, limit)):
                    self._run_tickets(batch, plan)
        except ServerBusyError:
            if self._pool.withdraw(plan.key, ticket):
                raise
        ticket.done.wait()  # set by whoever attacked this photo: this call or another one
        if ticket.error is not None:
            raise ticket.error
        if progress is not None:
            progress(1, 1)
        return ticket.result

    def protect_batch(
        self,
        images: Sequence[ImageInput],
        *,
        seed: int | None = None,
        batch_size: int | None = None,
        on_step: attacks.StepCallback | None = None,
        progress: ProgressCallback | None = None,
        **options: Any,
    ) -> list[ProtectionResult]:
        """Protect photos against one generator or an ensemble (`model` a list of names).

        epsilon / step_size on [-1, 1] (epsilon may name a strength preset: low, medium, high;
        see `attacks.STRENGTHS`); `targets` picks labels of a conditional model (default:
        all, attacked jointly); `image_size` overrides the model resolution; `weights` is a
        checkpoint to use instead of the manifest's (single model only). Images are attacked
        `batch_size` at a time (default: as many as fit the device's free memory when the pass
        starts, see `images_per_pass`). Photo i
        is attacked from `seed + i` (`seed` random if None; each report gives its photo's seed),
        so a photo gets the attack `protect(photo, seed=seed + i)` runs, however the work is
        split: in fp32 the same photo within one 8-bit level; under bf16 a batch rounds
        differently, so a few % of the values differ (the disruption does not).
        Face models (manifest `face_crop`) protect every detected face unless `detect_faces`
        is False; other models, and photos without a face, use the largest centred square.
        `robust`: "eot" optimises the loss through differentiable sharing transformations, one
        per iteration in a cycle (`transforms.sharing_transforms`); "spread-spectrum" cycles
        blurs (the paper's variant against blur); `check_robustness` adds `robustness` to the report: the disruption after real
        JPEG 90/75/50, resize to half and back, blur sigma 1 and a shifted crop. `ssim_floor`
        (perceptual mode) scales each perturbation down until the photo's SSIM is at least that.
        """
        plan = self._plan(**options)
        if batch_size is not None and batch_size < 1:
            raise InvalidParameterError("batch_size must be at least 1")
        first_seed = _seed(seed)
        photos = [imaging.load_photo(img) for img in images]
        results: list[ProtectionResult] = []
        while len(results) < len(photos):
            with self.admission():  # the pass size is planned on the memory free once a slot is held
                start = len(results)
                chunk = photos[start : start + (batch_size or self.images_per_pass(plan.ensemble))]
                seeds = [first_seed + start + k for k in range(len(chunk))]
                results += self._protect_fitting(chunk, plan.ensemble, plan.config, seeds, on_step, **plan.chunk_options)
            if progress is not None:
                progress(len(results), len(photos))
        return results

    def _plan(
        self,
        *,
        model: str | Sequence[str] = DEFAULT_MODEL,
        attack: str = "pgd",
        epsilon: float | str = 0.05,
        iterations: int | None = None,
        step_size: float | None = None,
        targets: Sequence[str] | None = None,
        image_size: int | None = None,
        weights: str | os.PathLike[str] | None = None,
        detect_faces: bool = True,
        robust: str | None = None,
        check_robustness: bool = False,
        ssim_floor: float | None = None,
        allow_download: bool = True,
    ) -> _Plan:
        """Check the settings of a protection and load its models (see `protect_batch`)."""
        config = attacks.preset(attack, epsilon=epsilon, iterations=iterations, step_size=step_size)
        ssim_floor = perceptual.check_floor(ssim_floor)
        names = [model] if isinstance(model, str) else list(model)
        if not names:
            raise InvalidParameterError("give at least one model")
        if weights is not None and len(names) > 1:
            raise InvalidParameterError("--weights applies to a single model, not an ensemble")
        for spec in [self.spec(n) for n in names]:
            if spec.preprocessing == "label_map":
                raise InvalidParameterError(
                    f"model {spec.name!r} translates semantic label maps ({spec.params.get('input_nc')} channels), "
                    "not photos, so there is nothing in a photo to protect against it; pick a photo model"
                )
        if robust not in ROBUST_MODES:
            raise InvalidParameterError(f"robust must be one of {', '.join(m for m in ROBUST_MODES if m)} (or off), got {robust!r}")
        if targets and len(names) > 1:
            raise InvalidParameterError("targets apply to a single conditional model, not an ensemble")
        loaded = [self.load(n, weights=weights, allow_download=allow_download) for n in names]
        ensemble = _Ensemble(loaded, [self._cache.model_size(m, image_size) for m in loaded], [m.conditions(targets) for m in loaded])
        chunk_options = {"detect_faces": detect_faces, "robust": robust, "check_robustness": check_robustness, "ssim_floor": ssim_floor}
        key = repr((names, config, tuple(targets or ()), image_size, str(weights) if weights else None, sorted(chunk_options.items())))
        return _Plan(config, ensemble, chunk_options, key)

    def _run_tickets(self, batch: list[Ticket], plan: _Plan) -> None:
        """Attack the pooled requests in one batch (the caller holds a slot) and finish each
        ticket; when the batch fails, each photo alone, so an error lands on its own request."""

        def on_step(step: int, total: int, loss: torch.Tensor) -> None:
            for ticket in batch:
                if ticket.on_step is not None:
                    ticket.on_step(step, total, loss)

        try:
            results = self._protect_fitting(
                [t.photo for t in batch], plan.ensemble, plan.config, [t.seed for t in batch], on_step, **plan.chunk_options
            )
        except Exception as error:  # noqa: BLE001 - handed to the request(s) it belongs to
            if len(batch) == 1:
                batch[0].finish(error=error)
            else:
                for ticket in batch:
                    self._run_tickets([ticket], plan)
            return
        except BaseException:  # interrupted: nobody may wait forever for these photos
            for ticket in batch:
                ticket.finish(error=RuntimeError("the protection was interrupted"))
            raise
        for ticket, result in zip(batch, results):
            ticket.finish(result)

    # ---------------------------------------------------------------- verification

    def verify(
        self,
        original: ImageInput,
        shared: str | os.PathLike[str] | bytes,
        *,
        models: Sequence[str] | None = None,
        targets: Sequence[str] | None = None,
        detect_faces: bool = True,
        allow_download: bool = True,
    ) -> verification.VerifyResult:
        """Is `shared` (a protected photo after sharing: recompressed, resized) still protected?

        For each model (default: every photo model whose weights are here), compare its
        deepfakes of the shared copy with those of the original shared the same way (see
        `deepshield.verify`). `targets` as in `protect_batch` (single model only).
        """
        names = list(models) if models else self.photo_models()
        if not names:
            raise InvalidParameterError("no photo model has its weights here; name one with --model (it will be downloaded)")
        if targets and len(names) > 1:
            raise InvalidParameterError("targets apply to a single conditional model, not several")
        for name in names:
            if self.spec(name).preprocessing == "label_map":
                raise InvalidParameterError(f"model {name!r} translates semantic label maps, not photos: there is nothing to verify against it")
        before = imaging.load_photo(original, name="original" if isinstance(original, bytes) else None)
        copy = verification.read_shared(shared, name="shared" if isinstance(shared, bytes) else None)
        verification.check_framing(before, copy.photo)
        resized, baseline = verification.baseline(before, copy)
        loaded = [self.load(n, allow_download=allow_download) for n in names]
        checks = []
        with self.admission(), torch.no_grad():
            for model in loaded:
                _, conditions = model.conditions(targets)
                size = self._cache.model_size(model, None)
                deepfake = robustness.generator_deepfake(model.generator, size, conditions, device=self.device)
                (boxes,), found = _squares(baseline, [model], detect_faces)
                outputs = [(deepfake(resized, b), deepfake(baseline, b), deepfake(copy.photo.rgb, b)) for b in boxes]
                against_baseline = [metrics.disruption_metrics(fake, ref) for _, ref, fake in outputs]
                mse = float(np.mean([m["mse"] for m in against_baseline]))
                checks.append(
                    verification.ModelCheck(
                        model=model.spec.name,
                        mse=mse,
                        l1=float(np.mean([m["l1"] for m in against_baseline])),
                        disrupted=mse > metrics.DISRUPTION_THRESHOLD,
                        mse_vs_clean=float(np.mean([metrics.disruption_metrics(fake, clean)["mse"] for clean, _, fake in outputs])),
                        faces=[{"box": f.as_list()} for f in found],
                        deepfake_baseline=Image.fromarray(imaging.to_uint8(outputs[0][1][0])),
                        deepfake_shared=Image.fromarray(imaging.to_uint8(outputs[0][2][0])),
                    )
                )
        return verification.VerifyResult(verification.describe(before, copy), checks)

    def images_per_pass(self, ensemble: _Ensemble) -> int:
        """How many photos of a request to attack together (`photos_per_pass`; one face per
        photo assumed; every target is a sample)."""
        pixels = max(ensemble.targets(i) * size * size for i, size in enumerate(ensemble.sizes))
        return self.photos_per_pass(pixels, ensemble.kept_bytes([[1] * len(ensemble.models)], self.autocast_dtype))

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

    def _jobs(self, photos: list[imaging.Photo], ensemble: _Ensemble, use_faces: bool) -> list[_Job]:
        jobs = []
        for photo in photos:
            boxes, found = _squares(photo.rgb, ensemble.models, use_faces)
            jobs.append(_Job(photo, imaging.to_tensor(photo.rgb, self.device), boxes, found))
        return jobs

    def _protect_fitting(self, photos: list[imaging.Photo], ensemble: _Ensemble, config: attacks.AttackConfig, seeds: list[int],
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
            first = self._protect_fitting(photos[:half], ensemble, config, seeds[:half], on_step, **options)
            return first + self._protect_fitting(photos[half:], ensemble, config, seeds[half:], on_step, **options)

    def _protect_chunk(
        self,
        photos: list[imaging.Photo],
        ensemble: _Ensemble,
        config: attacks.AttackConfig,
        seeds: list[int],
        on_step: attacks.StepCallback | None,
        *,
        detect_faces: bool,
        robust: str | None,
        check_robustness: bool,
        ssim_floor: float | None,
    ) -> list[ProtectionResult]:
        started = time.perf_counter()
        jobs = self._jobs(photos, ensemble, detect_faces)
        kept = ensemble.kept_bytes([[len(boxes) for boxes in job.boxes] for job in jobs], self.autocast_dtype)
        if kept > memory.free_bytes(self.device):  # would fail mid-pass, or wake the kernel's OOM killer on a CPU
            raise torch.OutOfMemoryError(f"a pass over {len(jobs)} photo(s) keeps about {kept / 2**30:.1f} GiB")
        regions = [job.region() for job in jobs]
        with torch.no_grad():
            references = ensemble.all_deepfakes(jobs, regions)
        objective = ensemble.objective(jobs, references)
        if self.autocast_dtype is not None:  # the generators' passes; sharing transforms stay fp32
            objective = _autocast(objective, self.device.type, self.autocast_dtype)
        if robust == "eot":
            objective = transforms.scheduled_objective(objective, transforms.sharing_transforms, seed=seeds)
        elif robust == "spread-spectrum":
            objective = transforms.scheduled_objective(objective, transforms.spread_spectrum_blurs, seed=seeds)
        adversarial = attacks.linf_attack(objective, regions, config, seed=seeds, on_step=on_step)
        seconds = (time.perf_counter() - started) / len(jobs)
        header = {
            **ensemble.describe(),
            "attack": config.name,
            "epsilon": config.epsilon,
            "epsilon_255": config.epsilon * 127.5,
            "strength": attacks.strength_name(config.epsilon),
            "iterations": config.iterations,
            "step_size": config.step_size,
            "random_start": config.random_start,
            "robust": robust or False,
            "device": self.device.type,
            "precision": "fp32" if self.autocast_dtype is None else "bf16",
            "seconds": round(seconds, 4),
        }
        per_job = list(zip(*[ensemble.split(i, jobs, ref) for i, ref in enumerate(references)]))
        results = []
        for job, region, own, photo_seed in zip(jobs, adversarial, per_job, seeds):
            protected = imaging.quantize_within_budget(job.photo.rgb, job.paste(region), config.epsilon)
            scale = 1.0
            if ssim_floor is not None:
                protected, scale = perceptual.hold_ssim(job.photo.rgb, protected, ssim_floor, device=self.device)
            result = self._result(job, protected, ensemble, list(own), {**header, "seed": photo_seed})
            if ssim_floor is not None:
                result.metrics["perceptual"] = {"ssim_floor": ssim_floor, "scale": scale}
            if check_robustness:
                result.metrics["robustness"] = self._robustness(job, protected, ensemble)
            results.append(result)
        return results

    def _robustness(self, job: _Job, protected: np.ndarray, ensemble: _Ensemble) -> dict[str, dict[str, Any]]:
        """The first model's disruption after each real transformation, averaged over its
        squares (faces); see `deepshield.robustness`."""
        model = ensemble.models[0]
        deepfake = robustness.generator_deepfake(model.generator, ensemble.sizes[0], ensemble.conditions[0][1])
        reports = [robustness.robustness_report(job.photo.rgb, protected, box, deepfake) for box in job.boxes[0]]
        merged = {}
        for key in robustness.ROBUSTNESS_KEYS:
            mse = float(np.mean([r[key]["mse"] for r in reports]))
            merged[key] = {
                "mse": mse,
                "l1": float(np.mean([r[key]["l1"] for r in reports])),
                "disrupted": mse > metrics.DISRUPTION_THRESHOLD,
                "mse_vs_clean": float(np.mean([r[key]["mse_vs_clean"] for r in reports])),
            }
        return merged

    def _result(self, job: _Job, protected: np.ndarray, ensemble: _Ensemble, references: list[Tensor], header: dict[str, Any]) -> ProtectionResult:
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
            "faces": [{"box": f.as_list()} for f in job.faces],
            "crop": "faces" if job.faces else "centre",
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


def _squares(rgb: np.ndarray, models: Sequence[LoadedModel], use_faces: bool) -> tuple[list[list[Box]], list[FaceBox]]:
    """Every model's squares on a photo uint8 [H, W, 3]: one per detected face for face models
    (manifest `face_crop`), else (or when no face is found) the largest centred square.
    Returns (boxes per model, the faces found; empty when no face model asked)."""
    height, width = rgb.shape[:2]
    wants_faces = use_faces and any(m.spec.face_crop for m in models)
    found = faces.detect_faces(rgb) if wants_faces else []
    boxes = []
    for model in models:
        crop = model.spec.face_crop
        if crop and found:
            boxes.append([faces.crop_box(f, width, height, margin=crop["margin"], shift_y=crop.get("shift_y", 0.0)) for f in found])
        else:
            boxes.append([imaging.center_square(height, width)])
    return boxes, found


_DEFAULT_ENGINE: Engine | None = None
_DEFAULT_LOCK = threading.Lock()


def default_engine() -> Engine:
    """The process-wide engine shared by the Python API, the CLI and the app."""
    global _DEFAULT_ENGINE
    with _DEFAULT_LOCK:
        if _DEFAULT_ENGINE is None:
            _DEFAULT_ENGINE = Engine()
        return _DEFAULT_ENGINE


