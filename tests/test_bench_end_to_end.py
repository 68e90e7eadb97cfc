"""bench/end_to_end.py runs off the network (random weights, photos from DEEPSHIELD_BENCH_PHOTOS)
and its stages add up to the total it reports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import REPO, noise

STAGES = ("decode", "prepare", "attack", "report", "write")


def test_end_to_end_stages_add_up_with_random_weights(tmp_path: Path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(noise(90, 70, seed=3)).save(photos / "small.png")
    Image.fromarray(noise(120, 100, seed=4)).save(photos / "large.png")
    env = {**os.environ, "DEEPSHIELD_BENCH_PHOTOS": str(photos), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "bench/end_to_end.py", "--size", "64", "--iterations", "2", "--repeats", "1", "--random-weights", "--device", "cpu"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "64 px JPEG (from large.png) -> protected PNG, cyclegan-vintage (random weights), PGD 2 iterations" in done.stdout
    rows = dict(re.findall(r"^\| (\w+) \| ([\d.]+) \|", done.stdout, flags=re.MULTILINE))
    assert set(rows) == {*STAGES, "total"}
    stages = [float(rows[stage]) for stage in STAGES]
    assert all(ms >= 0 for ms in stages) and float(rows["attack"]) > 0
    assert abs(sum(stages) - float(rows["total"])) < 0.1 * len(STAGES)  # one run: the stages split its total
    assert re.search(r"target 200 ms: (met|not met)", done.stdout)
