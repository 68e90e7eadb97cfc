"""Copies of a photo as sites and screenshots make them, with the truth kept: the crop, scale,
mirror, quarter turn, border and JPEG quality. Made with PIL alone (no deepshield code), so a
verification can be checked against them; used by bench/verify_copies.py and tests/test_verify.py.

Order, as `deepshield.locate` assumes it: crop, mirror, turn, resize, border, JPEG.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR, "lanczos": Image.Resampling.LANCZOS}
"""Resize filters sites use (PIL's, antialiased when shrinking); verify reproduces with bicubic."""
FILLS = ((255, 255, 255), (0, 0, 0), (32, 32, 36), (240, 240, 240))
"""Border colours of screenshots: white, black and dark or light app chrome."""
TRANSPOSE = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class Sharing:
    """One copy's making. `box` (x0, y0, x1, y1) of the original, x1/y1 exclusive (None: all of
    it); `rotation` degrees counter-clockwise after the mirror; `scale` copy px per original px;
    `border` px on every side, in `fill`; `quality` JPEG quality (None: PNG)."""

    box: tuple[int, int, int, int] | None = None
    mirrored: bool = False
    rotation: int = 0
    scale: float = 1.0
    border: int = 0
    fill: tuple[int, int, int] = (255, 255, 255)
    quality: int | None = None
    filter: str = "bicubic"

    def content(self, image: Image.Image) -> Image.Image:
        """The copy before border and JPEG: `image` cropped, mirrored, turned and resized."""
        part = image.convert("RGB").crop(self.box or (0, 0, image.width, image.height))
        if self.mirrored:
            part = part.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.rotation:
            part = part.transpose(TRANSPOSE[self.rotation])
        size = (max(1, round(part.width * self.scale)), max(1, round(part.height * self.scale)))
        return part.resize(size, FILTERS[self.filter]) if size != part.size else part

    def framed(self, image: Image.Image) -> Image.Image:
        """`content` in its border."""
        part = self.content(image)
        if not self.border:
            return part
        canvas = Image.new("RGB", (part.width + 2 * self.border, part.height + 2 * self.border), self.fill)
        canvas.paste(part, (self.border, self.border))
        return canvas

    def apply(self, image: Image.Image) -> bytes:
        """The copy's file: `framed`, as JPEG at `quality` (4:2:0) or PNG."""
        buffer = io.BytesIO()
        if self.quality is None:
            self.framed(image).save(buffer, format="PNG")
        else:
            self.framed(image).save(buffer, format="JPEG", quality=self.quality, subsampling="4:2:0")
        return buffer.getvalue()


def sample(width: int, height: int, rng: np.random.Generator, *, min_area: float = 0.2, max_border: float = 0.1) -> Sharing:
    """A random sharing of a `width` x `height` photo over the whole supported range: a crop of
    `min_area`-1 of the area with a random aspect ratio and place, scale 0.2-2 (log-uniform),
    mirror half the time, any quarter turn, a border of up to `max_border` of the copy's longer
    side half the time, JPEG 40-95 three times in four, a random resize filter."""
    area = rng.uniform(min_area, 1.0)
    share_w = math.exp(rng.uniform(math.log(area), 0.0))  # each side keeps at least `area` of the photo's
    share_h = area / share_w
    w, h = max(1, round(width * share_w)), max(1, round(height * share_h))
    x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    scale = math.exp(rng.uniform(math.log(0.2), math.log(2.0)))
    border = round(rng.uniform(0.01, max_border) * max(w, h) * scale) if rng.random() < 0.5 else 0
    return Sharing(
        box=(x0, y0, x0 + w, y0 + h),
        mirrored=bool(rng.random() < 0.5),
        rotation=int(rng.integers(0, 4)) * 90,
        scale=scale,
        border=border,
        fill=FILLS[int(rng.integers(len(FILLS)))],
        quality=int(rng.integers(40, 96)) if rng.random() < 0.75 else None,
        filter=list(FILTERS)[int(rng.integers(len(FILTERS)))],
    )


def gentle(rng: np.random.Generator) -> Sharing:
    """A copy that keeps the framing (scale 1, no crop, turn or mirror), as PNG or JPEG 90-95:
    where a plain (not framing-robust) protection can still be disrupted."""
    return Sharing(quality=int(rng.integers(90, 96)) if rng.random() < 0.5 else None)
