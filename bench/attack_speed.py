"""Attack speed: the original algorithm's loop against deepshield's engine, side by side.

    python bench/attack_speed.py [--cases stargan-128,stargan-256,ganimation-128,cyclegan-256,pix2pixhd-global-512]
        [--batches 1,8,32] [--iterations 10] [--device auto] [--markdown FILE]
        [--methods original,engine,engine-bf16,engine-joint[,engine-compiled,engine-bf16-compiled]]

Same generator (the published layer shapes, random weights drawn from a fixed seed: speed does
not depend on the weights, and the Hub is out of reach here), same photos (faces-dev crops resized
to the model's size; random one-hot label maps for pix2pixHD), same PGD settings (epsilon 0.05,
step 0.01). For each case and batch size, every measurement runs in its own process (clean peak
memory):

- `original`: the loop of the original implementation, written from the paper and its published
  settings: one image and one target at a time, the model as shipped (parameters requiring
  gradients, so every backward also computes weight gradients, zeroed each step), the random
  start drawn with numpy.
- `engine`: `Engine.protect_batch` per target (the same per-target perturbations as the original,
  so disruption is comparable) over the batch's photos, in passes sized by the engine;
  label-map models go through the engine's attack core (`attacks.linf_attack` on the frozen
  generator, in passes sized as the engine sizes them), as the engine does not take label maps
  from users.
- `engine-bf16`: the same with the attack's passes under bf16 autocast (`DEEPSHIELD_PRECISION=bf16`),
  its disruption checked against the original's (fp32).
- `engine-joint`: conditional models only: one `protect_batch` call attacking all targets with one
  perturbation per photo, the product's default.
- `engine-compiled`, `engine-bf16-compiled` (on request, `--methods`): `engine` / `engine-bf16`
  with the passes compiled by `torch.compile` (`DEEPSHIELD_COMPILE=default`). A one-step run on
  the same batch compiles first; its time is printed under the table, not counted in it.

Columns: images per second (an image counts once all its targets are attacked), milliseconds per
PGD iteration over the whole batch, peak memory during the attack (the resident high-water mark
on CPU, max allocated on CUDA) and what the attack added to it per image (peak minus the memory in use when it started,
over the batch size: activations and gradients, not weights or photos), speed-up
over `original` at the same batch, mean disruption mse (8-bit written image vs the clean photo's
deepfake, on [-1, 1]) with a paired check that `engine` equals `original` within noise, and the
achieved FLOP rate (forward + backward FLOPs counted by torch's FlopCounterMode), as a fraction of
the GPU's dense bf16 peak on a known GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from photos import FACES_DEV, dev_photos
from PIL import Image
from safetensors.torch import save_file

from deepshield import attacks, imaging, memory
from deepshield.devices import pick_device
from deepshield.engine import Engine
from deepshield.manifest import ModelSpec, WeightsSource, load_manifest
from deepshield.model_cache import LoadedModel
from deepshield.models import get_architecture
from deepshield.pipeline import PEAK_PER_KEPT

EPSILON, STEP = 0.05, 0.01
DENSE_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}  # FLOP/s, dense


@dataclass(frozen=True)
class Case:
    architecture: str
    params: dict[str, Any]
    size: int
    fmt: str
    targets: dict[str, tuple[float, ...]] = field(default_factory=dict)
    label_map: bool = False


def _cases() -> dict[str, Case]:
    manifest = load_manifest()
    stargan, ganimation = manifest["stargan-celeba-128"], manifest["ganimation-celeba"]
    return {
        "stargan-128": Case("stargan", dict(stargan.params), 128, "official", dict(stargan.targets)),
        "stargan-256": Case("stargan", dict(stargan.params), 256, "official", dict(stargan.targets)),
        "ganimation-128": Case("ganimation", dict(ganimation.params), 128, "replicate", dict(ganimation.targets)),
        "cyclegan-256": Case("cyclegan", dict(manifest["cyclegan-vintage"].params), 256, "vintagify"),
        # pix2pixHD's global generator as released for label2city at 512x1024 (35 labels + edges)
        "pix2pixhd-global-512": Case(
            "pix2pixhd-global", {"input_nc": 36, "output_nc": 3, "ngf": 64, "n_downsampling": 4, "n_blocks": 9}, 512, "official", label_map=True
        ),
    }


# ------------------------------------------------------------------------------ inputs


def _generator(case: Case) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_architecture(case.architecture).build(**case.params).eval()


def _photos(case: Case, count: int) -> list[np.ndarray]:
    """uint8 [s, s, 3] faces-dev centre crops resized to the model's size (cycled)."""
    paths = dev_photos(FACES_DEV)
    out = []
    for index in range(count):
        rgb = imaging.load_photo(paths[index % len(paths)]).rgb
        top, left, side = imaging.center_square(*rgb.shape[:2])
        square = Image.fromarray(rgb[top : top + side, left : left + side])
        out.append(np.asarray(square.resize((case.size, case.size), Image.Resampling.BICUBIC)))
    return out


def _label_maps(case: Case, count: int) -> torch.Tensor:
    """[N, 36, s, s] one-hot label maps of random blocks in [-1, 1] (0 -> -1, 1 -> 1)."""
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, case.params["input_nc"] - 1, (count, case.size // 32, case.size // 32), generator=g)
    labels = F.interpolate(blocks[:, None].float(), size=(case.size, case.size), mode="nearest")[:, 0].long()
    return F.one_hot(labels, case.params["input_nc"]).permute(0, 3, 1, 2).float() * 2 - 1


def _conditions(case: Case, device: torch.device) -> torch.Tensor | None:
    if not case.targets:
        return None
    return torch.tensor(list(case.targets.values()), dtype=torch.float32, device=device)


# ------------------------------------------------------------------------------ the two methods


def original_loop(generator: torch.nn.Module, images: torch.Tensor, conditions: torch.Tensor | None, iterations: int, seed: int) -> torch.Tensor:
    """The original per-image, per-target PGD. images [N, C, s, s] in [-1, 1]; returns the
    adversarial images [N * T, C, s, s] (image-major, targets together)."""
    np.random.seed(seed)
    rows = [None] if conditions is None else list(conditions)
    outputs = []
    for x in images.split(1):
        for c in rows:
            c = None if c is None else c[None]
            with torch.no_grad():
                clean = generator(x, c)
            x_adv = x + torch.tensor(np.random.uniform(-EPSILON, EPSILON, x.shape), dtype=x.dtype, device=x.device)
            for _ in range(iterations):
                x_adv.requires_grad = True
                loss = F.mse_loss(generator(x_adv, c), clean)
                generator.zero_grad()
                loss.backward()
                x_adv = x_adv + STEP * x_adv.grad.sign()
                x_adv = torch.clamp(x + torch.clamp(x_adv - x, -EPSILON, EPSILON), -1, 1).detach_()
            outputs.append(x_adv)
    return torch.cat(outputs)


def _disruption(generator: torch.nn.Module, clean: torch.Tensor, adversarial: torch.Tensor, conditions: torch.Tensor | None, rgb: bool) -> np.ndarray:
    """Per (image, target) mse of the deepfake of the 8-bit adversarial image vs the clean one."""
    count = 1 if conditions is None else conditions.shape[0]
    with torch.no_grad():
        x = clean.repeat_interleave(count, dim=0)
        adv = adversarial
        if rgb:  # what would be written: 8 bits, inside the budget
            written = [imaging.quantize_within_budget(imaging.to_uint8(o), a[None].cpu(), EPSILON) for o, a in zip(x, adversarial)]
            adv = torch.cat([imaging.to_tensor(w) for w in written]).to(x.device)
        c = None if conditions is None else conditions.repeat(clean.shape[0], 1)
        out = []
        for i in range(0, x.shape[0], 8):
            ci = None if c is None else c[i : i + 8]
            out.append(((generator(adv[i : i + 8], ci) - generator(x[i : i + 8], ci)) ** 2).flatten(1).mean(1))
        return torch.cat(out).cpu().numpy()


def _engine(case_name: str, case: Case, device: torch.device, directory: Path, precision: str, compile_mode: str) -> Engine:
    """An engine whose one model is the case's generator (weights written to `directory`)."""
    save_file({k: v.contiguous() for k, v in _generator(case).state_dict().items()}, str(directory / "g.safetensors"))
    os.environ["DEEPSHIELD_MODELS_DIR"] = str(directory)
    spec = ModelSpec(
        name=case_name, architecture=case.architecture, params=MappingProxyType(case.params), image_size=case.size,
        preprocessing="label_map" if case.label_map else "center_crop_resize",
        weights=WeightsSource(kind="local", filename="g.safetensors", format=case.fmt), license="bench", description="bench",
        targets=MappingProxyType(case.targets),
    )
    return Engine({case_name: spec}, device=str(device), precision=precision, compile_mode=compile_mode)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_one(case_name: str, method: str, batch: int, iterations: int, device: torch.device) -> dict[str, Any]:
    """One measurement, in this process: seconds, disruption per (image, target), peak memory."""
    case = _cases()[case_name]
    conditions = _conditions(case, device)
    photos: list[np.ndarray] = []
    if case.label_map:
        clean = _label_maps(case, batch).to(device)
    else:
        photos = _photos(case, batch)
        clean = torch.cat([imaging.to_tensor(p) for p in photos]).to(device)
    warmup = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        if method == "original":
            generator = _generator(case).to(device)  # as shipped: parameters require gradients
            before = _memory_start(device)
            started = time.perf_counter()
            adversarial = original_loop(generator, clean, conditions, iterations, seed=0)
            _sync(device)
            seconds = time.perf_counter() - started
        else:
            precision = "bf16" if "-bf16" in method else "fp32"
            compiled = method.endswith("-compiled")
            engine = _engine(case_name, case, device, Path(tmp), precision, compile_mode="default" if compiled else "off")
            engine.load(case_name)  # building the model is not part of the attack
            if compiled:  # compile every graph of these batch shapes first: one step, not timed
                started = time.perf_counter()
                _engine_attack(engine, case_name, case, method, clean, photos, 1)
                _sync(device)
                warmup = time.perf_counter() - started
            before = _memory_start(device)
            started = time.perf_counter()
            adversarial = _engine_attack(engine, case_name, case, method, clean, photos, iterations)
            _sync(device)
            seconds = time.perf_counter() - started
        peak = _memory_peak(device)
        if method == "engine-joint" and conditions is not None:  # one image serves every target
            adversarial = adversarial.repeat_interleave(conditions.shape[0], dim=0)
        disruption = _disruption(_generator(case).to(device), clean, adversarial, conditions, rgb=not case.label_map)
    return {"case": case_name, "method": method, "batch": batch, "seconds": seconds, "disruption": disruption.tolist(),
            "peak_bytes": peak, "attack_bytes_per_image": max(0, peak - before) / batch, "warmup_seconds": warmup}


def _engine_attack(engine: Engine, case_name: str, case: Case, method: str, clean: torch.Tensor, photos: list[np.ndarray],
                   iterations: int) -> torch.Tensor:
    """The engine's PGD on the batch: adversarial inputs [n * T, C, s, s] (image-major, targets
    together) for per-target methods, [n, C, s, s] for `engine-joint` and unconditional models."""
    model = engine.load(case_name)
    config = attacks.preset("pgd", epsilon=EPSILON, iterations=iterations, step_size=STEP)
    if case.label_map:  # in passes sized as the engine sizes them
        per_pass = engine.photos_per_pass(case.size**2, model.kept_bytes(case.size, engine.autocast_dtype))
        return torch.cat([_attack_label_maps(model, part, config, engine.autocast_dtype) for part in clean.split(per_pass)])
    options = {"model": case_name, "iterations": iterations, "step_size": STEP, "seed": 0, "detect_faces": False}
    images = [Image.fromarray(p) for p in photos]
    if method == "engine-joint" or not case.targets:
        return torch.cat([imaging.to_tensor(r.protected_rgb) for r in engine.protect_batch(images, **options)]).to(clean.device)
    per_target = [engine.protect_batch(images, targets=[label], **options) for label in case.targets]
    adversarial = torch.stack([torch.cat([imaging.to_tensor(r.protected_rgb) for r in rs]) for rs in per_target], dim=1)
    return adversarial.flatten(0, 1).to(clean.device)


def _attack_label_maps(model: LoadedModel, maps: torch.Tensor, config: attacks.AttackConfig, dtype: torch.dtype | None) -> torch.Tensor:
    """The engine's attack on label maps [n, C, s, s]: the frozen generator's passes (under
    autocast to `dtype` when given, compiled when the engine compiles) pushed away from its
    fp32 output on the clean maps."""
    with torch.no_grad():
        reference = model.generator(maps)

    def objective(xs: list[torch.Tensor]) -> torch.Tensor:
        with torch.autocast(maps.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return attacks.output_distance(model.attack_forward(xs[0]), reference).float()

    return attacks.linf_attack(objective, [maps], config, seed=0)[0]


def _memory_start(device: torch.device) -> int:
    """Bytes in use now (allocated on CUDA, resident on CPU); the peak counter starts here (on
    Linux CPUs by resetting the process's resident high-water mark, so setup does not count)."""
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")
    return _proc_status_bytes("VmRSS")


def _memory_peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return _proc_status_bytes("VmHWM")


def _proc_status_bytes(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def flops_per_step(case: Case, generator: torch.nn.Module, device: torch.device) -> float:
    """Forward + backward FLOPs of one PGD step for one (image, target) through the frozen
    `generator` (on `device`)."""
    from torch.utils.flop_counter import FlopCounterMode

    channels = case.params["input_nc"] if case.label_map else 3
    x = torch.zeros(1, channels, case.size, case.size, device=device, requires_grad=True)
    conditions = _conditions(case, device)
    c = None if conditions is None else conditions[:1]
    with FlopCounterMode(display=False) as counter:
        generator(x, c).square().mean().backward()
    return float(counter.get_total_flops())


# ------------------------------------------------------------------------------ driver


def _measure(case: str, method: str, batch: int, iterations: int, device: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one", f"{case}:{method}:{batch}", "--iterations", str(iterations), "--device", device]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{case} {method} batch {batch} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _paired_equal(a: np.ndarray, b: np.ndarray) -> str:
    """'yes' when the mean disruptions agree within noise: |mean difference| <= 2 standard
    errors of the paired differences, or within 10% of the original's mean."""
    diff = b - a
    se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else float("inf")
    close = abs(diff.mean()) <= max(2 * se, 0.10 * abs(a.mean()))
    return "yes" if close else ("no: engine stronger" if diff.mean() > 0 else "NO: engine weaker")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(_cases()))
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", default="original,engine,engine-bf16,engine-joint")
    parser.add_argument("--markdown", help="also append the table to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = pick_device(args.device)
    if args.one:
        case, method, batch = args.one.split(":")
        print(json.dumps(run_one(case, method, int(batch), args.iterations, device)))
        return 0

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak_rate = next((v for k, v in DENSE_BF16_PEAK.items() if gpu and k in gpu), None)
    lines = [
        (f"machine: {gpu or platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
         f"({torch.get_num_threads()} threads), device {device.type}, PGD {args.iterations} iterations, epsilon {EPSILON}, step {STEP}"),
        "",
        ("| case | batch | method | images/s | ms / iteration | peak memory (MiB) | attack MiB / image | speed-up | mean disruption mse "
         "| same as original | achieved GFLOP/s" + (" | of bf16 peak" if peak_rate else "") + " |"),
        "|---" * (12 if peak_rate else 11) + "|",
    ]
    print("\n".join(lines), flush=True)
    plans, warmups = [], []
    for case_name in args.cases.split(","):
        case = _cases()[case_name]
        generator = _generator(case).to(device).requires_grad_(False)
        flops = flops_per_step(case, generator, device)
        plans.append(f"{case_name}: " + ", ".join(
            f"{PEAK_PER_KEPT * memory.activation_bytes(generator, case.size, dtype) / 2**20:.0f} MiB {name}"
            for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))))
        targets = max(1, len(case.targets))
        for batch in (int(b) for b in args.batches.split(",")):
            baseline: dict[str, Any] | None = None
            for method in args.methods.split(","):
                if method == "engine-joint" and not case.targets:
                    continue
                row = _measure(case_name, method, batch, args.iterations, args.device)
                disruption = np.array(row["disruption"])
                if method == "original":
                    baseline = row
                speedup = f"{baseline['seconds'] / row['seconds']:.2f}x" if baseline else "-"
                same = _paired_equal(np.array(baseline["disruption"]), disruption) if baseline and method not in ("original", "engine-joint") else "-"
                rate = flops * batch * targets * args.iterations / row["seconds"]  # every method runs each (image, target) pass
                cells = [
                    case_name, str(batch), method, f"{batch / row['seconds']:.3f}", f"{1000 * row['seconds'] / args.iterations:.0f}",
                    f"{row['peak_bytes'] / 2**20:.0f}", f"{row['attack_bytes_per_image'] / 2**20:.0f}", speedup, f"{disruption.mean():.4f}", same, f"{rate / 1e9:.1f}",
                ]
                if peak_rate:
                    cells.append(f"{rate / peak_rate:.1%}")
                if row["warmup_seconds"]:
                    warmups.append(f"{case_name} batch {batch} {method} {row['warmup_seconds']:.1f} s")
                line = "| " + " | ".join(cells) + " |"
                lines.append(line)
                print(line, flush=True)
    notes = ["", "The engine's planned peak per sample (PEAK_PER_KEPT x what its backward keeps): " + "; ".join(plans)]
    if warmups:
        notes += ["", "Compilation (a one-step run before the timed one, not in the table): " + "; ".join(warmups)]
    lines += notes
    print("\n".join(notes), flush=True)
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
