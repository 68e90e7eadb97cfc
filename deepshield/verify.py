"""Is a protected photo still protected after it was shared? Compare deepfakes of the shared copy
with deepfakes of the original shared the same way.

A shared copy has been recompressed, and often cropped, resized, mirrored, turned or framed by the
site or the screenshot it went through. `deepshield.locate` finds that framing (the box of the
original the copy shows, its scale, mirror, quarter turn and border). What the perturbation still
does is measured against a *baseline*: the unprotected original taken through the same treatment,
as far as the shared file tells it: the located framing (`locate.frame`: lossless crop, mirror and
turn, then PIL bicubic resize and the border's colour) and, when the shared file is a JPEG, its
very quantisation tables and chroma subsampling. Models then see the same squares (faces found on
the baseline) in both.

- `mse`: deepfake(shared) vs deepfake(baseline), on [-1, 1]; `disrupted` when above
  `metrics.DISRUPTION_THRESHOLD`. This is the number that says whether the protection survived.
- `mse_vs_clean`: deepfake(shared) vs deepfake(original at the shared size, not recompressed).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, JpegImagePlugin

from deepshield import imaging
from deepshield.locate import Location, frame
from deepshield.transforms import quantization_tables


@dataclass(frozen=True)
class SharedCopy:
    """What the shared file says about how it was made: its pixels, and its JPEG encoding."""

    photo: imaging.Photo
    format: str | None
    qtables: dict[int, list[int]] | None  # JPEG quantisation tables, natural order
    subsampling: int | None  # PIL's code: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0

    @property
    def jpeg_quality(self) -> int | None:
        """The IJG quality (1..100) whose luminance table is closest to the file's, if a JPEG."""
        if not self.qtables or 0 not in self.qtables:
            return None
        luma = torch.tensor(list(self.qtables[0]), dtype=torch.float32).view(1, 8, 8)
        candidates = quantization_tables(torch.arange(1, 101, dtype=torch.float32))[0]
        return int(torch.argmin((candidates - luma).abs().flatten(1).sum(1)).item()) + 1


@dataclass(frozen=True)
class ModelCheck:
    """One model's verdict on the shared copy, averaged over the squares it sees (faces).

    Deepfakes are of the first square and first target, for showing side by side."""

    model: str
    mse: float
    l1: float
    disrupted: bool
    mse_vs_clean: float
    faces: list[dict[str, Any]]  # faces.FaceBox.as_dict(): box, score, landmarks
    deepfake_baseline: Image.Image = field(repr=False)
    deepfake_shared: Image.Image = field(repr=False)

    def report(self) -> dict[str, Any]:
        return {"model": self.model, "mse": self.mse, "l1": self.l1, "disrupted": self.disrupted, "mse_vs_clean": self.mse_vs_clean, "faces": self.faces}


@dataclass(frozen=True)
class VerifyResult:
    """`header` (see `describe`) and one `ModelCheck` per model."""

    header: dict[str, Any]
    checks: list[ModelCheck]

    @property
    def protected(self) -> bool:
        """Every model's deepfake of the shared copy is still disrupted."""
        return all(c.disrupted for c in self.checks)

    def report(self) -> dict[str, Any]:
        return {**self.header, "protected": self.protected, "models": [c.report() for c in self.checks]}


def read_shared(source: str | os.PathLike[str] | bytes, name: str | None = None) -> SharedCopy:
    """Decode a shared copy (path or bytes) and keep its JPEG tables when it is a JPEG."""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        name = name or Path(source).name
        data = imaging.read_file(source, name)
    photo = imaging.load_photo(data, name=name)  # raises InvalidImageError for a bad file
    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format
        if fmt == "JPEG":
            tables = {int(k): list(v) for k, v in image.quantization.items()}
            return SharedCopy(photo, fmt, tables, JpegImagePlugin.get_sampling(image))
    return SharedCopy(photo, fmt, None, None)


def baseline(original: imaging.Photo, shared: SharedCopy, location: Location) -> tuple[np.ndarray, np.ndarray]:
    """(original taken through the located framing, that image also encoded as the shared JPEG
    was) as uint8 [h, w, 3] each, the shared copy's size; the second equals the first when the
    shared copy is not a JPEG."""
    framed = frame(original.rgb, location)
    if shared.format != "JPEG" or not shared.qtables:
        return framed, framed
    image = Image.fromarray(framed)
    if shared.photo.grayscale:  # a one-component JPEG: its single table is for luma
        image = image.convert("L")
    buffer = io.BytesIO()
    options: dict[str, Any] = {"qtables": shared.qtables}
    if shared.subsampling is not None and shared.subsampling >= 0:
        options["subsampling"] = shared.subsampling
    image.save(buffer, format="JPEG", **options)
    return framed, imaging.decode_rgb(buffer.getvalue())


def describe(original: imaging.Photo, shared: SharedCopy, location: Location) -> dict[str, Any]:
    """The report header: sizes, where the copy sits in the original (`located`, see
    `Location.as_dict`) and what the shared file says about its treatment."""
    (ow, oh), (sw, sh) = original.size, shared.photo.size
    return {
        "original": {"name": original.name, "width": ow, "height": oh},
        "shared": {"name": shared.photo.name, "width": sw, "height": sh, "format": shared.format, "jpeg_quality": shared.jpeg_quality},
        "located": location.as_dict(),
        "scale": round(location.scale, 4),
        "baseline": "the original taken through the located crop, mirror, turn, scale and border"
        + (", encoded with the shared file's JPEG tables" if shared.format == "JPEG" and shared.qtables else ""),
    }


def located_in_words(located: dict[str, Any]) -> str:
    """Where the copy sits in the original, in words: box, scale, mirror, turn, border."""
    x0, y0, x1, y1 = located["box"]
    words = [f"shows ({x0}, {y0})-({x1}, {y1}) of the original at scale {located['scale']:g}"]
    if located["mirrored"]:
        words.append("mirrored")
    if located["rotation"]:
        words.append(f"turned {located['rotation']} deg")
    if any(located["border"]):
        words.append("in a border of {}/{}/{}/{} px".format(*located["border"]))
    return ", ".join(words)
