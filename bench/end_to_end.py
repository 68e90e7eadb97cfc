"""One photo protected end to end, from the uploaded file to the written PNG, stage by stage.

    python bench/end_to_end.py [--model cyclegan-vintage] [--size 1024] [--repeats 5] [--photo PATH]
        [--precision auto|fp32|bf16] [--compile off|default|reduce-overhead|max-autotune] [--random-weights]

The photo (default: the largest faces-dev photo) is cut to its centred square, resized to
`size` x `size` and stored as a JPEG (quality 95), as a user would upload it. --random-weights
times the model's architecture with seeded random weights, for a machine without its weight
files (a GPU machine off the network): the time does not depend on the weights.

Each run times: `decode` (file -> pixels), `prepare` (crop, resize and the clean deepfake, up
to the first attack step), `attack` (the PGD steps), `report` (pasting back, 8-bit rounding
within the budget, both deepfakes and the metrics) and `write` (PNG encoding, the check that
the file holds exactly those pixels, atomic write). The steps are timed from the engine's
per-step callback (synchronised on a GPU). One untimed run first loads the model (and compiles,
with --compile); the table gives the median of the others. The product's target is a 1024 px
photo in under 0.2 s on one H100; DEEPSHIELD_BENCH_PHOTOS names another photo folder.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from photos import FACES_DEV, dev_photos
from PIL import Image
from safetensors.torch import save_file

from deepshield import imaging
from deepshield.devices import COMPILE_MODES, PRECISIONS
from deepshield.engine import Engine
from deepshield.manifest import ModelSpec
from deepshield.models import get_architecture

STAGES = ("decode", "prepare", "attack", "report", "write")
TARGET_SECONDS = 0.2


def upload(photo: Path, size: int) -> bytes:
    """The photo's centred square at `size` px, as JPEG bytes (quality 95)."""
    rgb = imaging.load_photo(photo).rgb
    top, left, side = imaging.center_square(*rgb.shape[:2])
    square = Image.fromarray(rgb[top : top + side, left : left + side]).resize((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    square.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _short_side(path: Path) -> int:
    """A photo's shorter side in pixels, from its header (nothing decoded)."""
    with Image.open(path) as image:
        return min(image.size)


def random_weights(spec: ModelSpec, directory: Path) -> Path:
    """Seeded random weights of the model's architecture, saved in `directory`."""
    torch.manual_seed(0)
    generator = get_architecture(spec.architecture).build(**spec.params)
    path = directory / f"{spec.name}.random.safetensors"
    save_file({k: v.contiguous() for k, v in generator.state_dict().items()}, str(path))
    return path


def timed_run(engine: Engine, data: bytes, out: Path, model: str, iterations: int, weights: Path | None) -> dict[str, float]:
    """Seconds per stage of one protection of the JPEG `data`, written as PNG to `out`."""
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    steps: list[float] = []

    def on_step(step: int, total: int, loss: torch.Tensor) -> None:
        sync()
        steps.append(time.perf_counter())

    started = time.perf_counter()
    photo = imaging.load_photo(data)
    decoded = time.perf_counter()
    result = engine.protect(photo, model=model, weights=weights, attack="pgd", iterations=iterations, seed=0, on_step=on_step)
    protected = time.perf_counter()
    result.save(out)
    written = time.perf_counter()
    per_step = (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else 0.0
    return {
        "decode": decoded - started,
        "prepare": steps[0] - per_step - decoded,  # the first callback comes after the first step
        "attack": steps[-1] - steps[0] + per_step,
        "report": protected - steps[-1],
        "write": written - protected,
        "total": written - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cyclegan-vintage")
    parser.add_argument("--size", type=int, default=1024, help="the photo's side in pixels")
    parser.add_argument("--photo", type=Path, help="the photo to upload (default: the largest faces-dev photo)")
    parser.add_argument("--random-weights", action="store_true", help="seeded random weights of the model's architecture")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after the untimed first one")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--compile", dest="compile_mode", default="off", choices=COMPILE_MODES)
    args = parser.parse_args()
    if args.repeats < 1 or args.iterations < 2:
        parser.error("--repeats must be at least 1 and --iterations at least 2 (the step time comes from two callbacks)")

    engine = Engine(device=args.device, precision=args.precision, compile_mode=args.compile_mode, coalesce=False)
    source = args.photo or max(dev_photos(FACES_DEV), key=_short_side)
    data = upload(source, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "protected.png"
        weights = random_weights(engine.spec(args.model), Path(tmp)) if args.random_weights else None
        timed_run(engine, data, out, args.model, args.iterations, weights)  # loads the model (and compiles)
        runs = [timed_run(engine, data, out, args.model, args.iterations, weights) for _ in range(args.repeats)]
    device = torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else f"{platform.machine()} CPU"
    precision = "bf16" if engine.autocast_dtype is torch.bfloat16 else "fp32"
    model = f"{args.model} (random weights)" if args.random_weights else args.model
    print(f"{args.size} px JPEG (from {source.name}) -> protected PNG, {model}, PGD {args.iterations} iterations, {device}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {precision}, compile {args.compile_mode}, median of {args.repeats} runs\n")
    print("| stage | ms | share |\n|---|---|---|")
    medians = {stage: statistics.median(run[stage] for run in runs) for stage in (*STAGES, "total")}
    for stage in STAGES:
        print(f"| {stage} | {1000 * medians[stage]:.1f} | {medians[stage] / medians['total']:.0%} |")
    verdict = "met" if medians["total"] < TARGET_SECONDS else "not met"
    print(f"| total | {1000 * medians['total']:.1f} | target {1000 * TARGET_SECONDS:.0f} ms: {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
