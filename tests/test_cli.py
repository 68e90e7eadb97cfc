"""`python -m deepshield` as a user runs it: a tiny model from a temporary manifest, bad inputs."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from deepshield.errors import InvalidImageError
from deepshield.imaging import load_photo
from bench.copies import Sharing
from tests.conftest import REPO, dev_photo, run, write_photo


def test_protect_writes_images_report_and_deepfakes(cli_env, tmp_path):
    inputs = [write_photo(tmp_path / "a.png", seed=1), write_photo(tmp_path / "b.jpg", 48, 32, seed=2)]
    out = tmp_path / "out"
    proc = run(
        cli_env, "protect", *map(str, inputs), "--out-dir", str(out), "--model", "tiny", "--attack", "ifgsm",
        "--iterations", "3", "--epsilon", "0.03", "--seed", "7", "--report", str(tmp_path / "r.json"),
        "--deepfake-dir", str(tmp_path / "fakes"),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert [r["output"] for r in report] == [str(out / "a.protected.png"), str(out / "b.protected.png")]
    for entry, source in zip(report, inputs):
        assert entry["input"] == str(source) and entry["model"] == "tiny" and entry["attack"] == "ifgsm"
        assert (entry["epsilon"], entry["iterations"], entry["step_size"]) == (0.03, 3, 0.01)
        assert set(entry["perturbation"]) >= {"linf", "l2", "psnr", "ssim"}
        assert set(entry["disruption"]) >= {"mse", "l1", "disrupted"}
        written = np.asarray(Image.open(entry["output"]).convert("RGB"), dtype=int)
        original = np.asarray(Image.open(source).convert("RGB"), dtype=int)
        assert written.shape == original.shape
        assert np.abs(written - original).max() / 127.5 == pytest.approx(entry["perturbation"]["linf"])
        assert np.abs(written - original).max() <= 0.03 * 127.5
    assert sorted(p.name for p in (tmp_path / "fakes").iterdir()) == [
        "a.deepfake_original.png", "a.deepfake_protected.png", "b.deepfake_original.png", "b.deepfake_protected.png",
    ]


def test_output_format_follows_the_name(cli_env, tmp_path):
    source = write_photo(tmp_path / "in.png")
    proc = run(cli_env, "protect", str(source), "-o", str(tmp_path / "out.jpg"), "--model", "tiny", "--iterations", "1")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "out.jpg").format == "JPEG"


def test_models_json_lists_every_entry_with_status(cli_env):
    proc = run(cli_env, "models", "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert (row["name"], row["architecture"], row["image_size"], row["status"]) == ("tiny", "cyclegan", 32, "cached")
    assert row["labels"] == [] and row["weights"]["kind"] == "local"


def test_real_manifest_models_listing():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = run(env, "models", "--json")
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert {"stargan-celeba-128", "stargan-celeba-256", "ganimation-celeba", "cyclegan-vintage", "cyclegan-horse2zebra", "pix2pixhd-label2city-1024p"} <= set(rows)
    assert rows["cyclegan-vintage"]["status"] == "cached"  # shipped by the vintagify wheel
    assert rows["stargan-celeba-128"]["labels"] == ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]
    assert rows["cyclegan-horse2zebra"]["status"] == "unavailable"
    assert "DEEPSHIELD_MODELS_DIR" in rows["pix2pixhd-label2city-1024p"]["reason"]


def _png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose header claims another size (a decompression bomb's calling card)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()[:300]


BAD_INPUTS = {
    "not-an-image.jpg": (b"this is plain text, not pixels", "not a recognised image format"),
    "empty.png": (b"", "empty"),
    "truncated.jpg": (_truncated_jpeg(), "truncated or corrupt"),
    "bomb.png": (_png_claiming(60000, 60000), "decompression bomb"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_images_are_refused_by_the_api(tmp_path, name):
    data, message = BAD_INPUTS[name]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InvalidImageError, match=message):
        load_photo(tmp_path / name)
    with pytest.raises(InvalidImageError, match=message):
        load_photo(data, name=name)


@pytest.mark.parametrize(
    "case",
    ["not-an-image.jpg", "empty.png", "truncated.jpg", "bomb.png", "missing-file", "unknown-model", "epsilon-too-big", "epsilon-negative"],
)
def test_cli_bad_input_exits_non_zero_with_one_line(cli_env, tmp_path, case):
    good = write_photo(tmp_path / "good.png")
    args = ["--model", "tiny", "--iterations", "1"]
    if case in BAD_INPUTS:
        (tmp_path / case).write_bytes(BAD_INPUTS[case][0])
        source = tmp_path / case
    elif case == "missing-file":
        source = tmp_path / "nowhere.png"
    else:
        source = good
        args = {
            "unknown-model": ["--model", "no-such-model"],
            "epsilon-too-big": ["--model", "tiny", "--epsilon", "0.9"],
            "epsilon-negative": ["--model", "tiny", "--epsilon=-0.1"],
        }[case]
    proc = run(cli_env, "protect", str(source), "-o", str(tmp_path / "out.png"), *args)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.png").exists()


def test_robust_attack_and_robustness_report_from_the_cli(cli_env, tmp_path):
    source = write_photo(tmp_path / "in.png", 40, 40, seed=4)
    proc = run(cli_env, "protect", str(source), "-o", str(tmp_path / "out.png"), "--model", "tiny", "--iterations", "2",
               "--robust", "--check-robustness", "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    (report,) = json.loads((tmp_path / "r.json").read_text())
    assert report["robust"] == "eot"
    assert set(report["robustness"]) == {"jpeg90", "jpeg75", "jpeg50", "resize50", "blur1", "shift", "framings"}
    assert report["faces"] == [] and report["crop"] == "centre"


def test_framing_protection_from_the_cli(cli_env, tmp_path):
    source = write_photo(tmp_path / "in.png", 60, 30, seed=5)
    proc = run(cli_env, "protect", str(source), "-o", str(tmp_path / "out.png"), "--model", "tiny", "--iterations", "2",
               "--robust", "framing", "--check-robustness", "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    (report,) = json.loads((tmp_path / "r.json").read_text())
    assert report["robust"] == "framing" and report["perturbation"]["area"] > 0.9
    assert report["robustness"]["framings"]["views"] == 8
    assert re.search(r"framings: \d+% of 8 unseen framings disrupted, \d+% after JPEG 75, \d+% after a colour correction of the deepfake", proc.stdout)


def test_cli_verify_summary_json_and_errors(cli_env, tmp_path):
    """A cropped, mirrored, recompressed copy is located and judged; a copy of another photo is a
    one-line error with exit status 2."""
    original = tmp_path / "a.png"
    dev_photo(width=240).save(original)
    protected = tmp_path / "a.protected.png"
    assert run(cli_env, "protect", str(original), "-o", str(protected), "--model", "tiny", "--iterations", "3", "--seed", "0").returncode == 0
    (tmp_path / "shared.jpg").write_bytes(Sharing(box=(20, 10, 200, 170), mirrored=True, quality=85).apply(Image.open(protected)))
    proc = run(cli_env, "verify", str(original), str(tmp_path / "shared.jpg"), "--report", str(tmp_path / "v.json"), "--deepfake-dir", str(tmp_path / "fakes"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "v.json").read_text())
    assert [m["model"] for m in report["models"]] == ["tiny"]
    assert report["shared"]["jpeg_quality"] == 85
    assert report["located"] == {"box": [20, 10, 200, 170], "scale": 1.0, "mirrored": True, "rotation": 0, "border": [0, 0, 0, 0]}
    assert "shows (20, 10)-(200, 170) of the original at scale 1, mirrored" in proc.stdout
    verdict = "still disrupted" if report["models"][0]["disrupted"] else "NOT disrupted"
    assert f"mse {report['models'][0]['mse']:.4f} vs the original shared the same way: {verdict}" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "fakes").iterdir()) == ["tiny.baseline.png", "tiny.shared.png"]
    as_json = run(cli_env, "verify", str(original), str(tmp_path / "shared.jpg"), "--json")
    assert json.loads(as_json.stdout)["models"][0]["mse"] == pytest.approx(report["models"][0]["mse"])
    missing = run(cli_env, "verify", str(original), str(tmp_path / "nope.jpg"))
    assert missing.returncode == 2 and missing.stderr.strip() == "error: nope.jpg: no such file"
    dev_photo("face_009.jpg", width=240).save(tmp_path / "other.png")
    other = run(cli_env, "verify", str(original), str(tmp_path / "other.png"))
    assert other.returncode == 2 and other.stderr.startswith("error: other.png does not show a part of a.png") and other.stderr.count("\n") == 1


def test_faces_option_protects_only_the_chosen_faces(cli_env, tmp_path):
    """`--faces 1` on a two-person photo: both faces reported (box, landmarks, score), only the
    second protected; a face number out of range is a one-line error."""
    from pathlib import Path

    import yaml

    from tests.conftest import FACES, HAIR, TINY_PARAMS, save_tiny

    models = Path(cli_env["DEEPSHIELD_MODELS_DIR"])
    save_tiny(models, "tinyface", "stargan", seed=1)
    manifest = yaml.safe_load(Path(cli_env["DEEPSHIELD_MANIFEST"]).read_text())
    manifest["models"]["tinyface"] = {
        "architecture": "stargan", "params": TINY_PARAMS["stargan"], "image_size": 32, "targets": {k: list(v) for k, v in HAIR.items()},
        "face_crop": {"margin": 0.245, "shift_y": -0.126}, "weights": {"local": "tinyface.safetensors", "format": "official"},
    }
    Path(cli_env["DEEPSHIELD_MANIFEST"]).write_text(yaml.safe_dump(manifest))
    common = ["protect", str(FACES / "face_008.jpg"), "--model", "tinyface", "--iterations", "1", "--seed", "0"]
    done = run(cli_env, *common, "-o", str(tmp_path / "p.png"), "--report", str(tmp_path / "r.json"), "--faces", "1")
    assert done.returncode == 0, done.stderr
    (report,) = json.loads((tmp_path / "r.json").read_text())
    assert [(f["index"], f["protected"]) for f in report["faces"]] == [(0, False), (1, True)]
    assert all(set(f) == {"index", "box", "score", "landmarks", "protected"} for f in report["faces"])
    bad = run(cli_env, *common, "-o", str(tmp_path / "q.png"), "--faces", "2")
    assert bad.returncode != 0 and "out of range" in bad.stderr and "Traceback" not in bad.stderr
