"""Concatenated Grouped Residual Dense Network (CGRDN, seed 001 "Generator architecture").

The peer tk_r_em's generator. Built from:

1. a 3×3 convolution, then a down-sampling 3×3 convolution of stride 2;
2. ``n_grdb`` grouped residual dense blocks (GRDB, each ``n_rdb`` residual dense blocks of
   ``n_layers`` densely connected 3×3 conv layers); instead of only cascading them, the outputs of
   all GRDBs are concatenated, fused by a 1×1 convolution and added to the GRDB stack's input
   (the semi-global residual, seed 001's first modification of GRDN);
3. a transposed convolution back to full resolution and a final 3×3 convolution (no CBAM,
   seed 001's second modification);
4. a global residual connection from the input to the output.

The paper-sized network (4 GRDB × 4 RDB × 9 layers, 64 features, growth 32) has ~8 M parameters
and is far too slow on a CPU for 1024² images; :class:`CGRDNConfig` sizes it down.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .blocks import (
    GroupedResidualDenseBlock,
    RestorationNet,
    activation,
    conv1x1,
    conv3x3,
    register,
)


@dataclass(frozen=True)
class CGRDNConfig:
    """Shape of a :class:`CGRDN`.

    Attributes
    ----------
    in_channels, out_channels : image channels.
    features : channels carried between blocks.
    growth : channels added by each dense layer inside an RDB.
    n_layers : dense conv layers per RDB (seed 001's n_lay; 9 in the paper).
    n_rdb : RDBs per GRDB (4 in the paper).
    n_grdb : GRDBs (4 in the paper).
    downsample : 1 or 2, the stride of the down-sampling convolution (2 in the paper).
    activation : activation after each dense layer.
    global_residual : predict ``x + f(x)``.
    """

    in_channels: int = 1
    out_channels: int = 1
    features: int = 64
    growth: int = 32
    n_layers: int = 9
    n_rdb: int = 4
    n_grdb: int = 4
    downsample: int = 2
    activation: str = "relu"
    global_residual: bool = True

    def __post_init__(self):
        for name in ("features", "growth", "n_layers", "n_rdb", "n_grdb"):
            if getattr(self, name) < 1:
                raise ConfigError(f"cgrdn.{name} must be >= 1, got {getattr(self, name)}")
        if self.downsample not in (1, 2):
            raise ConfigError(f"cgrdn.downsample must be 1 or 2, got {self.downsample}")
        if self.global_residual and self.in_channels != self.out_channels:
            raise ConfigError("cgrdn.global_residual needs in_channels == out_channels")


@register("cgrdn")
class CGRDN(RestorationNet):
    """Seed 001's generator; see :class:`CGRDNConfig`."""

    config_class = CGRDNConfig

    def __init__(self, config: CGRDNConfig | None = None):
        config = config or CGRDNConfig()
        super().__init__(config)
        c = config
        f = c.features
        self.head = conv3x3(c.in_channels, f)
        self.down = (conv3x3(f, f, stride=2) if c.downsample == 2 else conv3x3(f, f))
        self.grdbs = nn.ModuleList(
            GroupedResidualDenseBlock(f, c.growth, c.n_layers, c.n_rdb, c.activation)
            for _ in range(c.n_grdb))
        self.fuse = nn.Sequential(conv1x1(c.n_grdb * f, f), conv3x3(f, f))
        if c.downsample == 2:
            self.up = nn.ConvTranspose2d(f, f, 2, stride=2)
        else:
            self.up = conv3x3(f, f)
        self.act = activation(c.activation)
        self.tail = conv3x3(f, c.out_channels)
        if c.global_residual:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    @property
    def multiple_of(self) -> int:
        return self.config.downsample

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.down(self.head(x))
        h = h0
        outs = []
        for grdb in self.grdbs:
            h = grdb(h)
            outs.append(h)
        h = h0 + self.fuse(torch.cat(outs, dim=1))
        out = self.tail(self.act(self.up(h)))
        return x + out if self.config.global_residual else out
