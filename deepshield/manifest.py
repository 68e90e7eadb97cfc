"""`weights_manifest.yaml` -> frozen dataclasses describing every model deepshield offers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from deepshield.errors import ManifestError
from deepshield.models import get_architecture

DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "weights_manifest.yaml"
PREPROCESSING = ("center_crop_resize", "label_map")


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights come from. Exactly one of hub / package / local is set.

    hub: `repo_id`, `filename`, `revision` (and `sha256` where known);
    package: a pip distribution `package` shipping the file at `package_path` (relative to
    site-packages; `path` in the manifest);
    local: a file named `filename` that the user puts in `DEEPSHIELD_MODELS_DIR`.
    """

    kind: str  # "hub" | "package" | "local"
    filename: str
    format: str
    sha256: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    package: str | None = None
    package_path: str | None = None
    instructions: str | None = None

    def describe(self) -> str:
        if self.kind == "hub":
            return f"hf://{self.repo_id}/{self.filename}@{self.revision}"
        if self.kind == "package":
            return f"pip:{self.package}/{self.package_path}"
        return f"local:{self.filename}"


@dataclass(frozen=True)
class ModelSpec:
    """One manifest entry: how to build the network, feed it, and find its weights."""

    name: str
    architecture: str
    params: Mapping[str, Any]
    image_size: int
    preprocessing: str
    weights: WeightsSource
    license: str
    description: str
    targets: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    face_crop: Mapping[str, float] | None = None
    """For face models: square crop around each detected face, side = face * (1 + 2 * margin),
    centre moved by shift_y * face height (the framing of the model's training data)."""

    @property
    def labels(self) -> list[str]:
        return list(self.targets)

    @property
    def conditional(self) -> bool:
        return bool(self.targets)


def _require(entry: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in entry:
        raise ManifestError(f"{where}: missing required field {key!r}")
    return entry[key]


def _parse_weights(raw: Mapping[str, Any], where: str) -> WeightsSource:
    kinds = [k for k in ("repo_id", "package", "local") if k in raw]
    if len(kinds) != 1:
        raise ManifestError(f"{where}.weights: give exactly one of repo_id, package, local")
    fmt = str(_require(raw, "format", f"{where}.weights"))
    sha = raw.get("sha256")
    if sha is not None and (len(str(sha)) != 64 or any(c not in "0123456789abcdef" for c in str(sha))):
        raise ManifestError(f"{where}.weights.sha256 must be 64 lowercase hex digits")
    common = {"format": fmt, "sha256": sha, "instructions": raw.get("instructions")}
    if kinds[0] == "repo_id":
        return WeightsSource(
            kind="hub",
            repo_id=str(raw["repo_id"]),
            filename=str(_require(raw, "filename", f"{where}.weights")),
            revision=str(raw.get("revision", "main")),
            **common,
        )
    if kinds[0] == "package":
        path = str(_require(raw, "path", f"{where}.weights"))
        return WeightsSource(kind="package", package=str(raw["package"]), package_path=path, filename=Path(path).name, **common)
    return WeightsSource(kind="local", filename=str(raw["local"]), **common)


def parse_model(name: str, raw: Mapping[str, Any], where: str | None = None) -> ModelSpec:
    """One manifest entry (or a models-folder config.json completed from its checkpoint);
    raises ManifestError naming `where` (default: the model)."""
    where = where or f"model {name!r}"
    arch_name = str(_require(raw, "architecture", where))
    try:
        architecture = get_architecture(arch_name)
    except KeyError as exc:
        raise ManifestError(f"{where}: {exc.args[0]}") from None
    weights = _parse_weights(_require(raw, "weights", where), where)
    try:
        architecture.format(weights.format)
    except KeyError as exc:
        raise ManifestError(f"{where}: {exc.args[0]}") from None
    preprocessing = str(raw.get("preprocessing", "center_crop_resize"))
    if preprocessing not in PREPROCESSING:
        raise ManifestError(f"{where}: preprocessing must be one of {', '.join(PREPROCESSING)}")
    targets = {str(label): tuple(float(v) for v in vector) for label, vector in (raw.get("targets") or {}).items()}
    widths = {len(v) for v in targets.values()}
    if len(widths) > 1:
        raise ManifestError(f"{where}: all target vectors must have the same length")
    face_crop = raw.get("face_crop")
    if face_crop is not None:
        if not isinstance(face_crop, Mapping) or set(face_crop) - {"margin", "shift_y"} or "margin" not in face_crop:
            raise ManifestError(f"{where}: face_crop takes margin (required) and shift_y")
        face_crop = MappingProxyType({k: float(v) for k, v in face_crop.items()})
    return ModelSpec(
        name=name,
        architecture=arch_name,
        params=MappingProxyType(dict(raw.get("params") or {})),
        image_size=int(_require(raw, "image_size", where)),
        preprocessing=preprocessing,
        weights=weights,
        license=str(raw.get("license", "unknown")),
        description=str(raw.get("description", "")),
        targets=MappingProxyType(targets),
        face_crop=face_crop,
    )


def load_manifest(path: str | os.PathLike[str] | None = None) -> dict[str, ModelSpec]:
    """Parse and validate the manifest (default: `DEEPSHIELD_MANIFEST` or the repository's file)."""
    path = Path(path or os.environ.get("DEEPSHIELD_MANIFEST") or DEFAULT_MANIFEST)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"cannot read the weights manifest {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"the weights manifest {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("models"), Mapping):
        raise ManifestError(f"the weights manifest {path} must have a top-level 'models' mapping")
    return {str(name): parse_model(str(name), entry) for name, entry in raw["models"].items()}
