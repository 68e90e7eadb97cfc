"""Checkpoint formats: every architecture x published layout loads strictly, mismatches are refused.

The full-size tests work from the key/shape listings of the published files in
`../shared/checkpoint-layouts` (meta tensors, nothing is materialised except where a converter
reads values); the file tests write tiny checkpoints in each release's on-disk form and container.
"""

from __future__ import annotations

import copy
import os
import random
import re
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from deepshield.errors import WeightsError
from deepshield.models import ARCHITECTURES, get_architecture
from deepshield.models.layers import InputStatsInstanceNorm2d
from deepshield.models.stargan import from_lornatang
from deepshield.weights import (
    cache_dir,
    converted_path,
    expected_layout,
    load_model,
    load_weights_file,
    match_checkpoint,
    read_checkpoint,
    sha256_of,
)
from tests.conftest import LAYOUTS, REPO, TINY_PARAMS, make_spec

StateDict = dict[str, Tensor]

# --------------------------------------------------------------------------------------------
# on-disk forms: canonical module state_dict -> the keys a release actually holds


def _repeat_num(state: Mapping[str, Tensor]) -> int:
    """Residual blocks of a StarGAN-style body (`main.N.main.*` keys)."""
    return len({m.group(1) for k in state if (m := re.match(r"^main\.(\d+)\.main\.", k))})


def _plain(module: nn.Module, state: StateDict) -> StateDict:
    return dict(state)


def _without_counters(module: nn.Module, state: StateDict) -> StateDict:
    """torch 0.3 wrote running stats but no `num_batches_tracked`."""
    return {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}


def _lornatang(module: nn.Module, state: StateDict) -> StateDict:
    """Official StarGAN keys -> goodfellowliu/StarGAN-PyTorch names (inverse of from_lornatang)."""
    r = _repeat_num(state)
    groups = [("first_layer", 0, 2), ("down_sampling", 3, 8), ("trunk", 9, 8 + r), ("up_sampling", 9 + r, 14 + r), ("last_layer", 15 + r, 15 + r)]
    out: StateDict = {}
    for key, value in state.items():
        index, rest = re.match(r"^main\.(\d+)\.(.*)$", key).groups()  # type: ignore[union-attr]
        name, first = next((g, lo) for g, lo, hi in groups if lo <= int(index) <= hi)
        out[f"{name}.{int(index) - first}.{rest}"] = value
    return out


def _debug_aliases(module: nn.Module, state: StateDict) -> StateDict:
    """vipermu GANimation: debug1 (layers 0-2), debug2 (0-8), debug3 (0-8+R), debug4 (all) are
    Sequential views over the layers of `main`, so their entries are the very same tensors."""
    r = _repeat_num(state)
    limits = {"debug1": 2, "debug2": 8, "debug3": 8 + r, "debug4": 10**9}
    body = [(int(k.split(".")[1]), k[len("main."):], v) for k, v in state.items() if k.startswith("main.")]

    def views(alias: str) -> StateDict:
        return {f"{alias}.{rest}": v for index, rest, v in body if index <= limits[alias]}

    heads = {k: v for k, v in state.items() if not k.startswith("main.")}
    main = {k: v for k, v in state.items() if k.startswith("main.")}
    return {**views("debug1"), **views("debug2"), **views("debug3"), **main, **views("debug4"), **heads}


def _stale_norm_stats(counters: bool) -> Callable[[nn.Module, StateDict], StateDict]:
    """Released pre-0.4 files: every non-affine InstanceNorm carries running stats (and, when
    re-saved by torch 0.4.x, a counter), in state_dict order."""

    def form(module: nn.Module, state: StateDict) -> StateDict:
        out: StateDict = {}
        for name, sub in module.named_modules():
            prefix = f"{name}." if name else ""
            for key, _ in [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]:
                out[prefix + key] = state[prefix + key]
            if isinstance(sub, nn.InstanceNorm2d) and not sub.affine:
                device = next(module.parameters()).device
                out[prefix + "running_mean"] = torch.randn(sub.num_features, device=device)
                out[prefix + "running_var"] = torch.rand(sub.num_features, device=device) + 0.5
                if counters:
                    out[prefix + "num_batches_tracked"] = torch.tensor(7, dtype=torch.long, device=device)
        assert set(state) <= set(out)
        return out

    return form


def _vintagify(module: nn.Module, state: StateDict) -> StateDict:
    return {k.replace(".conv_block.", ".block."): v for k, v in state.items()}


# listing file -> (architecture, expected format, manifest-like params, on-disk form)
STARGAN = {"conv_dim": 64, "c_dim": 5, "repeat_num": 6}
GANIMATION = {"c_dim": 17, "conv_dim": 64, "repeat_num": 6}
CYCLEGAN = {"ngf": 64, "n_blocks": 9}
RELEASES: dict[str, tuple[str, str, dict[str, Any], Callable[[nn.Module, StateDict], StateDict]]] = {
    "stargan-official.txt": ("stargan", "official", STARGAN, _without_counters),
    "stargan-official.modern-save.txt": ("stargan", "official", STARGAN, _plain),
    "stargan-hub-lornatang.txt": ("stargan", "lornatang", STARGAN, _lornatang),
    "ganimation-replicate.txt": ("ganimation", "replicate", GANIMATION, _plain),
    "ganimation-official.txt": ("ganimation", "official", GANIMATION, _debug_aliases),
    "cyclegan-official.txt": ("cyclegan", "official", CYCLEGAN, _stale_norm_stats(counters=True)),
    "cyclegan-official.clean.txt": ("cyclegan", "official", CYCLEGAN, _plain),
    "cyclegan-vintagify.txt": ("cyclegan", "vintagify", CYCLEGAN, _vintagify),
    "pix2pixhd-global.txt": ("pix2pixhd-global", "official", {"input_nc": 36, "ngf": 64, "n_downsampling": 4, "n_blocks": 9}, _plain),
    "pix2pixhd-local.txt": (
        "pix2pixhd-local",
        "official",
        {"input_nc": 36, "ngf": 32, "n_downsample_global": 4, "n_blocks_global": 9, "n_blocks_local": 3},
        _plain,
    ),
}
MAPPING = LAYOUTS / "stargan-hub-lornatang.mapping.txt"


# --------------------------------------------------------------------------------------------
# listings


@dataclass(frozen=True)
class Listing:
    header: str
    entries: dict[str, tuple[tuple[int, ...], torch.dtype]]

    @property
    def parameter_count(self) -> int:
        found = re.search(r"^# parameter count: (\d+)", self.header, re.MULTILINE)
        assert found, "listing header states no parameter count"
        return int(found.group(1))


def read_listing(name: str) -> Listing:
    """Parse `key<TAB>[shape]<TAB>dtype` lines; `#` lines are the header."""
    header, entries = [], {}
    for line in (LAYOUTS / name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            header.append(line)
        elif line.strip():
            key, shape, dtype = line.split("\t")
            dims = tuple(int(d) for d in shape.strip("[]").split(",") if d.strip())
            assert key not in entries, f"{name}: duplicate key {key}"
            entries[key] = (dims, getattr(torch, dtype))
    return Listing("\n".join(header), entries)


def state_from_listing(listing: Listing, *, materialise: bool) -> StateDict:
    """Tensors of exactly the listed shapes/dtypes (meta unless values are needed). A `debugN.X`
    key whose `main.X` twin has the same shape gets the very same tensor object."""
    device = "cpu" if materialise else "meta"
    state: StateDict = {}
    for key, (shape, dtype) in listing.entries.items():
        if not re.match(r"^debug[1-4]\.", key):
            state[key] = torch.zeros(shape, dtype=dtype, device=device) if materialise else torch.empty(shape, dtype=dtype, device=device)
    ordered: StateDict = {}
    for key, (shape, _) in listing.entries.items():
        twin = re.sub(r"^debug[1-4]\.", "main.", key)
        ordered[key] = state[twin]
        assert tuple(ordered[key].shape) == shape
    return ordered


def meta_module(architecture: str, params: Mapping[str, Any]) -> nn.Module:
    with torch.device("meta"):
        return get_architecture(architecture).build(**params)


def test_every_listing_is_covered() -> None:
    """A new listing in ../shared must get an entry in RELEASES."""
    listed = {p.name for p in LAYOUTS.glob("*.txt") if not p.name.endswith(".mapping.txt")}
    assert listed == set(RELEASES)


@pytest.mark.parametrize("listing_name", sorted(RELEASES))
def test_listing_matches_expected_format(listing_name: str) -> None:
    """The published key/shape listing is detected as its format and converts to exactly the
    canonical layout, dtypes included."""
    arch_name, fmt_name, params, _ = RELEASES[listing_name]
    architecture = get_architecture(arch_name)
    state = state_from_listing(read_listing(listing_name), materialise=(arch_name, fmt_name) == ("ganimation", "official"))
    full_params = {**params, **architecture.format(fmt_name).params}
    reference = meta_module(arch_name, full_params).state_dict()
    for preferred in (None, fmt_name):
        matched = match_checkpoint(state, [(arch_name, params)], preferred_format=preferred, source=f"listing {listing_name}")
        assert (matched.architecture, matched.format) == (arch_name, fmt_name)
        assert dict(matched.params) == full_params
        assert {k: tuple(v.shape) for k, v in matched.state_dict.items()} == expected_layout(architecture, full_params)
        assert {k: v.dtype for k, v in matched.state_dict.items()} == {k: v.dtype for k, v in reference.items()}


def _other_formats() -> list[Any]:
    cases = []
    for listing_name, (arch_name, fmt_name, _, _) in sorted(RELEASES.items()):
        for other in get_architecture(arch_name).formats:
            if other.name == fmt_name:
                continue
            cases.append(pytest.param(listing_name, other.name, id=f"{listing_name}-prefer-{other.name}"))
    return cases


@pytest.mark.parametrize(("listing_name", "preferred"), _other_formats())
def test_listing_not_claimed_by_preferred_other_format(listing_name: str, preferred: str) -> None:
    """Preferring another format of the architecture (as a manifest entry does for a user's own
    file) still reports the format the file really has."""
    arch_name, fmt_name, params, _ = RELEASES[listing_name]
    state = state_from_listing(read_listing(listing_name), materialise=(arch_name, fmt_name) == ("ganimation", "official"))
    matched = match_checkpoint(state, [(arch_name, params)], preferred_format=preferred, source=f"listing {listing_name}")
    assert matched.format == fmt_name


@pytest.mark.parametrize("listing_name", sorted(RELEASES))
def test_listing_parameter_count(listing_name: str) -> None:
    """The header's parameter count equals the built module's (unique) parameter count."""
    arch_name, fmt_name, params, _ = RELEASES[listing_name]
    full_params = {**params, **get_architecture(arch_name).format(fmt_name).params}
    module = meta_module(arch_name, full_params)
    assert sum(p.numel() for p in module.parameters()) == read_listing(listing_name).parameter_count


@pytest.mark.parametrize("listing_name", sorted(RELEASES))
def test_on_disk_form_reproduces_listing(listing_name: str) -> None:
    """The inverse mappings used by the file round trips below turn the canonical full-size
    layout into exactly the published keys and shapes."""
    arch_name, fmt_name, params, form = RELEASES[listing_name]
    module = meta_module(arch_name, {**params, **get_architecture(arch_name).format(fmt_name).params})
    on_disk = form(module, module.state_dict())
    listing = read_listing(listing_name)
    assert {k: tuple(v.shape) for k, v in on_disk.items()} == {k: shape for k, (shape, _) in listing.entries.items()}
    assert {k: v.dtype for k, v in on_disk.items()} == {k: dtype for k, (_, dtype) in listing.entries.items()}


def _mapping_pairs() -> list[tuple[str, str]]:
    lines = [line for line in MAPPING.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]
    return [tuple(line.split("\t")) for line in lines]  # type: ignore[misc]


def test_lornatang_mapping_file() -> None:
    """from_lornatang maps every Hub key to its official key (same tensor), covering the whole
    official layout; the test's inverse mapping agrees with the file."""
    pairs = _mapping_pairs()
    official, hub = [a for a, _ in pairs], [b for _, b in pairs]
    assert len(set(official)) == len(set(hub)) == len(pairs)
    assert set(hub) == set(read_listing("stargan-hub-lornatang.txt").entries)
    assert set(official) == set(expected_layout(get_architecture("stargan"), STARGAN))
    state = {right: torch.tensor(float(i)) for i, right in enumerate(hub)}
    converted = from_lornatang(state)
    assert set(converted) == set(official)
    for left, right in pairs:
        assert converted[left] is state[right], (left, right)
    renamed = _lornatang(nn.Module(), {left: torch.tensor(0.0) for left in official})
    assert list(renamed) == hub


# --------------------------------------------------------------------------------------------
# tiny checkpoint files


@dataclass(frozen=True)
class FileCase:
    id: str
    architecture: str
    format: str
    form: Callable[[nn.Module, StateDict], StateDict]
    filename: str
    legacy: bool = False  # pre-zip pickle (torch < 1.6)
    container: Callable[[StateDict, StateDict], Any] = field(default=lambda disk, canonical: disk)
    metadata: bool = False  # an OrderedDict with `_metadata`, as module.state_dict() returns


def _prefixed(prefix: str, state: StateDict) -> StateDict:
    return {prefix + k: v for k, v in state.items()}


def _training_checkpoint(disk: StateDict, canonical: StateDict) -> dict[str, Any]:
    """Lornatang's trainer output: compiled G (`_orig_mod.`), plus an EMA copy with other values."""
    ema = {k: (v + 1 if v.is_floating_point() else v) for k, v in disk.items()}
    return {
        "epoch": 40,
        "state_dict": _prefixed("_orig_mod.", disk),
        "ema_state_dict": _prefixed("_orig_mod.", ema),
        "optim_state_dict": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
    }


FILE_CASES = [
    FileCase("stargan-official-torch03", "stargan", "official", _without_counters, "200000-G.ckpt", legacy=True),
    FileCase("stargan-official-modern", "stargan", "official", _plain, "210000-G.ckpt", metadata=True),
    FileCase("stargan-lornatang", "stargan", "lornatang", _lornatang, "g_celeba-128x128.pth.tar", container=lambda d, c: {"state_dict": d}),
    FileCase("stargan-lornatang-training", "stargan", "lornatang", _lornatang, "g_celeba-128x128.pth.tar", container=_training_checkpoint),
    FileCase("ganimation-replicate", "ganimation", "replicate", _plain, "30_net_gen.pth", legacy=True),
    FileCase("ganimation-official", "ganimation", "official", _debug_aliases, "7001-37-G.ckpt", legacy=True, metadata=True),
    FileCase("cyclegan-official-released", "cyclegan", "official", _stale_norm_stats(counters=True), "horse2zebra.pth", legacy=True),
    FileCase("cyclegan-official-clean", "cyclegan", "official", _plain, "latest_net_G_A.pth"),
    FileCase("cyclegan-official-dataparallel", "cyclegan", "official", _plain, "latest_net_G.pth", container=lambda d, c: _prefixed("module.", d)),
    FileCase("cyclegan-vintagify", "cyclegan", "vintagify", _vintagify, "G_A2B_epoch33.pth"),
    FileCase("pix2pixhd-global", "pix2pixhd-global", "official", _plain, "latest_net_G.pth"),
    FileCase("pix2pixhd-local-torch03", "pix2pixhd-local", "official", _stale_norm_stats(counters=False), "latest_net_G.pth", legacy=True),
    FileCase("pix2pixhd-local-clean", "pix2pixhd-local", "official", _plain, "latest_net_G.pth"),
]


def tiny_module(architecture: str, fmt: str | None = None, *, seed: int = 0, **overrides: Any) -> nn.Module:
    """A tiny generator whose every float tensor is random (norm affines and running stats too),
    so that a wrongly mapped key changes the output or the state."""
    arch = get_architecture(architecture)
    params = {**TINY_PARAMS[architecture], **(arch.format(fmt).params if fmt else {}), **overrides}
    torch.manual_seed(seed)
    module = arch.build(**params).eval()
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if name.endswith("running_var"):
                tensor.uniform_(0.2, 3.0)
            elif name.endswith("running_mean"):
                tensor.normal_(0.0, 2.0)
            elif tensor.dim() == 1:  # norm affine parameters and conv biases
                tensor.normal_(0.0, 0.3)
                if name.endswith("weight"):
                    tensor.add_(1.0)
    return module


def write_checkpoint(case: FileCase, module: nn.Module, directory: Path) -> Path:
    canonical = module.state_dict()
    disk = case.form(module, canonical)
    if case.metadata:
        disk = OrderedDict(disk)
        disk._metadata = canonical._metadata  # type: ignore[attr-defined]
    path = directory / case.filename
    torch.save(case.container(disk, canonical), path, _use_new_zipfile_serialization=not case.legacy)
    return path


def sample_inputs(model: nn.Module, seed: int = 1) -> tuple[Tensor, Tensor | None]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(2, model.input_channels, 32, 32, generator=generator) * 2 - 1
    condition = torch.rand(2, model.condition_dim, generator=generator) if model.condition_dim else None
    return x, condition


def converted_files() -> list[Path]:
    folder = cache_dir() / "converted"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_every_format_has_a_file_case() -> None:
    """Each (architecture, format) of the registry is exercised by a file round trip."""
    registered = {(a.name, f.name) for a in ARCHITECTURES.values() for f in a.formats}
    assert registered == {(c.architecture, c.format) for c in FILE_CASES}
    assert set(TINY_PARAMS) == set(ARCHITECTURES)


@pytest.mark.parametrize("case", FILE_CASES, ids=lambda c: c.id)
def test_file_round_trip(case: FileCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny checkpoint written as the release did loads strictly into a frozen network that
    computes what the original module computes; the second load reads the converted safetensors."""
    original = tiny_module(case.architecture, case.format)
    path = write_checkpoint(case, original, tmp_path)
    x, condition = sample_inputs(original)
    with torch.no_grad():
        expected = original(x, condition)
    sha = sha256_of(path)
    assert not converted_path(sha).exists()

    loaded = load_weights_file(path, architecture=case.architecture, params=TINY_PARAMS[case.architecture], preferred_format=case.format, label=f"test {path.name}")
    assert loaded.format == case.format
    assert loaded.sha256 == sha
    model = loaded.model
    assert not model.training and not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    state = model.state_dict()
    assert list(state) == list(original.state_dict())
    for key, value in original.state_dict().items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    torch.testing.assert_close(model(x, condition), expected, rtol=0, atol=1e-6)

    cached = converted_path(sha)
    assert cached.is_file() and converted_files() == [cached]
    with safe_open(str(cached), framework="pt") as handle:
        meta = handle.metadata()
    assert (meta["architecture"], meta["format"], meta["source_sha256"]) == (case.architecture, case.format, sha)
    assert set(load_file(str(cached))) == set(original.state_dict())

    def no_unpickling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the second load must read the converted safetensors, not unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    again = load_weights_file(path, architecture=case.architecture, params=TINY_PARAMS[case.architecture], preferred_format=case.format, label=f"test {path.name}")
    assert again.format == case.format
    assert not again.model.training and not any(p.requires_grad for p in again.model.parameters())
    torch.testing.assert_close(again.model(x, condition), expected, rtol=0, atol=1e-6)


def test_half_precision_checkpoint_loads_as_float32(tmp_path: Path) -> None:
    """A float16 checkpoint gives the same float32 network on the first and the cached load."""
    original = tiny_module("cyclegan", "official")
    path = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in original.state_dict().items()}, path)
    x, _ = sample_inputs(original)
    for _ in range(2):
        loaded = load_weights_file(path, architecture="cyclegan", params=TINY_PARAMS["cyclegan"], preferred_format="official", label="half.pth")
        assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
        assert loaded.model(x).dtype == torch.float32


# --------------------------------------------------------------------------------------------
# per-image InstanceNorm (StarGAN, GANimation official)


@pytest.mark.parametrize(("architecture", "fmt"), [("stargan", "official"), ("ganimation", "official")])
def test_instance_norm_uses_per_image_statistics(architecture: str, fmt: str, tmp_path: Path) -> None:
    """Running stats are loaded but never read or updated; train() and eval() give the same output,
    which differs from normalising with the running statistics."""
    original = tiny_module(architecture, fmt)
    path = tmp_path / "G.ckpt"
    torch.save(original.state_dict(), path)
    model = load_weights_file(path, architecture=architecture, params=TINY_PARAMS[architecture], preferred_format=fmt, label="G.ckpt").model
    norms = [m for m in model.modules() if isinstance(m, InputStatsInstanceNorm2d)]
    assert norms and all(n.track_running_stats for n in norms)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    assert any(k.endswith("running_mean") for k in buffers)
    x, condition = sample_inputs(model)

    model.train()
    out_train = model(x, condition)
    model.eval()
    out_eval = model(x, condition)
    for key, value in model.named_buffers():
        assert torch.equal(value, buffers[key]), f"{key} changed by a forward pass"
    assert torch.equal(out_train, out_eval)

    with_running_stats = copy.deepcopy(model)
    for module in with_running_stats.modules():
        if isinstance(module, InputStatsInstanceNorm2d):
            module.__class__ = nn.InstanceNorm2d  # the stock layer: eval() reads the running stats
    with_running_stats.eval()
    assert (with_running_stats(x, condition) - out_eval).abs().max() > 1e-2

    norm = norms[0]
    h = torch.randn(2, norm.num_features, 8, 8) * 3 + 1
    per_image = F.instance_norm(h, weight=norm.weight, bias=norm.bias, use_input_stats=True, eps=norm.eps)
    running = F.instance_norm(h, norm.running_mean, norm.running_var, norm.weight, norm.bias, use_input_stats=False, eps=norm.eps)
    torch.testing.assert_close(norm(h), per_image)
    assert (norm(h) - running).abs().max() > 1e-2


# --------------------------------------------------------------------------------------------
# rejection


def _drop(key: str) -> Callable[[StateDict], StateDict]:
    return lambda s: {k: v for k, v in s.items() if k != key}


def _add(key: str) -> Callable[[StateDict], StateDict]:
    return lambda s: {**s, key: torch.zeros(3)}


def _reshape(key: str) -> Callable[[StateDict], StateDict]:
    return lambda s: {**s, key: torch.zeros(s[key].shape[0], s[key].shape[1] + 1, *s[key].shape[2:])}


def _alias_differs(key: str) -> Callable[[StateDict], StateDict]:
    return lambda s: {**s, key: s[key].clone() + 1}


REJECTIONS = [
    # id, architecture, format, on-disk form, damage, words the message must contain
    ("missing-key", "stargan", "official", _without_counters, _drop("main.3.weight"), ["1 missing", "main.3.weight"]),
    ("unexpected-key", "cyclegan", "official", _plain, _add("model.99.weight"), ["1 unexpected", "model.99.weight"]),
    ("wrong-shape", "ganimation", "replicate", _plain, _reshape("color_top.0.weight"), ["wrong shape", "color_top.0.weight"]),
    ("alias-differs", "ganimation", "official", _debug_aliases, _alias_differs("debug2.0.weight"), ["debug2.0.weight", "does not match", "inconsistent"]),
]


@pytest.mark.parametrize(("architecture", "fmt", "form", "damage", "words"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_mismatched_checkpoint_is_rejected(
    architecture: str, fmt: str, form: Callable[..., StateDict], damage: Callable[[StateDict], StateDict], words: list[str], models_dir: Path
) -> None:
    """A damaged checkpoint gives a WeightsError naming the file and the problem; nothing is cached."""
    module = tiny_module(architecture, fmt)
    path = models_dir / "tiny-G.pth"
    torch.save(damage(form(module, module.state_dict())), path)
    spec = make_spec("tiny", architecture, TINY_PARAMS[architecture], fmt=fmt, filename=path.name)
    with pytest.raises(WeightsError) as info:
        load_model(spec)
    message = str(info.value)
    assert path.name in message and "\n" not in message
    for word in words:
        assert word in message
    assert converted_files() == []


def test_integer_weight_is_rejected_naming_the_key(tmp_path: Path) -> None:
    """An int64 tensor where a float parameter belongs is refused, and the message says which one."""
    state = dict(tiny_module("cyclegan", "official").state_dict())
    state["model.1.bias"] = torch.zeros_like(state["model.1.bias"], dtype=torch.long)
    path = tmp_path / "G.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        load_weights_file(path, architecture="cyclegan", params=TINY_PARAMS["cyclegan"], preferred_format="official", label="weights file G.pth")
    assert "G.pth" in str(info.value) and "model.1.bias" in str(info.value)
    assert converted_files() == []


def test_checkpoint_of_another_architecture_is_rejected(tmp_path: Path) -> None:
    """A CycleGAN file given for StarGAN is refused with the closest layout it missed."""
    module = tiny_module("cyclegan", "official")
    path = tmp_path / "horse2zebra.pth"
    torch.save(module.state_dict(), path)
    with pytest.raises(WeightsError, match=r"horse2zebra\.pth does not match any supported checkpoint layout \(closest as stargan/"):
        load_weights_file(path, architecture="stargan", params=TINY_PARAMS["stargan"], preferred_format="official", label="weights file horse2zebra.pth")
    assert converted_files() == []


# --------------------------------------------------------------------------------------------
# unsafe and damaged files


class ExecOnLoad:
    """Unpickling this runs code that writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.marker!r}, 'w').write('executed')",))


class Hyperparameters:
    """A plain object (as in checkpoints that pickle their argparse options); restoring it writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)
        self.lr = 1e-4

    def __setstate__(self, state: dict[str, Any]) -> None:
        Path(state["marker"]).write_text("executed")
        self.__dict__.update(state)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", [ExecOnLoad, Hyperparameters])
def test_pickle_with_objects_is_refused_unexecuted(payload: type, legacy: bool, tmp_path: Path) -> None:
    """A checkpoint holding a non-tensor object is refused by read_checkpoint (weights_only) and
    load_weights_file, and the object's code never runs; a full unpickle would run it."""
    marker = tmp_path / "marker"
    module = tiny_module("cyclegan", "official")
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": module.state_dict(), "opt": payload(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(WeightsError, match=r"evil\.pth .*objects other than tensors"):
        read_checkpoint(path)
    with pytest.raises(WeightsError):
        load_weights_file(path, architecture="cyclegan", params=TINY_PARAMS["cyclegan"], preferred_format="official", label="evil.pth")
    assert not marker.exists()
    assert converted_files() == []
    torch.load(path, weights_only=False)  # the payload is live: unrestricted unpickling executes it
    assert marker.exists()


def _valid_bytes(tmp_path: Path, kind: str) -> bytes:
    state = tiny_module("cyclegan", "official").state_dict()
    path = tmp_path / f"valid.{kind}"
    if kind == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=kind == "zip")
    return path.read_bytes()


DAMAGED: dict[str, tuple[str, Callable[[Path], bytes], str]] = {
    "empty": ("G.pth", lambda d: b"", "is empty"),
    "truncated-zip": ("G.pth", lambda d: (b := _valid_bytes(d, "zip"))[: len(b) // 2], "could not be read"),
    "truncated-legacy": ("G.pth", lambda d: (b := _valid_bytes(d, "legacy"))[: len(b) // 2], "could not be read"),
    "truncated-safetensors": ("G.safetensors", lambda d: (b := _valid_bytes(d, "safetensors"))[: len(b) // 2], "truncated"),
    "safetensors-header-only": ("G.pth", lambda d: _valid_bytes(d, "safetensors")[:40], "truncated"),
    "garbage": ("G.pth", lambda d: random.Random(0).randbytes(4096), "could not be read"),
    "html-error-page": ("G.pth", lambda d: b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", "could not be read"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_damaged_file_is_refused(damage: str, tmp_path: Path) -> None:
    """Empty, truncated or non-checkpoint bytes give a WeightsError naming the file; nothing is cached."""
    name, content, words = DAMAGED[damage]
    path = tmp_path / name
    path.write_bytes(content(tmp_path))
    with pytest.raises(WeightsError) as info:
        read_checkpoint(path)
    assert name in str(info.value) and words in str(info.value)
    with pytest.raises(WeightsError):
        load_weights_file(path, architecture="cyclegan", params=TINY_PARAMS["cyclegan"], preferred_format="official", label=name)
    assert converted_files() == []


@pytest.mark.parametrize("obj", [{"epoch": 3, "lr": 0.1}, [torch.zeros(2)], {}], ids=["no-tensors", "list", "empty-dict"])
def test_pickle_without_state_dict_is_refused(obj: Any, tmp_path: Path) -> None:
    """A readable pickle that holds no name -> tensor mapping is refused with WeightsError."""
    path = tmp_path / "G.pth"
    torch.save(obj, path)
    with pytest.raises(WeightsError, match=r"G\.pth holds no state_dict of tensors"):
        read_checkpoint(path)


# --------------------------------------------------------------------------------------------
# the convert command

TINY_CYCLEGAN = {**TINY_PARAMS["cyclegan"], "norm_affine": False}
MANIFEST = f"""\
version: 1
models:
  tiny-cyclegan:
    description: tiny CycleGAN for the convert tests
    architecture: cyclegan
    params: {{input_nc: 3, output_nc: 3, ngf: {TINY_CYCLEGAN['ngf']}, n_blocks: {TINY_CYCLEGAN['n_blocks']}, norm_affine: false}}
    image_size: 32
    preprocessing: center_crop_resize
    license: test
    weights:
      local: horse2zebra.pth
      format: official
"""


def _run_convert(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "deepshield", "convert", *args],
        env={**os.environ, "DEEPSHIELD_MANIFEST": str(manifest)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("model_args", [["--model", "tiny-cyclegan"], []], ids=["named", "detected"])
def test_convert_cli(model_args: list[str], tmp_path: Path) -> None:
    """`convert` turns a released-style pickle into a canonical safetensors file."""
    module = tiny_module("cyclegan", "official")
    assert module.model[2].affine is False
    case = next(c for c in FILE_CASES if c.id == "cyclegan-official-released")
    source = write_checkpoint(case, module, tmp_path)
    destination = tmp_path / "out" / "horse2zebra.safetensors"
    result = _run_convert(tmp_path, str(source), str(destination), *model_args)
    assert result.returncode == 0, result.stderr
    assert "official" in result.stdout
    converted = load_file(str(destination))
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected_layout(get_architecture("cyclegan"), TINY_CYCLEGAN)
    for key, value in module.state_dict().items():
        assert torch.equal(converted[key], value), key
    with safe_open(str(destination), framework="pt") as handle:
        assert handle.metadata()["format"] == "official"


def test_convert_cli_garbage_source(tmp_path: Path) -> None:
    """A garbage source exits non-zero with one `error: ...` line and writes nothing."""
    source = tmp_path / "garbage.pth"
    source.write_bytes(random.Random(1).randbytes(2048))
    destination = tmp_path / "out.safetensors"
    result = _run_convert(tmp_path, str(source), str(destination), "--model", "tiny-cyclegan")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "garbage.pth" in lines[0], result.stderr
    assert not destination.exists()
