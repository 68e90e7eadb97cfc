"""Find, verify, convert and strictly load generator weights.

Resolution order for a manifest entry: `DEEPSHIELD_MODELS_DIR` (`<dir>/<model>/<file>` or
`<dir>/<file>`), the pip package that ships the file, the Hugging Face cache, then a download with
`huggingface_hub` (`HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE` honoured at call time). Pickled
checkpoints are opened only with `torch.load(weights_only=True)`, converted once to the canonical
layout and stored as `.safetensors` in the deepshield cache; later loads read that file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from deepshield.errors import WeightsError
from deepshield.manifest import ModelSpec
from deepshield.models import (
    Architecture,
    CheckpointFormat,
    Generator,
    StateDict,
    get_architecture,
)

_STRIPPED_PREFIXES = ("module.", "_orig_mod.")
_CONTAINER_KEYS = ("state_dict", "model", "generator", "G")


# --------------------------------------------------------------------------------------------
# locations


def cache_dir() -> Path:
    """Deepshield's own cache (converted checkpoints): `DEEPSHIELD_CACHE_DIR` or ~/.cache/deepshield."""
    root = os.environ.get("DEEPSHIELD_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deepshield"
    return Path(root)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved as huggingface_hub does, but at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home) / "hub"


def hf_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def models_dir() -> Path | None:
    value = os.environ.get("DEEPSHIELD_MODELS_DIR") or os.environ.get("MODELS_DIR")
    return Path(value) if value else None


def _local_candidates(spec: ModelSpec) -> list[Path]:
    root = models_dir()
    if root is None:
        return []
    return [root / spec.name / spec.weights.filename, root / spec.weights.filename]


def _package_file(spec: ModelSpec) -> Path | None:
    """The file a pip package ships, located from its install record without importing it."""
    source = spec.weights
    try:
        dist = importlib.metadata.distribution(source.package or "")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(source.package_path or "")))
    return path if path.is_file() else None


def _hub_cached(spec: ModelSpec) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    source = spec.weights
    found = try_to_load_from_cache(source.repo_id or "", source.filename, cache_dir=hf_cache_dir(), revision=source.revision)
    return Path(found) if isinstance(found, str) else None


def find_local_weights(spec: ModelSpec) -> Path | None:
    """The weights file if it is on this machine already (models dir, package, HF cache)."""
    for candidate in _local_candidates(spec):
        if candidate.is_file():
            return candidate
    if spec.weights.kind == "package":
        return _package_file(spec)
    if spec.weights.kind == "hub":
        return _hub_cached(spec)
    return None


def missing_weights_hint(spec: ModelSpec) -> str:
    source = spec.weights
    where = f"$DEEPSHIELD_MODELS_DIR/{source.filename} or $DEEPSHIELD_MODELS_DIR/{spec.name}/{source.filename}"
    if source.kind == "package":
        return f"install the package that ships them (pip install {source.package}) or put the file at {where}"
    if source.kind == "hub":
        return f"run `python -m deepshield fetch {spec.name}` where the Hugging Face Hub is reachable, or put the file at {where}"
    extra = f" ({source.instructions})" if source.instructions else ""
    return f"this model is bring-your-own-weights: put the file at {where}{extra}, or pass --weights FILE"


def download_weights(spec: ModelSpec, *, force: bool = False) -> Path:
    """Download a Hub entry into the Hugging Face cache and return its local path."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    source = spec.weights
    try:
        path = hf_hub_download(
            source.repo_id or "",
            source.filename,
            revision=source.revision,
            cache_dir=hf_cache_dir(),
            endpoint=hf_endpoint(),
            force_download=force,
        )
    except LocalEntryNotFoundError:
        raise WeightsError(
            f"model {spec.name!r}: the Hugging Face Hub ({hf_endpoint() or 'huggingface.co'}) cannot be reached and "
            f"{source.filename} is not in the cache at {hf_cache_dir()}; {missing_weights_hint(spec)}"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise WeightsError(
            f"model {spec.name!r}: {source.describe()} does not exist on the Hub ({type(exc).__name__}); "
            "check the manifest entry"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise WeightsError(
            f"model {spec.name!r}: could not download {source.describe()}: {_short(exc)}. "
            f"{missing_weights_hint(spec)}"
        ) from None
    except Exception as exc:  # transport errors of whichever HTTP client huggingface_hub uses
        raise WeightsError(
            f"model {spec.name!r}: the download of {source.describe()} failed ({type(exc).__name__}: {_short(exc)}); "
            f"run `python -m deepshield fetch {spec.name}` again"
        ) from None
    return Path(path)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def resolve_weights(spec: ModelSpec, *, allow_download: bool = True) -> tuple[Path, str]:
    """Return a local path to the model's weights (downloading if allowed) and its verified sha256."""
    path = find_local_weights(spec)
    from_hub_cache = path is not None and spec.weights.kind == "hub" and path not in _local_candidates(spec)
    if path is None:
        if spec.weights.kind != "hub" or not allow_download:
            raise WeightsError(f"model {spec.name!r}: weights file {spec.weights.filename!r} not found; {missing_weights_hint(spec)}")
        path, from_hub_cache = download_weights(spec), True
    try:
        return path, verify_sha256(spec, path)
    except WeightsError:
        if not (from_hub_cache and allow_download):
            raise
    # A cached download can be damaged (interrupted copy, disk error): fetch it once more.
    path = download_weights(spec, force=True)
    try:
        return path, verify_sha256(spec, path)
    except WeightsError as error:
        _evict(path)
        raise WeightsError(
            f"{error} A fresh download failed the same check and was removed from the cache: the upload may have "
            "changed or been tampered with, so check the manifest's revision and sha256."
        ) from None


def _evict(path: Path) -> None:
    """Remove a Hugging Face cache entry: the snapshot link and the blob it points to."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# integrity


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(spec: ModelSpec, path: Path) -> str:
    """Hash the file; raise if the manifest pins a different sha256. Returns the hash."""
    actual = sha256_of(path)
    expected = spec.weights.sha256
    if expected and actual != expected:
        raise WeightsError(
            f"model {spec.name!r}: {path.name} failed its integrity check (sha256 {actual[:16]}..., "
            f"manifest pins {expected[:16]}...). The file is truncated, corrupt or not the published one: "
            f"delete {path} and fetch it again (python -m deepshield fetch {spec.name}); for your own "
            "checkpoint use --weights FILE instead."
        )
    return actual


# --------------------------------------------------------------------------------------------
# reading checkpoints


def read_checkpoint(path: Path) -> StateDict:
    """Read a `.safetensors` file or a pickled torch checkpoint (never executing pickled code)."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file {path} is empty")
    if _is_safetensors(path):
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"weights file {path.name} is not a readable safetensors file ({_short(exc)}); it may be truncated") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad pickles; all mean the same to a user
        raise WeightsError(
            f"weights file {path.name} could not be read as a torch checkpoint ({_short(exc)}). "
            "It may be truncated or corrupt, or contain objects other than tensors, which deepshield never unpickles."
        ) from None
    return unwrap_state_dict(obj, path.name)


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as handle:
        head = handle.read(9)
    # safetensors: 8-byte little-endian header length followed by a JSON object
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def unwrap_state_dict(obj: Any, name: str) -> StateDict:
    """Find the tensor mapping inside a checkpoint container and strip wrapper prefixes."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        keys = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise WeightsError(f"weights file {name} holds no state_dict of tensors (found {keys})")
    state = {str(k): v for k, v in obj.items()}
    for prefix in _STRIPPED_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


# --------------------------------------------------------------------------------------------
# layouts


def expected_layout(architecture: Architecture, params: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the module's state_dict, computed without allocating weights."""
    with torch.device("meta"):
        module = architecture.build(**params)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def layout_difference(state: StateDict, expected: Mapping[str, tuple[int, ...]]) -> tuple[int, list[str]]:
    """(number of mismatched keys, human-readable summary); (0, []) when the layouts are equal."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    return len(missing) + len(unexpected) + len(wrong), problems


@dataclass(frozen=True)
class MatchedCheckpoint:
    architecture: str
    format: str
    params: Mapping[str, Any]
    state_dict: StateDict


def match_checkpoint(
    state: StateDict,
    candidates: Iterable[tuple[str, Mapping[str, Any] | None]],
    *,
    preferred_format: str | None = None,
    source: str,
) -> MatchedCheckpoint:
    """Find the (architecture, params, format) whose layout this checkpoint matches exactly.

    `candidates` are (architecture name, base params) pairs, params None meaning "as the
    checkpoint's keys and shapes tell" (`Architecture.infer`); each format of each architecture
    is tried, the preferred one first. Raises WeightsError describing the closest miss.
    """
    best: tuple[int, str] | None = None
    for arch_name, base_params in candidates:
        architecture = get_architecture(arch_name)
        formats: list[CheckpointFormat] = sorted(architecture.formats, key=lambda f: f.name != preferred_format)
        for fmt in formats:
            try:
                converted = fmt.convert(state)
                params = {**(architecture.infer(converted) if base_params is None else base_params), **fmt.params}
                expected = expected_layout(architecture, params)
            except (KeyError, ValueError, RuntimeError) as exc:  # not this layout, or shapes no network has
                score, problems = len(state), [str(exc).strip("'")]
            else:
                score, problems = layout_difference(converted, expected)
                if not problems:
                    return MatchedCheckpoint(arch_name, fmt.name, params, converted)
            detail = f"as {arch_name}/{fmt.name}: {'; '.join(problems)}"
            if best is None or score < best[0]:
                best = (score, detail)
    detail = best[1] if best else "no candidate architecture"
    raise WeightsError(f"{source} does not match any supported checkpoint layout (closest {detail})")


# --------------------------------------------------------------------------------------------
# conversion and loading


def to_float32(state: StateDict) -> StateDict:
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def write_safetensors(state: StateDict, destination: Path, metadata: Mapping[str, str]) -> None:
    """Write atomically: a crash never leaves a half-written file under the final name."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=destination.parent, prefix=".partial-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(to_float32(state), tmp, metadata=dict(metadata))
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _metadata(matched: MatchedCheckpoint, source_sha256: str) -> dict[str, str]:
    return {
        "architecture": matched.architecture,
        "format": matched.format,
        "params": json.dumps(dict(matched.params), sort_keys=True),
        "source_sha256": source_sha256,
    }


def converted_path(source_sha256: str) -> Path:
    return cache_dir() / "converted" / f"{source_sha256}.safetensors"


def instantiate(architecture: str, params: Mapping[str, Any], state: StateDict) -> Generator:
    """Build the network without random init, load `state` strictly, freeze it (eval, no grads)."""
    arch = get_architecture(architecture)
    with torch.device("meta"):
        model = arch.build(**params)
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise WeightsError(f"{architecture}: tensors not provided by the checkpoint: {', '.join(leftover[:3])}")
    return freeze(model)


def freeze(model: nn.Module) -> Generator:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model  # type: ignore[return-value]


@dataclass(frozen=True)
class LoadedWeights:
    model: Generator
    path: Path
    format: str
    params: Mapping[str, Any]
    sha256: str


def load_weights_file(
    path: Path,
    *,
    architecture: str,
    params: Mapping[str, Any],
    preferred_format: str | None,
    label: str,
    known_sha256: str | None = None,
) -> LoadedWeights:
    """Load any supported layout of `architecture` from `path` into a frozen network.

    Pickled files are converted once to the canonical safetensors layout in the cache, keyed by
    the source file's sha256; later calls load the converted file.
    """
    source_sha = known_sha256 or sha256_of(path)
    cached = converted_path(source_sha)
    if cached.is_file():
        try:
            state = load_file(str(cached), device="cpu")
            meta = _safetensors_metadata(cached)
            stored = json.loads(meta.get("params", "{}"))
            fmt = get_architecture(architecture).format(meta.get("format", "")) if meta.get("architecture") == architecture else None
            if fmt is not None and stored == {**params, **fmt.params}:
                return LoadedWeights(instantiate(architecture, stored, state), path, fmt.name, stored, source_sha)
        except (SafetensorError, OSError, ValueError, KeyError, RuntimeError):
            cached.unlink(missing_ok=True)  # a damaged cache entry is rebuilt from the source
    state = read_checkpoint(path)
    matched = match_checkpoint(state, [(architecture, params)], preferred_format=preferred_format, source=label)
    try:
        model = instantiate(matched.architecture, matched.params, to_float32(matched.state_dict))
    except RuntimeError as exc:  # load_state_dict: dtype or other mismatch the layout check missed
        detail = " ".join(str(exc).split())
        raise WeightsError(f"{label} does not load into {architecture}: {detail}") from None
    if not _is_safetensors(path):
        write_safetensors(matched.state_dict, cached, _metadata(matched, source_sha))
    return LoadedWeights(model, path, matched.format, matched.params, source_sha)


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def load_model(spec: ModelSpec, *, weights: Path | None = None, allow_download: bool = True) -> LoadedWeights:
    """Resolve, verify and strictly load a manifest model (or `weights`, a user's own file)."""
    if weights is not None:
        path, known = Path(weights), None
        label = f"weights file {path.name} (for model {spec.name!r})"
    else:
        path, known = resolve_weights(spec, allow_download=allow_download)
        label = f"model {spec.name!r} weights {path.name}"
    return load_weights_file(
        path,
        architecture=spec.architecture,
        params=spec.params,
        preferred_format=spec.weights.format,
        label=label,
        known_sha256=known,
    )


def convert_checkpoint(
    source: Path,
    destination: Path,
    candidates: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    preferred_format: str | None = None,
) -> MatchedCheckpoint:
    """Convert any supported checkpoint to a canonical `.safetensors` file (the `convert` command)."""
    state = read_checkpoint(source)
    matched = match_checkpoint(state, candidates, preferred_format=preferred_format, source=f"weights file {source.name}")
    write_safetensors(matched.state_dict, destination, _metadata(matched, sha256_of(source)))
    return matched
