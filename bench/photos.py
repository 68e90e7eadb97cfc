"""The development photos the benchmarks run on: ../shared/data/faces-dev, or the folder named by
DEEPSHIELD_BENCH_PHOTOS (e.g. a copy carried to a GPU machine, where ../shared is not)."""

from __future__ import annotations

import os
from pathlib import Path

FACES_DEV = Path(os.environ.get("DEEPSHIELD_BENCH_PHOTOS") or Path(__file__).resolve().parents[2] / "shared" / "data" / "faces-dev")
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


def dev_photos(folder: str | Path = FACES_DEV, limit: int | None = None) -> list[Path]:
    """The photos in `folder`, sorted by name, the first `limit` of them when given."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)[:limit]
