"""Building blocks shared by the generator architectures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class InputStatsInstanceNorm2d(nn.InstanceNorm2d):
    """InstanceNorm that always normalises with the statistics of each input image.

    StarGAN and GANimation were released with `track_running_stats=True`, but their test code
    never called `eval()`, so the published results use per-image statistics. This layer keeps the
    checkpoint's buffers (so the key layout loads strictly) and never reads or updates them,
    whatever the module's train/eval mode.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.instance_norm(
            x, None, None, self.weight, self.bias, use_input_stats=True, momentum=0.0, eps=self.eps
        )


def tile_condition(x: Tensor, condition: Tensor) -> Tensor:
    """Concatenate a condition vector to an image as constant planes.

    x: [B, C, H, W]; condition: [B, D]  ->  [B, C + D, H, W].
    """
    planes = condition[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
    return torch.cat([x, planes.to(x.dtype)], dim=1)


class ReflectResnetBlock(nn.Module):
    """Residual block of the CycleGAN / pix2pixHD generators (reflection padding).

    Layout of `block`: 0 pad, 1 conv3x3, 2 norm, 3 ReLU, 4 pad, 5 conv3x3, 6 norm.
    """

    def __init__(self, dim: int, *, norm_affine: bool) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3),
            nn.InstanceNorm2d(dim, affine=norm_affine),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3),
            nn.InstanceNorm2d(dim, affine=norm_affine),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


def reflect_resnet_trunk(
    in_channels: int,
    *,
    ngf: int,
    n_downsampling: int,
    n_blocks: int,
    norm_affine: bool = False,
) -> list[nn.Module]:
    """Encoder, residual trunk and decoder of the Johnson-style ResNet generator.

    This is the body shared by CycleGAN's `ResnetGenerator` (2 down-samplings) and pix2pixHD's
    `GlobalGenerator` (4 down-samplings); the caller appends the output head. Indices follow the
    published checkpoints: 0 pad, 1 conv7x7, 2 norm, 3 ReLU, then 3 layers per down-sampling,
    `n_blocks` residual blocks and 3 layers per up-sampling.
    """
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(in_channels, ngf, kernel_size=7),
        nn.InstanceNorm2d(ngf, affine=norm_affine),
        nn.ReLU(inplace=True),
    ]
    for i in range(n_downsampling):
        width = ngf * 2**i
        layers += [
            nn.Conv2d(width, width * 2, kernel_size=3, stride=2, padding=1),
            nn.InstanceNorm2d(width * 2, affine=norm_affine),
            nn.ReLU(inplace=True),
        ]
    bottleneck = ngf * 2**n_downsampling
    layers += [ReflectResnetBlock(bottleneck, norm_affine=norm_affine) for _ in range(n_blocks)]
    for i in range(n_downsampling):
        width = ngf * 2 ** (n_downsampling - i)
        layers += [
            nn.ConvTranspose2d(width, width // 2, kernel_size=3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(width // 2, affine=norm_affine),
            nn.ReLU(inplace=True),
        ]
    return layers


def rgb_head(ngf: int, out_channels: int) -> list[nn.Module]:
    """Output head of the ResNet generators: pad, conv7x7, tanh -> [-1, 1]."""
    return [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, kernel_size=7), nn.Tanh()]
