"""Passes sized by device memory: the activation estimate, free memory, and splitting work that
would not fit instead of running out of memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepshield import memory
from deepshield.engine import Engine
from deepshield.errors import OutOfMemoryError
from deepshield.pipeline import CPU_PASS_PIXELS, PASS_MEMORY_SHARE, PEAK_PER_KEPT
from tests.conftest import tiny_models


@pytest.fixture
def engine(models_dir: Path) -> Engine:
    return Engine(tiny_models(models_dir), device="cpu", precision="fp32")


def photos(count: int) -> list[Image.Image]:
    return [Image.fromarray(np.random.default_rng(s).integers(0, 256, (32, 36, 3), dtype=np.uint8)) for s in range(count)]


def test_kept_activations_scale_with_pixels_and_precision(engine):
    generator = engine.load("tiny-cyclegan").generator
    small, large = memory.activation_bytes(generator, 32, None), memory.activation_bytes(generator, 64, None)
    assert large / small == pytest.approx(4, rel=0.1)  # activations, not weights: they grow with the pixels
    assert memory.activation_bytes(generator, 64, torch.bfloat16) < large
    weights = sum(p.numel() * p.element_size() for p in generator.parameters())
    assert memory.activation_bytes(generator, 16, None) < weights  # the weights themselves are not counted


def test_free_memory_honours_the_cgroup_limit(monkeypatch, tmp_path):
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text(str(3 * 2**30))
    usage.write_text(str(2 * 2**30))
    monkeypatch.setattr(memory, "CGROUP_LIMIT", limit)
    monkeypatch.setattr(memory, "CGROUP_USAGE", usage)
    assert memory.free_bytes(torch.device("cpu")) == 2**30
    limit.write_text("max\n")  # no limit: the kernel's MemAvailable
    unlimited = memory.free_bytes(torch.device("cpu"))
    total = int(next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:")).split()[1]) * 1024
    assert 0 < unlimited <= total


def test_passes_shrink_to_the_free_memory_and_split_a_batch_that_does_not_fit(engine, monkeypatch):
    plan = engine._plan(model="tiny-stargan", iterations=2)
    per_photo = plan.ensemble.kept_bytes([[1]], None)
    assert per_photo == 3 * engine.load("tiny-stargan").kept_bytes(32, None)  # 3 targets, one sample each
    assert engine.images_per_pass(plan.ensemble) == CPU_PASS_PIXELS // (3 * 32 * 32)  # plenty of memory: sized for the caches
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(10 * PEAK_PER_KEPT * per_photo / PASS_MEMORY_SHARE) + 1)
    assert engine.images_per_pass(plan.ensemble) == 10  # memory binds before the cache-sized pass
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(2.5 * per_photo))
    assert engine.images_per_pass(plan.ensemble) == 1  # room for 2.5 photos' kept tensors, but not at their peak

    sizes: list[int] = []
    split = engine.protect_batch(photos(6), model="tiny-stargan", iterations=2, seed=3, batch_size=6,
                                 on_step=lambda step, total, loss: sizes.append(loss.shape[0]))
    assert set(sizes) == {1, 2} and len(split) == 6  # 6 -> 3 + 3 -> (1 + 2) + (1 + 2): never more than fits
    monkeypatch.undo()
    whole = engine.protect_batch(photos(6), model="tiny-stargan", iterations=2, seed=3, batch_size=6)
    for a, b in zip(split, whole):  # photo i is attacked from seed + i however the work is split
        assert a.metrics["seed"] == b.metrics["seed"]
        assert np.abs(a.protected_rgb.astype(int) - b.protected_rgb.astype(int)).max() <= 1


def test_a_photo_that_cannot_fit_is_refused_before_it_runs(engine, monkeypatch):
    passes: list[int] = []
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1024)
    with pytest.raises(OutOfMemoryError, match="one photo does not fit"):
        engine.protect_batch(photos(2), model="tiny-cyclegan", iterations=1, seed=0, on_step=lambda *step: passes.append(1))
    assert passes == []  # no attack step ran
