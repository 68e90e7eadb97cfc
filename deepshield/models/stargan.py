"""StarGAN generator (Choi et al., 2018), CelebA release: 5 binary attributes, 128 or 256 px.

Canonical keys are those of the official `200000-G.ckpt` as saved by torch >= 0.4.1:
`main.0` conv7x7, `main.{3,6}` stride-2 convs, `main.{9..14}` residual blocks,
`main.{15,18}` transposed convs, `main.21` output conv; norms carry running statistics that the
released models never used (they ran in training mode), so inference normalises per image.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from deepshield.models.layers import InputStatsInstanceNorm2d, tile_condition
from deepshield.models.registry import (
    Architecture,
    CheckpointFormat,
    Generator,
    StateDict,
    blocks,
    convs,
    register,
)


def _norm(channels: int) -> nn.Module:
    return InputStatsInstanceNorm2d(channels, affine=True, track_running_stats=True)


class StarGANResidualBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False),
            _norm(dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False),
            _norm(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.main(x)


def stargan_encoder_decoder(in_channels: int, conv_dim: int, repeat_num: int) -> list[nn.Module]:
    """The StarGAN body (also GANimation's): conv7x7, 2 down, residual trunk, 2 up.

    Layer indices: 0 conv, 1 norm, 3/6 down convs, 9.. residual blocks, then transposed convs.
    Output has `conv_dim` channels at the input resolution.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, conv_dim, kernel_size=7, padding=3, bias=False),
        _norm(conv_dim),
        nn.ReLU(inplace=True),
    ]
    dim = conv_dim
    for _ in range(2):
        layers += [
            nn.Conv2d(dim, dim * 2, kernel_size=4, stride=2, padding=1, bias=False),
            _norm(dim * 2),
            nn.ReLU(inplace=True),
        ]
        dim *= 2
    layers += [StarGANResidualBlock(dim) for _ in range(repeat_num)]
    for _ in range(2):
        layers += [
            nn.ConvTranspose2d(dim, dim // 2, kernel_size=4, stride=2, padding=1, bias=False),
            _norm(dim // 2),
            nn.ReLU(inplace=True),
        ]
        dim //= 2
    return layers


class StarGANGenerator(Generator):
    """x [B, 3, H, W] in [-1, 1] + attributes [B, c_dim] in {0, 1} -> [B, 3, H, W] in [-1, 1]."""

    def __init__(self, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6) -> None:
        super().__init__()
        self.condition_dim = c_dim
        layers = stargan_encoder_decoder(3 + c_dim, conv_dim, repeat_num)
        layers += [nn.Conv2d(conv_dim, 3, kernel_size=7, padding=3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        if condition is None:
            raise ValueError("StarGAN needs a target attribute vector")
        return self.main(tile_condition(x, condition))


def fill_num_batches_tracked(state_dict: StateDict) -> StateDict:
    """Official files saved by torch 0.3 lack `num_batches_tracked`; fill the value torch uses (0)."""
    out = dict(state_dict)
    for key in state_dict:
        if key.endswith(".running_mean"):
            counter = key[: -len("running_mean")] + "num_batches_tracked"
            out.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return out


_LORNATANG_PREFIX = re.compile(r"^(first_layer|down_sampling|trunk|up_sampling|last_layer)\.(\d+)\.(.*)$")


def from_lornatang(state_dict: StateDict) -> StateDict:
    """Map the Hub layout of goodfellowliu/StarGAN-PyTorch onto the official one.

    first_layer.{0,1} -> main.{0,1}; down_sampling.i -> main.(3+i); trunk.k -> main.(9+k);
    up_sampling.i -> main.(9+R+i) with R residual blocks; last_layer.0 -> main.(15+R).
    """
    if not any(_LORNATANG_PREFIX.match(key) for key in state_dict):
        raise ValueError("no first_layer/down_sampling/trunk/up_sampling/last_layer keys: not the lornatang layout")
    repeat_num = len({int(m.group(2)) for k in state_dict if (m := _LORNATANG_PREFIX.match(k)) and m.group(1) == "trunk"})
    offsets = {"first_layer": 0, "down_sampling": 3, "trunk": 9, "up_sampling": 9 + repeat_num, "last_layer": 15 + repeat_num}
    out: StateDict = {}
    for key, value in state_dict.items():
        match = _LORNATANG_PREFIX.match(key)
        if match is None:
            out[key] = value  # left for the strict comparison to report
            continue
        group, index, rest = match.groups()
        out[f"main.{offsets[group] + int(index)}.{rest}"] = value
    return out


def infer_stargan(state_dict: StateDict) -> dict[str, int]:
    """conv_dim and c_dim from the first conv [conv_dim, 3 + c_dim, 7, 7]; repeat_num = residual blocks."""
    first = convs(state_dict, "main.")[0]
    return {"conv_dim": first[0], "c_dim": first[1] - 3, "repeat_num": blocks(state_dict, "main.", "main.0.weight")}


def build_stargan(conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6) -> StarGANGenerator:
    return StarGANGenerator(conv_dim=conv_dim, c_dim=c_dim, repeat_num=repeat_num)


STARGAN = register(
    Architecture(
        name="stargan",
        description="StarGAN generator (yunjey/stargan), attribute-conditioned, per-image InstanceNorm",
        build=build_stargan,
        formats=(
            CheckpointFormat(
                "official",
                "yunjey/stargan 200000-G.ckpt (plain state_dict; torch 0.3 files lack num_batches_tracked)",
                fill_num_batches_tracked,
            ),
            CheckpointFormat(
                "lornatang",
                "goodfellowliu/StarGAN-PyTorch g_celeba-*.pth.tar ({'state_dict': ...}, renamed layers)",
                from_lornatang,
            ),
        ),
        infer=infer_stargan,
    )
)
