"""The one intensity normalisation used in training and in inference.

The network sees ``x_n = (x - offset) / scale`` and predicts the clean image in the same
normalised units; the restored image is ``y = y_n * scale + offset``. ``offset`` and ``scale`` come
from the input image alone (dose-blind: no dose, gain or detector setting is asked for):

* ``offset`` = the ``offset_quantile`` quantile of the image (1 % by default): 0 for counting
  data at low dose, the vacuum/background level otherwise, and it carries an analog detector's
  additive offset through untouched;
* ``scale`` = the mean of ``min(x, q_hi) - offset``, with ``q_hi`` the ``clip_quantile`` quantile
  (99.9 %): the mean signal above the offset, robust to a few hot pixels or X-ray hits, and never
  zero for sparse counting data (at 0.05 counts per pixel the median would be 0).

Both statistics commute with a positive affine change of units: for ``x' = k x + c`` (k > 0),
``offset' = k offset + c`` and ``scale' = k scale``, so ``x'_n == x_n`` and the whole path
``denormalise(net(normalise(x)))`` scales by k and shifts by c exactly (up to float rounding).
A constant image has no signal (scale 0); it is then normalised with ``scale = max(|offset|, 1)``.

Why no second input channel (a dose or noise-level map): any extra channel computed from the
image that keeps both invariances above is a function of ``x_n`` alone, so it carries no
information the network does not already see; a channel that breaks them (the absolute count
level, log of the mean) would make the output depend on the unit of the data, which the
product forbids. The network therefore reads the noise level from the image itself, as seed
000's autoencoder does ("does not require ... the explicit knowledge of the dose").

Statistics are per image, over the last two axes (H, W); leading axes (batch, channel, frame)
are independent images. For very large images the quantiles are taken on a regular sub-grid of
at most ``max_samples`` pixels (deterministic; the same grid for numpy and torch). At inference
the statistics must come from the whole image, never from a tile, so that tiles agree.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

_CHUNK_ROWS = 256

#: The parameters stored in the model card (``card["normalisation"]``); ``normalise(x, **params)``.
DEFAULT_PARAMS: dict[str, Any] = {"offset_quantile": 0.01, "clip_quantile": 0.999,
                                  "max_samples": 1 << 20}


def normalisation_card(**overrides) -> dict[str, Any]:
    """The ``normalisation`` entry of a model card: the function and its parameters."""
    params = {**DEFAULT_PARAMS, **overrides}
    return {
        "function": "emrestore.nn.normalise.normalise",
        "formula": "x_n = (x - offset) / scale; y = y_n * scale + offset",
        "offset": f"quantile(x, {params['offset_quantile']}) over H, W",
        "scale": f"mean(min(x, quantile(x, {params['clip_quantile']})) - offset) over H, W",
        "statistics": "per image (frame), from the whole image, never per tile",
        "params": params,
    }


def _subgrid_step(h: int, w: int, max_samples: int) -> int:
    """Stride of the regular sub-grid (same in both axes) keeping <= max_samples pixels."""
    n = h * w
    if n <= max_samples:
        return 1
    return math.ceil(math.sqrt(n / max_samples))


def _torch_quantiles(flat: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """Linear-interpolation quantiles (numpy's default method) along the last axis."""
    n = flat.shape[-1]
    srt = torch.sort(flat, dim=-1).values
    out = []
    for q in qs:
        pos = q * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        out.append(srt[..., lo] + (srt[..., hi] - srt[..., lo]) * frac)
    return out


def image_statistics(x, *, offset_quantile: float = 0.01, clip_quantile: float = 0.999,
                     max_samples: int = 1 << 20):
    """``(offset, scale)`` of each image in ``x`` (numpy array or torch tensor, ``(..., H, W)``).

    Both are returned with shape ``(..., 1, 1)`` so that they broadcast against ``x``; computed
    in float64 for numpy and in the tensor's dtype (at least float32) for torch.
    """
    if x.ndim < 2:
        raise ValueError(f"expected an image with at least 2 dimensions (H, W), got shape "
                         f"{tuple(x.shape)}")
    h, w = x.shape[-2:]
    step = _subgrid_step(h, w, max_samples)
    if isinstance(x, torch.Tensor):
        xs = x if x.is_floating_point() else x.float()
        if xs.dtype in (torch.float16, torch.bfloat16):
            xs = xs.float()
        sub = xs[..., ::step, ::step].reshape(*xs.shape[:-2], -1)
        offset, q_hi = _torch_quantiles(sub, (offset_quantile, clip_quantile))
        offset, q_hi = offset[..., None, None], q_hi[..., None, None]
        scale = (torch.minimum(xs, q_hi) - offset).mean(dim=(-2, -1), keepdim=True)
        fallback = torch.clamp(offset.abs(), min=1.0)
        scale = torch.where(scale > 0, scale, fallback)
        return offset, scale
    xs = np.asarray(x)
    lead = xs.shape[:-2]
    flat = xs.reshape(-1, h, w)
    offset = np.empty(flat.shape[0])
    scale = np.empty(flat.shape[0])
    for i, frame in enumerate(flat):
        sub = frame[::step, ::step].astype(np.float64).ravel()
        off, q_hi = np.quantile(sub, (offset_quantile, clip_quantile))
        total = 0.0
        for r in range(0, h, _CHUNK_ROWS):  # float64 sums without a full float64 copy
            total += float(np.minimum(frame[r:r + _CHUNK_ROWS].astype(np.float64), q_hi).sum())
        sc = total / (h * w) - off
        offset[i] = off
        scale[i] = sc if sc > 0 else max(abs(off), 1.0)
    return offset.reshape(*lead, 1, 1), scale.reshape(*lead, 1, 1)


def normalise(x, *, offset_quantile: float = 0.01, clip_quantile: float = 0.999,
              max_samples: int = 1 << 20):
    """``(x_n, offset, scale)`` with ``x_n = (x - offset) / scale``, per image over (H, W).

    Works on numpy arrays (float32 result for float32/integer input, float64 for float64) and on
    torch tensors (same dtype, at least float32). See the module docstring for the statistics.
    """
    offset, scale = image_statistics(x, offset_quantile=offset_quantile,
                                     clip_quantile=clip_quantile, max_samples=max_samples)
    if isinstance(x, torch.Tensor):
        xf = x if x.is_floating_point() and x.dtype not in (torch.float16, torch.bfloat16) \
            else x.float()
        return (xf - offset) / scale, offset, scale
    xf = np.asarray(x)
    h, w = xf.shape[-2:]
    x_n = np.empty(xf.shape, dtype=np.float64 if xf.dtype == np.float64 else np.float32)
    src, dst = xf.reshape(-1, h, w), x_n.reshape(-1, h, w)
    off, sc = offset.reshape(-1), scale.reshape(-1)
    for i in range(src.shape[0]):
        for r in range(0, h, _CHUNK_ROWS):
            dst[i, r:r + _CHUNK_ROWS] = (src[i, r:r + _CHUNK_ROWS].astype(np.float64) - off[i]) \
                / sc[i]
    return x_n, offset, scale


def from_card(entry: dict[str, Any] | None):
    """``(normalise, denormalise)`` with the parameters of a card's ``normalisation`` entry."""
    params = dict((entry or {}).get("params", {}))
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise ValueError(f"model card normalisation: unknown parameter(s) {unknown}")
    return functools.partial(normalise, **params), denormalise


def denormalise(y_n, offset, scale):
    """Back to the input's units: ``y_n * scale + offset`` (numpy or torch, broadcasting)."""
    if isinstance(y_n, torch.Tensor):
        offset = torch.as_tensor(offset, dtype=y_n.dtype, device=y_n.device)
        scale = torch.as_tensor(scale, dtype=y_n.dtype, device=y_n.device)
        return y_n * scale + offset
    y = np.asarray(y_n, dtype=np.float64) * scale + offset
    return y.astype(np.float64 if np.asarray(y_n).dtype == np.float64 else np.float32)
