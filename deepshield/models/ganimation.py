"""GANimation generator (Pumarola et al., 2018): 17 action-unit intensities, 128 px.

Both published layouts predict a colour image C (tanh) and an attention mask A (sigmoid) from
the photo x and the target action units; the deepfake is `A * x + (1 - A) * C`.

- `replicate` (donydchen/ganimation_replicate `SplitGenerator`, the `30_net_gen.pth` shipped
  with video-retalking): convs with bias, InstanceNorm without affine or statistics, zero
  padding; keys `model.*`, `color_top.0`, `au_top.0`.
- `official` (vipermu/ganimation): the StarGAN body (no conv bias, affine InstanceNorm run
  with per-image statistics); keys `main.*`, `im_reg.0`, `im_att.0`, plus alias copies of the
  body under `debug1..debug4` that the converter checks and drops.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from deepshield.models.layers import tile_condition
from deepshield.models.registry import (
    Architecture,
    CheckpointFormat,
    Generator,
    StateDict,
    blocks,
    convs,
    identity,
    register,
)
from deepshield.models.stargan import stargan_encoder_decoder


class ZeroPadResnetBlock(nn.Module):
    """Residual block of ganimation_replicate: conv3x3(pad 1), norm, ReLU, conv3x3, norm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, padding=1),
            nn.InstanceNorm2d(dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, kernel_size=3, padding=1),
            nn.InstanceNorm2d(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


def _replicate_body(in_channels: int, ngf: int, n_blocks: int) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, ngf, kernel_size=7, padding=3),
        nn.InstanceNorm2d(ngf),
        nn.ReLU(inplace=True),
    ]
    dim = ngf
    for _ in range(2):
        layers += [nn.Conv2d(dim, dim * 2, kernel_size=4, stride=2, padding=1), nn.InstanceNorm2d(dim * 2), nn.ReLU(inplace=True)]
        dim *= 2
    layers += [ZeroPadResnetBlock(dim) for _ in range(n_blocks)]
    for _ in range(2):
        layers += [
            nn.ConvTranspose2d(dim, dim // 2, kernel_size=4, stride=2, padding=1),
            nn.InstanceNorm2d(dim // 2),
            nn.ReLU(inplace=True),
        ]
        dim //= 2
    return nn.Sequential(*layers)


def _head(channels: int, outputs: int, activation: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, outputs, kernel_size=7, padding=3, bias=False), activation)


class GANimationGenerator(Generator):
    """x [B, 3, H, W] in [-1, 1] + action units [B, c_dim] (intensity / 5, about [0, 1])
    -> attention-blended image [B, 3, H, W] in [-1, 1]."""

    def __init__(self, variant: str = "replicate", conv_dim: int = 64, c_dim: int = 17, repeat_num: int = 6) -> None:
        super().__init__()
        self.condition_dim = c_dim
        self.variant = variant
        if variant == "replicate":
            self.model = _replicate_body(3 + c_dim, conv_dim, repeat_num)
            self.color_top = _head(conv_dim, 3, nn.Tanh())
            self.au_top = _head(conv_dim, 1, nn.Sigmoid())
        elif variant == "official":
            self.main = nn.Sequential(*stargan_encoder_decoder(3 + c_dim, conv_dim, repeat_num))
            self.im_reg = _head(conv_dim, 3, nn.Tanh())
            self.im_att = _head(conv_dim, 1, nn.Sigmoid())
        else:
            raise ValueError(f"unknown GANimation variant {variant!r} (replicate or official)")

    def color_and_attention(self, x: Tensor, condition: Tensor) -> tuple[Tensor, Tensor]:
        """Colour [B, 3, H, W] in [-1, 1] and attention [B, 1, H, W] in [0, 1]."""
        inputs = tile_condition(x, condition)
        if self.variant == "replicate":
            features = self.model(inputs)
            return self.color_top(features), self.au_top(features)
        features = self.main(inputs)
        return self.im_reg(features), self.im_att(features)

    def forward(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        if condition is None:
            raise ValueError("GANimation needs a target action-unit vector")
        color, attention = self.color_and_attention(x, condition)
        return attention * x + (1 - attention) * color


_ALIAS = re.compile(r"^debug[1-4]\.(.*)$")


def drop_debug_aliases(state_dict: StateDict) -> StateDict:
    """vipermu's Generator keeps `debug1..debug4` views over the layers of `main`; every alias
    entry must equal its `main` twin (anything else is a corrupt file) and is then dropped."""
    out: StateDict = {}
    for key, value in state_dict.items():
        match = _ALIAS.match(key)
        if match is None:
            out[key] = value
            continue
        twin = f"main.{match.group(1)}"
        if twin not in state_dict or not torch.equal(state_dict[twin], value):
            raise ValueError(f"alias entry {key!r} does not match {twin!r}: the checkpoint is inconsistent")
    return out


def infer_ganimation(state_dict: StateDict) -> dict[str, int]:
    """conv_dim, c_dim (first conv [conv_dim, 3 + c_dim, 7, 7]) and repeat_num of either body."""
    body, inner = ("model.", "conv_block.0.weight") if "model.0.weight" in state_dict else ("main.", "main.0.weight")
    first = convs(state_dict, body)[0]
    return {"conv_dim": first[0], "c_dim": first[1] - 3, "repeat_num": blocks(state_dict, body, inner)}


def build_ganimation(variant: str = "replicate", conv_dim: int = 64, c_dim: int = 17, repeat_num: int = 6) -> GANimationGenerator:
    return GANimationGenerator(variant=variant, conv_dim=conv_dim, c_dim=c_dim, repeat_num=repeat_num)


GANIMATION = register(
    Architecture(
        name="ganimation",
        description="GANimation generator: action-unit conditioned, colour + attention heads",
        build=build_ganimation,
        formats=(
            CheckpointFormat(
                "replicate",
                "donydchen/ganimation_replicate <epoch>_net_gen.pth (video-retalking 30_net_gen.pth)",
                identity,
                {"variant": "replicate"},
            ),
            CheckpointFormat(
                "official",
                "vipermu/ganimation <iter>-<epoch>-G.ckpt (with debug1..4 alias keys)",
                drop_debug_aliases,
                {"variant": "official"},
            ),
        ),
        infer=infer_ganimation,
    )
)
