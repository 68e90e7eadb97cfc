"""How level are turned faces cut? A face photo turned in its plane, its roll as YuNet's first read
gives it and as `faces.detect_faces` gives it after the levelled re-reads, against the truth.

    python bench/face_levelling.py [--photo face_016.jpg] [--sides 2048,1024,400] [--turns -40,-25,-10,10,25,40]

The photo (one face) is resized to each side, then turned by each angle with OpenCV (counter-clockwise,
edges replicated). The truth is the roll read on the unturned photo minus the turn. Cells: degrees
off the truth of the model square's `angle` (`faces.crop_box`), first read / with re-reads.
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np
from PIL import Image
from photos import FACES_DEV

from deepshield import faces

STARGAN = {"margin": 0.245, "shift_y": -0.126}  # weights_manifest.yaml, stargan-celeba-128


def roll(rgb: np.ndarray, *, reread: bool) -> float | None:
    """The roll of the one face found (None if not exactly one), with or without re-reads."""
    passes = faces.LEVEL_PASSES
    faces.LEVEL_PASSES = passes if reread else 0
    try:
        found = faces.detect_faces(rgb)
    finally:
        faces.LEVEL_PASSES = passes
    if len(found) != 1:
        return None
    height, width = rgb.shape[:2]
    return faces.crop_box(found[0], width, height, **STARGAN).angle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", default="face_016.jpg")
    parser.add_argument("--sides", default="2048,1024,400", help="photo widths")
    parser.add_argument("--turns", default="-40,-25,-10,10,25,40", help="degrees, counter-clockwise")
    args = parser.parse_args()
    source = Image.open(FACES_DEV / args.photo).convert("RGB")
    turns = [float(t) for t in args.turns.split(",")]
    print(f"{args.photo}: degrees off the true roll, YuNet's first read / after levelled re-reads")
    print("| width | " + " | ".join(f"turn {t:+.0f}" for t in turns) + " |")
    print("|---" * (len(turns) + 1) + "|")
    errors: list[tuple[float, float]] = []
    for width in (int(s) for s in args.sides.split(",")):
        height = round(width * source.height / source.width)
        rgb = np.asarray(source.resize((width, height), Image.Resampling.LANCZOS))
        own = roll(rgb, reread=True)
        if own is None:
            print(f"| {width} | no single face on the unturned photo |")
            continue
        cells = []
        for turn in turns:
            matrix = cv2.getRotationMatrix2D((width / 2, height / 2), turn, 1.0)
            turned = cv2.warpAffine(rgb, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
            first, levelled = roll(turned, reread=False), roll(turned, reread=True)
            if first is None or levelled is None:
                cells.append("not one face")
                continue
            truth = own - turn
            errors.append((abs(first - truth), abs(levelled - truth)))
            cells.append(f"{first - truth:+.1f} / {levelled - truth:+.1f}")
        print(f"| {width} | " + " | ".join(cells) + " |")
    if errors:
        first_mean, levelled_mean = np.mean(errors, axis=0)
        print(f"mean |error|: first read {first_mean:.1f} degrees, after re-reads {levelled_mean:.1f} degrees")
    return 0


if __name__ == "__main__":
    sys.exit(main())
