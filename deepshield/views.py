"""The threat model (DESIGN.md s.1b): what a deepfake maker does to a shared photo before the
generator sees it, as a seeded distribution of views, applied two ways.

A `View` is one draw: the sharing a site applies to the whole photo (JPEG, downscaling, blur),
then the maker's framing: a square of the photo (centre, side, in-plane rotation) resized to the
model's input with one of the common filters.

- Whole-image models: a square of side 0.5-1.0 of the photo's short side anywhere in it.
- Face models: each face's aligned model crop (`faces.crop_box`: levelled on its landmarks)
  jittered as another detector or aligner would frame it: side +-15%, centre shifted by +-10% of
  the side, rotated +-10 degrees around the face's own roll.

`render` applies a view the way the maker's tools do: PIL and OpenCV on the 8-bit photo, at its
own resolution (what the robustness report and the benchmarks measure with). `frame` applies it
differentiably in torch to an image tensor at any working scale (what the attack optimises
through); its sharing runs on the framed crop at the model's resolution (JPEG there is harsher
than the site's JPEG of the full photo), and its filters are torch's stand-ins for PIL's and
OpenCV's (`TORCH_FILTERS`). Draws come from a `torch.Generator` on the CPU, so a seed gives the
same views on every device; the attack and the measurements use independent seeds.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import Tensor

from deepshield import transforms
from deepshield.faces import Square

Box = tuple[int, int, int]
"""(top, left, side) of a square in the photo's pixels."""

RESIZE_FILTERS = ("pil-bilinear", "pil-bicubic", "pil-lanczos", "cv2-area", "cv2-linear", "cv2-cubic")
"""The filters a maker resizes a crop with: PIL's (antialiased when shrinking) and OpenCV's
(`INTER_AREA` averages, `INTER_LINEAR` / `INTER_CUBIC` are not antialiased)."""

_PIL_FILTERS = {"pil-bilinear": Image.Resampling.BILINEAR, "pil-bicubic": Image.Resampling.BICUBIC, "pil-lanczos": Image.Resampling.LANCZOS}
_CV2_FILTERS = {"cv2-area": cv2.INTER_AREA, "cv2-linear": cv2.INTER_LINEAR, "cv2-cubic": cv2.INTER_CUBIC}
TORCH_FILTERS: dict[str, tuple[str, bool]] = {
    "pil-bilinear": ("bilinear", True),
    "pil-bicubic": ("bicubic", True),
    "pil-lanczos": ("bicubic", True),
    "cv2-area": ("area", True),
    "cv2-linear": ("bilinear", False),
    "cv2-cubic": ("bicubic", False),
}
"""Differentiable stand-in of each filter: (torch interpolation mode, antialiased)."""

EVALUATION_SEED = 0x5EED_F00D
"""Seed offset of the measuring draws, so a report never measures on the views the attack drew
(the attack's views come from the protection's own seed)."""


@dataclass(frozen=True)
class View:
    """One draw of the threat model, in the photo's pixels.

    The site first applies `jpeg` (quality 1..100), `downscale` (factor of both sides) and `blur`
    (Gaussian sigma, px of the site's copy), each None when it does not; then the maker takes the
    square of side `side` centred at (`cy`, `cx`), rotated by `angle` degrees counter-clockwise,
    and resizes it to the model's input with `filter` (one of `RESIZE_FILTERS`).
    """

    cy: float
    cx: float
    side: float
    angle: float = 0.0
    filter: str = "pil-bilinear"
    jpeg: int | None = None
    downscale: float | None = None
    blur: float | None = None

    def box(self) -> Box:
        """The framing square (top, left, side) rounded to whole pixels (rotation left out)."""
        side = max(1, round(self.side))
        return round(self.cy - self.side / 2), round(self.cx - self.side / 2), side

    def describe(self) -> dict[str, object]:
        """JSON-ready fields: box, angle, filter and the sharing that applies."""
        sharing = {k: v for k, v in (("jpeg", self.jpeg), ("downscale", self.downscale), ("blur", self.blur)) if v is not None}
        return {"box": list(self.box()), "angle": round(self.angle, 2), "filter": self.filter, **sharing}


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


@dataclass(frozen=True, kw_only=True)
class ThreatModel:
    """The distribution of views. Ranges are (low, high); shares are probabilities per view."""

    crop: tuple[float, float] = (0.5, 1.0)
    """Whole-image models: side of the square as a share of the photo's short side."""
    face_scale: float = 0.15
    face_shift: float = 0.10
    face_angle: float = 10.0
    filters: tuple[str, ...] = RESIZE_FILTERS
    jpeg_share: float = 0.5
    jpeg_quality: tuple[int, int] = (50, 95)
    downscale_share: float = 0.2
    downscale: tuple[float, float] = (0.5, 0.9)
    blur_share: float = 0.1
    blur_sigma: tuple[float, float] = (0.5, 1.5)

    def framing_only(self) -> ThreatModel:
        """The same framings with no sharing before them."""
        return replace(self, jpeg_share=0.0, downscale_share=0.0, blur_share=0.0)

    def sample(self, height: int, width: int, count: int, generator: torch.Generator, faces: Sequence[Box] = (), first: int = 0) -> list[View]:
        """`count` views of a `height` x `width` photo: framings of the whole photo, or, with
        `faces` (each face's model crop), jittered framings of the faces in turn from face
        number `first` (modulo their count)."""
        views = []
        for index in range(first, first + count):
            if faces:
                top, left, side = faces[index % len(faces)]
                scale = 1 + _uniform(generator, -self.face_scale, self.face_scale)
                cy = top + side / 2 + side * _uniform(generator, -self.face_shift, self.face_shift)
                cx = left + side / 2 + side * _uniform(generator, -self.face_shift, self.face_shift)
                roll = turn_of(faces[index % len(faces)])  # faces.Square: the aligned face's roll
                side, angle = side * scale, roll + _uniform(generator, -self.face_angle, self.face_angle)
            else:
                short = min(height, width)
                side = max(1.0, round(short * _uniform(generator, *self.crop)))
                cy = side / 2 + (height - side) * float(torch.rand((), generator=generator))
                cx = side / 2 + (width - side) * float(torch.rand((), generator=generator))
                angle = 0.0
            filter_name = self.filters[int(torch.randint(len(self.filters), (), generator=generator))]
            jpeg = round(_uniform(generator, *self.jpeg_quality)) if _uniform(generator, 0, 1) < self.jpeg_share else None
            down = _uniform(generator, *self.downscale) if _uniform(generator, 0, 1) < self.downscale_share else None
            blur = _uniform(generator, *self.blur_sigma) if _uniform(generator, 0, 1) < self.blur_share else None
            views.append(View(cy, cx, side, angle, filter_name, jpeg, down, blur))
        return views


DEFAULT_THREAT_MODEL = ThreatModel()


def smallest_side(height: int, width: int, threat: ThreatModel, faces: Sequence[Box] = ()) -> float:
    """The smallest square (photo px) a view of this photo can take: what sets the scale the
    attack must work at."""
    if faces:
        return min(side for _, _, side in faces) * (1 - threat.face_scale)
    return min(height, width) * threat.crop[0]


# ----------------------------------------------------------------------------- real (measuring)


def share(rgb: np.ndarray, view: View) -> np.ndarray:
    """The site's copy: uint8 [H, W, 3] -> uint8 [h, w, 3] after the view's downscale (PIL
    bicubic), blur (PIL Gaussian) and JPEG (PIL, 4:2:0), in that order; `rgb` itself when the
    view shares nothing (no copy of a large photo per rendered view)."""
    if view.downscale is None and view.blur is None and view.jpeg is None:
        return rgb
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if view.downscale is not None:
        size = (max(1, round(image.width * view.downscale)), max(1, round(image.height * view.downscale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    if view.blur is not None:
        image = image.filter(ImageFilter.GaussianBlur(radius=view.blur))
    if view.jpeg is not None:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(view.jpeg), subsampling="4:2:0")
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def render(rgb: np.ndarray, view: View, size: int) -> np.ndarray:
    """The maker's model input for this view, made as their tools make it: uint8 [H, W, 3]
    (the shared photo's original) -> uint8 [size, size, 3]."""
    copy = share(rgb, view)
    scale = copy.shape[0] / rgb.shape[0]
    square = _upright_square(copy, view.cy * scale, view.cx * scale, view.side * scale, view.angle)
    if view.filter in _PIL_FILTERS:
        return np.asarray(Image.fromarray(square).resize((size, size), _PIL_FILTERS[view.filter]), dtype=np.uint8)
    return cv2.resize(square, (size, size), interpolation=_CV2_FILTERS[view.filter])


def _upright_square(rgb: np.ndarray, cy: float, cx: float, side: float, angle: float) -> np.ndarray:
    """The square of `side` px centred at (cy, cx), turned by `angle` degrees, at the photo's
    resolution (OpenCV bilinear warp, borders replicated, as face aligners do); a plain crop
    when it is upright and inside the photo."""
    n = max(1, round(side))
    top, left = round(cy - n / 2), round(cx - n / 2)
    height, width = rgb.shape[:2]
    if angle == 0 and top >= 0 and left >= 0 and top + n <= height and left + n <= width:
        return np.ascontiguousarray(rgb[top : top + n, left : left + n])
    # (cx, cy) are edge coordinates (pixel i spans [i, i + 1)); OpenCV's are pixel centres.
    matrix = cv2.getRotationMatrix2D((cx - 0.5, cy - 0.5), angle, 1.0)
    matrix[:, 2] += (n / 2 - cx, n / 2 - cy)
    return cv2.warpAffine(np.ascontiguousarray(rgb), matrix, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def turn_of(box: Box) -> float:
    """The in-plane turn (degrees) a square carries: a face's roll (`faces.Square.angle`), else 0."""
    return float(getattr(box, "angle", 0.0))


def moved(box: Box, top: int, left: int) -> Square:
    """The square `box` (same side and turn) with its first pixel at (top, left)."""
    return Square(top, left, box[2], turn_of(box))


def crop_square(rgb: np.ndarray, box: Box) -> np.ndarray:
    """The square `box` of an image [H, W, C] uint8, levelled by its turn (see `_upright_square`):
    [side, side, C]; a plain slice for an upright square inside the image."""
    top, left, side = box
    return _upright_square(rgb, top + side / 2, left + side / 2, side, turn_of(box))


def square_bounds(box: Box, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right): the pixels of a `height` x `width` photo that the square's
    crop reads (its own rows and columns when upright; a turned square's footprint, plus the one
    pixel bilinear sampling reaches beyond it, clipped to the photo)."""
    top, left, side = box
    angle = math.radians(turn_of(box))
    if angle == 0:
        return top, left, top + side, left + side
    half = side / 2 * (abs(math.cos(angle)) + abs(math.sin(angle))) + 1
    cy, cx = top + side / 2, left + side / 2
    return max(0, math.floor(cy - half)), max(0, math.floor(cx - half)), min(height, math.ceil(cy + half)), min(width, math.ceil(cx + half))


def square_mask(box: Box, top: int, left: int, height: int, width: int) -> Tensor:
    """Bool [height, width] over the window whose first pixel is (top, left) of the photo: True
    where the square's crop reads (see `square_bounds`)."""
    t, l, side = box
    angle = math.radians(turn_of(box))
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1) + top + 0.5 - (t + side / 2)
    cols = torch.arange(width, dtype=torch.float32).view(1, -1) + left + 0.5 - (l + side / 2)
    if angle == 0:
        return (rows.abs() < side / 2) & (cols.abs() < side / 2)
    # coordinates along the square's own axes (the inverse of its turn), one pixel of margin
    along = math.cos(angle) * cols + math.sin(angle) * rows
    across = -math.sin(angle) * cols + math.cos(angle) * rows
    return (along.abs() < side / 2 + 1) & (across.abs() < side / 2 + 1)


# ----------------------------------------------------------------------------- differentiable (attacking)


def crop_square_tensor(x: Tensor, box: Box, top: int = 0, left: int = 0) -> Tensor:
    """`crop_square` on a tensor [1, C, h, w] that holds the photo from pixel (top, left) on,
    differentiably: [1, C, side, side]."""
    t, l, side = box
    return _upright_square_tensor(x, t - top + side / 2, l - left + side / 2, side, turn_of(box))


def frame(x: Tensor, view: View, size: int, scale: float = 1.0) -> Tensor:
    """The view of image x [1, C, h, w] in [-1, 1] (C = 3, or 1 for a grayscale photo, expanded),
    differentiably: [1, 3, size, size]. `scale` maps the view's photo pixels to x's pixels (x is
    the photo at a working scale). The sharing runs after the framing, at the model's resolution."""
    x = x.expand(-1, 3, -1, -1)
    square = _upright_square_tensor(x, view.cy * scale, view.cx * scale, view.side * scale, view.angle)
    mode, antialias = TORCH_FILTERS[view.filter]
    side = square.shape[-1]
    if mode == "area" and side > size:
        framed = F.adaptive_avg_pool2d(square, size)
    elif mode == "area":
        framed = F.interpolate(square, size=(size, size), mode="bilinear", align_corners=False)
    else:
        framed = F.interpolate(square, size=(size, size), mode=mode, align_corners=False, antialias=antialias and side > size)
    framed = framed.clamp(-1, 1)
    if view.downscale is not None:
        small = max(1, round(size * view.downscale))
        framed = F.interpolate(framed, size=(small, small), mode="bicubic", align_corners=False, antialias=True)
        framed = F.interpolate(framed, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
    if view.blur is not None:
        sigma = max(0.3, view.blur * size / max(view.side, 1.0))
        framed = transforms.GaussianBlur(sigma)(framed)
    if view.jpeg is not None:
        framed = transforms.jpeg(framed, float(view.jpeg))
    return framed


def _upright_square_tensor(x: Tensor, cy: float, cx: float, side: float, angle: float) -> Tensor:
    """`_upright_square` on a tensor [1, C, h, w], differentiable (slicing, or a bilinear
    `grid_sample` with replicated borders)."""
    n = max(1, round(side))
    top, left = round(cy - n / 2), round(cx - n / 2)
    height, width = x.shape[-2:]
    if angle == 0 and top >= 0 and left >= 0 and top + n <= height and left + n <= width:
        return x[:, :, top : top + n, left : left + n]
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    # Output pixel centre (u, v) from the square's centre samples the photo at centre + R^-1 (u, v),
    # R the turn of cv2.getRotationMatrix2D (counter-clockwise on screen, y axis down), in edge
    # coordinates, which grid_sample's align_corners=False maps to [-1, 1].
    offsets = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2).to(x.device)
    v, u = torch.meshgrid(offsets, offsets, indexing="ij")
    px = cx + cos * u - sin * v
    py = cy + sin * u + cos * v
    grid = torch.stack([px / width * 2 - 1, py / height * 2 - 1], dim=-1).unsqueeze(0)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def working_scale(height: int, width: int, model_size: int, threat: ThreatModel, faces: Sequence[Box] = (), ratio: float = 0.75) -> float:
    """The scale (<= 1) of the photo at which a view's smallest square is `ratio` x the model's
    input in pixels: detail finer than that is lost to every view's resize anyway."""
    return min(1.0, ratio * model_size / smallest_side(height, width, threat, faces))
