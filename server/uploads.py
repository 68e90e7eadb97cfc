"""Files uploaded to the web entry points: size limits, zip archives (no zip-slip), output names.

Nothing here decodes pixels beyond reading an image header; the engine validates the image
itself and reports what is wrong with it.
"""

from __future__ import annotations

import stat
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from deepshield.errors import InvalidImageError, InvalidParameterError
from server.settings import Settings

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
NAME_MAX_BYTES = 200  # a kept name, leaving room for suffixes such as ".protected.png" (255 bytes)


@dataclass(frozen=True)
class Upload:
    """A file the server may read (`path`) and the name the user gave it (a base name)."""

    path: Path
    name: str


def base_name(name: str) -> str:
    """The last component of a user-supplied file name: never absolute, never `..`, never a
    directory. Control, bidi and other unprintable characters and `:` become `_`, and a name
    over NAME_MAX_BYTES (UTF-8) loses the end of its stem, keeping its suffix."""
    last = PurePosixPath(str(name).replace("\\", "/")).name
    clean = "".join(c if c.isprintable() and c != ":" else "_" for c in last).strip()
    if len(clean.encode()) <= NAME_MAX_BYTES:
        return clean
    stem, suffix = Path(clean).stem, Path(clean).suffix
    suffix = suffix if len(suffix.encode()) <= 16 else ""
    while len(f"{stem}{suffix}".encode()) > NAME_MAX_BYTES:
        stem = stem[:-1]
    return f"{stem}{suffix}"


def unique_name(name: str, taken: set[str]) -> str:
    """`name`, or `stem-2.ext`, `stem-3.ext`, ... when taken (case-insensitively); records it."""
    stem, suffix = Path(name).stem, Path(name).suffix
    candidate, counter = name, 1
    while candidate.lower() in taken:
        counter += 1
        candidate = f"{stem}-{counter}{suffix}"
    taken.add(candidate.lower())
    return candidate


def output_names(names: Iterable[str], suffix: str = ".png") -> list[str]:
    """Output names keeping the inputs' stems (`a.jpg` -> `a.png`), made unique."""
    taken: set[str] = set()
    return [unique_name(f"{Path(base_name(n)).stem or 'image'}{suffix}", taken) for n in names]


def received(path: str | Path, root: Path) -> Path:
    """`path` if it lies inside `root` (the folder where the web framework stores what it
    received), else InvalidImageError: a request must never name an arbitrary server file."""
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(root.resolve()) or not resolved.is_file():
        raise InvalidImageError("the file was not received by this server; upload it again")
    return resolved


def from_payload(payload: Any, root: Path) -> Upload:
    """A Gradio FileData payload ({"path", "orig_name", ...}) naming a file inside `root`."""
    if payload is None:
        raise InvalidImageError("no photo received: upload a photo (or paste / take one) first")
    if not isinstance(payload, Mapping) or not isinstance(payload.get("path"), str):
        raise InvalidImageError("expected an uploaded file; upload the photo again")
    path = received(payload["path"], root)
    return Upload(path, base_name(str(payload.get("orig_name") or path.name)) or "image")


def check_image_file(upload: Upload, settings: Settings) -> None:
    """Refuse files above MAX_IMAGE_SIZE_MB or images above MAX_IMAGE_DIMENSION pixels per side."""
    try:
        size = upload.path.stat().st_size
    except OSError:
        raise InvalidImageError(f"{upload.name}: the uploaded file is gone; upload it again") from None
    if size > settings.max_image_bytes:
        raise InvalidImageError(
            f"{upload.name}: {size / 2**20:.1f} MB is above the {settings.max_image_size_mb:g} MB upload limit (MAX_IMAGE_SIZE_MB)"
        )
    try:
        with Image.open(upload.path) as image:
            width, height = image.size
    except Exception:  # not an image: the engine explains what is wrong with it
        return
    if max(width, height) > settings.max_image_dimension:
        raise InvalidImageError(
            f"{upload.name}: {width}x{height} px is above the {settings.max_image_dimension} px limit per side "
            "(MAX_IMAGE_DIMENSION); downscale the photo first"
        )


def is_zip(upload: Upload) -> bool:
    suffix = Path(upload.name).suffix.lower()
    return suffix == ".zip" or (suffix not in IMAGE_SUFFIXES and zipfile.is_zipfile(upload.path))


def extract_images(archive: Upload, destination: Path, settings: Settings, *, limit: int, taken: set[str]) -> list[Upload]:
    """The image entries of an uploaded zip, written into `destination` under their base names.

    Directories, symbolic links, hidden files, macOS resource forks, zips inside the zip and
    non-image entries are skipped; entry paths are never used, so an entry can neither leave
    `destination` (zip-slip, absolute names) nor overwrite another. At most `limit` images,
    each within MAX_IMAGE_SIZE_MB (read up to that much, whatever the entry declares).
    """
    try:
        bundle = zipfile.ZipFile(archive.path)
    except (zipfile.BadZipFile, OSError):
        raise InvalidImageError(f"{archive.name}: not a readable zip archive") from None
    found: list[Upload] = []
    nested = False
    with bundle:
        for info in bundle.infolist():
            name = base_name(info.filename)
            if info.is_dir() or stat.S_ISLNK(info.external_attr >> 16) or not name or name.startswith(".") or "__MACOSX" in info.filename:
                continue
            if Path(name).suffix.lower() == ".zip":
                nested = True
                continue
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if len(found) >= limit:
                raise InvalidParameterError(f"{archive.name}: too many images; the limit is {settings.max_batch_size} per batch (MAX_BATCH_SIZE)")
            label = f"{archive.name}/{name}"
            if info.file_size > settings.max_image_bytes:
                raise InvalidImageError(f"{label}: {info.file_size / 2**20:.1f} MB is above the {settings.max_image_size_mb:g} MB limit (MAX_IMAGE_SIZE_MB)")
            if info.flag_bits & 0x1:
                raise InvalidImageError(f"{label}: is encrypted; password-protected zips are not supported, zip the photos without a password")
            try:
                with bundle.open(info) as source:
                    data = source.read(settings.max_image_bytes + 1)
            except (RuntimeError, NotImplementedError, zipfile.BadZipFile, OSError, EOFError) as exc:
                raise InvalidImageError(f"{label}: cannot be extracted ({exc}); the zip is damaged or uses an unsupported compression method") from None
            if len(data) > settings.max_image_bytes:
                raise InvalidImageError(f"{label}: above the {settings.max_image_size_mb:g} MB limit (MAX_IMAGE_SIZE_MB)")
            target = destination / unique_name(name, taken)
            target.write_bytes(data)
            found.append(Upload(target, name))
    if nested and not found:
        raise InvalidImageError(f"{archive.name}: holds zip files but no photos; zips inside a zip are not opened, put the photos in one zip")
    return found


def collect_batch(payloads: Iterable[Any] | None, destination: Path, settings: Settings, *, root: Path) -> list[Upload]:
    """Uploaded photos and the images inside uploaded zips, in order, within MAX_BATCH_SIZE.
    Every payload must name a file inside `root` (see `received`)."""
    destination.mkdir(parents=True, exist_ok=True)
    uploads: list[Upload] = []
    taken: set[str] = set()
    for payload in payloads or []:
        upload = from_payload(payload, root)
        if is_zip(upload):
            remaining = settings.max_batch_size - len(uploads)
            uploads += extract_images(upload, destination, settings, limit=remaining, taken=taken)
            continue
        uploads.append(upload)
        if len(uploads) > settings.max_batch_size:
            raise InvalidParameterError(f"too many images; the limit is {settings.max_batch_size} per batch (MAX_BATCH_SIZE)")
    if not uploads:
        raise InvalidImageError("no photos received: upload image files or a .zip of images")
    for upload in uploads:
        check_image_file(upload, settings)
    return uploads
