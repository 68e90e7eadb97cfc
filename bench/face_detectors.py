"""Face detectors side by side on the labelled photos: counts, misses, extra faces, box IoU, time.

    python bench/face_detectors.py [--repeats 3] [--candidates haar,yunet,mtcnn]

Labels: ../shared/data/faces-detect/LABELS.tsv (counts; boxes for the PASCAL VOC photos) and
bench/faces_dev_labels.tsv (counts of the 20 development photos, counted by eye). A labelled box
is found when a detection overlaps it with IoU >= 0.5; with boxes, misses and extras are counted
box by box, else from the count. Candidates run alternately on each photo, `--repeats` times,
and the median time per photo is kept (the CPU is shared: compare the ratio, not the seconds).
The last line times a 12-megapixel photo (4000x3000: a development photo enlarged).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import haar_baseline  # noqa: E402
import mtcnn_candidate  # noqa: E402
from photos import FACES_DEV  # noqa: E402

from deepshield import faces  # noqa: E402
from deepshield.faces import FaceBox, box_iou  # noqa: E402
from deepshield.imaging import load_photo  # noqa: E402

DETECT = FACES_DEV.parent / "faces-detect"
DEV_LABELS = Path(__file__).resolve().parent / "faces_dev_labels.tsv"
CANDIDATES: dict[str, Callable[[np.ndarray], list[FaceBox]]] = {
    "haar": haar_baseline.detect_faces,  # deepshield before issue 16
    "yunet": faces.detect_faces,  # yuface (libfacedetection), deepshield's detector since issue 16
    "mtcnn": mtcnn_candidate.detect_faces,  # facenet-pytorch's weights, our own networks
}


def labelled() -> list[tuple[Path, int, list[FaceBox]]]:
    rows = []
    with open(DETECT / "LABELS.tsv", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            boxes = [FaceBox(*(int(v) for v in b.split(","))) for b in row["boxes"].split(";") if b]
            rows.append((DETECT / row["file"], int(row["faces"]), boxes))
    with open(DEV_LABELS, newline="") as handle:
        rows += [(FACES_DEV / row["file"], int(row["faces"]), []) for row in csv.DictReader(handle, delimiter="\t")]
    return rows


def score(found: list[FaceBox], count: int, boxes: list[FaceBox]) -> tuple[int, int, int, list[float]]:
    """(missed, extra, missed of >= 40 px, IoUs of the matched labelled boxes)."""
    if not boxes:
        return max(0, count - len(found)), max(0, len(found) - count), 0, []
    ious = [max((box_iou(b, f) for f in found), default=0.0) for b in boxes]
    missed = [b for b, iou in zip(boxes, ious, strict=True) if iou < 0.5]
    extra = sum(1 for f in found if max(box_iou(b, f) for b in boxes) < 0.5)
    return len(missed), extra, sum(1 for b in missed if min(b.width, b.height) >= 40), [i for i in ious if i >= 0.5]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    args = parser.parse_args()
    names = args.candidates.split(",")
    rows = labelled()
    totals = {n: {"exact": 0, "missed": 0, "extra": 0, "missed40": 0, "ious": [], "seconds": 0.0} for n in names}
    per_photo = []
    for path, count, boxes in rows:
        rgb = load_photo(path).rgb
        times: dict[str, list[float]] = {n: [] for n in names}
        found: dict[str, list[FaceBox]] = {}
        for _ in range(args.repeats):
            for name in names:
                started = time.perf_counter()
                found[name] = CANDIDATES[name](rgb)
                times[name].append(time.perf_counter() - started)
        cells = []
        for name in names:
            missed, extra, missed40, ious = score(found[name], count, boxes)
            total = totals[name]
            total["exact"] += len(found[name]) == count
            total["missed"] += missed
            total["extra"] += extra
            total["missed40"] += missed40
            total["ious"] += ious
            total["seconds"] += statistics.median(times[name])
            cells.append(f"{len(found[name])}")
        per_photo.append(f"| {path.name} | {count} | " + " | ".join(cells) + " |")

    print("| photo | labelled | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    print("\n".join(per_photo))
    print()
    print("| detector | exact count | missed faces | extra faces | missed >= 40 px | mean IoU (matched) | seconds, all photos | time vs haar |")
    print("|---|---|---|---|---|---|---|---|")
    base = totals.get("haar", totals[names[0]])["seconds"]
    for name in names:
        t = totals[name]
        iou = f"{statistics.mean(t['ious']):.2f} (n={len(t['ious'])})" if t["ious"] else "-"
        print(f"| {name} | {t['exact']}/{len(rows)} | {t['missed']} | {t['extra']} | {t['missed40']} | {iou} | {t['seconds']:.2f} | {t['seconds'] / base:.2f}x |")

    big = cv2.resize(load_photo(FACES_DEV / "face_009.jpg").rgb, (4000, 3000), interpolation=cv2.INTER_CUBIC)
    for name in names:
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            count = len(CANDIDATES[name](big))
            seconds.append(time.perf_counter() - started)
        print(f"12 MP (4000x3000, face_009 enlarged): {name} {statistics.median(seconds):.3f} s, {count} faces")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
