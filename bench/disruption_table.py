"""Disruption and imperceptibility of each attack on a folder of photos (README results table).

    python bench/disruption_table.py [--model cyclegan-vintage] [--photos ../shared/data/faces-dev]
        [--precision auto|fp32|bf16] [--json out.json]

Prints one row per attack: mean disruption mse, share disrupted (mse > 0.05), mean PSNR / SSIM
of the written 8-bit PNG, seconds per image on this machine. Paper defaults: epsilon 0.05,
10 iterations, step 0.01 (FGSM: one step of size epsilon).
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cyclegan-vintage")
    parser.add_argument("--photos", default=str(FACES_DEV))
    parser.add_argument("--attacks", default="pgd,fgsm,ifgsm")
    parser.add_argument("--epsilon", type=float, default=0.05)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="of the attack passes")
    parser.add_argument("--json", help="also write every per-image report here")
    args = parser.parse_args()

    photos = dev_photos(args.photos)
    if not photos:
        print(f"no photos in {args.photos}", file=sys.stderr)
        return 2
    engine = Engine(precision=args.precision)
    engine.load(args.model)
    rows, reports = [], {}
    for attack in args.attacks.split(","):
        per_image = []
        for index, photo in enumerate(photos):
            started = time.perf_counter()
            result = engine.protect(
                photo, model=args.model, attack=attack, epsilon=args.epsilon,
                iterations=args.iterations, step_size=args.step_size, seed=args.seed + index,
            )
            result.metrics["wall_seconds"] = time.perf_counter() - started
            per_image.append(result.metrics)
        reports[attack] = per_image
        rows.append(
            (
                attack,
                statistics.mean(m["disruption"]["mse"] for m in per_image),
                sum(m["disruption"]["disrupted"] for m in per_image) / len(per_image),
                statistics.mean(m["perturbation"]["psnr"] for m in per_image),
                statistics.mean(m["perturbation"]["ssim"] for m in per_image),
                statistics.mean(m["wall_seconds"] for m in per_image),
            )
        )
    print(f"model {args.model}, {len(photos)} photos from {args.photos}, epsilon {args.epsilon} "
          f"({args.epsilon * 127.5:.2f}/255), iterations {args.iterations}, step {args.step_size}")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {engine.device.type}, {'bf16' if engine.autocast_dtype else 'fp32'} attack passes")
    print("| attack | mean disruption mse | share disrupted | mean PSNR (dB) | mean SSIM | s / image |")
    print("|---|---|---|---|---|---|")
    for attack, mse, share, psnr, ssim, seconds in rows:
        print(f"| {attack} | {mse:.4f} | {share:.0%} | {psnr:.2f} | {ssim:.4f} | {seconds:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
