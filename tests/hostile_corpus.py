"""A corpus of bad and unusual inputs, generated in code (small, deterministic, no files on disk).

Each `Kind` is one file a user could hand to an entry point: its name (the test id), the file
name it is uploaded under (unicode and control characters included where that is the point),
its bytes and what must happen:

- "ok": unusual but valid; it must be processed (16-bit, CMYK, palette + transparency, first
  frame of an animation, first page of a TIFF, odd EXIF, odd names, ...);
- "refused": a clear refusal whose message matches `message` (a regular expression), no crash.

Archives (`archive=True`) are meant for the batch entry points, where `expect` applies; a single
photo entry point refuses every archive as not an image. `server_expect` overrides `expect` on
the web entry points, which also enforce MAX_IMAGE_DIMENSION (the CLI has no such limit).
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
from PIL import Image

from tests.conftest import encoded, noise

Expectation = Literal["ok", "refused"]

NOT_AN_IMAGE = r"not a recognised image format"
CORRUPT = r"truncated or corrupt"
TOO_BIG = r"decompression bomb|megapixels|px is above|pixels is larger"
BATCH_LIMIT = 24  # the MAX_BATCH_SIZE the tests serve with
SERVER_MAX_SIDE = 4096  # the default MAX_IMAGE_DIMENSION


@dataclass(frozen=True)
class Kind:
    name: str
    filename: str
    data: bytes
    expect: Expectation
    message: str = ""
    archive: bool = False
    server_expect: Expectation | None = None
    size: tuple[int, int] | None = None  # (width, height) of the processed photo, for "ok" images
    outputs: int = 0  # images a batch must produce from an "ok" archive

    def single(self, *, server: bool) -> tuple[Expectation, str]:
        """(expectation, refusal pattern) where one photo is expected: the CLI (`server` False),
        Gradio /protect and REST /protect/image. Archives are not photos there."""
        if self.archive:
            return "refused", NOT_AN_IMAGE
        return (self.server_expect or self.expect) if server else self.expect, self.message


# ------------------------------------------------------------------------------ building blocks


def photo(width: int = 40, height: int = 32, fmt: str = "PNG", seed: int = 0, **options: object) -> bytes:
    return encoded(Image.fromarray(noise(width, height, seed)), fmt, **options)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    """A PNG from its parts: IHDR as given, one IDAT (already compressed), IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims `width` x `height` (the pixel data stays one pixel)."""
    return raw_png(width, height, 8, 2, zlib.compress(b"\0\0\0\0"))


def deflate_bomb_png(side: int) -> bytes:
    """A genuine 1-bit `side` x `side` black PNG: tens of KB that inflate to side^2 / 8 bytes."""
    row = b"\0" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    block = row * 1000
    parts = [compressor.compress(block) for _ in range(side // 1000)]
    parts += [compressor.compress(row * (side % 1000)), compressor.flush()]
    return raw_png(side, side, 1, 0, b"".join(parts))


def png16_rgb(width: int, height: int) -> bytes:
    """48-bit RGB (16 bits per channel), which PIL reads as 8-bit RGB."""
    values = (noise(width, height, seed=5).astype(">u2") * 257).tobytes()
    stride = width * 6
    rows = b"".join(b"\0" + values[y * stride : (y + 1) * stride] for y in range(height))
    return raw_png(width, height, 16, 2, zlib.compress(rows))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small baseline JPEG whose frame header (SOF0) claims `width` x `height`."""
    data = bytearray(photo(16, 16, "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    """A 1x1 GIF whose logical screen claims `width` x `height`."""
    data = bytearray(encoded(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def jpeg_with_app1(payload: bytes) -> bytes:
    """A valid JPEG with an extra APP1 segment (`payload`, e.g. a malformed EXIF block)."""
    data = photo(24, 40, "JPEG", seed=3)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def exif_with_mistyped_tag() -> bytes:
    """Orientation 6 (rotate to upright) next to an XResolution stored as text instead of a
    rational: PIL reads it, but cannot write that EXIF back (ImageOps.exif_transpose does)."""
    entries = struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">HHI", 0x011A, 2, 4) + b"abc\0"
    return jpeg_with_app1(b"Exif\0\0MM\0\x2a" + struct.pack(">IH", 8, 2) + entries + struct.pack(">I", 0))


def palette_with_transparency() -> bytes:
    image = Image.fromarray(noise(30, 30, seed=7)).quantize(16)
    return encoded(image, "PNG", transparency=0)


def animated(fmt: str) -> bytes:
    """Three frames of different colours and the same size."""
    frames = [Image.fromarray(np.full((24, 36, 3), value, dtype=np.uint8)) for value in (40, 140, 240)]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def multipage_tiff() -> bytes:
    first, second = Image.fromarray(noise(40, 30, seed=1)), Image.fromarray(noise(20, 50, seed=2))
    return encoded(first, "TIFF", save_all=True, append_images=[second])


def zip_of(entries: list[tuple[str | zipfile.ZipInfo, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as bundle:
        for name, data in entries:
            bundle.writestr(name, data)
    return buffer.getvalue()


def zip_bomb(megabytes: int) -> bytes:
    """One `bomb.png` entry of `megabytes` MB of zeros, deflated to a few tens of KB."""
    buffer, block = io.BytesIO(), b"\0" * 2**20
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as bundle, bundle.open("bomb.png", "w") as entry:
        for _ in range(megabytes):
            entry.write(block)
    return buffer.getvalue()


def _patch_entries(data: bytes, local: dict[int, bytes], central: dict[int, bytes]) -> bytes:
    """Overwrite fields (offset -> bytes) of every local file header and central directory entry."""
    patched = bytearray(data)
    for signature, fields in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        start = patched.find(signature)
        while start >= 0:
            for offset, value in fields.items():
                patched[start + offset : start + offset + len(value)] = value
            start = patched.find(signature, start + 4)
    return bytes(patched)


def lying_zip_bomb(megabytes: int) -> bytes:
    """A zip bomb whose headers declare a 1 KB entry: the extractor must not trust them either."""
    small = struct.pack("<I", 1024)
    return _patch_entries(zip_bomb(megabytes), local={22: small}, central={24: small})


def encrypted_zip() -> bytes:
    """A zip whose entry has the 'encrypted' flag set (stdlib zipfile cannot write real ones)."""
    flag = struct.pack("<H", 1)
    return _patch_entries(zip_of([("secret.png", photo())], zipfile.ZIP_STORED), local={6: flag}, central={8: flag})


def symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix: external_attr holds st_mode
    info.external_attr = 0o120777 << 16  # a symbolic link
    return info, target.encode()


# ------------------------------------------------------------------------------ the corpus


@cache
def corpus() -> tuple[Kind, ...]:
    """Every kind, built once per process (about 2 MB in all)."""
    png = photo()
    jpeg = photo(40, 32, "JPEG")
    bad_exif = Image.Exif()
    bad_exif[0x0112] = 42  # orientation tags go from 1 to 8
    small_png = photo(12, 10, seed=9)
    return (
        # not images at all
        Kind("empty", "empty.png", b"", "refused", r"empty|at least 1 character"),
        Kind("random_bytes", "random.jpg", np.random.default_rng(1).bytes(4096), "refused", NOT_AN_IMAGE),
        Kind("text_named_png", "notes.png", b"just some text, not pixels\n" * 20, "refused", NOT_AN_IMAGE),
        Kind("svg", "face.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40"><circle r="9"/></svg>', "refused", NOT_AN_IMAGE),
        Kind("html", "page.html", b"<!doctype html><html><body><script>alert(1)</script></body></html>", "refused", NOT_AN_IMAGE),
        Kind("pdf", "scan.pdf", encoded(Image.new("RGB", (20, 20), "white"), "PDF"), "refused", NOT_AN_IMAGE),
        Kind("eps_needs_ghostscript", "figure.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "refused", NOT_AN_IMAGE),
        Kind("html_in_name", "<img src=x onerror=alert(1)>.png", b"<b>not an image</b>", "refused", NOT_AN_IMAGE),
        Kind("control_characters_in_refused_name", "evil\n\x1b[2Jname.png", b"not an image either", "refused", NOT_AN_IMAGE),
        # damaged images
        Kind("truncated_png", "cut.png", photo(64, 64)[:1500], "refused", CORRUPT),
        Kind("truncated_jpeg", "cut.jpg", photo(64, 64, "JPEG")[:600], "refused", CORRUPT),
        Kind("corrupt_png_data", "garbled.png", raw_png(16, 16, 8, 2, b"\x78\x9c" + b"\xff" * 64), "refused", CORRUPT),
        Kind("zero_width_png", "flat.png", png_claiming(0, 10), "refused", NOT_AN_IMAGE),
        # too large, or claiming to be
        Kind("png_header_bomb", "bomb.png", png_claiming(30000, 30000), "refused", TOO_BIG),
        Kind("png_deflate_bomb", "deflate-bomb.png", deflate_bomb_png(20000), "refused", TOO_BIG),
        Kind("jpeg_header_bomb", "bomb.jpg", jpeg_claiming(65000, 65000), "refused", TOO_BIG),
        Kind("gif_header_bomb", "bomb.gif", gif_claiming(65535, 65535), "refused", TOO_BIG),
        Kind("wider_than_servers_take", "panorama.png", photo(SERVER_MAX_SIDE + 900, 1), "ok", TOO_BIG,
             server_expect="refused", size=(SERVER_MAX_SIDE + 900, 1)),
        # unusual but valid
        Kind("one_pixel", "dot.png", photo(1, 1), "ok", size=(1, 1)),
        Kind("one_pixel_wide_strip", "strip.png", photo(1, 2000), "ok", size=(1, 2000)),
        Kind("png_16bit_gray", "deep.png", encoded(Image.fromarray(noise(30, 20, seed=4, channels=1).astype(np.uint16) * 257), "PNG"), "ok",
             size=(30, 20)),
        Kind("png_16bit_rgb", "deep-rgb.png", png16_rgb(28, 20), "ok", size=(28, 20)),
        Kind("cmyk_jpeg", "print.jpg", encoded(Image.fromarray(noise(40, 30, seed=6)).convert("CMYK"), "JPEG"), "ok", size=(40, 30)),
        Kind("palette_with_transparency", "sticker.png", palette_with_transparency(), "ok", size=(30, 30)),
        Kind("animated_gif", "loop.gif", animated("GIF"), "ok", size=(36, 24)),
        Kind("animated_png", "loop-apng.png", animated("PNG"), "ok", size=(36, 24)),
        Kind("multipage_tiff", "scan.tiff", multipage_tiff(), "ok", size=(40, 30)),
        Kind("jpeg_named_png", "photo.png", jpeg, "ok", size=(40, 32)),
        Kind("no_extension", "snapshot", png, "ok", size=(40, 32)),
        Kind("png_zip_polyglot", "polyglot.png", png + zip_of([("index.html", b"<script>alert(1)</script>")]), "ok", size=(40, 32)),
        Kind("jpeg_script_comment", "comment.jpg", photo(40, 32, "JPEG", comment=b"<script>alert(1)</script>"), "ok", size=(40, 32)),
        Kind("exif_invalid_orientation", "tilted.jpg", photo(24, 40, "JPEG", seed=3, exif=bad_exif), "ok", size=(24, 40)),
        Kind("exif_garbage", "garbled-exif.jpg", jpeg_with_app1(b"Exif\0\0MM\0\x2a\xff\xff\xff\xf0" + b"\xee" * 40), "ok", size=(24, 40)),
        Kind("exif_ifd_loop", "loop-exif.jpg", jpeg_with_app1(b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\x08"), "ok",
             size=(40, 24)),
        Kind("exif_mistyped_tag", "mistyped-exif.jpg", exif_with_mistyped_tag(), "ok", size=(40, 24)),
        Kind("unicode_name", "портрет 照片 🙂 \u202egnp.png", png, "ok", size=(40, 32)),
        Kind("control_characters_in_name", "tab\there\x1b[31mred\x07.png", png, "ok", size=(40, 32)),
        Kind("undecodable_name", "caf\udce9.png", png, "ok", size=(40, 32)),  # b"caf\xe9.png": Latin-1, not UTF-8
        Kind("very_long_name", "é" * 125 + ".png", png, "ok", size=(40, 32)),
        # archives (batch entry points)
        Kind("zip_slip", "slip.zip", zip_of([("../../evil.png", small_png), ("/abs/evil-abs.png", small_png), ("..\\..\\evil-win.png", small_png)]),
             "ok", archive=True, outputs=3),
        Kind("zip_symlink", "link.zip", zip_of([symlink_entry("passwd.png", "/etc/passwd")]), "refused", r"no photos", archive=True),
        Kind("zip_bomb", "bomb.zip", zip_bomb(64), "refused", r"MB limit", archive=True),
        Kind("zip_bomb_lying_sizes", "liar.zip", lying_zip_bomb(64), "refused", r"cannot be extracted", archive=True),
        Kind("zip_thousands_of_images", "many.zip", zip_of([(f"img-{i:04}.png", small_png) for i in range(3000)]), "refused", r"too many images",
             archive=True),
        Kind("zip_thousands_of_other_files", "mostly-text.zip", zip_of([(f"note-{i:04}.txt", b"x") for i in range(3000)] + [("face.png", small_png)]),
             "ok", archive=True, outputs=1),
        Kind("nested_zip", "nested.zip", zip_of([("inner.zip", zip_of([("a.png", small_png)]))]), "refused", r"zips inside a zip are not opened", archive=True),
        Kind("encrypted_zip", "locked.zip", encrypted_zip(), "refused", r"is encrypted; password-protected zips are not supported", archive=True),
        Kind("truncated_zip", "cut.zip", zip_of([("a.png", png)], zipfile.ZIP_STORED)[:400], "refused", r"not a readable zip", archive=True),
        Kind("zip_odd_entry_names", "odd-names.zip",
             zip_of([("фото 1.png", small_png), ("bell\x07\ttab.png", small_png), ("<b>bold</b>.png", small_png), ("CON.png", small_png),
                     ("photo\u202egnp.png", small_png)]),
             "ok", archive=True, outputs=5),
        Kind("zip_longest_names_twice", "long-names.zip", zip_of([("a/" + "n" * 251 + ".png", small_png), ("b/" + "n" * 251 + ".png", small_png)]),
             "ok", archive=True, outputs=2),
    )


def kinds(*, archive: bool | None = None) -> list[Kind]:
    return [k for k in corpus() if archive is None or k.archive == archive]
