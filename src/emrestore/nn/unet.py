"""U-Net (seed 003) with the knobs that matter for speed on a CPU.

Seed 003's network: a contracting path of two 3×3 conv + ReLU per level and 2×2 max-pooling, an
expansive path of an up-convolution, concatenation with the encoder's feature map of the same
level and two 3×3 conv + ReLU. :class:`UNetConfig` keeps that as a special case
(``downsample="maxpool"``, ``skip="concat"``, ``space_to_depth=1``) and adds:

* ``space_to_depth``: fold s×s pixel blocks into channels first (lossless pixel-unshuffle) and
  unfold at the end (pixel-shuffle), so that the first level runs at 1/s of the resolution;
* strided-convolution down-sampling, additive skips, residual blocks, SiLU;
* a global residual: the network predicts ``x + f(x)`` (input and output in the same
  normalised units), so a fresh network is close to the identity;
* ``input_blurs``: Gaussian-blurred copies of the input (fixed, not learnt) as extra input
  channels. At low dose a Gaussian filter of the right width is already a strong estimate, and a
  small network trained for a few thousand CPU steps does not learn such wide, smooth averaging
  kernels on its own; given the blurred copies it only has to choose and correct them.

No normalisation layers: the input is already normalised per image (``nn.normalise``), and a
batch/instance norm would make the output depend on the rest of the batch or the tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .blocks import (
    ConvAct,
    ResBlock,
    RestorationNet,
    activation,
    conv3x3,
    init_weights,
    register,
    zero_init,
)


@dataclass(frozen=True)
class UNetConfig:
    """Shape of a :class:`UNet`.

    Attributes
    ----------
    in_channels, out_channels : image channels in and out (1 for a single detector image).
    widths : feature channels at each level, finest first; ``len(widths) - 1`` down-samplings.
    blocks : 3×3 conv layers (or residual blocks) per level, in the encoder and in the decoder.
    residual : use :class:`ResBlock` (two convs + identity) instead of plain conv + activation
        layers; ``blocks`` then counts residual blocks.
    space_to_depth : 1 (none), 2 or 4: pixel-unshuffle factor applied to the input.
    downsample : "conv" (2×2 stride-2 convolution) or "maxpool" (seed 003).
    upsample : "transpose" (2×2 stride-2 up-convolution, seed 003) or "nearest" (+ 3×3 conv).
    skip : "concat" (seed 003: concatenate then convolve) or "add".
    activation : "relu" (seed 003), "silu", "leaky_relu" or "gelu".
    global_residual : predict ``x + f(x)`` (needs ``in_channels == out_channels``).
    input_blurs : σ in input pixels of Gaussian-blurred copies of the input added as channels
        (reflect-padded, separable); ``()`` for none.
    """

    in_channels: int = 1
    out_channels: int = 1
    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: int = 2
    residual: bool = False
    space_to_depth: int = 1
    downsample: str = "maxpool"
    upsample: str = "transpose"
    skip: str = "concat"
    activation: str = "relu"
    global_residual: bool = True
    input_blurs: tuple[float, ...] = ()

    def __post_init__(self):
        if any(not (0 < float(b) <= 16) for b in self.input_blurs):
            raise ConfigError(
                f"unet.input_blurs must be σ in (0, 16] pixels, got {self.input_blurs}")
        if len(self.widths) < 1 or min(self.widths) < 1:
            raise ConfigError(f"unet.widths must be positive channel counts, got {self.widths}")
        if self.blocks < 1:
            raise ConfigError(f"unet.blocks must be >= 1, got {self.blocks}")
        if self.space_to_depth not in (1, 2, 4):
            raise ConfigError(f"unet.space_to_depth must be 1, 2 or 4, got {self.space_to_depth}")
        if self.downsample not in ("conv", "maxpool"):
            raise ConfigError(
                f"unet.downsample must be 'conv' or 'maxpool', got {self.downsample!r}")
        if self.upsample not in ("transpose", "nearest"):
            raise ConfigError(
                f"unet.upsample must be 'transpose' or 'nearest', got {self.upsample!r}")
        if self.skip not in ("concat", "add"):
            raise ConfigError(f"unet.skip must be 'concat' or 'add', got {self.skip!r}")
        if self.global_residual and self.in_channels != self.out_channels:
            raise ConfigError("unet.global_residual needs in_channels == out_channels")


def gaussian_kernel_1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma`` pixels, radius ⌈3σ⌉."""
    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def separable_blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Blur each channel of ``x`` (B, C, H, W) with ``kernel`` along y then x, reflect-padded
    (clamped to the image size, so that small tiles still work)."""
    c = x.shape[1]
    r = kernel.numel() // 2
    k = kernel.to(dtype=x.dtype)
    ry, rx = min(r, x.shape[-2] - 1), min(r, x.shape[-1] - 1)
    if ry < r or rx < r:
        x = F.pad(x, (rx, rx, ry, ry), mode="reflect")
        x = F.pad(x, (r - rx, r - rx, r - ry, r - ry), mode="replicate")
    else:
        x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def _stage(c_in: int, c_out: int, n: int, residual: bool, act: str) -> nn.Sequential:
    """``n`` layers taking ``c_in`` to ``c_out`` channels (a 3×3 conv first if residual)."""
    layers: list[nn.Module] = []
    if residual:
        if c_in != c_out:
            layers.append(ConvAct(c_in, c_out, act))
        layers.extend(ResBlock(c_out, act) for _ in range(n))
    else:
        layers.append(ConvAct(c_in, c_out, act))
        layers.extend(ConvAct(c_out, c_out, act) for _ in range(n - 1))
    return nn.Sequential(*layers)


class _Down(nn.Module):
    def __init__(self, c_in: int, c_out: int, mode: str, act: str):
        super().__init__()
        if mode == "conv":
            self.op = nn.Sequential(nn.Conv2d(c_in, c_out, 2, stride=2), activation(act))
        else:
            self.op = nn.MaxPool2d(2)
        self.c_out = c_out if mode == "conv" else c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class _Up(nn.Module):
    def __init__(self, c_in: int, c_out: int, mode: str, act: str):
        super().__init__()
        self.mode = mode
        if mode == "transpose":
            self.op = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
        else:
            self.op = conv3x3(c_in, c_out)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "nearest":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.act(self.op(x))


@register("unet")
class UNet(RestorationNet):
    """Encoder-decoder with skip connections (seed 003); see :class:`UNetConfig`."""

    config_class = UNetConfig

    def __init__(self, config: UNetConfig | None = None):
        config = config or UNetConfig()
        super().__init__(config)
        c = config
        s2 = c.space_to_depth ** 2
        w = list(c.widths)
        for i, sigma in enumerate(c.input_blurs):
            # not persistent: derived from the config, so weights files stay the same
            self.register_buffer(f"blur_kernel_{i}", gaussian_kernel_1d(float(sigma)),
                                 persistent=False)
        self.stem = ConvAct(c.in_channels * (1 + len(c.input_blurs)) * s2, w[0], c.activation)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        for i, width in enumerate(w):
            c_in = w[0] if i == 0 else w[i]
            if i > 0:
                down = _Down(w[i - 1], w[i], c.downsample, c.activation)
                self.down.append(down)
                c_in = down.c_out
            n = c.blocks if i > 0 or c.residual else max(1, c.blocks - 1)
            self.enc.append(_stage(c_in, width, n, c.residual, c.activation))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(len(w) - 2, -1, -1):
            self.up.append(_Up(w[i + 1], w[i], c.upsample, c.activation))
            c_in = 2 * w[i] if c.skip == "concat" else w[i]
            self.dec.append(_stage(c_in, w[i], c.blocks, c.residual, c.activation))
        self.head = conv3x3(w[0], c.out_channels * s2)
        if c.global_residual:
            zero_init(self.head)
        init_weights(self)

    @property
    def multiple_of(self) -> int:
        return self.config.space_to_depth * 2 ** (len(self.config.widths) - 1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        s = c.space_to_depth
        h = x
        if c.input_blurs:
            h = torch.cat([x, *(separable_blur(x, getattr(self, f"blur_kernel_{i}"))
                                for i in range(len(c.input_blurs)))], dim=1)
        h = F.pixel_unshuffle(h, s) if s > 1 else h
        h = self.stem(h)
        skips = []
        for i, stage in enumerate(self.enc):
            if i > 0:
                h = self.down[i - 1](h)
            h = stage(h)
            skips.append(h)
        skips.pop()
        for up, stage in zip(self.up, self.dec):
            h = up(h)
            skip = skips.pop()
            h = torch.cat([h, skip], dim=1) if c.skip == "concat" else h + skip
            h = stage(h)
        out = self.head(h)
        if s > 1:
            out = F.pixel_shuffle(out, s)
        return x + out if c.global_residual else out
