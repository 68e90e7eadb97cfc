"""Random differentiable image transformations for expectation-over-transformation (EOT) attacks.

Pure torch, no model knowledge. Every transform is a callable
`transform(x, generator=None) -> Tensor` on x [B, C, H, W] in [-1, 1] (C = 3, or 1 for a grayscale photo) that returns the same shape
in [-1, 1] and lets gradients flow back to x. Random parameters are drawn per sample, on the CPU,
from the `torch.Generator` passed in (the default generator when None), so a seed gives the same
draw on every device.

- `DiffJPEG`: differentiable JPEG (libjpeg's pipeline: YCbCr, 4:2:0 box downsampling, 8x8 DCT,
  IJG tables scaled by quality, straight-through or cubic rounding, inverse DCT, "fancy"
  triangle upsampling, RGB). Its forward pass is within about 1/255 of PIL's encoder/decoder.
- `RandomResize` (down by a random factor, bilinear antialiased, back up), `RandomGaussianBlur`,
  `RandomShift` (sub-pixel translation with replicated borders), fixed `GaussianBlur` and `BoxBlur`.
- `sharing_transforms(step)`: the robust attack's cycle of what sharing does to a photo (JPEG 75
  every other step; JPEG at a random quality, down/up-scaling, blur, shifts), one per iteration.
- `spread_spectrum_blurs(step)`: the blur schedule of Ruiz et al. 2020 ("spread-spectrum"
  evasion of blur defenses): a different blur type/size at every attack iteration, cycling.
- `scheduled_objective`: wraps an attack objective (`deepshield.attacks`) so that iteration k
  sees its inputs through `schedule(k)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from deepshield.attacks import Objective

__all__ = [
    "SHARING_TRANSFORMS",
    "SPREAD_SPECTRUM_BLURS",
    "BoxBlur",
    "DiffJPEG",
    "GaussianBlur",
    "RandomGaussianBlur",
    "RandomResize",
    "RandomShift",
    "Transform",
    "jpeg",
    "quantization_tables",
    "scheduled_objective",
    "sharing_transforms",
    "spread_spectrum_blurs",
]


class Transform(Protocol):
    """x [B, 3, H, W] in [-1, 1] -> same shape in [-1, 1], differentiable in x."""

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor: ...


def _uniform(count: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    """`count` floats uniform in [low, high], drawn on the CPU (device-independent seeds)."""
    return low + (high - low) * torch.rand(count, generator=generator)


def _range(value: float | tuple[float, float]) -> tuple[float, float]:
    low, high = (value, value) if isinstance(value, (int, float)) else value
    if low > high:
        raise ValueError(f"empty range ({low}, {high})")
    return float(low), float(high)


# ----------------------------------------------------------------------------- JPEG

# ITU-T T.81 Annex K tables (IJG's std_luminance/chrominance_quant_tbl), natural row-major order.
_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
_CHROMINANCE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
)  # fmt: skip


def quantization_tables(quality: Tensor) -> tuple[Tensor, Tensor]:
    """IJG quality scaling (libjpeg `jpeg_quality_scaling`, baseline-clamped to 1..255).

    quality [B] integers in 1..100 -> (luminance, chrominance) tables [B, 8, 8] (float32).
    """
    q = quality.to(torch.float64).clamp(1, 100).round()
    scale = torch.where(q < 50, torch.floor(5000 / q), 200 - 2 * q).view(-1, 1, 1)
    tables = []
    for base in (_LUMINANCE, _CHROMINANCE):
        t = torch.tensor(base, dtype=torch.float64).view(1, 8, 8)
        tables.append(torch.floor((t * scale + 50) / 100).clamp(1, 255).float())
    return tables[0], tables[1]


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> Tensor:
    """Orthonormal 8-point DCT-II matrix D: coefficients = D @ block @ D.T (JPEG's FDCT)."""
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * n.view(1, 8) + 1) * n.view(8, 1) * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(device=device, dtype=dtype)


def _round_ste(x: Tensor) -> Tensor:
    """Exact rounding forward, identity gradient (straight-through)."""
    return x + (torch.round(x) - x).detach()


def _round_cubic(x: Tensor) -> Tensor:
    """Shin & Song 2017: round(x) + (x - round(x))^3; gradient 3 (x - round(x))^2."""
    r = torch.round(x).detach()
    return r + (x - r) ** 3


_ROUNDING: dict[str, Callable[[Tensor], Tensor]] = {"ste": _round_ste, "cubic": _round_cubic}

# libjpeg's colour conversion (jccolor.c / jdcolor.c, JFIF full range)
_RGB_TO_YCC = ((0.299, 0.587, 0.114), (-0.168735892, -0.331264108, 0.5), (0.5, -0.418687589, -0.081312411))
_YCC_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136286, -0.714136286), (1.0, 1.772, 0.0))


def _blocks_dct(plane: Tensor, table: Tensor, dct: Tensor, rounding: Callable[[Tensor], Tensor]) -> Tensor:
    """Quantise and dequantise one component in the 8x8 DCT domain.

    plane [B, C, H, W] (H, W multiples of 8, level-shifted to about -128..127); table [B, 8, 8].
    """
    b, c, h, w = plane.shape
    blocks = plane.view(b, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)  # [B, C, h, w, 8, 8]
    coefficients = dct @ blocks @ dct.T
    t = table.view(b, 1, 1, 1, 8, 8)
    restored = dct.T @ (rounding(coefficients / t) * t) @ dct
    return restored.permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)


def jpeg(
    x: Tensor,
    quality: Tensor | float,
    *,
    subsampling: Literal["4:2:0", "4:4:4"] = "4:2:0",
    rounding: Literal["ste", "cubic"] = "ste",
    grid_offset: tuple[int, int] = (0, 0),
) -> Tensor:
    """Differentiable JPEG compress + decompress.

    x [B, 3, H, W] in [-1, 1] (or [B, 1, H, W]: grayscale, compressed as gray RGB, which keeps
    only the luma plane); quality a number or [B] (1..100, IJG scale as PIL's `quality`).
    Returns x's shape in [-1, 1]. The image is padded to whole MCUs by edge replication, as
    libjpeg does; the decoder upsamples chroma with libjpeg's default "fancy" triangle filter
    (= bilinear, align_corners=False). Pixels are rounded to 8 bits (straight-through) at the end.
    `grid_offset` (top, left): where x sits in the encoded photo, so that a crop is compressed on
    the photo's own 8x8 / 16x16 block grid (the rows/columns before it are edge-replicated).
    """
    if x.dim() == 4 and x.shape[1] == 1:
        gray = jpeg(x.expand(-1, 3, -1, -1), quality, subsampling=subsampling, rounding=rounding, grid_offset=grid_offset)
        return gray[:, :1]
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected [B, 3, H, W] or [B, 1, H, W], got {tuple(x.shape)}")
    if subsampling not in ("4:2:0", "4:4:4"):
        raise ValueError(f"subsampling must be '4:2:0' or '4:4:4', got {subsampling!r}")
    b, _, h, w = x.shape
    quality = torch.as_tensor(quality, dtype=torch.float32).detach().cpu().flatten()
    if quality.numel() == 1:
        quality = quality.expand(b)
    luma_table, chroma_table = (t.to(x.device, x.dtype) for t in quantization_tables(quality))
    round_fn = _ROUNDING[rounding]
    dct = _dct_matrix(x.device, x.dtype)
    mcu = 16 if subsampling == "4:2:0" else 8
    top, left = grid_offset[0] % mcu, grid_offset[1] % mcu
    pixels = (x + 1) * 127.5
    pixels = F.pad(pixels, (left, -(left + w) % mcu, top, -(top + h) % mcu), mode="replicate")
    ycc = torch.einsum("ij,bjhw->bihw", torch.tensor(_RGB_TO_YCC, device=x.device, dtype=x.dtype), pixels)
    # libjpeg stores every intermediate plane as 8-bit samples: round them (straight-through, so
    # the gradient is unchanged) to follow its forward pass closely.
    ycc = _round_ste(ycc)
    luma, chroma = ycc[:, :1], ycc[:, 1:]  # chroma centred on 0 (libjpeg adds then removes 128)
    if subsampling == "4:2:0":
        chroma = _round_ste(F.avg_pool2d(chroma, 2))
    luma = _round_ste(_blocks_dct(luma - 128, luma_table, dct, round_fn) + 128).clamp(0, 255)
    chroma = _round_ste(_blocks_dct(chroma, chroma_table, dct, round_fn)).clamp(-128, 127)
    if subsampling == "4:2:0":
        chroma = _round_ste(F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False))
    rgb = torch.einsum("ij,bjhw->bihw", torch.tensor(_YCC_TO_RGB, device=x.device, dtype=x.dtype), torch.cat([luma, chroma], 1))
    rgb = _round_ste(rgb.clamp(0, 255))[:, :, top : top + h, left : left + w]
    return rgb / 127.5 - 1


class DiffJPEG:
    """Differentiable JPEG at a random integer quality per sample (default 50..95, 4:2:0).

    `rounding`: "ste" (exact rounding forward, identity gradient; default) or "cubic"
    (Shin & Song 2017 approximation, forward off by up to 1/8 of a quantisation step).
    `grid_offset`: (top, left) of x in the photo that will be encoded (see `jpeg`).
    """

    def __init__(
        self,
        quality: float | tuple[float, float] = (50, 95),
        *,
        subsampling: Literal["4:2:0", "4:4:4"] = "4:2:0",
        rounding: Literal["ste", "cubic"] = "ste",
        grid_offset: tuple[int, int] = (0, 0),
    ) -> None:
        self.quality = _range(quality)
        self.grid_offset = grid_offset
        if not (1 <= self.quality[0] and self.quality[1] <= 100):
            raise ValueError(f"quality must be in 1..100, got {quality}")
        if rounding not in _ROUNDING:
            raise ValueError(f"rounding must be one of {sorted(_ROUNDING)}, got {rounding!r}")
        self.subsampling = subsampling
        self.rounding = rounding

    def sample_quality(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        low, high = round(self.quality[0]), round(self.quality[1])
        return torch.randint(low, high + 1, (count,), generator=generator).float()

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        quality = self.sample_quality(x.shape[0], generator)
        return jpeg(x, quality, subsampling=self.subsampling, rounding=self.rounding, grid_offset=self.grid_offset)

    def __repr__(self) -> str:
        return f"DiffJPEG(quality={self.quality}, subsampling={self.subsampling!r}, rounding={self.rounding!r})"


# ----------------------------------------------------------------------------- geometry, blur


class RandomResize:
    """Downscale by a random factor per sample (bilinear, antialiased), then back up (bilinear).

    scale: the factor's range (default 0.5..0.9) of the side. x [B, 3, H, W] -> same shape.
    """

    def __init__(self, scale: float | tuple[float, float] = (0.5, 0.9)) -> None:
        self.scale = _range(scale)
        if not (0 < self.scale[0] and self.scale[1] <= 1):
            raise ValueError(f"scale must be in (0, 1], got {scale}")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        h, w = x.shape[2:]
        factors = _uniform(x.shape[0], *self.scale, generator)
        out = []
        for sample, factor in zip(x.split(1), factors.tolist()):
            size = (max(1, round(h * factor)), max(1, round(w * factor)))
            small = F.interpolate(sample, size=size, mode="bilinear", align_corners=False, antialias=True)
            out.append(F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False))
        return torch.cat(out).clamp(-1, 1)

    def __repr__(self) -> str:
        return f"RandomResize(scale={self.scale})"


def _separable(x: Tensor, kernels: Tensor) -> Tensor:
    """Convolve each sample with its own normalised 1-D kernel [B, K] along H and W.

    Borders are replicated (as PIL's filters do); x [B, C, H, W] -> same shape.
    """
    b, c, h, w = x.shape
    size = kernels.shape[1]
    before, after = (size - 1) // 2, size // 2
    weight = kernels.to(x.device, x.dtype).repeat_interleave(c, dim=0)  # [B * C, K]
    flat = x.reshape(1, b * c, h, w)
    flat = F.pad(flat, (before, after, before, after), mode="replicate")
    flat = F.conv2d(flat, weight.view(b * c, 1, 1, size), groups=b * c)
    flat = F.conv2d(flat, weight.view(b * c, 1, size, 1), groups=b * c)
    return flat.view(b, c, h, w)


def _gaussian_kernels(sigmas: Tensor, radius: int) -> Tensor:
    """[B] sigmas -> [B, 2 * radius + 1] normalised Gaussian kernels."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (offsets.view(1, -1) / sigmas.view(-1, 1).float()) ** 2)
    return kernels / kernels.sum(dim=1, keepdim=True)


class GaussianBlur:
    """Gaussian blur with a fixed sigma (pixels); kernel radius ceil(3 sigma) unless given."""

    def __init__(self, sigma: float, *, radius: int | None = None) -> None:
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = float(sigma)
        self.radius = radius if radius is not None else max(1, math.ceil(3 * self.sigma))

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        kernels = _gaussian_kernels(torch.full((x.shape[0],), self.sigma), self.radius)
        return _separable(x, kernels)

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={self.sigma})"


class BoxBlur:
    """Average (box) blur over a size x size window."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.size = int(size)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return _separable(x, torch.full((x.shape[0], self.size), 1.0 / self.size))

    def __repr__(self) -> str:
        return f"BoxBlur(size={self.size})"


class RandomGaussianBlur:
    """Gaussian blur with a random sigma per sample (default 0.5..1.5 pixels)."""

    def __init__(self, sigma: float | tuple[float, float] = (0.5, 1.5)) -> None:
        self.sigma = _range(sigma)
        if self.sigma[0] <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        sigmas = _uniform(x.shape[0], *self.sigma, generator)
        return _separable(x, _gaussian_kernels(sigmas, max(1, math.ceil(3 * self.sigma[1]))))

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(sigma={self.sigma})"


class RandomShift:
    """Translate each sample by a random (dy, dx), up to `max_shift` of the side (default 3%).

    Sub-pixel (bilinear `grid_sample`), borders replicated: models a face crop that is off by a
    few pixels. x [B, 3, H, W] -> same shape.
    """

    def __init__(self, max_shift: float = 0.03) -> None:
        if not (0 <= max_shift < 0.5):
            raise ValueError(f"max_shift must be in [0, 0.5), got {max_shift}")
        self.max_shift = float(max_shift)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b = x.shape[0]
        # shift in units of the side; normalised coordinates span 2 per side
        shifts = _uniform(2 * b, -self.max_shift, self.max_shift, generator).view(b, 2)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = -2 * shifts[:, 1]  # x (width)
        theta[:, 1, 2] = -2 * shifts[:, 0]  # y (height)
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def __repr__(self) -> str:
        return f"RandomShift(max_shift={self.max_shift})"


# ----------------------------------------------------------------------------- mixtures, schedules


# The spread-spectrum set: the original code cycled Gaussian blurs (sigma 1..3) and average blurs
# (3..9 px); here both kinds alternate so that even a 10-step attack sees every kind and size.
SPREAD_SPECTRUM_BLURS: tuple[Transform, ...] = (
    GaussianBlur(0.5),
    BoxBlur(3),
    GaussianBlur(1.0),
    BoxBlur(5),
    GaussianBlur(1.5),
    BoxBlur(7),
    GaussianBlur(2.0),
    BoxBlur(9),
    GaussianBlur(2.5),
    GaussianBlur(3.0),
)


def spread_spectrum_blurs(step: int, blurs: Sequence[Transform] = SPREAD_SPECTRUM_BLURS) -> Transform:
    """The blur to attack through at iteration `step` (0-based): cycles through `blurs`
    (Ruiz et al. 2020, spread-spectrum evasion of blur defenses)."""
    return blurs[step % len(blurs)]


# What happens to a shared photo, as a cycle the robust attack steps through (one transformation
# per iteration, as the spread-spectrum attack does with blurs). JPEG 75, the most common
# recompression and what a perturbation loses most to, takes every other step; the others draw
# JPEG at a random quality, down/up-scaling, blur and crop shifts. Measured on cyclegan-vintage,
# 6 photos, PGD 10 iterations (see bench/robustness_table.py for the full table): at epsilon 0.02
# the mean disruption after real JPEG 75 rose from 0.030 (plain) to 0.051, after resizing from
# 0.022 to 0.042; a uniform random mixture (JPEG 50..95 in 40% of the draws, the rest resize, blur,
# shift, identity) gained much less after JPEG, as the sign steps followed the noise of the draws.
SHARING_TRANSFORMS: tuple[Transform, ...] = (
    DiffJPEG(75),
    DiffJPEG((50, 95)),
    DiffJPEG(75),
    RandomResize((0.5, 0.75)),
    DiffJPEG(75),
    RandomGaussianBlur((0.5, 1.5)),
    DiffJPEG(75),
    RandomShift(0.03),
)


def sharing_transforms(step: int, transforms: Sequence[Transform] = SHARING_TRANSFORMS) -> Transform:
    """The transformation the robust (`eot`) attack optimises through at iteration `step`
    (0-based): cycles through `transforms`. Over the iterations the attack maximises the
    expected loss over the cycle (a stratified expectation over transformations)."""
    return transforms[step % len(transforms)]


def scheduled_objective(objective: Objective, schedule: Callable[[int], Transform], *, seed: int | Sequence[int] = 0) -> Objective:
    """Apply `schedule(step)` (e.g. `spread_spectrum_blurs`) to the inputs at the step-th call:
    the attack core evaluates the objective once per iteration, so call k is iteration k.
    `seed`: one for all inputs' random draws, or one per input (each input then draws exactly
    what it would draw alone with its seed)."""
    shared = None if isinstance(seed, Sequence) else torch.Generator().manual_seed(seed)
    own = [] if shared is not None else [torch.Generator().manual_seed(s) for s in seed]
    step = 0

    def at_step(inputs: list[Tensor]) -> Tensor:
        nonlocal step
        transform = schedule(step)
        step += 1
        generators = own if shared is None else [shared] * len(inputs)
        return objective([transform(x, g) for x, g in zip(inputs, generators, strict=True)])

    return at_step
