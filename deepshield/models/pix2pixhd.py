"""pix2pixHD generators (Wang et al., 2018): global generator and local enhancer.

The global generator is the ResNet generator with 4 down-samplings (keys `model.1` .. `model.38`).
The local enhancer keeps the global generator at twice its own width without the output head
(`model.0..36`) and adds `model1_1` (full-resolution encoder) and `model1_2` (residual blocks,
up-sampling and head). The released Cityscapes models take 36 label channels (35 one-hot classes
+ instance edges), not a photo.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from deepshield.models.layers import ReflectResnetBlock, reflect_resnet_trunk, rgb_head
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


class GlobalGenerator(Generator):
    """x [B, input_nc, H, W] -> [B, output_nc, H, W] in [-1, 1]; H, W multiples of 2**n_downsampling."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_downsampling: int = 4, n_blocks: int = 9) -> None:
        super().__init__()
        self.input_channels = input_nc
        self.size_multiple = 2**n_downsampling
        trunk = reflect_resnet_trunk(input_nc, ngf=ngf, n_downsampling=n_downsampling, n_blocks=n_blocks)
        self.model = nn.Sequential(*trunk, *rgb_head(ngf, output_nc))

    def forward(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        return self.model(x)


class LocalEnhancer(Generator):
    """One local enhancer over a global generator of width 2 * ngf running at half resolution.

    x [B, input_nc, H, W] -> [B, output_nc, H, W] in [-1, 1]; H, W multiples of 2**(n_downsample_global + 1).
    """

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 32,
        n_downsample_global: int = 4,
        n_blocks_global: int = 9,
        n_blocks_local: int = 3,
    ) -> None:
        super().__init__()
        self.input_channels = input_nc
        self.size_multiple = 2 ** (n_downsample_global + 1)
        global_ngf = ngf * 2
        self.model = nn.Sequential(
            *reflect_resnet_trunk(input_nc, ngf=global_ngf, n_downsampling=n_downsample_global, n_blocks=n_blocks_global)
        )
        self.model1_1 = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(inplace=True),
            nn.Conv2d(ngf, global_ngf, kernel_size=3, stride=2, padding=1),
            nn.InstanceNorm2d(global_ngf),
            nn.ReLU(inplace=True),
        )
        self.model1_2 = nn.Sequential(
            *[ReflectResnetBlock(global_ngf, norm_affine=False) for _ in range(n_blocks_local)],
            nn.ConvTranspose2d(global_ngf, ngf, kernel_size=3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(inplace=True),
            *rgb_head(ngf, output_nc),
        )

    def forward(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        half = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
        return self.model1_2(self.model1_1(x) + self.model(half))


def build_global(input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_downsampling: int = 4, n_blocks: int = 9) -> GlobalGenerator:
    return GlobalGenerator(input_nc=input_nc, output_nc=output_nc, ngf=ngf, n_downsampling=n_downsampling, n_blocks=n_blocks)


def build_local(
    input_nc: int = 3,
    output_nc: int = 3,
    ngf: int = 32,
    n_downsample_global: int = 4,
    n_blocks_global: int = 9,
    n_blocks_local: int = 3,
) -> LocalEnhancer:
    return LocalEnhancer(
        input_nc=input_nc,
        output_nc=output_nc,
        ngf=ngf,
        n_downsample_global=n_downsample_global,
        n_blocks_global=n_blocks_global,
        n_blocks_local=n_blocks_local,
    )


def infer_global(state_dict: StateDict) -> dict[str, int]:
    """Top-level convs: the 7x7 input conv, n_downsampling down and as many up, the 7x7 head."""
    layers = convs(state_dict, "model.")
    return {
        "input_nc": layers[0][1],
        "output_nc": layers[-1][0],
        "ngf": layers[0][0],
        "n_downsampling": (len(layers) - 2) // 2,
        "n_blocks": blocks(state_dict, "model.", "conv_block.1.weight"),
    }


def infer_local(state_dict: StateDict) -> dict[str, int]:
    """The enhancer's convs give input_nc, ngf, output_nc; the headless global trunk (input conv,
    n down, n up) gives n_downsample_global."""
    enhancer, trunk = convs(state_dict, "model1_1."), convs(state_dict, "model.")
    return {
        "input_nc": enhancer[0][1],
        "output_nc": convs(state_dict, "model1_2.")[-1][0],
        "ngf": enhancer[0][0],
        "n_downsample_global": (len(trunk) - 1) // 2,
        "n_blocks_global": blocks(state_dict, "model.", "conv_block.1.weight"),
        "n_blocks_local": blocks(state_dict, "model1_2.", "conv_block.1.weight"),
    }


_OFFICIAL = CheckpointFormat(
    "official",
    "NVIDIA/pix2pixHD latest_net_G.pth (running stats of pre-0.4 InstanceNorm dropped if present)",
    drop_stale_norm_buffers,
)

PIX2PIXHD_GLOBAL = register(
    Architecture("pix2pixhd-global", "pix2pixHD global generator", build_global, (_OFFICIAL,), infer=infer_global)
)
PIX2PIXHD_LOCAL = register(
    Architecture("pix2pixhd-local", "pix2pixHD local enhancer (global generator + 1 enhancer)", build_local, (_OFFICIAL,), infer=infer_local)
)
