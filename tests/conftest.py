"""Shared fixtures: an isolated cache per test, tiny generators, paths to ../shared."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from deepshield.manifest import ModelSpec, WeightsSource
from deepshield.models import get_architecture

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
FACES = SHARED / "data" / "faces-dev"
LAYOUTS = SHARED / "checkpoint-layouts"


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets empty deepshield / Hugging Face caches and no models dir; the Hub endpoint
    points at a closed loopback port so nothing can leave the machine by accident."""
    root = tmp_path_factory.mktemp("caches")
    monkeypatch.setenv("DEEPSHIELD_CACHE_DIR", str(root / "deepshield"))
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("DEEPSHIELD_MODELS_DIR", raising=False)
    monkeypatch.delenv("MODELS_DIR", raising=False)
    monkeypatch.delenv("DEEPSHIELD_MANIFEST", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("DEEPSHIELD_DEVICE", "cpu")
    yield root


def make_spec(
    name: str,
    architecture: str,
    params: dict[str, Any],
    *,
    fmt: str,
    image_size: int = 32,
    targets: dict[str, tuple[float, ...]] | None = None,
    face_crop: dict[str, float] | None = None,
    **source: Any,
) -> ModelSpec:
    """A manifest entry built in code. `source`: kind="local"|"hub"|"package" and its fields."""
    source.setdefault("kind", "local")
    source.setdefault("filename", f"{name}.pth")
    return ModelSpec(
        name=name,
        architecture=architecture,
        params=MappingProxyType(dict(params)),
        image_size=image_size,
        preprocessing="center_crop_resize",
        weights=WeightsSource(format=fmt, **source),
        license="test",
        description="tiny test model",
        targets=MappingProxyType(dict(targets or {})),
        face_crop=MappingProxyType(face_crop) if face_crop else None,
    )


# Small parameter sets: same layer structure as the released models, a fraction of the width.
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "stargan": {"conv_dim": 8, "c_dim": 5, "repeat_num": 2},
    "ganimation": {"variant": "replicate", "conv_dim": 8, "c_dim": 17, "repeat_num": 2},
    "cyclegan": {"input_nc": 3, "output_nc": 3, "ngf": 8, "n_blocks": 2, "norm_affine": True},
    "pix2pixhd-global": {"input_nc": 3, "output_nc": 3, "ngf": 4, "n_downsampling": 3, "n_blocks": 2},
    "pix2pixhd-local": {"input_nc": 3, "output_nc": 3, "ngf": 4, "n_downsample_global": 2, "n_blocks_global": 2, "n_blocks_local": 1},
}


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    monkeypatch.setenv("DEEPSHIELD_MODELS_DIR", str(path))
    return path


def faces() -> list[Path]:
    return sorted(p for p in FACES.iterdir() if p.suffix.lower() in (".jpg", ".png"))


# Three StarGAN-style attribute targets for tiny conditional models.
HAIR: dict[str, tuple[float, ...]] = {"Black_Hair": (1, 0, 0, 0, 0), "Blond_Hair": (0, 1, 0, 0, 0), "Male": (0, 0, 0, 1, 0)}


def save_tiny(directory: Path, name: str, architecture: str, seed: int) -> Path:
    """Random tiny weights of `architecture` (TINY_PARAMS) saved as <directory>/<name>.safetensors."""
    torch.manual_seed(seed)
    module = get_architecture(architecture).build(**TINY_PARAMS[architecture])
    path = directory / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


def tiny_models(directory: Path) -> dict[str, ModelSpec]:
    """Two tiny models with weights saved in `directory` (a models dir): an unconditional
    CycleGAN `tiny-cyclegan` and a StarGAN `tiny-stargan` with the HAIR targets."""
    save_tiny(directory, "tiny-cyclegan", "cyclegan", seed=0)
    save_tiny(directory, "tiny-stargan", "stargan", seed=1)
    return {
        "tiny-cyclegan": make_spec("tiny-cyclegan", "cyclegan", TINY_PARAMS["cyclegan"], fmt="vintagify", filename="tiny-cyclegan.safetensors"),
        "tiny-stargan": make_spec("tiny-stargan", "stargan", TINY_PARAMS["stargan"], fmt="official", filename="tiny-stargan.safetensors", targets=HAIR),
    }


@pytest.fixture
def cli_env(tmp_path: Path, isolated_caches: Path) -> dict[str, str]:
    """Environment for a subprocess: a manifest with one tiny local model whose weights exist."""
    models = tmp_path / "models"
    models.mkdir()
    save_tiny(models, "tiny", "cyclegan", seed=0)
    manifest = {
        "models": {
            "tiny": {
                "architecture": "cyclegan",
                "params": TINY_PARAMS["cyclegan"],
                "image_size": 32,
                "weights": {"local": "tiny.safetensors", "format": "vintagify"},
            }
        }
    }
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return {
        **os.environ,
        "DEEPSHIELD_MANIFEST": str(tmp_path / "manifest.yaml"),
        "DEEPSHIELD_MODELS_DIR": str(models),
        "PYTHONPATH": str(REPO),
    }


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deepshield", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def write_photo(path: Path, width: int = 40, height: int = 36, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path
