"""Atom-finder network (AtomID-net, seed 004): a confidence map and a global column spacing.

The network
-----------
:class:`AtomNet` is a small U-Net (the building blocks of :mod:`emrestore.nn.unet`: optional
pixel-unshuffle, strided-conv down-sampling, transposed-conv up-sampling, additive or concatenated
skips) with two heads:

* a **confidence map** (one logit per input pixel, ``sigmoid`` gives 0-1), trained on seed 004's
  Gaussian labels: unit-peak Gaussians at the column centres (eqs 1-2) of width
  ``σ = sigma_per_spacing × s`` (eq 3), with ``s`` the column spacing (eq 4);
* a **spacing head** on the bottleneck (seed 004 eqs 6-7): 3×3 conv, global average pooling and a
  two-layer perceptron predicting ``log(s / canonical_spacing_px)``, the log of the column spacing
  in the network's input pixels relative to the canonical spacing. Predicting the logarithm makes
  the error relative (a 10 % error costs the same at 4 and at 40 px).

Scale handling (decided here, used by training and inference alike)
--------------------------------------------------------------------
A small network is accurate over a narrow range of column sizes, while images come with column
spacings of 4-40 px and more. The network therefore always runs on a **resampled** image in which
the spacing is ``canonical_spacing_px`` (8 px by default):

1. a first spacing estimate ``s0`` in the image's own pixels: the caller's, when given (it is
   then held, and step 2 runs once without correcting it), else the spacing head on a "coarse
   pass" over a central crop at the native scale (the head is trained on spacings of 3-48 px for
   this). On a calibrated frame, an estimate above 2.5 Å (``HEAD_SPACING_LIMIT_A``) means the head
   did not see the lattice (it reads the 2-6 px spacings of coarse frames as 12-18 px), and the
   passes start from 1 Å instead. The autocorrelation
   (:func:`emrestore.atoms.detect.estimate_lattice_spacing`) is an option, not the default: on
   simulated HR-STEM frames with scan-line noise it returned 2-5 px for true spacings of
   11-23 px (the line-to-line noise correlates neighbouring pixels);
2. the image is resampled by ``f = canonical / s0`` (bilinear, antialiased when shrinking), the
   network runs on it and reports the spacing it sees, ``s1`` (by default the median
   nearest-neighbour distance of its confident maxima, the spacing head's value when fewer than
   8 are confident; ``spacing_from``); if ``s1`` is off the canonical value by more than
   ``rescale_tolerance`` (the first estimate found another repeat, e.g. the dumbbell lattice
   instead of the dumbbell separation), the image is resampled again with
   ``f ← f × canonical / s1`` (at most ``max_passes`` runs in total);
3. the confidence map is decoded in the resampled frame and the positions mapped back exactly
   (``y = (y' + 0.5) · H / H' − 0.5``, the pixel-centre convention of ``F.interpolate``).

The spacing used everywhere is the **median** nearest-neighbour distance of the visible columns
(eq 4 takes the mean; the median is not pulled down by the odd displaced atom beside a column).

Decoding
--------
:func:`decode_nms` is seed 004 §2.1.3: max-pooling keeps the local maxima of the confidence map
above a threshold (proposals), each proposal gets a square box whose side is the predicted spacing,
and greedy non-maximum suppression (IoU > 0.3) removes the weaker of overlapping boxes; positions
are then refined to sub-pixel precision by a parabola through the log-confidence of the 3×3
neighbourhood (exact for a Gaussian blob). :func:`decode_otsu` is seed 003's alternative: an Otsu
threshold of the map, connected components and their confidence-weighted centroids.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InputError
from ..io import check_pixel_size
from .blocks import activation, conv3x3, count_parameters, init_weights, pad_to_multiple, unpad
from .unet import _Down, _stage, _Up

__all__ = [
    "AtomNet",
    "AtomNetConfig",
    "build_atomnet",
    "decode_nms",
    "decode_otsu",
    "detect_columns",
    "resample",
]

# Projected nearest-neighbour distances of atomic columns lie between about 1 Å (dumbbells such
# as Si [110], 1.36 Å, and the closest pairs of oxides) and 4 Å (SrTiO3 [001] with its Ti-O
# columns hidden: 3.9 Å). A coarse-pass head estimate above the limit, on a calibrated frame, is
# taken as the head not seeing the lattice, and the passes start from the finest spacing
# instead (where the head was right they converge back to it). First chosen on
# detect_quality's coarse test frames (0.3-0.6 Å pixels, seed 2025) and its fine tuning frames:
# of the limits 3, 3.5, 4 and 5 Å and the starts 0.8, 1, 1.5 and 3 Å, 3 and 1 Å gave the best
# coarse F1 (0.543 -> 0.679 mean over the doses) and left the fine frames unchanged; always
# starting from 1 Å gave 0.695 on the coarse frames but cost 0.024 on the fine test frames.
# Then on the tuning seeds alone (48 coarse, 71 fine, 48 multislice frames), limits of 2, 2.5
# and 3 Å gave mean F1 0.619 / 0.625 / 0.612 (coarse), 0.656 / 0.655 / 0.654 (fine) and 0.780
# for all three (multislice); 2.5 Å restarts 36 of the coarse and 2 of the fine frames.
HEAD_SPACING_LIMIT_A = 2.5
FINEST_SPACING_A = 1.0


@dataclass(frozen=True)
class AtomNetConfig:
    """Shape of an :class:`AtomNet` and the scale it works at.

    Attributes
    ----------
    in_channels : 1 (the raw or the restored image) or 2 (both, raw first).
    widths : feature channels per level, finest first (``len(widths) - 1`` down-samplings).
    blocks : conv layers (or residual blocks) per level.
    residual : residual blocks instead of plain conv + activation layers.
    space_to_depth : 1, 2 or 4: pixel-unshuffle of the input (runs level 0 at 1/s resolution).
    downsample, upsample, skip, activation : as in :class:`emrestore.nn.unet.UNetConfig`.
    spacing_hidden : width of the spacing head.
    canonical_spacing_px : the column spacing, in pixels, the image is resampled to.
    sigma_per_spacing : σ of the Gaussian labels as a fraction of the spacing (seed 004 eq 3).
    """

    in_channels: int = 1
    widths: tuple[int, ...] = (16, 32, 64, 96)
    blocks: int = 1
    residual: bool = False
    space_to_depth: int = 2
    downsample: str = "conv"
    upsample: str = "transpose"
    skip: str = "add"
    activation: str = "silu"
    spacing_hidden: int = 64
    canonical_spacing_px: float = 8.0
    sigma_per_spacing: float = 0.15

    def __post_init__(self):
        if self.in_channels not in (1, 2):
            raise ConfigError(f"atomnet.in_channels must be 1 or 2, got {self.in_channels}")
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ConfigError(f"atomnet.widths needs at least two positive channel counts, got "
                              f"{self.widths}")
        if self.blocks < 1:
            raise ConfigError(f"atomnet.blocks must be >= 1, got {self.blocks}")
        if self.space_to_depth not in (1, 2, 4):
            raise ConfigError(f"atomnet.space_to_depth must be 1, 2 or 4, got "
                              f"{self.space_to_depth}")
        for name, allowed in (("downsample", ("conv", "maxpool")),
                              ("upsample", ("transpose", "nearest")), ("skip", ("concat", "add"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"atomnet.{name} must be one of {allowed}, got "
                                  f"{getattr(self, name)!r}")
        activation(self.activation)  # validates the name
        if not 3.0 <= self.canonical_spacing_px <= 32.0:
            raise ConfigError(f"atomnet.canonical_spacing_px must lie in 3-32 px, got "
                              f"{self.canonical_spacing_px}")
        if not 0.02 <= self.sigma_per_spacing <= 0.5:
            raise ConfigError(f"atomnet.sigma_per_spacing must lie in 0.02-0.5, got "
                              f"{self.sigma_per_spacing}")
        if self.spacing_hidden < 1:
            raise ConfigError("atomnet.spacing_hidden must be >= 1")


class AtomNet(nn.Module):
    """U-Net with a confidence-map head and a global spacing head (see the module docstring).

    ``forward(x)`` maps ``(N, C, H, W)`` to ``(logits (N, 1, H, W), log_spacing (N,))`` for any
    ``H, W`` (padded inside to :attr:`multiple_of` by reflection and cropped back), where
    ``sigmoid(logits)`` is the confidence map and ``canonical_spacing_px × exp(log_spacing)`` the
    column spacing in the input's pixels.
    """

    arch_name = "atomnet"

    def __init__(self, config: AtomNetConfig | None = None):
        super().__init__()
        c = self.config = config or AtomNetConfig()
        s2 = c.space_to_depth ** 2
        w = list(c.widths)
        act = c.activation
        self.stem = nn.Sequential(conv3x3(c.in_channels * s2, w[0]), activation(act))
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        for i, width in enumerate(w):
            c_in = w[0]
            if i > 0:
                down = _Down(w[i - 1], w[i], c.downsample, act)
                self.down.append(down)
                c_in = down.c_out
            n = c.blocks if i > 0 or c.residual else max(1, c.blocks - 1)
            self.enc.append(_stage(c_in, width, n, c.residual, act))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(len(w) - 2, -1, -1):
            self.up.append(_Up(w[i + 1], w[i], c.upsample, act))
            c_in = 2 * w[i] if c.skip == "concat" else w[i]
            self.dec.append(_stage(c_in, w[i], c.blocks, c.residual, act))
        self.head = conv3x3(w[0], s2)
        self.spacing_conv = nn.Sequential(conv3x3(w[-1], c.spacing_hidden), activation(act))
        self.spacing_mlp = nn.Sequential(nn.Linear(c.spacing_hidden, c.spacing_hidden),
                                         activation(act), nn.Linear(c.spacing_hidden, 1))
        init_weights(self)
        # start from "no column anywhere" (confidence ~0.05) and the canonical spacing
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, -3.0)
        nn.init.zeros_(self.spacing_mlp[-1].weight)
        nn.init.zeros_(self.spacing_mlp[-1].bias)

    @property
    def multiple_of(self) -> int:
        return self.config.space_to_depth * 2 ** (len(self.config.widths) - 1)

    @property
    def min_size_px(self) -> int:
        return max(16, 2 * self.multiple_of)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        s = c.space_to_depth
        h = F.pixel_unshuffle(x, s) if s > 1 else x
        h = self.stem(h)
        skips = []
        for i, stage in enumerate(self.enc):
            if i > 0:
                h = self.down[i - 1](h)
            h = stage(h)
            skips.append(h)
        bottleneck = skips.pop()
        g = self.spacing_conv(bottleneck).mean(dim=(2, 3))
        log_spacing = self.spacing_mlp(g)[:, 0]
        h = bottleneck
        for up, stage in zip(self.up, self.dec):
            h = up(h)
            skip = skips.pop()
            h = torch.cat([h, skip], dim=1) if c.skip == "concat" else h + skip
            h = stage(h)
        logits = self.head(h)
        if s > 1:
            logits = F.pixel_shuffle(logits, s)
        return logits, log_spacing

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected a (N, {self.config.in_channels}, H, W) tensor, got shape "
                             f"{tuple(x.shape)}")
        x = x.contiguous(memory_format=torch.channels_last)
        h, w = x.shape[-2:]
        m = self.multiple_of
        if h % m == 0 and w % m == 0 and min(h, w) >= self.min_size_px:
            logits, log_spacing = self._forward(x)
            return logits.contiguous(), log_spacing
        padded, pads = pad_to_multiple(x, m, min_size=self.min_size_px)
        logits, log_spacing = self._forward(padded)
        return unpad(logits, pads).contiguous(), log_spacing

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(confidence (N, 1, H, W) in 0-1, spacing (N,) in input pixels)``."""
        logits, log_spacing = self(x)
        return torch.sigmoid(logits), self.config.canonical_spacing_px * torch.exp(log_spacing)

    def describe(self) -> dict[str, Any]:
        return {"architecture": self.arch_name, "config": dataclasses.asdict(self.config),
                "parameters": count_parameters(self), "multiple_of": self.multiple_of,
                "min_size_px": self.min_size_px}


class ConfidenceOnly(nn.Module):
    """The confidence logits of an :class:`AtomNet` alone (for ``blocks.receptive_field``)."""

    def __init__(self, net: AtomNet):
        super().__init__()
        self.net = net
        self.config = net.config
        self.multiple_of = net.multiple_of

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def build_atomnet(config: AtomNetConfig | dict | None = None) -> AtomNet:
    """An :class:`AtomNet` from its config dataclass, a plain dict (e.g. a card's), or defaults."""
    if config is None or isinstance(config, dict):
        from ..simulate.config import from_dict

        config = from_dict(AtomNetConfig, dict(config or {}), where="atomnet")
    elif not isinstance(config, AtomNetConfig):
        raise ConfigError(f"atomnet: expected an AtomNetConfig or a dict, got "
                          f"{type(config).__name__}")
    return AtomNet(config)


# ---------------------------------------------------------------------------------------------
# Resampling


def resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample ``(N, C, H, W)`` to ``size`` (bilinear; antialiased when shrinking).

    Pixel centres map as ``y_out = (y_in + 0.5) · H_out / H_in − 0.5`` (and likewise in x).
    """
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def scaled_size(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """The resampled size for a scale factor (at least 1 px per side)."""
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def to_resampled(points: np.ndarray, shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(y, x) in an image of ``shape`` -> the same points in its resampled copy of ``size``."""
    k = np.array([size[0] / shape[0], size[1] / shape[1]])
    return (np.asarray(points, float) + 0.5) * k - 0.5


def from_resampled(points: np.ndarray, shape: tuple[int, int],
                   size: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`to_resampled`."""
    k = np.array([shape[0] / size[0], shape[1] / size[1]])
    return (np.asarray(points, float) + 0.5) * k - 0.5


# ---------------------------------------------------------------------------------------------
# Decoding


def _check_map(conf) -> np.ndarray:
    c = np.asarray(conf.detach().cpu().numpy() if isinstance(conf, torch.Tensor) else conf,
                   dtype=np.float32)
    c = np.squeeze(c)
    if c.ndim != 2:
        raise InputError(f"a confidence map must be 2-D (H, W), got shape {np.shape(conf)}")
    if not np.all(np.isfinite(c)):
        raise InputError("the confidence map contains NaN or infinite values")
    return c


def _check_threshold(threshold, name: str = "threshold") -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        t = float("nan")
    if not 0.0 <= t < 1.0:
        raise InputError(f"{name} must lie between 0 and 1, got {threshold!r}")
    return t


def _subpixel(conf: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Peak positions refined by a parabola through log(confidence) at the 3 pixels per axis
    (exact for a Gaussian blob); offsets clipped to ±0.5 px."""
    h, w = conf.shape
    lc = np.log(np.clip(conf.astype(np.float64), 1e-12, None))
    out = np.column_stack([iy, ix]).astype(np.float64)
    for axis, (n, idx) in enumerate(((h, iy), (w, ix))):
        lo_i, hi_i = np.clip(idx - 1, 0, n - 1), np.clip(idx + 1, 0, n - 1)
        if axis == 0:
            lo, c0, hi = lc[lo_i, ix], lc[iy, ix], lc[hi_i, ix]
        else:
            lo, c0, hi = lc[iy, lo_i], lc[iy, ix], lc[iy, hi_i]
        den = lo - 2.0 * c0 + hi
        inside = (idx > 0) & (idx < n - 1) & (den < 0)
        off = np.where(inside, 0.5 * (lo - hi) / np.where(den < 0, den, -1.0), 0.0)
        out[:, axis] += np.clip(off, -0.5, 0.5)
    return out


def box_iou_same_size(dy, dx, side: float):
    """IoU of two axis-aligned squares of side ``side`` whose centres differ by (dy, dx)."""
    ov = np.clip(side - np.abs(dy), 0.0, None) * np.clip(side - np.abs(dx), 0.0, None)
    return ov / (2.0 * side * side - ov)


def _greedy_suppress(points: np.ndarray, score: np.ndarray, reach: float, suppress) -> np.ndarray:
    """Indices (into ``points``, best first) kept by greedy NMS; ``suppress(dy, dx)`` says which
    pairs closer than ``reach`` overlap. Only points with an overlapping neighbour enter the
    (sequential) greedy pass."""
    from scipy.spatial import cKDTree

    order = np.argsort(-score, kind="stable")
    pts = points[order]
    n = len(pts)
    keep = np.ones(n, bool)
    if n > 1 and reach > 0:
        pairs = cKDTree(pts).query_pairs(reach, output_type="ndarray")
        if len(pairs):
            i, j = np.sort(pairs, axis=1).T  # i < j: i scores higher
            d = pts[j] - pts[i]
            hit = suppress(d[:, 0], d[:, 1])
            i, j = i[hit], j[hit]
            srt = np.argsort(i, kind="stable")
            i, j = i[srt], j[srt]
            sources, starts = np.unique(i, return_index=True)
            ends = np.append(starts[1:], len(i))
            for a, lo, hi in zip(sources.tolist(), starts.tolist(), ends.tolist()):
                if keep[a]:
                    keep[j[lo:hi]] = False
    return order[keep]


def decode_nms(conf, spacing_px: float, *, threshold: float = 0.3,
               min_separation_px: float | None = None, iou_threshold: float = 0.3,
               pool_px: int | None = None, subpixel: bool = True,
               exclude_border_px: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Column positions from a confidence map by max-pooling and NMS (seed 004 §2.1.3).

    Parameters
    ----------
    conf : (H, W) array or tensor, confidence 0-1.
    spacing_px : predicted column spacing in the map's pixels: the side of every box.
    threshold : minimum confidence of a proposal (0-1).
    min_separation_px : optional: instead of box NMS, keep no two columns closer than this (px).
    iou_threshold : boxes overlapping more than this are suppressed (seed 004: 0.3, which keeps
        two columns apart when they are at least ~0.45-0.54 × spacing apart).
    pool_px : max-pooling window (odd); default the odd size nearest to spacing / 2, at least 3.
    subpixel : refine each maximum by a log-parabola through its 3×3 neighbourhood.
    exclude_border_px : drop proposals this close to the edge.

    Returns
    -------
    positions : (N, 2) float (y, x) in the map's pixels, best first.
    scores : (N,) the confidence at each maximum.
    """
    c = _check_map(conf)
    t = _check_threshold(threshold)
    s = float(spacing_px)
    if not (np.isfinite(s) and s > 0):
        raise InputError(f"spacing_px must be a positive number, got {spacing_px!r}")
    if min_separation_px is not None and not float(min_separation_px) > 0:
        raise InputError(f"min_separation_px must be > 0, got {min_separation_px!r}")
    k = pool_px or max(3, 2 * round(s / 4.0) + 1)
    if k % 2 == 0:
        k += 1
    ct = torch.from_numpy(c)[None, None]
    peak = (F.max_pool2d(ct, k, stride=1, padding=k // 2) == ct)[0, 0].numpy() & (c > t)
    if exclude_border_px > 0:
        b = int(exclude_border_px)
        peak[:b] = peak[-b:] = False
        peak[:, :b] = peak[:, -b:] = False
    iy, ix = np.nonzero(peak)
    if iy.size == 0:
        return np.zeros((0, 2)), np.zeros(0)
    score = c[iy, ix].astype(np.float64)
    pts = np.column_stack([iy, ix]).astype(np.float64)
    if min_separation_px is not None:
        r = float(min_separation_px)
        keep = _greedy_suppress(pts, score, r,
                                lambda dy, dx: dy * dy + dx * dx < r * r)
    else:
        # boxes overlap by IoU > t only if both offsets are below s (1 - t) / (1 + t)
        reach = math.sqrt(2.0) * s * (1.0 - iou_threshold) / (1.0 + iou_threshold) + 1e-9
        keep = _greedy_suppress(pts, score, reach,
                                lambda dy, dx: box_iou_same_size(dy, dx, s) > iou_threshold)
    iy, ix, score = iy[keep], ix[keep], score[keep]
    pos = _subpixel(c, iy, ix) if subpixel else np.column_stack([iy, ix]).astype(np.float64)
    return pos, score


def decode_otsu(conf, *, threshold: float | None = None,
                min_area_px: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Column positions as the confidence-weighted centroids of the connected regions above a
    threshold (seed 003: Otsu's threshold of the map unless ``threshold`` is given).

    Returns positions (N, 2) (y, x) in the map's pixels and the peak confidence of each region.
    """
    from scipy import ndimage

    c = _check_map(conf)
    if threshold is None:
        if np.ptp(c) <= 0:
            return np.zeros((0, 2)), np.zeros(0)
        from skimage.filters import threshold_otsu

        t = float(threshold_otsu(c))
    else:
        t = _check_threshold(threshold)
    labels, n = ndimage.label(c > t)
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0)
    idx = np.arange(1, n + 1)
    area = ndimage.sum_labels(np.ones_like(c), labels, idx)
    weights = np.where(labels > 0, c - t, 0.0)
    com = np.asarray(ndimage.center_of_mass(weights, labels, idx), dtype=np.float64).reshape(-1, 2)
    peak = np.asarray(ndimage.maximum(c, labels, idx), dtype=np.float64)
    ok = area >= max(1, int(min_area_px))
    order = np.argsort(-peak[ok], kind="stable")
    return com[ok][order], peak[ok][order]


# ---------------------------------------------------------------------------------------------
# The whole detection: spacing, resampling, network, decoding


def _as_channels(image) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or min(arr.shape[-2:]) < 2:
        raise InputError(f"expected an (H, W) image or a (C, H, W) stack of channels, got shape "
                         f"{np.shape(image)}")
    if not np.all(np.isfinite(arr)):
        raise InputError("the image contains NaN or infinite values")
    return arr


def drop_weak_columns(positions, scores, relative_threshold: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The columns whose confidence is at least ``relative_threshold`` × the median confidence
    of all of them (0-1)."""
    _check_threshold(relative_threshold, "relative_threshold")
    scores = np.asarray(scores, float)
    if not len(scores):
        return positions, scores
    keep = scores >= float(relative_threshold) * float(np.median(scores))
    return positions[keep], scores[keep]


def _detected_spacing(conf: torch.Tensor, spacing_px: float, *, threshold: float = 0.5,
                      min_columns: int = 8) -> float | None:
    """Median nearest-neighbour distance (map px) of the confident maxima of ``conf``, found
    with boxes of ``spacing_px``; None when fewer than ``min_columns`` are confident."""
    from scipy.spatial import cKDTree

    pos, _ = decode_nms(conf.cpu(), spacing_px, threshold=threshold)
    if len(pos) < min_columns:
        return None
    d = cKDTree(pos).query(pos, k=2)[0][:, 1]
    return float(np.median(d))


def _initial_spacing(work: np.ndarray) -> float | None:
    from ..atoms.detect import estimate_lattice_spacing

    try:
        s = estimate_lattice_spacing(work)
    except InputError:
        return None
    return float(s) if np.isfinite(s) and s > 0 else None


def _run_network(model: AtomNet, x: torch.Tensor, tile: int, overlap: int
                 ) -> tuple[torch.Tensor, float]:
    """Confidence map (H, W) and the area-weighted mean log-spacing of a (1, C, H, W) input,
    tile by tile when it is larger than ``tile``."""
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        logits, log_s = model(x)
        return torch.sigmoid(logits[0, 0]), float(log_s[0])
    m = model.multiple_of
    tile = max(m, (tile // m) * m)
    overlap = min(overlap, tile // 4)
    step = max(1, tile - 2 * overlap)
    conf = torch.empty((h, w), dtype=torch.float32)
    log_sum, area = 0.0, 0.0

    def starts(n):
        if n <= tile:
            return [0]
        return sorted({*range(0, n - tile, step), n - tile})

    for r0 in starts(h):
        for c0 in starts(w):
            th, tw = min(tile, h), min(tile, w)
            logits, log_s = model(x[..., r0:r0 + th, c0:c0 + tw])
            p = torch.sigmoid(logits[0, 0]).float().cpu()
            # keep the tile's core: half the overlap on inner edges
            top = 0 if r0 == 0 else overlap
            left = 0 if c0 == 0 else overlap
            bottom = th if r0 + th >= h else th - overlap
            right = tw if c0 + tw >= w else tw - overlap
            conf[r0 + top:r0 + bottom, c0 + left:c0 + right] = p[top:bottom, left:right]
            a = float(th * tw)
            log_sum += a * float(log_s[0])
            area += a
    return conf, log_sum / area


@torch.no_grad()
def detect_columns(model: AtomNet, image, *, spacing_px: float | None = None,
                   threshold: float | None = None, min_separation_px: float | None = None,
                   decode: str = "nms", iou_threshold: float = 0.3, initial: str = "head",
                   coarse_px: int = 384, search_px: int = 1024,
                   max_passes: int = 3, rescale_tolerance: float = 1.1, tile: int = 1024,
                   device: str | torch.device | None = None, norm_params: dict | None = None,
                   return_maps: bool = False, spacing_from: str = "detections",
                   pixel_size_A: float | None = None, relative_threshold: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Find column positions with an :class:`AtomNet` (the scale handling of the module docstring).

    Parameters
    ----------
    model : the network (its ``config.in_channels`` channels are expected).
    image : (H, W) image or (C, H, W) channels (raw first, then restored), any units.
    spacing_px : known column spacing in the image's pixels. It is held: one pass at the
        canonical scale, NMS boxes of this side, the spacing head and the detections are not
        asked. (Treated as a first estimate that the passes may correct, the true spacing gave
        a mean F1 over the doses 0.021 lower on detect_quality's test frames, 24 per dose, and
        0.10 lower on its coarse frames, 0.3-0.6 Å pixels, 8 per dose.)
    threshold : minimum confidence (0-1); default 0.3 for NMS, Otsu's threshold for ``"otsu"``.
    min_separation_px : optional minimum distance between columns in the image's pixels
        (replaces the box NMS).
    decode : "nms" (seed 004) or "otsu" (seed 003).
    iou_threshold : NMS overlap above which the weaker box goes (seed 004: 0.3).
    initial : first spacing estimate: "head" (the spacing head on a central ``coarse_px`` crop at
        the native scale) or "autocorrelation" (:func:`emrestore.atoms.detect.
        estimate_lattice_spacing`, with the head as fallback).
    coarse_px : side of the crop of the coarse pass.
    search_px : the passes that look for the scale run on a central crop of at most this side
        (resampled px); the full image runs once, at the scale found. A restarted 1024² frame of
        4.5 px spacing took 4.4 s with every pass on the whole up-sampled frame, 1.1 s so; 768
        cropped the restarted coarse 256² frames of detect_quality too (-0.013 mean F1).
    max_passes : network runs at most while looking for the scale (each may correct it).
    rescale_tolerance : rerun when the spacing found (detections or head) is off the canonical
        one by more than this factor. 1.1 rather than 1.25: about 0.5 more passes per frame
        (+35 % time) for +0.005 mean F1 on detect_quality's test and tuning sets and fewer
        false columns at vacancies.
    tile : the largest side run at once (px of the resampled image); larger images are tiled.
    device : torch device (default: the model's).
    norm_params : overrides of :data:`emrestore.nn.normalise.DEFAULT_PARAMS`.
    return_maps : also put the confidence map (resampled frame) into the info dict.
    relative_threshold : also drop columns less confident than this fraction of the median
        confidence of the image's columns (0: off). The network completes the lattice at a
        vacancy with a confidence of 0.25-0.45 where the image's columns have 0.9 and more; an
        absolute threshold that high would lose the columns of low-dose frames.
    pixel_size_A : Å per pixel, when known: a coarse-pass estimate above
        ``HEAD_SPACING_LIMIT_A`` restarts the passes from ``FINEST_SPACING_A``.
    spacing_from : "detections" (default): after each pass the spacing is the median
        nearest-neighbour distance of the confident maxima of the confidence map (the spacing
        head's value when fewer than 8 are found); "head": the spacing head alone (seed 004).
        The head's error is about a factor 2 on crystals with a weak sublattice (SrTiO3 [001]:
        1.2 Å for 2.8 Å), which shrinks the NMS boxes and doubles columns.

    Returns
    -------
    positions : (N, 2) (y, x) in the image's pixels, best first.
    scores : (N,) confidence at each column.
    info : dict with ``spacing_px`` (the network's, in image pixels), ``factor`` (resampling),
        ``passes`` (of the scale search), ``searched_on_crop``, ``initial_spacing_px``,
        ``threshold``, ``decode`` (and ``coarse_spacing_px``, ``restarted_at_finest`` when the
        coarse pass ran).
    """
    from .normalise import normalise

    if decode not in ("nms", "otsu"):
        raise InputError(f"decode must be 'nms' or 'otsu', got {decode!r}")
    if spacing_from not in ("head", "detections"):
        raise InputError(f"spacing_from must be 'head' or 'detections', got {spacing_from!r}")
    if initial not in ("head", "autocorrelation"):
        raise InputError(f"initial must be 'head' or 'autocorrelation', got {initial!r}")
    if threshold is not None:
        _check_threshold(threshold)
    _check_threshold(relative_threshold, "relative_threshold")
    if min_separation_px is not None and not float(min_separation_px) > 0:
        raise InputError(f"min_separation_px must be > 0, got {min_separation_px!r}")
    if spacing_px is not None and not (np.isfinite(spacing_px) and float(spacing_px) > 0):
        raise InputError(f"spacing_px must be a positive number of pixels, got {spacing_px!r}")
    pixel_size_A = check_pixel_size(pixel_size_A)
    chans = _as_channels(image)
    n_in = model.config.in_channels
    if chans.shape[0] != n_in:
        raise InputError(f"the network expects {n_in} channel(s) (raw{', restored' * (n_in - 1)}),"
                         f" got {chans.shape[0]}")
    h, w = chans.shape[-2:]
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    x_n = normalise(chans, **(norm_params or {}))[0].astype(np.float32)
    canonical = model.config.canonical_spacing_px
    info: dict[str, Any] = {"decode": decode, "canonical_spacing_px": canonical}

    full = torch.from_numpy(x_n)[None].to(device)
    s0 = None
    if spacing_px is not None:
        s0 = float(spacing_px)
    elif initial == "autocorrelation":
        s0 = _initial_spacing(x_n.mean(axis=0))
    info["initial_spacing_px"] = s0
    if s0 is None:
        # coarse pass: the spacing head at the native scale on a central crop (the head is
        # trained on spacings of 3-48 px for this)
        side = min(coarse_px, h, w)
        r0, c0 = (h - side) // 2, (w - side) // 2
        _, log_s = model(full[..., r0:r0 + side, c0:c0 + side])
        s0 = float(canonical * math.exp(float(log_s[0])))
        info["coarse_spacing_px"] = s0
        if pixel_size_A is not None and s0 * pixel_size_A > HEAD_SPACING_LIMIT_A:
            # the head did not see the lattice (coarse frames: it reads their 2-6 px spacings
            # as 12-18 px); from the finest spacing the passes converge upwards
            s0 = FINEST_SPACING_A / pixel_size_A
            info["restarted_at_finest"] = True
    # at most 4x up-sampling (a spacing of 2 px) and 64x down-sampling
    factor = float(np.clip(canonical / s0, 1.0 / 64.0, 4.0))
    conf = None
    passes = 0
    seen = set()
    overlap = max(16, 2 * model.multiple_of)
    while True:
        size = scaled_size((h, w), factor)
        if min(size) < model.min_size_px:  # keep the network's minimum input size
            grow = model.min_size_px / min(size)
            size = scaled_size((h, w), factor * grow)
            factor *= grow
        seen.add(size)
        # the scale is looked for on a central crop, the full image runs once at the end
        ch = min(h, max(math.ceil(search_px * h / size[0]), 1))
        cw = min(w, max(math.ceil(search_px * w / size[1]), 1))
        cropped = spacing_px is None and (ch < h or cw < w)
        if cropped:
            r0, c0 = (h - ch) // 2, (w - cw) // 2
            crop_size = (max(round(ch * size[0] / h), model.min_size_px),
                         max(round(cw * size[1] / w), model.min_size_px))
            xr = resample(full[..., r0:r0 + ch, c0:c0 + cw], crop_size)
        else:
            xr = resample(full, size)
        conf, log_s = _run_network(model, xr, tile, overlap=overlap)
        passes += 1
        if spacing_px is not None:
            # a known spacing is held: one pass, boxes of that spacing
            s_res = float(spacing_px) * math.sqrt(size[0] / h * size[1] / w)
            break
        s_res = canonical * math.exp(log_s)
        if spacing_from == "detections":
            s_res = _detected_spacing(conf, s_res) or s_res
        ratio = s_res / canonical
        if passes >= max_passes or abs(math.log(ratio)) <= math.log(rescale_tolerance):
            break
        new_factor = float(np.clip(factor / ratio, 1.0 / 64.0, 4.0))
        if scaled_size((h, w), new_factor) in seen:
            break
        factor = new_factor
    if cropped:
        conf, _ = _run_network(model, resample(full, size), tile, overlap=overlap)
    ky, kx = size[0] / h, size[1] / w
    info.update(passes=passes, searched_on_crop=cropped, factor=factor, resampled_shape=size,
                spacing_px=float(s_res / math.sqrt(ky * kx)), spacing_resampled_px=float(s_res))
    if decode == "nms":
        t = 0.3 if threshold is None else float(threshold)
        min_sep = None if min_separation_px is None else float(min_separation_px) * math.sqrt(
            ky * kx)
        pos, score = decode_nms(conf.cpu(), s_res, threshold=t, min_separation_px=min_sep,
                                iou_threshold=iou_threshold)
    else:
        pos, score = decode_otsu(conf.cpu(), threshold=threshold)
        t = threshold
        if min_separation_px is not None and len(pos):
            r = float(min_separation_px) * math.sqrt(ky * kx)
            keep = _greedy_suppress(pos, score, r, lambda dy, dx: dy * dy + dx * dx < r * r)
            pos, score = pos[keep], score[keep]
    info["threshold"] = t
    if relative_threshold:
        pos, score = drop_weak_columns(pos, score, relative_threshold)
        info["relative_threshold"] = float(relative_threshold)
    if return_maps:
        info["confidence"] = conf.cpu().numpy()
    pos = from_resampled(pos, (h, w), size) if len(pos) else np.zeros((0, 2))
    # the pixel-centre mapping may put an edge column a fraction of a pixel outside the image
    pos = np.clip(pos, -0.5, np.array([h - 0.5, w - 0.5]))
    return pos, score, info
