"""Find faces in photos, with five landmarks each, and place the aligned square a face model is fed.

Detector: YuNet (Wu, Peng, Yu, "YuNet: A Tiny Millisecond-level Face Detector", 2023) as built
into libfacedetection, whose network weights are compiled into the shared library of the `yuface`
wheel (BSD-3-Clause; 1 MB; nothing downloaded at run time). It returns, per face, a box, a score
and five landmarks. It was chosen over OpenCV's Haar cascades (the detector before issue 16),
MTCNN and MediaPipe after a side-by-side evaluation on labelled photos: `bench/face_detectors.py`,
figures in `bench/RESULTS.md`.

Pipeline (`detect_faces`):

1. The photo is downscaled with area averaging so its longest side is at most `MAX_SIDE` (960 px,
   the largest input libfacedetection is tuned for; larger inputs lowered the score of a face
   filling a 1200 px portrait below the threshold). YuNet finds faces down to about 16 px of that
   copy (1.7% of the photo's longest side). Photos longer than 2133 px get a second pass at 0.45
   scale for the faces too small for the first (`SMALL_FACE_SCALE`): a 40 px face is found in a
   12 MP photo.
2. Detections scoring at least `MIN_SCORE` are kept (YuNet applies its own non-maximum
   suppression), mapped back to full-resolution pixels, clipped, sorted left to right.
3. A face whose landmarks give a roll of `LEVEL_MIN_ROLL` degrees or more has them read again
   from a crop levelled by that roll (up to `LEVEL_PASSES` times): YuNet's landmarks follow only
   part of a strong turn (17 of 25 degrees on face_016; 22-24 after the re-reads). A small face
   (about 100 px) whose first read shows no roll is left as read.

Each `FaceBox` carries its landmarks (eyes, nose tip, mouth corners). `FaceBox.frame` fits a
similarity transform (scale, rotation, shift) from the CelebA template (`CELEBA_TEMPLATE`, where
the landmarks sit in CelebA's `img_align_celeba` 178x218 crops) to the face's landmarks: the face's
reference square (`CELEBA_REFERENCE` in the template) in the photo, with the face's roll. `crop_box`
places a model's square relative to it with the manifest's `face_crop` {margin, shift_y}, so a
tilted face is framed, scaled and levelled as the models' aligned training crops were; the square
carries the roll as `Square.angle`, which the framing threat model (`views.ThreatModel.sample`)
jitters around.

Bad cases (tested in tests/test_faces.py):
- no face (or only faces under about 16 px in the 960 px copy): `[]`; the caller falls back to
  the largest centred square and says so in the report;
- a face cut by the photo's border: its box is clipped to the photo, its landmarks may lie
  outside it (YuNet predicts them), and the model's square is moved back inside the photo;
- a turned or profile face: YuNet (trained on WIDER FACE, which has profiles) finds the
  three-quarter turned faces of the labelled photos (face_012's laughing man, missed by the
  cascades); a face seen from one side only (half a face, one eye) is found or not by its
  score, never a crash; when found, the landmark fit follows nose, mouth and the visible eye,
  so the square is centred on the face but its scale and roll are less exact.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from deepshield.errors import DeepshieldError

# ------------------------------------------------------------------ parameters (documented)

MAX_SIDE = 960
"""Longest side (px) of the copy YuNet runs on (faces down to about 16 px of it are found);
1280 px and the full resolution lowered the score of the face filling face_004 (1200 px) to
0.74, a miss."""

SMALL_FACE_SCALE = 0.45
"""Photos whose longest side is over `MAX_SIDE / SMALL_FACE_SCALE` (2133 px) get a second pass
on a copy at this scale, so a 40 px face keeps 18 px, above YuNet's smallest; only faces too
small for the first copy (under `SMALL_FACE_PX` there) and not found by it are taken from it.
A 12 MP photo (4000x3000) takes 1.0 s in all on the build machine, 1.7x faster than the
cascades were (bench/RESULTS.md)."""

SMALL_FACE_PX = 32
"""Faces under this size (px of the first, `MAX_SIDE` copy) are the second pass's to find."""

MIN_SCORE = 0.8
"""Smallest YuNet score (0-1) kept. On the 30 labelled photos every face scores >= 0.86 at
`MAX_SIDE` and every non-face <= 0.78 (a dog's muzzle 0.77, a patterned sleeve 0.78)."""

LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
"""Names of the five landmarks, in order, by the side of the *image* they are on (the person's
right eye is `left_eye` when they face the camera)."""

CELEBA_TEMPLATE: tuple[tuple[float, float], ...] = (
    (69.5, 110.0), (110.0, 110.9), (92.6, 134.0), (71.2, 150.4), (105.1, 152.2),
)
"""Mean YuNet landmarks (x, y) on CelebA `img_align_celeba` crops (178x218 px), in `LANDMARKS`
order: the alignment every face is mapped to. Measured with `bench/face_crop_measure.py` on the
eight 178x218 CelebA crops of the development set."""

CELEBA_REFERENCE: tuple[float, float, float] = (84.2, 124.0, 119.5)
"""(cx, cy, side) of a face's reference square in the CelebA template: the mean square around
YuNet's boxes on the same crops. The manifest's `face_crop` margins are relative to it."""

LEVEL_MIN_ROLL = 3.0
"""Faces whose landmarks give a roll of at least this many degrees are read again levelled:
YuNet's landmarks follow only part of a strong turn (-17 degrees for a face turned 25)."""

LEVEL_SIDE = 320
"""Side (px) of the levelled crop, twice the face's reference square, that YuNet re-reads."""

LEVEL_PASSES = 3
"""Re-reads at most per face: each levels by the roll found so far, until what is left is
under 1 degree (a 25 degree turn read as -17 comes to -22 in two passes on face_016)."""

_LOCK = threading.Lock()  # the yuface binding's thread safety is undocumented: one call at a time


class FaceDetectorUnavailableError(DeepshieldError):
    """The `yuface` wheel (YuNet) is not installed or does not load on this platform."""


class Square(tuple):  # type: ignore[type-arg]
    """(top, left, side) of a square in a photo's pixels, plus `angle`: the in-plane turn
    (degrees, counter-clockwise as `cv2.getRotationMatrix2D`) that levels the face in it.
    Unpacks as the plain 3-tuple everywhere a `Box` is expected."""

    angle: float

    def __new__(cls, top: int, left: int, side: int, angle: float = 0.0) -> Square:
        square = super().__new__(cls, (top, left, side))
        square.angle = float(angle)
        return square

    def __getnewargs__(self) -> tuple[int, int, int, float]:
        return (*self, self.angle)  # type: ignore[return-value]


@dataclass(frozen=True)
class FaceBox:
    """A detected face in full-resolution pixel coordinates of the photo it was found in.

    `x0, y0` inclusive, `x1, y1` exclusive (`rgb[y0:y1, x0:x1]` is the face), clipped to the
    image. `score`: YuNet's confidence in [0, 1]. `landmarks`: five (x, y) points in `LANDMARKS`
    order (may lie outside a photo that cuts the face), or () for a box without landmarks.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    score: float = 0.0
    landmarks: tuple[tuple[float, float], ...] = ()

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return max(0, self.width) * max(0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) of the box centre in pixels."""
        return (self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0

    def as_list(self) -> list[int]:
        """`[x0, y0, x1, y1]` (JSON-friendly)."""
        return [self.x0, self.y0, self.x1, self.y1]

    def as_dict(self) -> dict[str, Any]:
        """The report's entry: box, score (3 decimals), landmarks by name ([x, y], 1 decimal)."""
        points = self.landmarks or ()
        marks = {name: [round(x, 1), round(y, 1)] for name, (x, y) in zip(LANDMARKS, points, strict=True)} if points else {}
        return {"box": self.as_list(), "score": round(self.score, 3), "landmarks": marks}

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> FaceBox:
        """The inverse of `as_dict` (box required; score and landmarks optional)."""
        marks = entry.get("landmarks") or {}
        points = tuple((float(marks[n][0]), float(marks[n][1])) for n in LANDMARKS) if marks else ()
        return cls(*(int(v) for v in entry["box"]), score=float(entry.get("score", 0.0)), landmarks=points)

    def frame(self) -> tuple[float, float, float, float]:
        """(cx, cy, side, angle) of the face's reference square in the photo: `CELEBA_REFERENCE`
        mapped by the similarity that best takes `CELEBA_TEMPLATE` onto the landmarks (least
        squares); `angle` (degrees) is the face's roll. Without landmarks: the box's centre and
        longer side, angle 0."""
        if len(self.landmarks) != len(CELEBA_TEMPLATE):
            cx, cy = self.center
            return cx, cy, float(max(self.width, self.height)), 0.0
        template = np.array([complex(x, y) for x, y in CELEBA_TEMPLATE])
        points = np.array([complex(x, y) for x, y in self.landmarks])
        a, b = template - template.mean(), points - points.mean()
        z = np.vdot(a, b) / np.vdot(a, a).real  # scale * e^{i angle}: template -> photo
        cx, cy, side = CELEBA_REFERENCE
        centre = z * (complex(cx, cy) - template.mean()) + points.mean()
        return float(centre.real), float(centre.imag), float(abs(z) * side), math.degrees(float(np.angle(z)))


# ------------------------------------------------------------------ detection


def detect_faces(rgb: np.ndarray, *, max_side: int = MAX_SIDE, min_score: float = MIN_SCORE) -> list[FaceBox]:
    """Faces in an upright photo, left to right; [] when there is none.

    rgb: uint8 [H, W, 3] (or [H, W] grayscale), EXIF orientation already applied
    (`imaging.load_photo` does). Boxes and landmarks are in full-resolution pixels of `rgb`.
    `max_side` and `min_score` as the module constants. Deterministic for a given input.
    """
    if rgb.dtype != np.uint8 or not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3)):
        raise ValueError(f"expected uint8 [H, W, 3] or [H, W], got {rgb.dtype} {list(rgb.shape)}")
    if max_side < 32 or not 0.0 <= min_score <= 1.0:
        raise ValueError("need max_side >= 32 and 0 <= min_score <= 1")
    import cv2

    height, width = rgb.shape[:2]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_GRAY2BGR) if rgb.ndim == 2 else np.ascontiguousarray(rgb[:, :, ::-1])
    longest = max(height, width)
    scale = min(1.0, max_side / longest)
    found = _detect_at(bgr, scale, min_score)
    if SMALL_FACE_SCALE * longest > max_side:  # a large photo: small faces from a finer copy
        blind = SMALL_FACE_PX / scale  # full-resolution size below which the first copy misses faces
        for face in _detect_at(bgr, SMALL_FACE_SCALE, min_score):
            if max(face.width, face.height) < blind and all(box_iou(face, other) < 0.3 for other in found):
                found.append(face)
    return sorted((_levelled(bgr, face) for face in found), key=lambda b: (b.x0, b.y0, b.x1, b.y1))


def _levelled(bgr: np.ndarray, face: FaceBox) -> FaceBox:
    """The face with its landmarks re-read from crops levelled by the roll they give (box and
    score kept), up to `LEVEL_PASSES` times, when that roll is at least `LEVEL_MIN_ROLL`."""
    roll = face.frame()[3]
    if abs(roll) < LEVEL_MIN_ROLL:
        return face
    for _ in range(LEVEL_PASSES):
        again = _read_levelled(bgr, face)
        if again is None:
            break
        face, previous, roll = again, roll, again.frame()[3]
        if abs(roll - previous) < 1.0:  # settled
            break
    return face


def _read_levelled(bgr: np.ndarray, face: FaceBox) -> FaceBox | None:
    """The face with landmarks read by YuNet in a `LEVEL_SIDE` crop levelled by the face's
    current roll, mapped back to the photo; None when the crop shows no face at its centre."""
    import cv2

    cx, cy, side, roll = face.frame()
    n = LEVEL_SIDE
    scale = n / (2.0 * side)
    shrink = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # photo -> the copy turned (pixel-centre coordinates)
    if scale < 1.0:  # shrink the face's surroundings with area averaging first: a warp alone aliases
        height, width = bgr.shape[:2]
        reach = 1.5 * side  # half the diagonal of the crop, with room
        x0, y0 = max(0, math.floor(cx - reach)), max(0, math.floor(cy - reach))
        x1, y1 = min(width, math.ceil(cx + reach)), min(height, math.ceil(cy + reach))
        size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
        bgr = cv2.resize(bgr[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
        sx, sy = size[0] / (x1 - x0), size[1] / (y1 - y0)
        shrink = np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]])
        scale = 1.0
    centre = shrink @ np.array([cx, cy, 1.0])
    turn = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), roll, scale)
    turn[:, 2] += ((n - 1) / 2 - centre[0], (n - 1) / 2 - centre[1])
    crop = cv2.warpAffine(bgr, turn, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    turn = np.hstack([turn[:, :2] @ shrink[:, :2], (turn[:, :2] @ shrink[:, 2] + turn[:, 2])[:, None]])  # photo -> crop
    rows = _yunet(crop)
    if len(rows) == 0:
        return None
    centres = (rows[:, 1] + rows[:, 3] / 2 - n / 2) ** 2 + (rows[:, 2] + rows[:, 4] / 2 - n / 2) ** 2
    row = rows[int(np.argmin(centres))]
    if centres.min() > (n / 4) ** 2:
        return None
    back = cv2.invertAffineTransform(turn)
    points = np.asarray(row[5:15], dtype=np.float64).reshape(5, 2) @ back[:, :2].T + back[:, 2]
    return FaceBox(face.x0, face.y0, face.x1, face.y1, face.score, tuple((float(x), float(y)) for x, y in points))


def _detect_at(bgr: np.ndarray, scale: float, min_score: float) -> list[FaceBox]:
    """YuNet on a copy of bgr [H, W, 3] scaled by `scale` (<= 1, area averaging); faces scoring
    at least `min_score`, in full-resolution pixels of bgr."""
    import cv2

    height, width = bgr.shape[:2]
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    rows = _yunet(np.ascontiguousarray(bgr))
    sx, sy = width / bgr.shape[1], height / bgr.shape[0]
    found = []
    for row in rows:
        score = float(row[0]) / 100.0
        if score < min_score:
            continue
        x, y, w, h = (float(v) for v in row[1:5])
        x0, y0 = max(0, math.floor(x * sx)), max(0, math.floor(y * sy))
        x1, y1 = min(width, math.ceil((x + w) * sx)), min(height, math.ceil((y + h) * sy))
        # landmark i is pixel (u, v) of the copy: its centre is (u + 0.5) copy px
        marks = tuple(((float(row[5 + 2 * i]) + 0.5) * sx - 0.5, (float(row[6 + 2 * i]) + 0.5) * sy - 0.5) for i in range(5))
        if x1 > x0 and y1 > y0:
            found.append(FaceBox(x0, y0, x1, y1, score, marks))
    return found


def _yunet(bgr: np.ndarray) -> np.ndarray:
    """Raw YuNet rows [N, 15+] int: score (0-100), x, y, w, h, then five landmarks (x, y)."""
    try:
        from yuface import c_detect
    except ImportError as error:
        raise FaceDetectorUnavailableError(f"face detection needs the yuface wheel (YuNet): pip install 'yuface==2023.5.1' ({error})") from None
    if min(bgr.shape[:2]) < 16:
        return np.zeros((0, 15), dtype=np.int64)  # below YuNet's smallest anchor: no face, no call
    with _LOCK:
        return np.asarray(c_detect(bgr)).astype(np.int64)


def box_iou(a: FaceBox, b: FaceBox) -> float:
    """Intersection over union of two boxes, in [0, 1]."""
    ix = max(0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = ix * iy
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def parse_numbers(text: str) -> list[int]:
    """Face numbers written as "0,2" (blanks between commas ignored) -> [0, 2]; ValueError
    when a part is not an integer. The CLI's `--faces` and the UI's text form take this."""
    return [int(part) for part in text.split(",") if part.strip()]


def select(found: Sequence[FaceBox], indices: Sequence[int] | None) -> list[FaceBox]:
    """The faces chosen by their indices in `found` (left to right, as reported); all when
    `indices` is None. Raises ValueError for an index out of range or an empty choice."""
    if indices is None:
        return list(found)
    chosen = sorted(set(int(i) for i in indices))
    if not chosen:
        raise ValueError("faces=[] leaves out every face: choose at least one, or turn face detection off for the centred square")
    bad = [i for i in chosen if not 0 <= i < len(found)]
    if bad and found:
        raise ValueError(f"faces={bad} out of range: {len(found)} face(s) were found, numbered 0 to {len(found) - 1}")
    return [found[i] for i in chosen if 0 <= i < len(found)]


def draw(rgb: np.ndarray, found: Sequence[FaceBox], *, max_side: int = 1024) -> Image.Image:
    """The photo uint8 [H, W, 3] (shrunk to `max_side` for display) with each face's box, its
    number (the index `faces=[...]` takes) and its five landmarks drawn."""
    image = Image.fromarray(rgb if rgb.ndim == 3 else np.dstack([rgb] * 3))
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR)
    pen = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    for index, face in enumerate(found):
        box = [face.x0 * scale, face.y0 * scale, face.x1 * scale, face.y1 * scale]
        pen.rectangle(box, outline=(0, 255, 0), width=width)
        pen.text((box[0] + width, box[1] + width), str(index), fill=(255, 255, 0), font=ImageFont.load_default(size=max(12, 8 * width)))
        for x, y in face.landmarks:
            r = width
            pen.ellipse([x * scale - r, y * scale - r, x * scale + r, y * scale + r], fill=(255, 0, 0))
    return image


# ------------------------------------------------------------------ crop geometry


def crop_box(face: FaceBox, width: int, height: int, *, margin: float, shift_y: float = 0.0) -> Square:
    """The square a model sees for this face, inside a `width` x `height` photo.

    From the face's reference square (`FaceBox.frame`: aligned on its landmarks, else its box):
    side = round(reference side * (1 + 2 * margin)), centre moved by `shift_y * reference side`
    along the face's downward axis (negative = towards the forehead). A square that does not
    fit is moved back inside the photo, keeping its side; one larger than the photo's shorter
    side shrinks to that side. Rows top:top+side, columns left:left+side; `angle` is the face's
    roll (0 without landmarks). A negative margin (> -0.5) crops tighter than the reference.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if margin < -0.5 + 1e-6:
        raise ValueError(f"margin must be > -0.5, got {margin}")
    cx, cy, size, angle = face.frame()
    side = max(1, min(round(size * (1.0 + 2.0 * margin)), width, height))
    theta = math.radians(angle)
    cx -= math.sin(theta) * shift_y * size  # the face's downward axis is (-sin, cos)
    cy += math.cos(theta) * shift_y * size
    return Square(_place(cy, side, height), _place(cx, side, width), side, angle)


def _place(center: float, side: int, limit: int) -> int:
    """Start of a `side`-long interval centred on `center`, moved inside [0, limit)."""
    start = math.floor(center - side / 2.0 + 0.5)
    return int(min(max(start, 0), limit - side))
