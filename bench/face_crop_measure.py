"""Re-measure the face alignment constants and the manifest's `face_crop` parameters.

    python bench/face_crop_measure.py

1. On the development set's CelebA `img_align_celeba` crops (178x218, MANIFEST.tsv kind
   `celeba-crop`): the mean YuNet landmarks (`faces.CELEBA_TEMPLATE`) and the mean square around
   YuNet's boxes (`faces.CELEBA_REFERENCE`).
2. StarGAN (trained on those crops, `CenterCrop(178)` then resize): the centred 178 px square of
   the 178x218 frame, as {margin, shift_y} relative to the reference square.
3. GANimation (no training crops offline): the square the previous release cut around the Haar
   cascade's box ({margin: -0.06, shift_y: 0.065}, measured on ganimation_replicate's 128 px test
   crops), re-expressed relative to the aligned reference square: the median over the faces of
   the development photos that both detectors find.
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import haar_baseline  # noqa: E402
from photos import FACES_DEV  # noqa: E402

from deepshield import faces  # noqa: E402
from deepshield.imaging import load_photo  # noqa: E402

OLD_GANIMATION = {"margin": -0.06, "shift_y": 0.065}


def celeba_crops() -> list[Path]:
    with open(FACES_DEV / "MANIFEST.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [FACES_DEV / r["file"] for r in rows if r["kind"] == "celeba-crop" and (r["width"], r["height"]) == ("178", "218")]


def main() -> None:
    marks, squares = [], []
    for path in celeba_crops():
        found = faces.detect_faces(load_photo(path).rgb)
        face = max(found, key=lambda f: f.score)
        marks.append(face.landmarks)
        cx, cy = face.center
        squares.append((cx, cy, max(face.width, face.height)))
    template = np.mean(np.array(marks), axis=0)
    reference = np.mean(np.array(squares), axis=0)
    print(f"{len(marks)} CelebA crops")
    print("CELEBA_TEMPLATE =", tuple((round(float(x), 1), round(float(y), 1)) for x, y in template))
    print("CELEBA_REFERENCE =", tuple(round(float(v), 1) for v in reference))
    cx, cy, side = (float(v) for v in reference)
    print(f"stargan face_crop: margin {(178 / side - 1) / 2:.3f}, shift_y {((20 + 89) - cy) / side:.3f}")

    margins, shifts = [], []
    for path in sorted(FACES_DEV.iterdir()):
        if path.suffix.lower() not in (".jpg", ".png"):
            continue
        rgb = load_photo(path).rgb
        height, width = rgb.shape[:2]
        old = haar_baseline.detect_faces(rgb)
        for face in faces.detect_faces(rgb):
            match = max(old, key=lambda o: faces.box_iou(o, face), default=None)
            if match is None or faces.box_iou(match, face) < 0.5:
                continue
            top, left, side_old = faces.crop_box(match, width, height, **OLD_GANIMATION)
            fx, fy, size, _ = face.frame()
            if side_old < min(width, height):  # squares clipped by the photo say nothing
                margins.append((side_old / size - 1) / 2)
                shifts.append((top + side_old / 2 - fy) / size)
    print(f"ganimation face_crop over {len(margins)} faces: margin {statistics.median(margins):.3f}, shift_y {statistics.median(shifts):.3f}")


if __name__ == "__main__":
    main()
