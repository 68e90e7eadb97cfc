"""Where and how the attack runs: the device, the autocast precision and the `torch.compile` mode,
each from an argument or the environment."""

from __future__ import annotations

import os

import torch

from deepshield.errors import InvalidParameterError

PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: a CUDA GPU that supports it, or an x86 CPU
    with AVX512-BF16 or AMX. Elsewhere bf16 is emulated and can be slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, check, lambda: False)() for check in checks)
    return False


def pick_precision(device: torch.device, requested: str | None = None) -> torch.dtype | None:
    """The autocast dtype of the attack's forward/backward passes: None (fp32) or bfloat16.

    `auto` (default; DEEPSHIELD_PRECISION) is bf16 where the device computes it natively (CUDA
    GPUs, CPUs with AVX512-BF16 or AMX: 1.7-2.1x faster on a 2-core AVX512-BF16 CPU at the same
    disruption, bench/RESULTS.md), fp32 elsewhere; `bf16` and `fp32` force one. References and
    every reported number are always computed in fp32.
    """
    choice = (requested or os.environ.get("DEEPSHIELD_PRECISION") or "auto").lower()
    if choice not in PRECISIONS:
        raise InvalidParameterError(f"precision must be one of {', '.join(PRECISIONS)}, got {choice!r}")
    if choice == "fp32":
        return None
    if choice == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if native_bf16(device) else None


def pick_compile_mode(requested: str | None = None) -> str | None:
    """The `torch.compile` mode of the attack's generator passes, None for eager (`off`, the
    default; DEEPSHIELD_COMPILE). `default` and `max-autotune` compile with inductor;
    `reduce-overhead` also replays CUDA graphs on a GPU. Each new batch shape compiles anew
    (16-25 s on a 2-core CPU, for attacks 1.09-1.25x faster: bench/RESULTS.md), so it pays off
    for batch work over many photos, not for single web requests."""
    choice = (requested or os.environ.get("DEEPSHIELD_COMPILE") or "off").lower()
    if choice not in COMPILE_MODES:
        raise InvalidParameterError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {choice!r}")
    return None if choice == "off" else choice


def pick_device(requested: str | None = None) -> torch.device:
    """`auto` (default) -> cuda when available, else cpu. From DEEPSHIELD_DEVICE or DEVICE."""
    choice = (requested or os.environ.get("DEEPSHIELD_DEVICE") or os.environ.get("DEVICE") or "auto").lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidParameterError(f"device {choice!r} requested but no CUDA GPU is available; use auto or cpu")
    try:
        return torch.device(choice)
    except RuntimeError:
        raise InvalidParameterError(f"unknown device {choice!r}: use auto, cpu or cuda") from None
