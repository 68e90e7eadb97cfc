"""The detector deepshield used before issue 16, kept for the side-by-side comparison in
bench/face_detectors.py: OpenCV's Haar cascades (frontal + profile, mirrored profile, a rotated
profile fallback for portraits), exactly as `deepshield/faces.py` ran them at commit 0c34111.
`detect_faces` returns `deepshield.faces.FaceBox` boxes (score = merged raw hits, no landmarks)."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepshield.faces import FaceBox

# ------------------------------------------------------------------ parameters (documented)

MAX_SIDE = 1024
"""Longest side of the grayscale copy the cascades run on. A face filling 5% of a 1024 px
photo is still 51 px, twice the cascades' 24 px window; larger copies only cost time."""

MIN_FACE = 0.05
"""Smallest face searched for, as a fraction of the photo's shorter side (never below the
24 px window at detection scale). Faces in the development group photos are 9-27% of the
shorter side; 5% keeps a margin while skipping the smallest, slowest and most error-prone
scales (3% added a false positive on a dev photo and on a face-free one, and 15% more time).
A face smaller than that is also too small to be worth a model crop of its own."""

SCALE_FACTOR = 1.1
"""Step between the pyramid's scales. 1.1 (OpenCV's default) matches every face size within
5%; 1.2 is 1.7x faster on the development photos but loses two of their faces (one in the
group photo face_012, the bowed head of face_001)."""

MIN_NEIGHBORS = 5
"""A box must merge more than this many raw hits (OpenCV's `minNeighbors`). True faces in the
development photos score 7-125; 3 adds false positives on three dev photos and four more
face-free images, 8 loses two true faces (face_001, one in face_012)."""

ROTATIONS: tuple[float, ...] = (-20.0, 20.0)
"""In-plane rotations (degrees, counter-clockwise) of the fallback, tried only when the upright
pass finds no face. The cascades tolerate about +-10-15 degrees of roll, so +-20 covers heads
tilted up to about 35 degrees; it costs time on face-free photos only, never when a face is found."""

FALLBACK_MIN_FACE = 0.3
"""Smallest face the rotated fallback accepts, as a fraction of the shorter side: the fallback
is for portraits (one dominant face), and the size limit both keeps it cheap (few scales) and
removes the texture false positives small rotated windows produce."""

NMS_IOU = 0.3
"""Boxes overlapping a kept box by more than this intersection-over-union are dropped."""

NMS_COVER = 0.6
"""... and so are boxes whose area lies more than this fraction inside a kept box (a profile
box around a frontal one, a chin-to-forehead box inside a head box)."""

FRONTAL_CASCADE = "haarcascade_frontalface_default.xml"
PROFILE_CASCADE = "haarcascade_profileface.xml"
_WINDOW = 24  # training window of both cascades (px)


class FaceDetectorUnavailableError(RuntimeError):
    """OpenCV (with its Haar cascades) is not installed, or is a release without them."""


# ------------------------------------------------------------------ detection


def detect_faces(
    rgb: np.ndarray,
    *,
    max_side: int = MAX_SIDE,
    min_face: float = MIN_FACE,
    scale_factor: float = SCALE_FACTOR,
    min_neighbors: int = MIN_NEIGHBORS,
    profile: bool = True,
    rotations: Sequence[float] = ROTATIONS,
) -> list[FaceBox]:
    """Faces in an upright photo, left to right; [] when there is none.

    rgb: uint8 [H, W, 3] (or [H, W] grayscale), EXIF orientation already applied
    (`imaging.load_photo` does). Boxes are in full-resolution pixels of `rgb`. Parameters as
    the module constants of the same name; `profile=False` runs the frontal cascade only (and
    no fallback), `rotations=()` disables the rotated fallback. Deterministic for a given input.
    """
    cv2 = _cv2()
    if rgb.dtype != np.uint8 or not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3)):
        raise ValueError(f"expected uint8 [H, W, 3] or [H, W], got {rgb.dtype} {list(rgb.shape)}")
    if not (0.0 <= min_face < 1.0) or scale_factor <= 1.0 or min_neighbors < 1 or max_side < _WINDOW:
        raise ValueError("need 0 <= min_face < 1, scale_factor > 1, min_neighbors >= 1, max_side >= 24")
    height, width = rgb.shape[:2]
    gray = rgb if rgb.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(np.ascontiguousarray(gray))
    small_h, small_w = gray.shape
    min_px = max(_WINDOW, round(min_face * min(small_h, small_w)))
    if min_px > min(small_h, small_w):
        return []

    options = {"scale_factor": scale_factor, "min_neighbors": min_neighbors}
    found = _detect_upright(gray, frontal=True, profile=profile, min_px=min_px, **options)
    fallback_px = max(min_px, round(FALLBACK_MIN_FACE * min(small_h, small_w)))
    if not found and profile:
        for angle in rotations:
            found += _detect_rotated(gray, angle, frontal=False, profile=True, min_px=fallback_px, **options)
    kept = _suppress(found)
    # back to full resolution: outward rounding, clipped
    sx, sy = width / small_w, height / small_h
    boxes = []
    for (x, y, w, h), score, source in kept:
        x0 = max(0, math.floor(x * sx))
        y0 = max(0, math.floor(y * sy))
        x1 = min(width, math.ceil((x + w) * sx))
        y1 = min(height, math.ceil((y + h) * sy))
        if x1 > x0 and y1 > y0:
            boxes.append(FaceBox(x0, y0, x1, y1, float(score)))
    return sorted(boxes, key=lambda b: (b.x0, b.y0, b.x1, b.y1))


_Hit = tuple[tuple[float, float, float, float], int, str]  # (x, y, w, h) at detection scale, score, source


def _detect_upright(gray: np.ndarray, *, frontal: bool, profile: bool, scale_factor: float, min_neighbors: int, min_px: int) -> list[_Hit]:
    """Frontal and/or profile + mirrored profile hits on one grayscale image [h, w] (uint8)."""
    hits = _cascade_hits(FRONTAL_CASCADE, gray, scale_factor, min_neighbors, min_px, "frontal") if frontal else []
    if profile:
        hits += _cascade_hits(PROFILE_CASCADE, gray, scale_factor, min_neighbors, min_px, "profile")
        mirrored = np.ascontiguousarray(gray[:, ::-1])
        width = gray.shape[1]
        for (x, y, w, h), score, _ in _cascade_hits(PROFILE_CASCADE, mirrored, scale_factor, min_neighbors, min_px, ""):
            hits.append(((width - x - w, y, w, h), score, "profile-mirrored"))
    return hits


def _detect_rotated(gray: np.ndarray, angle: float, **options: Any) -> list[_Hit]:
    """Hits on a copy rotated by `angle` degrees (canvas enlarged so nothing is cut off),
    mapped back to `gray` by their centre; the box keeps its size (faces are near-square)."""
    cv2 = _cv2()
    height, width = gray.shape
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = math.ceil(width * cos + height * sin), math.ceil(width * sin + height * cos)
    matrix[0, 2] += (new_w - width) / 2.0
    matrix[1, 2] += (new_h - height) / 2.0
    rotated = cv2.warpAffine(gray, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inverse = cv2.invertAffineTransform(matrix)
    hits = []
    for (x, y, w, h), score, source in _detect_upright(rotated, **options):
        cx, cy = inverse @ np.array([x + w / 2.0, y + h / 2.0, 1.0])
        box = (cx - w / 2.0, cy - h / 2.0, float(w), float(h))
        if 0 <= cx < width and 0 <= cy < height:  # centre on the real photo, not the padding
            hits.append((box, score, f"{source}@{angle:+g}"))
    return hits


def _cascade_hits(name: str, gray: np.ndarray, scale_factor: float, min_neighbors: int, min_px: int, source: str) -> list[_Hit]:
    """Raw detections of one cascade, grouped; each group's score is its neighbour count."""
    cv2 = _cv2()
    raw = _cascade(name).detectMultiScale(gray, scaleFactor=scale_factor, minNeighbors=0, minSize=(min_px, min_px))
    if len(raw) == 0:
        return []
    rects, counts = cv2.groupRectangles(np.asarray(raw).tolist(), min_neighbors, 0.2)
    if len(rects) == 0:
        return []
    boxes, scores = np.asarray(rects).tolist(), np.ravel(counts).tolist()
    return [(tuple(float(v) for v in r), int(c), source) for r, c in zip(boxes, scores, strict=True)]


def _suppress(hits: list[_Hit]) -> list[_Hit]:
    """Greedy non-maximum suppression: frontal before profile, then by score."""
    order = sorted(hits, key=lambda h: (not h[2].startswith("frontal"), -h[1], h[0]))
    kept: list[_Hit] = []
    for hit in order:
        if all(not _overlaps(hit[0], other[0]) for other in kept):
            kept.append(hit)
    return kept


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a, area_b = a[2] * a[3], b[2] * b[3]
    union = area_a + area_b - inter
    return inter > NMS_IOU * union or inter > NMS_COVER * min(area_a, area_b)


# ------------------------------------------------------------------ OpenCV plumbing

_LOCAL = threading.local()  # a CascadeClassifier is not safe to share between threads


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise FaceDetectorUnavailableError("face detection needs OpenCV: pip install 'opencv-python-headless>=4.8,<5'") from None
    if not hasattr(cv2, "CascadeClassifier"):
        raise FaceDetectorUnavailableError(
            f"OpenCV {cv2.__version__} has no Haar cascades (removed in 5.0): pip install 'opencv-python-headless>=4.8,<5'"
        )
    return cv2


def _cascade(name: str) -> Any:
    """This thread's loaded `cv2.CascadeClassifier` for a cascade file shipped with OpenCV."""
    cache: dict[str, Any] = _LOCAL.__dict__.setdefault("cascades", {})
    if name not in cache:
        cv2 = _cv2()
        path = cv2.data.haarcascades + name
        classifier = cv2.CascadeClassifier(path)
        if classifier.empty():
            raise FaceDetectorUnavailableError(f"cannot load the OpenCV cascade {path}; reinstall opencv-python-headless (<5)")
        cache[name] = classifier
    return cache[name]


