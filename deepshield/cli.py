"""`python -m deepshield models | protect | verify | fetch | convert` (contracts in DESIGN.md s.3)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from deepshield import attacks
from deepshield import faces as face_detection
from deepshield.devices import COMPILE_MODES, PRECISIONS
from deepshield.engine import DEFAULT_MODEL, Engine
from deepshield.errors import DeepshieldError, InvalidParameterError
from deepshield.verify import located_in_words
from deepshield.weights import convert_checkpoint, resolve_weights

NAME_MAX = 255  # bytes in one file name on common file systems
OUTPUT_SUFFIXES = (".protected.png", ".deepfake_original.png", ".deepfake_protected.png")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deepshield", description="Protect photos against image-translation deepfakes.")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the models of the manifest and their status")
    models.add_argument("--json", action="store_true", help="machine-readable output")

    protect = commands.add_parser("protect", help="add an adversarial perturbation to photos")
    protect.add_argument("inputs", nargs="+", metavar="INPUT", help="image files")
    where = protect.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", help="output file (one input only); PNG unless the suffix says otherwise")
    where.add_argument("--out-dir", help="directory for <stem>.protected.png of every input")
    protect.add_argument("--model", default=DEFAULT_MODEL, help=f"manifest model name (default {DEFAULT_MODEL})")
    protect.add_argument("--attack", default="pgd", choices=attacks.ATTACKS, help="default pgd")
    budget = protect.add_mutually_exclusive_group()
    budget.add_argument("--epsilon", type=float, help="L-inf budget on [-1, 1] (default 0.05 = 6.4/255)")
    budget.add_argument("--strength", choices=list(attacks.STRENGTHS),
                        help="budget preset: " + ", ".join(f"{n} = {e:g} ({e * 127.5:.2f}/255)" for n, e in attacks.STRENGTHS.items()))
    protect.add_argument("--ssim-floor", type=float, metavar="SSIM",
                         help="perceptual mode: shrink the perturbation until the photo's SSIM is at least this (e.g. 0.95)")
    protect.add_argument("--iterations", type=int, default=10, help="attack steps (ifgsm, pgd)")
    protect.add_argument("--step-size", type=float, default=0.01, help="step size on [-1, 1] (ifgsm, pgd)")
    protect.add_argument("--seed", type=int, help="random seed (reported; default random)")
    protect.add_argument("--target", action="append", dest="targets", metavar="LABEL", help="target label (repeatable; default all)")
    protect.add_argument("--weights", help="use this checkpoint for the model (any supported layout)")
    protect.add_argument("--image-size", type=int, help="override the model resolution")
    protect.add_argument("--batch-size", type=int, help="images attacked together (default: what suits the device)")
    protect.add_argument("--precision", choices=list(PRECISIONS),
                         help="attack passes in bf16 (auto: where the device has bf16 in hardware; default DEEPSHIELD_PRECISION or auto); reports stay fp32")
    protect.add_argument("--compile", dest="compile_mode", choices=list(COMPILE_MODES),
                         help="torch.compile the attack passes (default DEEPSHIELD_COMPILE or off); each new batch shape compiles anew")
    protect.add_argument("--robust", nargs="?", const="eot", choices=["eot", "spread-spectrum", "framing"],
                         help="optimise over random JPEG/resize/blur/shift (eot, the default), cycled blurs (spread-spectrum), "
                              "or the deepfake maker's framings after sharing, over the whole photo (framing)")
    protect.add_argument("--check-robustness", action="store_true",
                         help="report the disruption after real JPEG 90/75/50, resize, blur, a shifted crop, and in unseen framings")
    protect.add_argument("--no-faces", dest="detect_faces", action="store_false",
                         help="face models: protect the centred square instead of every detected face")
    protect.add_argument("--faces", type=_indices, metavar="I,J,...",
                         help="face models: protect only these faces, numbered left to right from 0 as the report's `faces` list them "
                              "(the same numbers for every input photo)")
    protect.add_argument("--report", help="write a JSON list with one report per image")
    protect.add_argument("--deepfake-dir", help="also write <stem>.deepfake_original.png and <stem>.deepfake_protected.png")
    protect.add_argument("--device", help="auto, cpu or cuda (default: DEEPSHIELD_DEVICE or auto)")

    verify = commands.add_parser("verify", help="is a protected photo still protected after sharing (recompressed, resized, cropped, mirrored, turned, framed)?")
    verify.add_argument("original", metavar="ORIGINAL", help="the photo before protection")
    verify.add_argument("shared", metavar="PROTECTED", help="the protected photo as it was shared: any crop, size, mirror, quarter turn, border or format")
    verify.add_argument("--model", action="append", dest="models", metavar="NAME",
                        help="model to check (repeatable; default every photo model whose weights are here)")
    verify.add_argument("--target", action="append", dest="targets", metavar="LABEL", help="target label of a single conditional model")
    verify.add_argument("--no-faces", dest="detect_faces", action="store_false", help="face models: use the centred square")
    verify.add_argument("--report", help="write the JSON report here")
    verify.add_argument("--deepfake-dir", help="write <model>.baseline.png and <model>.shared.png for each model")
    verify.add_argument("--json", action="store_true", help="print the JSON report instead of a summary")
    verify.add_argument("--device", help="auto, cpu or cuda (default: DEEPSHIELD_DEVICE or auto)")

    fetch = commands.add_parser("fetch", help="download and verify weights into the cache")
    fetch.add_argument("names", nargs="*", metavar="NAME")
    fetch.add_argument("--all", action="store_true", help="every model with a downloadable source")

    convert = commands.add_parser("convert", help="convert a checkpoint to canonical safetensors")
    convert.add_argument("source", metavar="SRC")
    convert.add_argument("destination", metavar="DST")
    convert.add_argument("--model", help="manifest model the checkpoint belongs to (default: detect)")
    return parser


def _indices(text: str) -> list[int]:
    """`--faces 0,2` -> [0, 2] (face numbers as the report lists them)."""
    try:
        return face_detection.parse_numbers(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected face numbers separated by commas, like 0,2; got {text!r}") from None


def _print_models(engine: Engine, as_json: bool) -> None:
    rows = engine.list_models()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        labels = f" targets: {', '.join(row['labels'])}" if row["labels"] else ""
        size = f"{row['image_size']}px" if row["image_size"] else "-"
        print(f"{row['name']:28} {row['architecture']:17} {size:>7}  {row['status']:12} {row['reason']}{labels}")


def shown(text: str) -> str:
    """`text` safe to print on one terminal line: control, bidi and undecodable characters of
    file names are escaped (\\n, \\x1b, \\u202e, \\udce9) instead of acting on the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def output_stem(path: str | os.PathLike[str]) -> str:
    """The stem of an input, cut (whole characters) so `<stem>.deepfake_protected.png` and the
    other output names fit in NAME_MAX bytes."""
    stem, room = Path(path).stem, NAME_MAX - max(map(len, OUTPUT_SUFFIXES))
    while len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    return stem


def _output_paths(args: argparse.Namespace) -> list[Path]:
    if args.output:
        if len(args.inputs) != 1:
            raise InvalidParameterError("-o/--output takes one input; use --out-dir for several")
        return [Path(args.output)]
    stems = [output_stem(p) for p in args.inputs]
    duplicates = {s for s in stems if stems.count(s) > 1}
    if duplicates:
        raise InvalidParameterError(f"several inputs share the name {min(duplicates)!r}; their outputs would overwrite each other")
    return [Path(args.out_dir) / f"{stem}.protected.png" for stem in stems]


def _protect(args: argparse.Namespace) -> None:
    engine = Engine(device=args.device, precision=args.precision, compile_mode=args.compile_mode)
    outputs = _output_paths(args)
    step = args.batch_size or 8  # photos per call, so results are written as they come
    show_bar = len(args.inputs) > 1 or args.iterations >= 20
    bar = tqdm(total=len(args.inputs), unit="img", desc="protecting", disable=not show_bar, file=sys.stderr)
    reports: list[dict[str, Any]] = []
    try:
        for start in range(0, len(args.inputs), step):
            chunk = args.inputs[start : start + step]
            results = engine.protect_batch(
                chunk,
                model=args.model,
                attack=args.attack,
                epsilon=args.strength or (0.05 if args.epsilon is None else args.epsilon),
                iterations=args.iterations,
                step_size=args.step_size,
                seed=None if args.seed is None else args.seed + start,
                targets=args.targets,
                image_size=args.image_size,
                weights=args.weights,
                batch_size=args.batch_size,
                detect_faces=args.detect_faces,
                faces=args.faces,
                robust=args.robust,
                check_robustness=args.check_robustness,
                ssim_floor=args.ssim_floor,
            )
            for offset, result in enumerate(results):
                output = outputs[start + offset]
                report = {"input": str(args.inputs[start + offset]), "output": str(output), **_without(result.save(output), "input")}
                if args.deepfake_dir:
                    stem = output_stem(args.inputs[start + offset])
                    Path(args.deepfake_dir).mkdir(parents=True, exist_ok=True)
                    result.deepfake_original.save(Path(args.deepfake_dir) / f"{stem}.deepfake_original.png")
                    result.deepfake_protected.save(Path(args.deepfake_dir) / f"{stem}.deepfake_protected.png")
                reports.append(report)
                bar.update(1)
    finally:
        bar.close()
        if args.report and reports:
            _write_json(args.report, reports)
    for report in reports:
        d, p = report["disruption"], report["perturbation"]
        ssim = "n/a" if p["ssim"] is None else f"{p['ssim']:.4f}"  # None below 3 px a side
        print(
            f"{shown(report['output'])}: disruption mse {d['mse']:.4f} ({'disrupted' if d['disrupted'] else 'NOT disrupted'}), "
            f"linf {p['linf_255']:.0f}/255, psnr {p['psnr'] or float('inf'):.2f} dB, ssim {ssim}, {p['area']:.0%} of the photo perturbed, "
            f"{report['seconds']:.2f}s"
        )
        if "perceptual" in report:
            print(f"  perceptual: perturbation scaled by {report['perceptual']['scale']:.3f} to keep ssim >= {report['perceptual']['ssim_floor']:g}")
        if "robustness" in report:
            robustness = dict(report["robustness"])
            framings = robustness.pop("framings")
            after = ", ".join(f"{k} {v['mse']:.3f}{'' if v['disrupted'] else ' (NOT disrupted)'}" for k, v in robustness.items())
            print(f"  robustness: {after}")
            print(f"  framings: {framings['share_disrupted']:.0%} of {framings['views']} unseen framings disrupted, "
                  f"{framings['jpeg75']['share_disrupted']:.0%} after JPEG 75, "
                  f"{framings['tone_matched']['share_disrupted']:.0%} after a colour correction of the deepfake")


def _write_json(path: str, value: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


def _verify(args: argparse.Namespace) -> None:
    engine = Engine(device=args.device)
    result = engine.verify(args.original, args.shared, models=args.models, targets=args.targets, detect_faces=args.detect_faces)
    report = result.report()
    if args.report:
        _write_json(args.report, report)
    if args.deepfake_dir:
        out = Path(args.deepfake_dir)
        out.mkdir(parents=True, exist_ok=True)
        for check in result.checks:
            check.deepfake_baseline.save(out / f"{check.model}.baseline.png")
            check.deepfake_shared.save(out / f"{check.model}.shared.png")
    if args.json:
        print(json.dumps(report, indent=2))
        return
    shared = report["shared"]
    quality = f" quality ~{shared['jpeg_quality']}" if shared["jpeg_quality"] else ""
    print(f"{shown(shared['name'])}: {shared['width']}x{shared['height']} {shared['format'] or ''}{quality}, {located_in_words(report['located'])}")
    for check in result.checks:
        verdict = "still disrupted" if check.disrupted else "NOT disrupted"
        print(f"  {check.model:28} mse {check.mse:.4f} vs the original shared the same way: {verdict}")
    print("protected: " + ("yes, every model's deepfake is disrupted" if result.protected else "no"))


def _fetch(args: argparse.Namespace) -> None:
    engine = Engine(device="cpu")
    if args.all:
        names = [n for n, s in engine.specs.items() if s.weights.kind in ("hub", "package")]
    elif args.names:
        names = args.names
    else:
        raise InvalidParameterError("name the models to fetch, or pass --all")
    for name in names:
        path, digest = resolve_weights(engine.spec(name))
        print(f"{name}: {path} (sha256 {digest})")


def _convert(args: argparse.Namespace) -> None:
    engine = Engine(device="cpu")
    specs = [engine.spec(args.model)] if args.model else list(engine.specs.values())
    candidates = list(dict.fromkeys((s.architecture, json.dumps(dict(s.params), sort_keys=True)) for s in specs))
    matched = convert_checkpoint(
        Path(args.source),
        Path(args.destination),
        [(arch, json.loads(params)) for arch, params in candidates],
        preferred_format=specs[0].weights.format if args.model else None,
    )
    print(f"{args.destination}: {matched.architecture} ({matched.format} layout), {len(matched.state_dict)} tensors")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "models":
            _print_models(Engine(device="cpu"), args.json)
        elif args.command == "protect":
            _protect(args)
        elif args.command == "verify":
            _verify(args)
        elif args.command == "fetch":
            _fetch(args)
        else:
            _convert(args)
    except DeepshieldError as error:
        print(f"error: {shown(str(error))}", file=sys.stderr)
        return 2
    except OSError as error:  # an output that cannot be written: read-only folder, full disk, ...
        where = f"{shown(str(error.filename))}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
