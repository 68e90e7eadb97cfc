"""The one entry point that the UI, REST, CLI and Python callers share: `Engine` wires the model
cache, admission, the protection pipeline and the pooling of single-photo requests."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from PIL import Image

from deepshield import attacks, imaging, locate, metrics, perceptual, robustness
from deepshield import verify as verification
from deepshield.admission import Admission
from deepshield.coalesce import RequestPool, Ticket
from deepshield.devices import pick_compile_mode, pick_device, pick_precision
from deepshield.errors import InvalidParameterError, ServerBusyError
from deepshield.manifest import ModelSpec, load_manifest
from deepshield.model_cache import LoadedModel, ModelCache
from deepshield.pipeline import Ensemble, Pipeline, Plan, ProtectionResult, model_squares

ImageInput = str | os.PathLike[str] | bytes | Image.Image | imaging.Photo
ProgressCallback = Callable[[int, int], None]
"""(images done, images total)"""

DEFAULT_MODEL = "cyclegan-vintage"
ROBUST_MODES = (None, "eot", "spread-spectrum", "framing")


def _seed(seed: int | None) -> int:
    """`seed`, or a fresh one to report when None."""
    return int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())


class Engine:
    """Loads models on demand (`ModelCache`), runs protections (`Pipeline`) under a concurrency
    limit (`Admission`), and pools single-photo requests where that pays off (`coalesce`)."""

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
        self._pipeline = Pipeline(chosen, pick_precision(chosen, precision))
        self._cache = ModelCache(specs, chosen, pick_compile_mode(compile_mode), max_loaded)
        self._admission = Admission(max_concurrent, max_queue)
        # Pooling requests pays off where a batch is cheaper per photo than one at a time: on a GPU.
        # On the 2-core build CPU it measured 0.91x (bench/coalesce_speed.py), so it is off there.
        self.coalesce = self.device.type == "cuda" if coalesce is None else coalesce
        self._pool = RequestPool()

    @property
    def device(self) -> torch.device:
        return self._cache.device

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The attack passes' autocast dtype: None (fp32) or bfloat16 (see `devices.pick_precision`)."""
        return self._pipeline.autocast_dtype

    # ---------------------------------------------------------------- models

    @property
    def specs(self) -> dict[str, ModelSpec]:
        return self._cache.specs

    @property
    def compile_mode(self) -> str | None:
        return self._cache.compile_mode

    @property
    def max_loaded(self) -> int:
        return self._cache.max_loaded

    def spec(self, name: str) -> ModelSpec:
        return self._cache.spec(name)

    def resolve(self, name: str) -> str:
        """A model name, or an architecture name meaning its folder model, else its first manifest entry."""
        return self._cache.resolve(name)

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
                limit = batch_size or self.images_per_pass(plan.ensemble, plan.chunk_options["robust"])
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
        is False, or only the faces numbered in `faces` (indices in the report's left-to-right
        `faces` list); other models, and photos without a face, use the largest centred square.
        `robust`: "eot" optimises the loss through differentiable sharing transformations, one
        per iteration in a cycle (`transforms.sharing_transforms`); "spread-spectrum" cycles
        blurs (the paper's variant against blur); "framing" perturbs the whole photo and
        optimises over views of the deepfake maker (`deepshield.views`, `deepshield.framing`).
        `check_robustness` adds `robustness` to the report: the disruption after real
        JPEG 90/75/50, resize to half and back, blur sigma 1 and a shifted crop, and `framings`
        (unseen framings, plainly, after JPEG 75 and after a colour correction of the deepfake;
        the result's `framing_examples`). `ssim_floor`
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
                chunk = photos[start : start + (batch_size or self.images_per_pass(plan.ensemble, plan.chunk_options["robust"]))]
                seeds = [first_seed + start + k for k in range(len(chunk))]
                results += self._pipeline.protect_fitting(chunk, plan.ensemble, plan.config, seeds, on_step, **plan.chunk_options)
            if progress is not None:
                progress(len(results), len(photos))
        return results

    def images_per_pass(self, ensemble: Ensemble, robust: str | None = None) -> int:
        """How many photos of a request to attack together (see `Pipeline.images_per_pass`)."""
        return self._pipeline.images_per_pass(ensemble, robust)

    def photos_per_pass(self, pixels: int, kept: int) -> int:
        """How many photos to attack together when one photo's pass has `pixels` generator input
        pixels and keeps `kept` bytes for its backward (see `Pipeline.photos_per_pass`)."""
        return self._pipeline.photos_per_pass(pixels, kept)

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
        faces: Sequence[int] | None = None,
        robust: str | None = None,
        check_robustness: bool = False,
        ssim_floor: float | None = None,
        allow_download: bool = True,
    ) -> Plan:
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
        ensemble = Ensemble(loaded, [self._cache.model_size(m, image_size) for m in loaded], [m.conditions(targets) for m in loaded])
        if faces is not None and not all(isinstance(i, int) and not isinstance(i, bool) for i in faces):
            raise InvalidParameterError(f"faces takes face numbers (0, 1, ...) as the report lists them, got {faces!r}")
        chosen = None if faces is None else tuple(sorted(set(faces)))
        chunk_options = {"detect_faces": detect_faces, "faces": chosen, "robust": robust, "check_robustness": check_robustness, "ssim_floor": ssim_floor}
        key = repr((names, config, tuple(targets or ()), image_size, str(weights) if weights else None, sorted(chunk_options.items())))
        return Plan(config, ensemble, chunk_options, key)

    def _run_tickets(self, batch: list[Ticket], plan: Plan) -> None:
        """Attack the pooled requests in one batch (the caller holds a slot) and finish each
        ticket; when the batch fails, each photo alone, so an error lands on its own request."""

        def on_step(step: int, total: int, loss: torch.Tensor) -> None:
            for ticket in batch:
                if ticket.on_step is not None:
                    ticket.on_step(step, total, loss)

        try:
            results = self._pipeline.protect_fitting(
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
        names: tuple[str, str] | None = None,
    ) -> verification.VerifyResult:
        """Is `shared` (a protected photo after sharing: recompressed, cropped, resized, mirrored,
        turned by quarters, framed) still protected?

        Finds where the copy sits in the original (`deepshield.locate`; CopyNotLocatedError when
        it cannot: too small, another photo, too altered), then for each model (default: every
        photo model whose weights are here) compares its deepfakes of the shared copy with those
        of the original shared the same way (see `deepshield.verify`). `targets` as in
        `protect_batch` (single model only). `names` labels the two photos in the report and in
        error messages (default: their file names; "original" and "shared" for bytes).
        """
        original_name, shared_name = names or (None, None)
        model_names = list(models) if models else self.photo_models()
        if not model_names:
            raise InvalidParameterError("no photo model has its weights here; name one with --model (it will be downloaded)")
        if targets and len(model_names) > 1:
            raise InvalidParameterError("targets apply to a single conditional model, not several")
        for name in model_names:
            if self.spec(name).preprocessing == "label_map":
                raise InvalidParameterError(f"model {name!r} translates semantic label maps, not photos: there is nothing to verify against it")
        before = imaging.load_photo(original, name=original_name or ("original" if isinstance(original, bytes) else None))
        copy = verification.read_shared(shared, name=shared_name or ("shared" if isinstance(shared, bytes) else None))
        location = locate.locate(before.rgb, copy.photo.rgb, (before.name, copy.photo.name))
        framed, baseline = verification.baseline(before, copy, location)
        loaded = [self.load(n, allow_download=allow_download) for n in model_names]
        checks = []
        with self.admission(), torch.no_grad():
            for model in loaded:
                _, conditions = model.conditions(targets)
                size = self._cache.model_size(model, None)
                deepfake = robustness.generator_deepfake(model.generator, size, conditions, device=self.device)
                (boxes,), found, _ = model_squares(baseline, [model], detect_faces)
                outputs = [(deepfake(framed, b), deepfake(baseline, b), deepfake(copy.photo.rgb, b)) for b in boxes]
                against_baseline = [metrics.disruption_metrics(fake, ref) for _, ref, fake in outputs]
                mse = float(np.mean([m["mse"] for m in against_baseline]))
                checks.append(
                    verification.ModelCheck(
                        model=model.spec.name,
                        mse=mse,
                        l1=float(np.mean([m["l1"] for m in against_baseline])),
                        disrupted=mse > metrics.DISRUPTION_THRESHOLD,
                        mse_vs_clean=float(np.mean([metrics.disruption_metrics(fake, clean)["mse"] for clean, _, fake in outputs])),
                        faces=[f.as_dict() for f in found],
                        deepfake_baseline=Image.fromarray(imaging.to_uint8(outputs[0][1][0])),
                        deepfake_shared=Image.fromarray(imaging.to_uint8(outputs[0][2][0])),
                    )
                )
        return verification.VerifyResult(verification.describe(before, copy, location), checks)


_DEFAULT_ENGINE: Engine | None = None
_DEFAULT_LOCK = threading.Lock()


def default_engine() -> Engine:
    """The process-wide engine shared by the Python API, the CLI and the app."""
    global _DEFAULT_ENGINE
    with _DEFAULT_LOCK:
        if _DEFAULT_ENGINE is None:
            _DEFAULT_ENGINE = Engine()
        return _DEFAULT_ENGINE
