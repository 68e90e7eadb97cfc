"""CycleGAN ResNet generator (Zhu et al., 2017), `resnet_9blocks`, 256 px.

Canonical keys are those of junyanz/pytorch-CycleGAN-and-pix2pix `ResnetGenerator`: `model.1`
conv7x7, `model.{4,7}` down convs, `model.{10..18}.conv_block.{1,5}` residual convs,
`model.{19,22}` transposed convs, `model.26` output conv; norms at 2, 5, 8, 20, 23.
"""

from __future__ import annotations

from torch import Tensor, nn

from deepshield.models.layers import reflect_resnet_trunk, rgb_head
from deepshield.models.registry import (
    Architecture,
    CheckpointFormat,
    Generator,
    StateDict,
    blocks,
    convs,
    drop_stale_norm_buffers,
    register,
)


class ResnetGenerator(Generator):
    """x [B, input_nc, H, W] in [-1, 1] -> [B, output_nc, H, W] in [-1, 1] (H, W multiples of 4)."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9, norm_affine: bool = False) -> None:
        super().__init__()
        self.input_channels = input_nc
        self.size_multiple = 4
        trunk = reflect_resnet_trunk(input_nc, ngf=ngf, n_downsampling=2, n_blocks=n_blocks, norm_affine=norm_affine)
        self.model = nn.Sequential(*trunk, *rgb_head(ngf, output_nc))

    def forward(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        return self.model(x)


def from_vintagify(state_dict: StateDict) -> StateDict:
    """vintagify names the residual blocks' Sequential `block` instead of `conv_block`."""
    return {key.replace(".block.", ".conv_block."): value for key, value in state_dict.items()}


def infer_cyclegan(state_dict: StateDict) -> dict[str, int]:
    """input_nc and ngf from the first conv, output_nc from the last, n_blocks = residual blocks."""
    layers = convs(state_dict, "model.")
    return {"input_nc": layers[0][1], "output_nc": layers[-1][0], "ngf": layers[0][0], "n_blocks": blocks(state_dict, "model.", "conv_block.1.weight")}


def build_cyclegan(input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9, norm_affine: bool = False) -> ResnetGenerator:
    return ResnetGenerator(input_nc=input_nc, output_nc=output_nc, ngf=ngf, n_blocks=n_blocks, norm_affine=norm_affine)


CYCLEGAN = register(
    Architecture(
        name="cyclegan",
        description="CycleGAN ResNet generator (reflection padding, InstanceNorm)",
        build=build_cyclegan,
        formats=(
            CheckpointFormat(
                "official",
                "junyanz latest_net_G*.pth / released <name>.pth (stale InstanceNorm buffers dropped)",
                drop_stale_norm_buffers,
                {"norm_affine": False},
            ),
            CheckpointFormat(
                "vintagify",
                "PyPI vintagify G_A2B_epoch33.pth (affine InstanceNorm, `block` naming)",
                from_vintagify,
                {"norm_affine": True},
            ),
        ),
        infer=infer_cyclegan,
    )
)
