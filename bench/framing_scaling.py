"""How time and peak memory grow with photo size: one photo end to end (JPEG bytes in, PNG
bytes out), plain PGD vs `robust="framing"`, each run in a fresh process.

    python bench/framing_scaling.py [--model cyclegan-vintage] [--sides 512,1024,2048,4320] [--modes plain,framing]
        [--iterations 10] [--precision auto|fp32|bf16]

The photo is the development set's largest (face_016, 2048x1991) resized to a 4:3 frame with the
given long side (4320 px = 14 megapixels). Each run decodes it from JPEG bytes, protects it with
the mode's defaults (PGD, epsilon 0.05, seed 0), encodes the PNG; `seconds` is that whole span,
`peak MiB` the process's peak resident memory (ru_maxrss) and `model MiB` the resident memory
once the model is loaded, before the photo.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import subprocess
import sys
import time

import torch
from PIL import Image
from photos import FACES_DEV

from deepshield.engine import Engine


def one(side: int, mode: str, model: str, iterations: int, precision: str) -> dict[str, float]:
    """Protect the test photo at `side` px in this process; the figures of the table row."""
    with Image.open(FACES_DEV / "face_016.jpg") as source:
        image = source.convert("RGB").resize((side, side * 3 // 4), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    data = buffer.getvalue()
    del image
    engine = Engine(precision=precision)
    engine.load(model)
    model_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    result = engine.protect(data, model=model, iterations=iterations, seed=0, robust=None if mode == "plain" else mode)
    png, _ = result.encode("PNG")
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "attack_seconds": result.metrics["seconds"], "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "model_mib": model_mib, "png_bytes": len(png), "megapixels": side * (side * 3 // 4) / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cyclegan-vintage")
    parser.add_argument("--sides", default="512,1024,2048,4320")
    parser.add_argument("--modes", default="plain,framing")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--one", nargs=2, metavar=("SIDE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1], args.model, args.iterations, args.precision)))
        return 0
    rows = []
    for side in (int(s) for s in args.sides.split(",")):
        for mode in args.modes.split(","):
            command = [sys.executable, __file__, "--one", str(side), mode, "--model", args.model, "--iterations", str(args.iterations),
                       "--precision", args.precision]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append((side, mode, figures))
            print(f"{side} {mode}: {figures}", file=sys.stderr, flush=True)
    print(f"model {args.model}, PGD {args.iterations} iterations, epsilon 0.05; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, precision {args.precision}")
    print("| photo | megapixels | mode | seconds end to end | of which attack | peak MiB | model loaded MiB |")
    print("|---|---|---|---|---|---|---|")
    for side, mode, f in rows:
        print(f"| {side}x{side * 3 // 4} | {f['megapixels']:.1f} | {mode} | {f['seconds']:.1f} | {f['attack_seconds']:.1f} | "
              f"{f['peak_mib']:.0f} | {f['model_mib']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
