"""Verify on copies found online: protect each development photo, make seeded copies the way sites
and screenshots do (crop, scale, mirror, quarter turn, border, JPEG; `bench/copies.py`), verify each,
and compare with what is true.

    python bench/verify_copies.py [--model cyclegan-vintage] [--copies 6] [--gentle 0] [--epsilon 0.05] [--iterations 8] [--seed 0] [--limit N]

Per copy: is the located box right (IoU >= 0.9 with the true box, mirror and turn right), and does
verify's verdict agree with a direct measurement made knowing the true transformation (the
unprotected original taken through exactly that sharing, its deepfake against the copy's, on the
squares found on it). Copies of another photo must be refused. `--gentle N` makes the first N
copies of each photo keep its framing (`copies.gentle`), where a plain protection may still hold. Photos are protected with plain
PGD (`robust="off"`), so some copies stay disrupted and some do not; agreement is what is measured.
Seconds are the median per verification (locating, the deepfakes, all) on this machine's CPU.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from copies import Sharing, gentle, sample
from photos import dev_photos
from PIL import Image

from deepshield import imaging, metrics, robustness
from deepshield.engine import Engine
from deepshield.errors import CopyNotLocatedError
from deepshield.locate import SMALL_COPY_SIDE
from deepshield.pipeline import model_squares

GOOD_IOU = 0.9


@dataclass
class Outcome:
    """One copy's verification against the truth; `refused` is the refusal kind, else None."""

    photo: str
    sharing: Sharing
    copy_size: tuple[int, int]
    crop_share: float  # of the original's area
    refused: str | None
    iou: float = 0.0
    orientation_right: bool = False
    verdict: bool | None = None
    direct: bool | None = None
    mse: float = 0.0
    direct_mse: float = 0.0
    seconds: float = 0.0

    @property
    def located(self) -> bool:
        return self.refused is None and self.iou >= GOOD_IOU and self.orientation_right

    @property
    def small(self) -> bool:
        """The copy's content is shorter than `SMALL_COPY_SIDE` px (verify may call it too small)."""
        return min(self.copy_size) - 2 * self.sharing.border < SMALL_COPY_SIDE


def iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def direct_measure(engine: Engine, model_name: str, original: Image.Image, sharing: Sharing, copy_rgb: np.ndarray) -> float:
    """mse of the deepfake of the copy against the deepfake of the original shared exactly as the
    copy was (the true sharing), on the squares found on that baseline (as verify does)."""
    model = engine.load(model_name)
    _, conditions = model.conditions(None)
    deepfake = robustness.generator_deepfake(model.generator, model.spec.image_size, conditions, device=engine.device)
    truth = imaging.decode_rgb(sharing.apply(original))
    (boxes,), _, _ = model_squares(truth, [model], True)
    with torch.no_grad():
        return float(np.mean([metrics.disruption_metrics(deepfake(copy_rgb, b), deepfake(truth, b))["mse"] for b in boxes]))


def run(model: str, copies: int, gentles: int, epsilon: float | str, iterations: int, seed: int, limit: int | None) -> tuple[list[Outcome], list[str]]:
    """(one outcome per copy, the refusal kinds of copies of another photo)."""
    engine = Engine(device="cpu")
    rng = np.random.default_rng(seed)
    photos = dev_photos(limit=limit)
    outcomes: list[Outcome] = []
    strangers: list[str] = []
    for index, path in enumerate(photos):
        original = Image.fromarray(imaging.load_photo(path).rgb)
        original_png = io.BytesIO()
        original.save(original_png, format="PNG")
        protected = engine.protect(original_png.getvalue(), model=model, attack="pgd", epsilon=epsilon, iterations=iterations, robust=None, seed=seed + index).protected
        for number in range(copies):
            sharing = gentle(rng) if number < gentles else sample(original.width, original.height, rng)
            data = sharing.apply(protected)
            copy_rgb = imaging.decode_rgb(data)
            x0, y0, x1, y1 = sharing.box or (0, 0, original.width, original.height)
            made = (path.name, sharing, (copy_rgb.shape[1], copy_rgb.shape[0]), (x1 - x0) * (y1 - y0) / (original.width * original.height))
            started = time.perf_counter()
            try:
                result = engine.verify(original_png.getvalue(), data, models=[model], names=(path.name, "copy"))
            except CopyNotLocatedError as error:
                outcomes.append(Outcome(*made, error.kind))
                continue
            seconds = time.perf_counter() - started
            located = result.header["located"]
            direct_mse = direct_measure(engine, model, original, sharing, copy_rgb)
            outcomes.append(
                Outcome(
                    *made, None,
                    iou=iou(tuple(located["box"]), (x0, y0, x1, y1)),
                    orientation_right=(located["mirrored"], located["rotation"]) == (sharing.mirrored, sharing.rotation),
                    verdict=result.checks[0].disrupted, direct=direct_mse > metrics.DISRUPTION_THRESHOLD,
                    mse=result.checks[0].mse, direct_mse=direct_mse, seconds=seconds,
                )
            )
        other = Image.fromarray(imaging.load_photo(photos[(index + 1) % len(photos)]).rgb)
        try:
            engine.verify(original_png.getvalue(), Sharing(quality=85).apply(other), models=[model])
            strangers.append("verified (wrong)")
        except CopyNotLocatedError as error:
            strangers.append(error.kind)
        print(f"{path.name}: {sum(o.photo == path.name and o.located for o in outcomes)}/{copies} located", flush=True)
    return outcomes, strangers


GROUPS = {
    "all copies": lambda o: True,
    "framing kept (gentle)": lambda o: o.sharing.box is None,
    "content >= 96 px": lambda o: not o.small,
    "content < 96 px": lambda o: o.small,
    "mirrored": lambda o: o.sharing.mirrored,
    "turned 90/180/270": lambda o: o.sharing.rotation != 0,
    "with a border": lambda o: o.sharing.border > 0,
    "JPEG 40-60": lambda o: o.sharing.quality is not None and o.sharing.quality <= 60,
    "scale 0.2-0.5": lambda o: o.sharing.scale < 0.5,
    "scale 1-2": lambda o: o.sharing.scale >= 1,
    "crop under 40% of the area": lambda o: o.crop_share < 0.4,
}


def table(outcomes: list[Outcome], strangers: list[str]) -> str:
    """The markdown table: per group, located, refused (by kind), verdicts agreeing, seconds."""
    lines = [
        "| copies | n | located (IoU >= 0.9, mirror and turn right) | refused: too small / other / altered | verdict agrees with the direct measurement | disrupted (verify) | median s per verification |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, chosen in GROUPS.items():
        group = [o for o in outcomes if chosen(o)]
        if not group:
            continue
        judged = [o for o in group if o.refused is None]
        refused = [sum(o.refused == kind for o in group) for kind in ("too_small", "not_this_photo", "too_altered")]
        agree = sum(o.verdict == o.direct for o in judged)
        seconds = statistics.median(o.seconds for o in judged) if judged else float("nan")
        lines.append(
            f"| {name} | {len(group)} | {sum(o.located for o in group)}/{len(group)} | {' / '.join(map(str, refused))} | "
            f"{agree}/{len(judged)} | {sum(bool(o.verdict) for o in judged)}/{len(judged)} | {seconds:.2f} |"
        )
    refused_strangers = sum(kind == "not_this_photo" for kind in strangers)
    lines.append(f"\nCopies of another photo refused as not this photo: {refused_strangers}/{len(strangers)} ({', '.join(sorted(set(strangers)))}).")
    judged = [o for o in outcomes if o.refused is None]
    if judged:
        gap = max(abs(o.mse - o.direct_mse) for o in judged)
        lines.append(f"Largest |mse (verify) - mse (direct)|: {gap:.4f} (threshold {metrics.DISRUPTION_THRESHOLD}).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cyclegan-vintage")
    parser.add_argument("--copies", type=int, default=6, help="copies per photo")
    parser.add_argument("--gentle", type=int, default=0, help="of which keep the photo's framing")
    parser.add_argument("--epsilon", default="0.05", help="the protection's budget on [-1, 1], or low / medium / high")
    parser.add_argument("--iterations", type=int, default=8, help="PGD iterations of the protection")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="only the first N photos")
    args = parser.parse_args()
    epsilon = args.epsilon if args.epsilon in ("low", "medium", "high") else float(args.epsilon)
    outcomes, strangers = run(args.model, args.copies, args.gentle, epsilon, args.iterations, args.seed, args.limit)
    for outcome in outcomes:
        if not outcome.located or outcome.verdict != outcome.direct:
            print(f"  {outcome.photo} {outcome.copy_size} {outcome.sharing}: refused={outcome.refused} iou={outcome.iou:.3f} "
                  f"verdict={outcome.verdict} direct={outcome.direct} mse={outcome.mse:.4f} direct={outcome.direct_mse:.4f}")
    print(table(outcomes, strangers))


if __name__ == "__main__":
    main()
