"""Raw values of the /protect and /protect_batch calls -> engine keywords, and table cells.

The protect events skip Gradio's preprocessing, so every value arrives as the client sent it;
range checks are the engine's, so every entry point reports the same messages.
"""

from __future__ import annotations

from typing import Any

from deepshield import faces as face_detection
from deepshield.attacks import STRENGTHS
from deepshield.errors import InvalidParameterError


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


def face_numbers(value: Any) -> list[int] | None:
    """/protect's `faces` (a list of numbers, or "0,2") -> engine `faces`; empty or None: all."""
    if value in (None, "", []):
        return None
    try:
        if isinstance(value, str):
            return face_detection.parse_numbers(value)
        return [int(p) for p in (value if isinstance(value, list | tuple) else [value]) if str(p).strip() != ""]
    except (TypeError, ValueError):
        raise InvalidParameterError(f"faces must be face numbers (0, 1, ...) as the report lists them, got {value!r}") from None


def attack_options(
    model: Any, attack: Any, epsilon: Any, iterations: Any, step_size: Any, seed: Any, targets: Any,
    detect_faces: Any = True, robust: Any = "off", check_robustness: Any = False, ssim_floor: Any = 0, faces: Any = None,
) -> dict[str, Any]:
    """Raw API values -> engine keywords. `epsilon` may name a strength preset; robust "off" and
    ssim_floor 0 mean off; no `faces`: every face."""
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
        "faces": face_numbers(faces),
    }


def cell(value: Any, digits: int = 4) -> str:
    """A report value as a table cell: "-" for none, yes / no, floats to `digits` places."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
