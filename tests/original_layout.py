"""A models folder in the original service's layout, with tiny checkpoints in the published
key layouts, saved as the original files are (pickled state_dicts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from deepshield.models import get_architecture
from tests.conftest import TINY_PARAMS

# folder -> (checkpoint name as in the original README, architecture, params, config.json)
ORIGINAL_LAYOUT: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    "stargan": ("200000-G.ckpt", "stargan", TINY_PARAMS["stargan"], {"image_size": 32, "labels": ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]}),
    "ganimation": ("model.pth", "ganimation", TINY_PARAMS["ganimation"], {"image_size": 32}),
    "pix2pixhd": ("latest_net_G.pth", "pix2pixhd-global", TINY_PARAMS["pix2pixhd-global"], {"image_size": 32}),
    "cyclegan": ("latest_net_G_A.pth", "cyclegan", {**TINY_PARAMS["cyclegan"], "norm_affine": False}, {"image_size": 32, "description": "horse to zebra"}),
}


def save_state(path: Path, architecture: str, params: dict[str, Any], seed: int) -> None:
    """Random weights of `architecture` saved with torch.save as a plain state_dict."""
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(get_architecture(architecture).build(**params).state_dict(), path)


def write_original_layout(root: Path) -> Path:
    """`root`/{stargan,ganimation,pix2pixhd,cyclegan}/<checkpoint> + config.json; returns `root`."""
    for seed, (folder, (filename, architecture, params, config)) in enumerate(ORIGINAL_LAYOUT.items()):
        save_state(root / folder / filename, architecture, params, seed)
        (root / folder / "config.json").write_text(json.dumps(config))
    return root
