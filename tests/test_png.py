"""deepshield.png writes PNG files that independent decoders read back exactly."""

from __future__ import annotations

import io
import multiprocessing
import os
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from deepshield import png


def _perturbed_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with +-6 levels of noise, like a protected photo: uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    smooth = np.stack([ys * 200 // max(height, 1), xs * 200 // max(width, 1), (ys + xs) * 100 // max(height + width, 1)], axis=2)
    return np.clip(smooth + 20 + rng.integers(-6, 7, (height, width, 3)), 0, 255).astype(np.uint8)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of each chunk, checking every CRC."""
    assert data[:8] == png.SIGNATURE
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, payload = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0] == zlib.crc32(kind + payload)
        chunks.append((kind, payload))
        at += 12 + length
    return chunks


@pytest.mark.parametrize(
    ("channels", "dtype", "mode"),
    [(3, np.uint8, "RGB"), (4, np.uint8, "RGBA"), (None, np.uint8, "L"), (2, np.uint8, "LA"), (None, np.uint16, "I;16")],
)
def test_every_mode_decodes_to_the_same_pixels(channels, dtype, mode):
    rgb = _perturbed_photo(70, 53)
    pixels = rgb[:, :, 0] if channels is None else np.dstack([rgb, rgb])[:, :, :channels]
    if dtype is np.uint16:
        pixels = pixels.astype(np.uint16) * 257 + np.arange(pixels.size, dtype=np.uint16).reshape(pixels.shape) % 257
    with Image.open(io.BytesIO(png.encode(pixels))) as decoded:
        assert decoded.mode == mode
        assert np.array_equal(np.asarray(decoded), pixels)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 9, 3), (9, 1, 3), (3, 2, 1)])
def test_tiny_images_round_trip(shape):
    pixels = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    with Image.open(io.BytesIO(png.encode(pixels))) as decoded:
        assert np.array_equal(np.asarray(decoded).reshape(shape), pixels)


@pytest.mark.parametrize("workers", [1, 3, 8])
def test_parallel_bands_join_into_one_valid_stream(monkeypatch, workers):
    monkeypatch.setattr(png, "_workers", lambda: workers)
    pixels = _perturbed_photo(600, 500)  # 900 KB of rows: three bands of at least MIN_BAND_BYTES
    data = png.encode(pixels)
    chunks = _chunks(data)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    raw = zlib.decompress(chunks[1][1])  # checks the joined stream's adler32 too
    assert len(raw) == 600 * (1 + 500 * 3)
    with Image.open(io.BytesIO(data)) as decoded:
        assert np.array_equal(np.asarray(decoded), pixels)


def test_size_stays_near_pillows_level_6():
    pixels = _perturbed_photo(512, 512)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6)
    ours = len(png.encode(pixels))
    assert ours < pixels.nbytes * 0.7  # it does compress
    assert ours < 1.1 * len(buffer.getvalue())


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), "uint8 or uint16"),
        (np.zeros((4, 4, 5), np.uint8), r"\[H, W, 1..4\]"),
        (np.zeros((0, 4, 3), np.uint8), "not empty"),
        (np.zeros(4, np.uint8), r"\[H, W\]"),
    ],
)
def test_unsupported_arrays_are_refused(pixels, message):
    with pytest.raises(ValueError, match=message):
        png.encode(pixels)


def _encode_in_child(pixels: np.ndarray, expected: bytes, results) -> None:
    results.put(png.encode(pixels) == expected)


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="no fork on this platform")
def test_a_forked_worker_encodes_with_its_own_threads(monkeypatch):
    monkeypatch.setattr(png, "_workers", lambda: 3)
    png._pool.cache_clear()  # a pool of exactly 3 threads, made in this process
    pixels = _perturbed_photo(600, 500)
    expected = png.encode(pixels)
    barrier = threading.Barrier(3)
    list(png._pool().map(lambda _: barrier.wait(timeout=10), range(3)))  # the parent's pool: 3 threads, all idle; a child has none
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_encode_in_child, args=(pixels, expected, results))
    child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0, "the forked child hung or failed encoding"
    assert results.get(timeout=5) is True
