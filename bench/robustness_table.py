"""Does the protection survive sharing? Plain vs robust PGD after real JPEG / resize / blur / shift.

    python bench/robustness_table.py [--model cyclegan-vintage] [--photos ../shared/data/faces-dev]
        [--epsilons 0.05,0.02] [--robust eot] [--iterations 10] [--precision auto|fp32|bf16] [--json out.json]

For every epsilon, protects each photo twice with the same seed, iterations and step size
(step = epsilon / 5, 0.01 at the default 0.05): the plain attack and `--robust`. Each protection
carries the robustness report (`check_robustness`): the disruption of the written PNG after PIL
JPEG 90 / 75 / 50, resize to half and back, Gaussian blur sigma 1, and the deepfaker's crop
shifted by 4 px, each against the deepfake of the equally transformed original. Prints, per row,
share disrupted (mse > 0.05) and mean mse for the untouched PNG and after each transformation,
then PSNR / SSIM and seconds per image.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from photos import FACES_DEV, dev_photos

from deepshield.engine import Engine
from deepshield.robustness import ROBUSTNESS_KEYS

COLUMNS = ("none", *ROBUSTNESS_KEYS)


def _cells(reports: list[dict]) -> list[str]:
    cells = []
    for key in COLUMNS:
        values = [r["disruption"] if key == "none" else r["robustness"][key] for r in reports]
        share = sum(v["disrupted"] for v in values) / len(values)
        cells.append(f"{share:.0%} / {statistics.mean(v['mse'] for v in values):.3f}")
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cyclegan-vintage")
    parser.add_argument("--photos", default=str(FACES_DEV))
    parser.add_argument("--epsilons", default="0.05,0.02")
    parser.add_argument("--robust", default="eot", choices=["eot", "spread-spectrum"])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--limit", type=int, help="only the first N photos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="of the attack passes")
    parser.add_argument("--json", help="also write every per-image report here")
    args = parser.parse_args()

    photos = dev_photos(args.photos, args.limit)
    if not photos:
        print(f"no photos in {args.photos}", file=sys.stderr)
        return 2
    engine = Engine(precision=args.precision)
    engine.load(args.model)
    rows, reports = [], {}
    for epsilon in (float(e) for e in args.epsilons.split(",")):
        for robust in (None, args.robust):
            per_image = []
            for index, photo in enumerate(photos):
                started = time.perf_counter()
                result = engine.protect(
                    photo, model=args.model, attack="pgd", epsilon=epsilon, iterations=args.iterations,
                    step_size=epsilon / 5, seed=args.seed + index, robust=robust, check_robustness=True,
                )
                result.metrics["wall_seconds"] = time.perf_counter() - started
                per_image.append(result.metrics)
            label = f"{epsilon:g} ({epsilon * 127.5:.2f}/255) | {robust or 'plain'}"
            reports[label] = per_image
            rows.append((label, _cells(per_image), statistics.mean(m["perturbation"]["psnr"] for m in per_image),
                         statistics.mean(m["perturbation"]["ssim"] for m in per_image), statistics.mean(m["seconds"] for m in per_image)))
            print(f"done: {label}", file=sys.stderr, flush=True)
    print(f"model {args.model}, {len(photos)} photos from {args.photos}, PGD, {args.iterations} iterations, step epsilon/5")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {engine.device.type}, {'bf16' if engine.autocast_dtype else 'fp32'} attack passes")
    print("cells: share disrupted / mean mse (vs the deepfake of the equally transformed original)")
    print("| epsilon | attack | " + " | ".join(COLUMNS) + " | PSNR (dB) | SSIM | attack s / image |")
    print("|---" * (len(COLUMNS) + 5) + "|")
    for label, cells, psnr, ssim, seconds in rows:
        print(f"| {label} | " + " | ".join(cells) + f" | {psnr:.2f} | {ssim:.4f} | {seconds:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
