"""Shared fixtures: an isolated cache per test, tiny generators, paths to ../shared."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import uvicorn
import yaml
from fastapi import FastAPI
from PIL import Image
from safetensors.torch import save_file

from deepshield.engine import Engine
from deepshield.imaging import load_photo
from deepshield.manifest import ModelSpec, WeightsSource
from deepshield.models import get_architecture
from server import observability, rest
from server.settings import Settings

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


def noise(width: int, height: int, seed: int = 0, channels: int = 3, low: int = 20, high: int = 236) -> np.ndarray:
    """Random uint8 pixels in [low, high) (away from the clipping ends), [H, W, C] or [H, W] for one channel."""
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(low, high, shape, dtype=np.uint8)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    """`image` as a file in `fmt` (PIL save options passed through)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def dev_photo(name: str = "face_012.jpg", width: int = 320) -> Image.Image:
    """A development photo, upright, `width` px wide."""
    rgb = load_photo(FACES / name).rgb
    image = Image.fromarray(rgb)
    return image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)


def write_photo(path: Path, width: int = 40, height: int = 36, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


# ------------------------------------------------------------------ served REST API


@pytest.fixture
def make_engine(models_dir: Path) -> Callable[..., Engine]:
    """Engines over tiny models: two with weights, one local entry without, one Hub entry."""
    specs = {
        **tiny_models(models_dir),
        "tiny-missing": make_spec("tiny-missing", "cyclegan", TINY_PARAMS["cyclegan"], fmt="official", filename="not-here.pth"),
        "tiny-hub": make_spec(
            "tiny-hub", "stargan", TINY_PARAMS["stargan"], fmt="official", kind="hub", repo_id="test-org/absent", filename="g.pth", revision="main", targets=HAIR
        ),
    }

    def build(**options: Any) -> Engine:
        return Engine(specs, device="cpu", **options)

    return build


@dataclass
class Served:
    client: httpx.Client
    base_url: str
    engine: Engine
    settings: Settings


def build_api(engine: Engine, settings: Settings) -> FastAPI:
    """app.create_app minus the Gradio mount."""
    api = FastAPI(title="deepshield", version="0.1.0", docs_url="/docs", redoc_url="/redoc")
    observability.install(api, engine, settings)
    api.include_router(rest.create_router(engine, settings))
    return api


@pytest.fixture
def serve(make_engine: Callable[..., Engine], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Served]]:
    """serve(settings=..., engine=..., app=...) -> a running server and an httpx client for it."""
    running: list[tuple[uvicorn.Server, threading.Thread, httpx.Client]] = []
    bodies: list[tuple[str, str]] = []

    def keep_body(response: httpx.Response) -> None:
        response.read()
        bodies.append((str(response.request.url), response.text))

    def start(settings: Settings | None = None, engine: Engine | None = None, app: FastAPI | None = None) -> Served:
        settings = settings or Settings(default_model="tiny-cyclegan")
        engine = engine or make_engine()
        app = app or build_api(engine, settings)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="auto"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        base_url = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=base_url, timeout=120, event_hooks={"response": [keep_body]})
        running.append((server, thread, client))
        return Served(client, base_url, engine, settings)

    yield start
    for server, thread, client in running:
        client.close()
        server.should_exit = True
        thread.join(timeout=10)
    leaks = [str(REPO), str(tmp_path_factory.getbasetemp()), "site-packages", "Traceback", 'File "']
    for url, body in bodies:
        for leak in leaks:
            assert leak not in body, f"{url} response leaks {leak!r}: {body[:300]}"
