"""Uploaded files: zip archives cannot write outside their folder, limits hold, names are kept."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepshield.errors import InvalidImageError, InvalidParameterError
from server import uploads
from server.settings import Settings


def png_bytes(side: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(path: Path, entries: dict[str, bytes]) -> dict[str, str]:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
    return {"path": str(path), "orig_name": path.name}


@pytest.mark.parametrize(
    ("name", "expected"),
    [("../../etc/evil.png", "evil.png"), ("/abs/x.jpg", "x.jpg"), ("C:\\Users\\me\\y.png", "y.png"), ("..", ".."), ("a/b/", "b")],
)
def test_base_name_drops_every_directory(name, expected):
    assert uploads.base_name(name) == expected


def test_zip_entries_are_written_by_base_name_inside_the_destination(tmp_path):
    work = tmp_path / "work"
    archive = make_zip(tmp_path / "in.zip", {
        "../../escape.png": png_bytes(), "/etc/abs.png": png_bytes(), "dir/one.png": png_bytes(),
        "other/one.png": png_bytes(), "readme.md": b"x", ".hidden.png": png_bytes(), "__MACOSX/._one.png": b"x",
    })
    found = uploads.collect_batch([archive], work, Settings(), root=tmp_path)
    assert [u.name for u in found] == ["escape.png", "abs.png", "one.png", "one.png"]
    assert sorted(p.name for p in work.iterdir()) == ["abs.png", "escape.png", "one-2.png", "one.png"]
    assert all(u.path.parent == work for u in found)
    assert not (tmp_path / "escape.png").exists() and not Path("/etc/abs.png").exists()


def test_batch_limits(tmp_path):
    settings = Settings(max_batch_size=2, max_image_size_mb=0.001)
    too_many = make_zip(tmp_path / "many.zip", {f"{i}.png": png_bytes() for i in range(3)})
    with pytest.raises(InvalidParameterError, match="limit is 2 per batch"):
        uploads.collect_batch([too_many], tmp_path / "a", settings, root=tmp_path)
    big = make_zip(tmp_path / "big.zip", {"big.png": png_bytes(64) + b"\0" * 4096})
    with pytest.raises(InvalidImageError, match="big.zip/big.png: .* MB limit"):
        uploads.collect_batch([big], tmp_path / "b", settings, root=tmp_path)
    with pytest.raises(InvalidImageError, match="no photos received"):
        uploads.collect_batch([make_zip(tmp_path / "empty.zip", {"a.txt": b"x"})], tmp_path / "c", settings, root=tmp_path)


def test_dimension_limit(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (300, 10)).save(path)
    with pytest.raises(InvalidImageError, match="300x10 px is above the 256 px limit"):
        uploads.check_image_file(uploads.Upload(path, "wide.png"), Settings(max_image_dimension=256))


def test_output_names_keep_stems_and_never_collide():
    assert uploads.output_names(["a.jpg", "b.png", "a.png", "A.webp", "x/../c.tiff"]) == ["a.png", "b.png", "a-2.png", "A-3.png", "c.png"]


def test_only_files_inside_the_upload_folder_are_accepted(tmp_path):
    root = tmp_path / "uploads"
    (root / "abc").mkdir(parents=True)
    inside = root / "abc" / "me.png"
    inside.write_bytes(png_bytes())
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    assert uploads.from_payload({"path": str(inside), "orig_name": "../Me.png"}, root) == uploads.Upload(inside.resolve(), "Me.png")
    for payload in ({"path": str(outside)}, {"path": str(root / "abc" / ".." / ".." / "secret.png")}, {"path": str(root / "abc")}):
        with pytest.raises(InvalidImageError, match="not received by this server"):
            uploads.from_payload(payload, root)
    for payload in (str(inside), 5, {"orig_name": "x.png"}):
        with pytest.raises(InvalidImageError, match="expected an uploaded file"):
            uploads.from_payload(payload, root)
    with pytest.raises(InvalidImageError, match="no photo received"):
        uploads.from_payload(None, root)
