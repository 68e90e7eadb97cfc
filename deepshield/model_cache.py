"""The model cache: the specs (the manifest's and the models folder's), name resolution, and
generators loaded on demand onto one device, the least recently used dropped beyond `max_loaded`."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deepshield import folder_models, memory
from deepshield.errors import InvalidParameterError, UnknownModelError, WeightsError
from deepshield.manifest import ModelSpec
from deepshield.models import Generator
from deepshield.weights import find_local_weights, load_model, missing_weights_hint, models_dir

MAX_IMAGE_SIZE = 2048


@dataclass(frozen=True)
class LoadedModel:
    """A frozen generator on the engine's device with the conditions it is attacked under."""

    spec: ModelSpec
    generator: Generator
    attack_forward: Callable[..., Tensor]
    """The generator as the attack's gradient passes call it: compiled (`Engine(compile_mode=...)`)
    or itself."""
    weights_path: Path
    weights_format: str
    weights_sha256: str
    num_parameters: int
    _kept: dict[tuple[int, torch.dtype | None], int] = field(default_factory=dict, repr=False, compare=False)

    def kept_bytes(self, size: int, dtype: torch.dtype | None) -> int:
        """Bytes one sample at `size` keeps for the backward (`memory.activation_bytes`),
        measured once per size and precision."""
        if (size, dtype) not in self._kept:
            self._kept[size, dtype] = memory.activation_bytes(self.generator, size, dtype)
        return self._kept[size, dtype]

    def conditions(self, labels: Sequence[str] | None) -> tuple[list[str], Tensor | None]:
        """Chosen target labels and their condition vectors [T, c_dim] (None if unconditional)."""
        if not self.spec.conditional:
            if labels:
                raise InvalidParameterError(f"model {self.spec.name!r} is unconditional: it takes no target")
            return [], None
        chosen = list(labels) if labels else self.spec.labels
        unknown = [label for label in chosen if label not in self.spec.targets]
        if unknown:
            raise InvalidParameterError(f"model {self.spec.name!r} has no target {unknown[0]!r}; choose from {', '.join(self.spec.labels)}")
        device = next(self.generator.parameters()).device
        vectors = torch.tensor([self.spec.targets[label] for label in chosen], dtype=torch.float32, device=device)
        if vectors.shape[1] != self.generator.condition_dim:
            raise InvalidParameterError(f"model {self.spec.name!r}: target vectors have {vectors.shape[1]} values, the network expects {self.generator.condition_dim}")
        return chosen, vectors


class ModelCache:
    """The specs by name and the models loaded from them onto `device`: each loaded once, under a
    lock of its own, and the least recently used dropped past `max_loaded`."""

    def __init__(self, specs: Mapping[str, ModelSpec], device: torch.device, compile_mode: str | None, max_loaded: int) -> None:
        self.manifest: dict[str, ModelSpec] = dict(specs)
        self.device = device
        self.compile_mode = compile_mode
        self.max_loaded = max_loaded
        self._models: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.RLock()

    def folder(self) -> dict[str, folder_models.FolderModel]:
        """The models folder's models, looked at now (a folder added while running shows up)."""
        return folder_models.scan(models_dir(), self.manifest)

    def _specs(self, folder: Mapping[str, folder_models.FolderModel]) -> dict[str, ModelSpec]:
        return {**self.manifest, **{name: m.spec for name, m in folder.items() if m.spec is not None}}

    @property
    def specs(self) -> dict[str, ModelSpec]:
        """The manifest's models, then the usable ones of the models folder."""
        return self._specs(self.folder())

    def spec(self, name: str) -> ModelSpec:
        if name in self.manifest:
            return self.manifest[name]
        found = self.folder().get(name)
        if found is not None and found.spec is not None:
            return found.spec
        if found is not None:
            raise WeightsError(f"model {name!r} (models folder) cannot be used: {found.reason}")
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(sorted(self.specs))}")

    def resolve(self, name: str) -> str:
        """A model name as is (folder models included); an architecture name (`stargan`,
        `pix2pixhd`, `pix2pixhd-local` ...) -> the folder model of that architecture when there is
        one, else its first manifest entry."""
        folder = self.folder()
        if name in self.manifest or name in folder:
            return name
        specs = self._specs(folder)
        key = name.lower()
        matches = [n for n, s in specs.items() if key in (s.architecture.lower(), s.architecture.lower().split("-")[0])]
        if matches:
            return next((n for n in matches if n in folder), matches[0])
        architectures = sorted({s.architecture.split("-")[0] for s in specs.values()})
        raise UnknownModelError(
            f"unknown model {name!r}: use a model name ({', '.join(specs)}) or an architecture ({', '.join(architectures)})"
        )

    def load(self, name: str, *, weights: str | os.PathLike[str] | None = None, allow_download: bool = True) -> LoadedModel:
        """Return the model, loading it (and downloading its weights if allowed) once.

        A download or conversion holds only this model's loading lock, so status queries and
        other models are never blocked behind it.
        """
        spec = self.spec(name)
        key = (name, str(Path(weights).resolve()) if weights else "")
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._models:  # another caller finished it while we waited
                    return self._models[key]
            loaded = load_model(spec, weights=Path(weights) if weights else None, allow_download=allow_download)
            generator = loaded.model.to(self.device)
            model = LoadedModel(
                spec=spec,
                generator=generator,
                attack_forward=generator if self.compile_mode is None else torch.compile(generator, mode=self.compile_mode, dynamic=False),
                weights_path=loaded.path,
                weights_format=loaded.format,
                weights_sha256=loaded.sha256,
                num_parameters=sum(p.numel() for p in generator.parameters()),
            )
            with self._lock:
                self._models[key] = model
                while len(self._models) > self.max_loaded:
                    self._models.popitem(last=False)
            return model

    def unload(self, name: str) -> bool:
        with self._lock:
            keys = [k for k in self._models if k[0] == name]
            for k in keys:
                del self._models[k]
        if keys and self.device.type == "cuda":
            torch.cuda.empty_cache()
        return bool(keys)

    def is_loaded(self, name: str) -> bool:
        with self._lock:
            return any(k[0] == name for k in self._models)

    def status(self, name: str) -> tuple[str, str]:
        """(`loaded` | `cached` | `downloadable` | `unavailable`, why)."""
        try:
            spec = self.spec(name)
        except WeightsError as error:  # a models-folder model that cannot be understood
            return "unavailable", str(error)
        if self.is_loaded(name):
            return "loaded", f"in memory on {self.device.type}"
        if spec.preprocessing == "label_map":
            reason = "takes a semantic label map, not a photo: it can be loaded but not used to protect photos"
        else:
            reason = ""
        path = find_local_weights(spec)
        if path is not None:
            return "cached", f"weights at {path}" + (f"; {reason}" if reason else "")
        if spec.weights.kind == "hub":
            return "downloadable", f"from {spec.weights.describe()} on first use"
        return "unavailable", missing_weights_hint(spec) + (f"; {reason}" if reason else "")

    def list_models(self) -> list[dict[str, Any]]:
        """A row per model (manifest, then models folder), and one per models-folder model that
        cannot be used (status `unavailable`, the reason)."""
        folder = self.folder()
        rows = []
        for name, spec in self._specs(folder).items():
            status, reason = self.status(name)
            source = {k: v for k, v in vars(spec.weights).items() if v is not None}
            rows.append(
                {
                    "name": name,
                    "architecture": spec.architecture,
                    "params": dict(spec.params),
                    "image_size": spec.image_size,
                    "preprocessing": spec.preprocessing,
                    "labels": spec.labels,
                    "license": spec.license,
                    "description": spec.description,
                    "weights": source,
                    "origin": "models_dir" if name in folder else "manifest",
                    "status": status,
                    "reason": reason,
                }
            )
        for name, broken in folder.items():
            if broken.spec is None:
                rows.append(
                    {
                        "name": name,
                        "architecture": broken.architecture or "unknown",
                        "params": {},
                        "image_size": None,
                        "preprocessing": None,
                        "labels": [],
                        "license": "",
                        "description": f"models folder {name}/",
                        "weights": {"kind": "folder"},
                        "origin": "models_dir",
                        "status": "unavailable",
                        "reason": broken.reason,
                    }
                )
        return rows

    def photo_models(self) -> list[str]:
        """Models that protect photos (not label maps) and whose weights are here or loaded."""
        return [n for n, s in self.specs.items() if s.preprocessing != "label_map" and self.status(n)[0] in ("loaded", "cached")]

    def model_size(self, model: LoadedModel, override: int | None) -> int:
        """The side `model` runs at: `override` or the manifest's `image_size`, a multiple of the
        generator's `size_multiple` up to `MAX_IMAGE_SIZE`."""
        size = int(override or model.spec.image_size)
        multiple = model.generator.size_multiple
        if not (multiple <= size <= MAX_IMAGE_SIZE) or size % multiple:
            raise InvalidParameterError(
                f"image_size {size} does not fit {model.spec.name!r}: use a multiple of {multiple} up to {MAX_IMAGE_SIZE}"
            )
        return size
