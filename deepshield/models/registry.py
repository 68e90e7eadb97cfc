"""Registry from architecture name to builder and the checkpoint layouts it can load."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

StateDict = dict[str, Tensor]


class Generator(nn.Module):
    """An image-to-image generator as the attacks see it.

    `forward(x, condition)`: x [B, input_channels, H, W] in [-1, 1] (H, W multiples of
    `size_multiple`), condition [B, condition_dim] or None for unconditional models;
    returns [B, 3, H, W] in [-1, 1].
    """

    condition_dim: int = 0
    input_channels: int = 3
    size_multiple: int = 4

    def forward(self, x: Tensor, condition: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class CheckpointFormat:
    """One published key layout of an architecture.

    `convert` maps a checkpoint in this layout onto the keys of the module built with the
    architecture's parameters updated by `params` (what the layout implies, e.g. affine norms).
    It may only rename keys, drop documented dead entries, or fill documented defaults.
    """

    name: str
    description: str
    convert: Callable[[StateDict], StateDict]
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Architecture:
    """`infer` reads the builder's parameters from a checkpoint in the canonical layout (what the
    formats' `convert` returns); it raises KeyError / ValueError when the keys do not fit."""

    name: str
    description: str
    build: Callable[..., Generator]
    formats: tuple[CheckpointFormat, ...]
    infer: Callable[[StateDict], dict[str, Any]]

    def format(self, name: str) -> CheckpointFormat:
        for fmt in self.formats:
            if fmt.name == name:
                return fmt
        known = ", ".join(f.name for f in self.formats)
        raise KeyError(f"architecture {self.name!r} has no checkpoint format {name!r} (known: {known})")


ARCHITECTURES: dict[str, Architecture] = {}


def register(architecture: Architecture) -> Architecture:
    if architecture.name in ARCHITECTURES:
        raise ValueError(f"architecture {architecture.name!r} registered twice")
    ARCHITECTURES[architecture.name] = architecture
    return architecture


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise KeyError(f"unknown architecture {name!r} (known: {known})") from None


def convs(state_dict: StateDict, prefix: str) -> list[tuple[int, ...]]:
    """Shapes of the conv weights `<prefix><i>.weight` (4-d) in index order (norm weights are 1-d)."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.weight$")
    found = sorted((int(m.group(1)), tuple(v.shape)) for k, v in state_dict.items() if (m := pattern.match(k)) and v.dim() == 4)
    if not found:
        raise KeyError(f"no {prefix}<i>.weight convolutions")
    return [shape for _, shape in found]


def blocks(state_dict: StateDict, prefix: str, inner: str) -> int:
    """How many modules `<prefix><i>.<inner>` the checkpoint holds (residual blocks)."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.{re.escape(inner)}$")
    return len({m.group(1) for k in state_dict if (m := pattern.match(k))})


def identity(state_dict: StateDict) -> StateDict:
    return dict(state_dict)


def drop_stale_norm_buffers(state_dict: StateDict) -> StateDict:
    """Drop running statistics of non-affine InstanceNorm layers written by torch <= 0.3.

    Such layers hold no weight; old torch saved `running_mean`, `running_var` (and later
    `num_batches_tracked`) for them anyway, which current torch rejects. They never affect the
    output of an InstanceNorm without running statistics, so the official loaders drop them too.
    """
    suffixes = (".running_mean", ".running_var", ".num_batches_tracked")
    kept: StateDict = {}
    for key, value in state_dict.items():
        stem = key.rsplit(".", 1)[0]
        if key.endswith(suffixes) and f"{stem}.weight" not in state_dict:
            continue
        kept[key] = value
    return kept
