"""Models from the models folder: every subfolder of `DEEPSHIELD_MODELS_DIR` (`MODELS_DIR`) that
holds a checkpoint becomes a model named after the folder (the original service's layout,
`models/stargan/200000-G.ckpt` + `config.json`).

`config.json` beside the checkpoint takes the fields of a `weights_manifest.yaml` entry
(architecture, params, image_size, labels or targets, face_crop, preprocessing, license,
description) and `checkpoint`, the file to use when the folder holds several. All are optional:
architecture and params are read from the checkpoint's keys and shapes, a conditional model
without labels gets one-hot targets `label_0..label_{n-1}`. A folder that cannot be understood is
kept with the reason, so listings can show it as unavailable.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepshield.errors import DeepshieldError, ManifestError
from deepshield.manifest import ModelSpec, parse_model
from deepshield.models import ARCHITECTURES
from deepshield.weights import match_checkpoint, read_checkpoint

CONFIG = "config.json"
ORIGINAL_NAMES = ("200000-G.ckpt", "model.pth", "latest_net_G.pth", "latest_net_G_A.pth")
"""The original service's checkpoint names, preferred in this order when a folder holds several."""
NOT_CHECKPOINTS = (".json", ".txt", ".md", ".yaml", ".yml", ".log")
CONFIG_FIELDS = frozenset(
    {"architecture", "params", "image_size", "labels", "targets", "face_crop", "preprocessing", "license", "description", "checkpoint"}
)
DEFAULT_IMAGE_SIZE = {"stargan": 128, "ganimation": 128, "cyclegan": 256, "pix2pixhd-global": 512, "pix2pixhd-local": 1024}
"""The resolution of each architecture's released models, used when config.json gives none."""


@dataclass(frozen=True)
class FolderModel:
    """One subfolder: its spec, or None and the reason it cannot be used."""

    name: str
    spec: ModelSpec | None
    reason: str = ""
    architecture: str | None = None


_known: dict[str, tuple[tuple[Any, ...], FolderModel]] = {}  # folder -> (its files' names, sizes, mtimes; what they gave)
_lock = threading.Lock()


def scan(root: Path | None, reserved: Collection[str]) -> dict[str, FolderModel]:
    """The models of `root`'s subfolders, by name. Folders named after a manifest model
    (`reserved`) hold that model's own file and are skipped, as are folders with no file. A
    checkpoint is read once per change of the folder's files (names, sizes, mtimes)."""
    if root is None or not root.is_dir():
        return {}
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
            signature = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
        except OSError:  # changing as we look (a copy in progress, a temp file gone): next scan
            continue
        if folder.name in reserved or not files:
            continue
        with _lock:
            cached = _known.get(str(folder))
        if cached is None or cached[0] != signature:
            cached = (signature, describe(folder, files))
            with _lock:
                _known[str(folder)] = cached
        found[folder.name] = cached[1]
    return found


def describe(folder: Path, files: list[Path]) -> FolderModel:
    """The folder's model, or why there is none (never raises a DeepshieldError)."""
    config: dict[str, Any] = {}
    try:
        config = read_config(folder / CONFIG)
        return FolderModel(folder.name, folder_spec(folder.name, config, checkpoint_file(folder, files, config.get("checkpoint"))))
    except DeepshieldError as error:
        reason = str(error)
    except (TypeError, ValueError) as error:
        reason = f"models folder {folder.name!r}: a value in {CONFIG} has the wrong type ({error})"
    except OSError as error:  # a file went away or cannot be read while we looked
        reason = f"models folder {folder.name!r} could not be read: {error}"
    return FolderModel(folder.name, None, reason, config.get("architecture"))


def read_config(path: Path) -> dict[str, Any]:
    """config.json as a dict ({} when absent); ManifestError for bad JSON or unknown fields."""
    if not path.is_file():
        return {}
    where = f"models folder {path.parent.name!r}: {CONFIG}"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{where} is not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ManifestError(f"{where} must hold a JSON object")
    unknown = sorted(set(config) - CONFIG_FIELDS)
    if unknown:
        raise ManifestError(f"{where}: unknown field {unknown[0]!r}; it takes {', '.join(sorted(CONFIG_FIELDS))}")
    return config


def checkpoint_file(folder: Path, files: list[Path], named: str | None) -> Path:
    """The checkpoint: the file config.json names, the only candidate, or the first of the
    original service's names."""
    if named is not None:
        path = folder / str(named)
        if path.parent != folder or not path.is_file():
            raise ManifestError(f"models folder {folder.name!r}: {CONFIG} names checkpoint {named!r}, which is not a file in the folder")
        return path
    candidates = [p for p in files if not p.name.lower().endswith(NOT_CHECKPOINTS)]
    if not candidates:
        raise ManifestError(f"models folder {folder.name!r} holds no checkpoint file")
    if len(candidates) == 1:
        return candidates[0]
    for name in ORIGINAL_NAMES:
        if folder / name in candidates:
            return folder / name
    names = ", ".join(p.name for p in candidates[:4])
    raise ManifestError(f"models folder {folder.name!r} holds several checkpoints ({names}); name one in {CONFIG} as \"checkpoint\"")


def candidates(name: str, config: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any] | None]]:
    """(architecture, params or None = infer) to try: config.json's, else every architecture,
    those the folder name starts with first (`stargan`, `pix2pixhd` ...)."""
    architecture = config.get("architecture")
    if architecture is not None:
        if architecture not in ARCHITECTURES:
            raise ManifestError(f"models folder {name!r}: unknown architecture {architecture!r} (known: {', '.join(ARCHITECTURES)})")
        return [(str(architecture), config.get("params"))]
    hinted = sorted(ARCHITECTURES, key=lambda arch: not name.lower().startswith(arch.split("-")[0]))
    return [(arch, None) for arch in hinted]


def folder_spec(name: str, config: Mapping[str, Any], checkpoint: Path) -> ModelSpec:
    """The manifest entry the folder stands for, completed from the checkpoint's layout."""
    where = f"models folder {name!r}"
    matched = match_checkpoint(read_checkpoint(checkpoint), candidates(name, config), source=f"{where}: {checkpoint.name}")
    params = dict(matched.params)
    raw = {
        "architecture": matched.architecture,
        "params": params,
        "image_size": config.get("image_size", DEFAULT_IMAGE_SIZE[matched.architecture]),
        "preprocessing": config.get("preprocessing", "center_crop_resize" if params.get("input_nc", 3) == 3 else "label_map"),
        "license": config.get("license", "unknown (weights from the models folder)"),
        "description": config.get("description", f"{matched.architecture} from the models folder {name}/"),
        "targets": targets(where, int(params.get("c_dim", 0)), config),
        "face_crop": config.get("face_crop"),
        "weights": {"local": checkpoint.name, "format": matched.format},
    }
    return parse_model(name, raw, where)


def targets(where: str, width: int, config: Mapping[str, Any]) -> dict[str, list[float]]:
    """config.json's targets; its labels as one-hot vectors; else `label_i` one-hot for each of
    the `width` condition values (none for unconditional models)."""
    if "targets" in config:
        given = config["targets"]
        if not isinstance(given, Mapping) or any(len(v) != width for v in given.values()):
            raise ManifestError(f"{where}: targets must map each label to {width} values (the checkpoint's condition size)")
        return dict(given)
    labels = config.get("labels") or [f"label_{i}" for i in range(width)]
    if not isinstance(labels, list) or len(labels) != width:
        raise ManifestError(f"{where}: labels must list {width} names, one per condition value of the checkpoint")
    return {str(label): [float(i == k) for i in range(width)] for k, label in enumerate(labels)}
