"""Denoising convolutional autoencoder (seed 000, Gambini et al. 2023, §2.1).

Ten layers: the encoder is conv, max-pool, conv, max-pool, conv and the decoder conv, up-sample,
conv, up-sample, conv; every convolution is 3×3 with 'same' padding and 32 filters except the
last, which has one; ReLU after each convolution. A 128² input has a (32, 32, 32) latent space.

``depth`` sets the number of pool/up-sample pairs (2 in the paper). The paper's last layer is
ReLU; in normalised units (``nn.normalise``) the clean image can be negative, so the default here
is a linear last layer (``final_activation="none"``); set "relu" for the paper's network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .blocks import ConvAct, RestorationNet, activation, conv3x3, register


@dataclass(frozen=True)
class DAEConfig:
    """Shape of a :class:`DenoisingAutoencoder`.

    Attributes
    ----------
    in_channels, out_channels : image channels.
    filters : filters of every convolution but the last (32 in the paper).
    depth : number of max-pool (and up-sample) steps (2 in the paper).
    activation : "relu" in the paper.
    final_activation : "none" or "relu" (the paper).
    global_residual : predict ``x + f(x)`` (not in the paper).
    """

    in_channels: int = 1
    out_channels: int = 1
    filters: int = 32
    depth: int = 2
    activation: str = "relu"
    final_activation: str = "none"
    global_residual: bool = False

    def __post_init__(self):
        if self.filters < 1 or self.depth < 0:
            raise ConfigError(f"dae: filters must be >= 1 and depth >= 0, got {self}")
        if self.final_activation not in ("none", "relu"):
            raise ConfigError(
                f"dae.final_activation must be 'none' or 'relu', got {self.final_activation!r}")
        if self.global_residual and self.in_channels != self.out_channels:
            raise ConfigError("dae.global_residual needs in_channels == out_channels")


@register("dae")
class DenoisingAutoencoder(RestorationNet):
    """Seed 000's autoencoder; see :class:`DAEConfig`."""

    config_class = DAEConfig

    def __init__(self, config: DAEConfig | None = None):
        config = config or DAEConfig()
        super().__init__(config)
        c = config
        f = c.filters
        self.encoder = nn.ModuleList(
            ConvAct(c.in_channels if i == 0 else f, f, c.activation) for i in range(c.depth + 1))
        self.decoder = nn.ModuleList(ConvAct(f, f, c.activation) for _ in range(c.depth))
        self.last = conv3x3(f, c.out_channels)
        self.final = activation("relu") if c.final_activation == "relu" else nn.Identity()

    @property
    def multiple_of(self) -> int:
        return 2 ** self.config.depth

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, conv in enumerate(self.encoder):
            if i > 0:
                h = F.max_pool2d(h, 2)
            h = conv(h)
        for conv in self.decoder:
            h = F.interpolate(conv(h), scale_factor=2.0, mode="nearest")
        out = self.final(self.last(h))
        return x + out if self.config.global_residual else out
