"""Decode and validate photos, convert to and from tensors, preprocess, write files."""

from __future__ import annotations

import io
import math
import os
import struct
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from deepshield import png
from deepshield.errors import InvalidImageError

DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels; a decompression bomb claims far more
# The formats a photo is read from. Every other PIL plugin stays off: EPS would run Ghostscript,
# and exotic decoders are attack surface no photo needs.
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")  # JPEG includes multi-picture (MPO) files
INPUT_FORMATS_TEXT = "PNG, JPEG, WebP, TIFF, BMP or GIF"
LOSSLESS_FORMATS = {"PNG", "TIFF", "BMP", "WEBP_LOSSLESS"}
_FORMAT_BY_SUFFIX = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


def max_pixels() -> int:
    return int(os.environ.get("DEEPSHIELD_MAX_PIXELS", DEFAULT_MAX_PIXELS))


GRAY_MODES = ("L", "LA", "I;16")


@dataclass(frozen=True)
class Photo:
    """A decoded, upright photo: `rgb` uint8 [H, W, 3], `alpha` uint8 [H, W] or None.

    `mode` is the mode the protected photo is written back in: "RGB", "RGBA", "L" (grayscale),
    "LA" (grayscale + alpha) or "I;16" (16-bit grayscale; `wide` then holds the input's
    uint16 [H, W] values, and `rgb` their 8-bit rounding round(v / 257)).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    name: str
    mode: str = "RGB"
    wide: np.ndarray | None = None

    @property
    def grayscale(self) -> bool:
        return self.mode in GRAY_MODES

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.rgb.shape[1], self.rgb.shape[0]


def load_photo(source: str | os.PathLike[str] | bytes | Image.Image | Photo, name: str | None = None) -> Photo:
    """Decode a path, raw bytes or PIL image into an upright RGB photo (+ alpha if it has one);
    a Photo (already decoded) is returned as it is.

    Raises InvalidImageError for empty, truncated, non-image or oversized inputs.
    """
    if isinstance(source, Photo):
        return source
    if isinstance(source, Image.Image):
        return _from_pil(source, name or "image")
    if isinstance(source, (bytes, bytearray)):
        data, label = bytes(source), name or "upload"
    else:
        label = name or Path(source).name
        data = read_file(source, label)
    if not data:
        raise InvalidImageError(f"{label}: the file is empty (0 bytes)")
    limit = max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
            width, height = image.size
            if width * height > limit:
                raise InvalidImageError(
                    f"{label}: {width}x{height} is {width * height / 1e6:.0f} megapixels, above the limit of "
                    f"{limit / 1e6:.0f} (a decompression bomb or an unusually large photo; set DEEPSHIELD_MAX_PIXELS to raise it)"
                )
            image.load()
    except InvalidImageError:
        raise
    except UnidentifiedImageError:
        raise InvalidImageError(f"{label}: not a recognised image format ({INPUT_FORMATS_TEXT})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImageError(f"{label}: image dimensions exceed the safety limit (possible decompression bomb)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"{label}: the image data is truncated or corrupt ({str(exc).strip() or type(exc).__name__})") from None
    return _from_pil(image, label)


def read_file(path: str | os.PathLike[str], label: str | None = None) -> bytes:
    """The bytes of an input file; InvalidImageError (named `label`, default the file name) when
    it is missing, a directory or unreadable."""
    label = label or Path(path).name
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidImageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise InvalidImageError(f"{label}: is a directory, not an image") from None
    except OSError as exc:
        raise InvalidImageError(f"{label}: cannot be read ({exc.strerror})") from None


# EXIF orientation -> the transposition that makes the photo upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What PIL raises on malformed EXIF data.
_EXIF_ERRORS = (OSError, ValueError, SyntaxError, TypeError, KeyError, IndexError, struct.error)


def upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF orientation says. Only the orientation tag is read: unlike
    ImageOps.exif_transpose nothing is re-encoded, so malformed EXIF elsewhere cannot fail the
    photo; unreadable or invalid orientations leave it as stored."""
    try:
        orientation = image.getexif().get(0x0112)
    except _EXIF_ERRORS:
        return image
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(method) if method is not None else image


def _from_pil(image: Image.Image, label: str) -> Photo:
    if image.width == 0 or image.height == 0:
        raise InvalidImageError(f"{label}: the image has zero width or height")
    image = upright(image)
    alpha, wide = None, None
    gray = image.mode in ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = np.asarray(image.convert("RGBA").getchannel("A"), dtype=np.uint8).copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.int64)
        if image.mode != "I" or values.max() > 255:  # 16-bit samples (mode "I": 8-bit data in 32-bit ints otherwise)
            wide = np.clip(values, 0, 65535).astype(np.uint16)
            gray8 = np.round(wide / 257.0).astype(np.uint8)
        else:
            gray8 = np.clip(values, 0, 255).astype(np.uint8)
        rgb = np.repeat(gray8[:, :, None], 3, axis=2)
    else:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if wide is not None:
        mode = "I;16"
    elif gray:
        mode = "LA" if alpha is not None else "L"
    else:
        mode = "RGBA" if alpha is not None else "RGB"
    return Photo(rgb=rgb, alpha=alpha, name=label, mode=mode, wide=wide)


def to_tensor(rgb: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """uint8 [H, W, 3] -> float32 [1, 3, H, W] in [-1, 1] on `device` (the bytes travel, not
    the floats)."""
    if not rgb.flags.writeable:  # e.g. np.asarray(PIL image): torch wants memory it may write
        rgb = rgb.copy()
    return torch.from_numpy(rgb).to(device).permute(2, 0, 1).unsqueeze(0).float().div(127.5).sub(1.0)


def to_uint8(x: Tensor) -> np.ndarray:
    """[1, 3, H, W] or [3, H, W] in [-1, 1] -> uint8 [H, W, 3] (rounded on x's device)."""
    x = x.detach().float()
    if x.dim() == 4:
        x = x[0]
    return ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def center_square(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of the largest centred square."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def center_crop_resize(x: Tensor, size: int) -> Tensor:
    """Differentiable preprocessing: largest centred square, bilinear antialiased resize.

    x [B, C, H, W] -> [B, C, size, size]; gradients flow back to the full-resolution input.
    """
    top, left, side = center_square(x.shape[2], x.shape[3])
    crop = x[:, :, top : top + side, left : left + side]
    if side == size:
        return crop
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)


def quantize_within_budget(original: np.ndarray, adversarial: Tensor, epsilon: float) -> np.ndarray:
    """Round the adversarial image to 8 bits without leaving the L-inf budget.

    original uint8 [H, W, 3]; adversarial [1, 3, H, W] in [-1, 1]; epsilon on [-1, 1].
    Rounding alone can overshoot by half a level, so the result is clamped to
    original +- floor(epsilon * 127.5) levels (0.05 -> 6 levels of 255).
    """
    levels = math.floor(epsilon * 127.5 + 1e-9)
    rounded = to_uint8(adversarial).astype(np.int16)
    base = original.astype(np.int16)
    return np.clip(rounded, base - levels, base + levels).clip(0, 255).astype(np.uint8)


def output_format(path: str | os.PathLike[str]) -> str:
    """Image format implied by a file name; PNG when the suffix names none."""
    return _FORMAT_BY_SUFFIX.get(Path(path).suffix.lower(), "PNG")


def as_photo_mode(rgb: np.ndarray, like: Photo) -> Image.Image:
    """Protected pixels uint8 [H, W, 3] as an image in the mode of the photo they came from.

    Grayscale photos (whose perturbation is gray, R = G = B) take the first channel; alpha is
    re-attached unchanged; 16-bit photos keep their full precision: the 8-bit perturbation is
    added in 16-bit units (x 257), so that the 8-bit rounding of the result is exactly `rgb`.
    """
    if like.mode == "I;16" and like.wide is not None:
        delta = rgb[:, :, 0].astype(np.int32) - np.round(like.wide / 257.0).astype(np.int32)
        return Image.fromarray(np.clip(like.wide.astype(np.int32) + 257 * delta, 0, 65535).astype(np.uint16))
    if like.grayscale:
        gray = Image.fromarray(np.ascontiguousarray(rgb[:, :, 0]), mode="L")
        return Image.merge("LA", (gray, Image.fromarray(like.alpha, mode="L"))) if like.alpha is not None else gray
    if like.alpha is not None:
        return Image.fromarray(np.dstack([rgb, like.alpha]), mode="RGBA")
    return Image.fromarray(rgb, mode="RGB")


# What each format can store: the photo's mode is lowered to the nearest one the format has.
_FORMAT_MODES = {
    "PNG": ("RGB", "RGBA", "L", "LA", "I;16"),
    "TIFF": ("RGB", "RGBA", "L", "LA", "I;16"),
    "WEBP": ("RGB", "RGBA"),
    "JPEG": ("RGB", "L"),
    "BMP": ("RGB", "L"),
}


def encode(rgb: np.ndarray, like: Photo, fmt: str = "PNG") -> bytes:
    """Encode protected pixels uint8 [H, W, 3] in the mode of photo `like` (see `as_photo_mode`)
    as PNG (`deepshield.png`'s parallel encoder), JPEG (quality 95, no chroma subsampling), WebP
    (lossless), TIFF or BMP. A mode the format cannot store is lowered: 16-bit -> 8-bit, alpha
    dropped, grayscale -> RGB for WebP."""
    image = as_photo_mode(rgb, like)
    allowed = _FORMAT_MODES.get(fmt, ("RGB",))
    if image.mode not in allowed:
        for fallback in {"I;16": ("L", "RGB"), "LA": ("L", "RGB"), "RGBA": ("RGB",), "L": ("RGB",)}[image.mode]:
            if fallback in allowed:
                image = Image.fromarray(np.ascontiguousarray(rgb[:, :, 0]), mode="L") if fallback == "L" else Image.fromarray(rgb, mode="RGB")
                break
    if fmt == "PNG":
        return png.encode(np.asarray(image))
    buffer = io.BytesIO()
    options = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"lossless": True}}
    image.save(buffer, format=fmt, **options.get(fmt, {}))
    return buffer.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    """The RGB pixels of an encoded file we wrote (uint8 [H, W, 3]), decoded as `load_photo`
    decodes inputs (16-bit samples rounded to 8 bits, not clipped)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return _from_pil(image, "output").rgb


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes under a temporary name, then rename: no half-written output on a crash. The
    temporary name is short and unique, so any name that fits the file system can be written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{uuid.uuid4().hex}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
