"""deepshield: adversarial protection of photos against image-translation deepfakes.

    import deepshield
    result = deepshield.protect("me.jpg", model="cyclegan-vintage", attack="pgd")
    result.save("me.protected.png"); print(result.metrics)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deepshield.engine import Engine, ImageInput, ProtectionResult, default_engine
from deepshield.errors import (
    DeepshieldError,
    InvalidImageError,
    InvalidParameterError,
    ServerBusyError,
    UnknownModelError,
    WeightsError,
)
from deepshield.verify import VerifyResult

__version__ = "0.1.0"


def protect(
    image: ImageInput,
    model: str | Sequence[str] = "cyclegan-vintage",
    attack: str = "pgd",
    epsilon: float | str = 0.05,
    iterations: int = 10,
    step_size: float = 0.01,
    seed: int | None = None,
    targets: Sequence[str] | None = None,
    image_size: int | None = None,
    weights: str | None = None,
    **options: Any,
) -> ProtectionResult:
    """Protect one photo (path, bytes or PIL image). Returns `.protected`, `.deepfake_original`,
    `.deepfake_protected` (PIL images) and `.metrics` (the CLI report fields). `epsilon` may be a
    strength preset (low / medium / high); further options as `Engine.protect_batch`:
    detect_faces, faces (indices of the faces to protect, as numbered in the report's `faces`),
    robust ("eot" | "spread-spectrum" | "framing"), check_robustness, ssim_floor, ..."""
    return default_engine().protect(
        image,
        model=model,
        attack=attack,
        epsilon=epsilon,
        iterations=iterations,
        step_size=step_size,
        seed=seed,
        targets=targets,
        image_size=image_size,
        weights=weights,
        **options,
    )


def protect_batch(images: Sequence[ImageInput], **options: Any) -> list[ProtectionResult]:
    """Protect several photos, attacked in batches; same options as `protect` plus `batch_size`."""
    options.setdefault("iterations", 10)
    options.setdefault("step_size", 0.01)
    return default_engine().protect_batch(images, **options)


def verify(original: ImageInput, shared: str | bytes, models: Sequence[str] | None = None, **options: Any) -> VerifyResult:
    """Is `shared` (a protected photo after sharing) still protected? Per model (default: every
    photo model whose weights are here): `.checks[i].mse`, `.disrupted`, the deepfake pair;
    `.report()` is what `python -m deepshield verify --json` prints."""
    return default_engine().verify(original, shared, models=models, **options)


def list_models() -> list[dict[str, Any]]:
    """Every manifest entry with its status, as `python -m deepshield models --json` prints."""
    return default_engine().list_models()


__all__ = [
    "DeepshieldError",
    "Engine",
    "InvalidImageError",
    "InvalidParameterError",
    "ProtectionResult",
    "ServerBusyError",
    "UnknownModelError",
    "VerifyResult",
    "WeightsError",
    "list_models",
    "protect",
    "protect_batch",
    "verify",
]
