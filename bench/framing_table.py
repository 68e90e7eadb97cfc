"""Does the protection hold in the deepfake maker's pipeline? Plain vs eot vs framing, measured
on framings of the shared photo that no attack drew.

    python bench/framing_table.py [--model cyclegan-vintage] [--photos ../shared/data/faces-dev] [--limit N]
        [--epsilons 0.05,0.02,0.1] [--modes plain,eot,framing] [--views 8] [--iterations 10] [--seeds 1] [--json out.json]

Protocol (fixed; the same seeds every run). Photo i (sorted by name) is protected with seed i, PGD,
`--iterations` steps of epsilon / 5, in each mode; with `--seeds K`, K times, with seeds i, i + 100,
..., i + 100 (K - 1), and the cells pool all K protections (one photo's figures swing with the
attack's seed; each seed's own totals are printed too). Its views are drawn from the threat model
(`deepshield.views`, framings only: a square of 0.5-1.0 of the short side anywhere, or for a face
model each face's crop jittered by +-15% / +-10% / +-10 degrees, resized with PIL's or OpenCV's
filters) with the generator seeded `views.EVALUATION_SEED + 7919 + i`: neither the attack's draws
nor the report's. Each column renders those views with the maker's tools from the written protected
PNG and from the original, after the column's sharing of the whole photo (PIL JPEG 75 / 50, PIL
bicubic downscale to half, PIL Gaussian blur sigma 1), and counts a view disrupted when the mse
between the two deepfakes (mean over targets) is above 0.05 (`metrics.DISRUPTION_THRESHOLD`). "own
square" is the report's own `disruption` (deepshield's centred square or face crops). "framings,
tone matched" counts the framings again with each channel's mean difference between the two
deepfakes removed: what is left if a colour correction gave the deepfake the brightness and colour
balance of the original's (on cyclegan-vintage most of the distance is a uniform brightness shift).
Cells: share disrupted / mean mse.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from photos import FACES_DEV, dev_photos

from deepshield import faces as face_detection
from deepshield import imaging, metrics, robustness, views
from deepshield.engine import Engine

SHARING = {"framings": {}, "jpeg75": {"jpeg": 75}, "jpeg50": {"jpeg": 50}, "half": {"downscale": 0.5}, "blur1": {"blur": 1.0}}
TONE_MATCHED = "framings_tone_matched"
BENCH_SEED = 7919
SEED_STRIDE = 100


def measure(engine: Engine, model: str, original: np.ndarray, protected: np.ndarray, faces: list, seed: int, count: int,
            originals: dict[views.View, torch.Tensor] | None = None) -> dict[str, list[float]]:
    """mse per view and column (`SHARING`, then `TONE_MATCHED`) between the deepfakes of the
    protected and original views.

    `originals` keeps the original's deepfake of each shared view for the next call on the same
    photo (it does not depend on the protection)."""
    loaded = engine.load(model)
    _, conditions = loaded.conditions(None)
    size = loaded.spec.image_size

    deepfake = robustness.frames_deepfake(loaded.generator, conditions)
    height, width = original.shape[:2]
    drawn = views.DEFAULT_THREAT_MODEL.framing_only().sample(height, width, count, torch.Generator().manual_seed(views.EVALUATION_SEED + BENCH_SEED + seed), faces)
    originals = {} if originals is None else originals
    columns, tone_matched = {}, []
    for name, sharing in SHARING.items():
        per_view = []
        for view in (replace(v, **sharing) for v in drawn):  # one view at a time keeps the memory of 16 MP photos flat
            if view not in originals:
                originals[view] = robustness.deepfakes_of_views(original, [view], size, deepfake, engine.device)
            fake = robustness.deepfakes_of_views(protected, [view], size, deepfake, engine.device)
            per_view.append(float(robustness.views_mse(fake, originals[view])[0]))
            if not sharing:
                tone_matched.append(float(robustness.tone_matched_mse(fake, originals[view])[0]))
        columns[name] = per_view
    columns[TONE_MATCHED] = tone_matched
    return columns


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cyclegan-vintage")
    parser.add_argument("--photos", default=str(FACES_DEV))
    parser.add_argument("--limit", type=int, help="only the first N photos")
    parser.add_argument("--epsilons", default="0.05,0.02,0.1")
    parser.add_argument("--modes", default="plain,eot,framing")
    parser.add_argument("--views", type=int, default=8, help="unseen framings per photo")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1, help="attack seeds per photo, pooled (SEED_STRIDE apart)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--json", help="also write every per-photo measurement here")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")

    paths = dev_photos(args.photos, args.limit)
    if not paths:
        print(f"no photos in {args.photos}", file=sys.stderr)
        return 2
    engine = Engine(precision=args.precision)
    face_model = bool(engine.spec(args.model).face_crop)
    rows, dump, seed_lines = [], {}, []
    originals: dict[int, dict] = {}  # photo index -> its original's deepfakes, shared by every mode and epsilon
    for epsilon in (float(e) for e in args.epsilons.split(",")):
        for mode in args.modes.split(","):
            cells: dict[str, list[float]] = {name: [] for name in ("own", *SHARING, TONE_MATCHED)}
            psnr, ssim, area, seconds = [], [], [], []
            per_seed: dict[int, dict[str, list[float]]] = {}
            for (index, path), repeat in itertools.product(enumerate(paths), range(args.seeds)):
                photo = imaging.load_photo(path)
                seed = index + SEED_STRIDE * repeat
                started = time.perf_counter()
                result = engine.protect(photo, model=args.model, attack="pgd", epsilon=epsilon, iterations=args.iterations,
                                        step_size=epsilon / 5, seed=seed, robust=None if mode == "plain" else mode)
                seconds.append(time.perf_counter() - started)
                m = result.metrics
                faces = _face_squares(m, photo.rgb, args.model, engine) if face_model else []
                columns = measure(engine, args.model, photo.rgb, result.protected_rgb, faces, index, args.views, originals.setdefault(index, {}))
                cells["own"].append(m["disruption"]["mse"])
                for name, values in columns.items():
                    cells[name] += values
                for name in ("framings", "jpeg75"):
                    per_seed.setdefault(repeat, {}).setdefault(name, []).extend(columns[name])
                psnr.append(m["perturbation"]["psnr"])
                ssim.append(m["perturbation"]["ssim"])
                area.append(m["perturbation"]["area"])
                dump.setdefault(f"{epsilon:g}/{mode}", []).append({"photo": path.name, "seed": seed, "own": m["disruption"]["mse"], **columns,
                                                                     "psnr": psnr[-1], "ssim": ssim[-1], "area": area[-1], "seconds": seconds[-1]})
                shares = {name: f"{_summary(columns[name])['share_disrupted']:.0%}" for name in ("framings", "jpeg75", TONE_MATCHED)}
                print(f"{epsilon:g} {mode} {path.name} seed {seed}: framings {shares['framings']}, jpeg75 {shares['jpeg75']}, "
                      f"tone matched {shares[TONE_MATCHED]}, psnr {psnr[-1]:.2f}, {seconds[-1]:.1f} s", file=sys.stderr, flush=True)
            seed_lines += [f"epsilon {epsilon:g}, {mode}, attack seeds i + {SEED_STRIDE * repeat}: framings "
                           f"{_summary(seeded['framings'])['share_disrupted']:.0%}, JPEG 75 + framings {_summary(seeded['jpeg75'])['share_disrupted']:.0%}"
                           for repeat, seeded in per_seed.items()]
            rows.append((f"{epsilon:g} ({epsilon * 127.5:.2f}/255) | {mode}",
                         [f"{summary['share_disrupted']:.0%} / {summary['mse']:.3f}" for summary in map(_summary, cells.values())],
                         statistics.mean(psnr), statistics.mean(ssim), statistics.mean(area), statistics.mean(seconds)))
    print(f"model {args.model}, {len(paths)} photos from {args.photos} x {args.seeds} attack seed(s), PGD {args.iterations} iterations, step epsilon/5, "
          f"{args.views} unseen views per photo and column")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"device {engine.device.type}, {'bf16' if engine.autocast_dtype else 'fp32'} attack passes")
    print(f"cells: share disrupted (mse > {metrics.DISRUPTION_THRESHOLD:g}) / mean mse, against the deepfake of the same view of the original")
    print("| epsilon | mode | own square | framings | JPEG 75 + framings | JPEG 50 + framings | half size + framings | blur 1 + framings "
          "| framings, tone matched | PSNR (dB) | SSIM | area perturbed | s / photo |")
    print("|---" * 13 + "|")
    for label, cells_text, psnr_mean, ssim_mean, area_mean, sec in rows:
        print(f"| {label} | " + " | ".join(cells_text) + f" | {psnr_mean:.2f} | {ssim_mean:.4f} | {area_mean:.0%} | {sec:.1f} |")
    if args.seeds > 1:
        print("\n".join(seed_lines))
    if args.json:
        Path(args.json).write_text(json.dumps(dump, indent=2))
    return 0


def _summary(mse: list[float]) -> dict[str, float]:
    """Per-view mse -> the share above `metrics.DISRUPTION_THRESHOLD` and the mean, as the report counts them."""
    return robustness.share_and_mean(torch.tensor(mse, dtype=torch.float64))


def _face_squares(report: dict, rgb: np.ndarray, model: str, engine: Engine) -> list[tuple[int, int, int]]:
    """The model's crop of each face the report lists (what the maker's aligner would centre on)."""
    crop = engine.spec(model).face_crop
    height, width = rgb.shape[:2]
    return [face_detection.crop_box(face_detection.FaceBox.from_dict(f), width, height, margin=crop["margin"], shift_y=crop.get("shift_y", 0.0))
            for f in report.get("faces") or []]


if __name__ == "__main__":
    sys.exit(main())
