"""Contrast transforms and backgrounds of an undistorted image (seed 001, eqs. 23-26).

Order of operations (as in the paper), for an input y (the rendered atomic or low-resolution
signal):

1. contrast inversion, probability 0.5:      y1 = max(y) - y                         (eq. 23)
2. non-linearity, probability 0.5:           y2 = |y1|^beta, beta ~ U[0.5, 1.5]        (eq. 24)
3. additive background B >= 0:               y3 = y2 + B
   * a positive plane of random orientation whose maximum is U[0, 0.5] max(y2), or (p = 0.5)
   * a Gaussian with centre uniform in the field, sigma U[0.2, 0.6] min(nx, ny) pixels and height
     U[0, 0.5] max(y2);
   * plus, as an extra option (probability 0.25, seed 003's "non-linear patterns"), a smooth
     random field: white noise low-pass filtered with a Gaussian of correlation length
     U[0.05, 0.3] min(nx, ny), rescaled to [0, 1] and multiplied by U[0, 0.3] max(y2).
4. if r = Std{y3} / E{y3} is outside [0.01, 0.35]:  y4 = c y3 + d                  (eq. 25)
   We keep c = 1 and choose d so that r equals a target drawn uniformly in [0.01, 0.35]
   (``ContrastDraw.ratio_target``); an image with zero variance is left as it is. d never goes
   below -min(y3): the image stays non-negative, and the ratio stops short of a target that
   only a negative pedestal could reach.
5. y5 = y4 / max(y4)                                                                  (eq. 26)

``apply_contrast`` returns a ``ContrastResult`` (a named tuple ``(image, background, info)`` with
properties ``no_background`` and ``signal_gain``).

Labels ("noBackgroundnoNoise"): ``apply_contrast`` returns the final image y5, the background in
final units ``background = c B / max(y4)``, and ``info``. The clean image without background is
``y5 - background``: the same image with the additive term B set to zero and *everything else*
(inversion, power, c, d, normalisation) unchanged, so final = clean_no_bg + background exactly.

Intensity labels: when no power transform was applied the map from the input is affine,
y5 = signal_gain * y + signal_offset + background, with signal_gain = +-c / max(y4) (negative if
inverted). ``info["signal_gain"]`` lets column integrated intensities (``render_columns``, in input
units x A^2) be expressed in final-image units: multiply by signal_gain. When the power transform
was applied the map is non-linear: ``info["linear"]`` is False, ``info["signal_gain"]`` is None
(``ContrastResult.signal_gain`` is NaN), and intensity labels stay in pre-power (input) units.
``transform_signal(y_other, info)`` applies exactly the same signal transform (without background)
to another rendering of the same signal, e.g. the 2x super-resolved image, linear or not.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.fft as sfft

from .._rng import chance, uniform
from ..errors import ConfigError, InputError
from .config import check_range

__all__ = [
    "ContrastDraw",
    "ContrastParams",
    "ContrastResult",
    "apply_contrast",
    "draw_contrast",
    "smooth_random_field",
    "transform_signal",
]


@dataclass(frozen=True)
class ContrastParams:
    """Probabilities and ranges of the contrast / background stage (seed 001 defaults)."""

    invert_probability: float = 0.5
    power_probability: float = 0.5
    beta_range: tuple[float, float] = (0.5, 1.5)
    background_probability: float = 1.0
    plane_probability: float = 0.5
    background_height_fraction: tuple[float, float] = (0.0, 0.5)
    gaussian_sigma_fraction: tuple[float, float] = (0.2, 0.6)
    lowfreq_probability: float = 0.25
    lowfreq_height_fraction: tuple[float, float] = (0.0, 0.3)
    lowfreq_length_fraction: tuple[float, float] = (0.05, 0.3)
    ratio_range: tuple[float, float] = (0.01, 0.35)

    def __post_init__(self):
        for name in ("invert_probability", "power_probability", "background_probability",
                     "plane_probability", "lowfreq_probability"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {p}")
        check_range("beta_range", self.beta_range, lo=1e-3)
        check_range("background_height_fraction", self.background_height_fraction, lo=0.0)
        check_range("gaussian_sigma_fraction", self.gaussian_sigma_fraction, lo=1e-3)
        check_range("lowfreq_height_fraction", self.lowfreq_height_fraction, lo=0.0)
        check_range("lowfreq_length_fraction", self.lowfreq_length_fraction, lo=1e-3)
        check_range("ratio_range", self.ratio_range, lo=1e-6)


@dataclass(frozen=True)
class ContrastDraw:
    """Concrete contrast settings for one image (everything except the low-frequency noise)."""

    invert: bool = False
    beta: float | None = None
    background: str = "none"  # "none" | "plane" | "gaussian"
    background_height_fraction: float = 0.0
    plane_angle_rad: float = 0.0
    plane_floor: float = 0.0  # plane value at its low end, as a fraction of its maximum
    gaussian_centre: tuple[float, float] = (0.5, 0.5)  # (y, x) as fractions of (H, W)
    gaussian_sigma_fraction: float = 0.4
    lowfreq: bool = False
    lowfreq_height_fraction: float = 0.0
    lowfreq_length_fraction: float = 0.1
    ratio_range: tuple[float, float] = (0.01, 0.35)
    ratio_target: float = 0.1

    def __post_init__(self):
        if self.background not in ("none", "plane", "gaussian"):
            raise InputError(f"background must be 'none', 'plane' or 'gaussian', "
                             f"got {self.background!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["gaussian_centre"] = list(self.gaussian_centre)
        d["ratio_range"] = list(self.ratio_range)
        return d


class ContrastResult(NamedTuple):
    """``(image, background, info)``; ``image - background`` is the clean image without
    background (``no_background``)."""

    image: np.ndarray  # final image, max 1 (float32)
    background: np.ndarray  # additive background in final units (float32)
    info: dict

    @property
    def no_background(self) -> np.ndarray:
        """The final image with the additive background set to zero (same c, d, scaling)."""
        return (self.image - self.background).astype(np.float32)

    @property
    def signal_gain(self) -> float:
        """d(final)/d(input) for a linear transform; NaN when the power transform was applied
        (then intensity labels stay in input units; use ``transform_signal`` for images)."""
        g = self.info["signal_gain"]
        return float("nan") if g is None else float(g)


def draw_contrast(rng: np.random.Generator, params: ContrastParams | None = None) -> ContrastDraw:
    """Draw concrete contrast / background settings."""
    p = params or ContrastParams()
    invert = chance(rng, p.invert_probability)
    beta = uniform(rng, p.beta_range) if chance(rng, p.power_probability) else None
    background = "none"
    if chance(rng, p.background_probability):
        background = "plane" if chance(rng, p.plane_probability) else "gaussian"
    height = uniform(rng, p.background_height_fraction)
    angle = uniform(rng, (0.0, 2.0 * math.pi))
    floor = float(rng.random())
    centre = (float(rng.random()), float(rng.random()))
    sigma = uniform(rng, p.gaussian_sigma_fraction)
    lowfreq = chance(rng, p.lowfreq_probability)
    lf_height = uniform(rng, p.lowfreq_height_fraction)
    lf_len = uniform(rng, p.lowfreq_length_fraction)
    target = uniform(rng, p.ratio_range)
    return ContrastDraw(
        invert=invert, beta=beta, background=background, background_height_fraction=height,
        plane_angle_rad=angle, plane_floor=floor, gaussian_centre=centre,
        gaussian_sigma_fraction=sigma, lowfreq=lowfreq, lowfreq_height_fraction=lf_height,
        lowfreq_length_fraction=lf_len, ratio_range=tuple(p.ratio_range), ratio_target=target,
    )


def smooth_random_field(rng: np.random.Generator, shape: tuple[int, int], length_px: float
                        ) -> np.ndarray:
    """Gaussian-filtered white noise (correlation length ``length_px``), rescaled to [0, 1]."""
    h, w = shape
    noise = rng.standard_normal((h, w))
    ky = sfft.fftfreq(h)[:, None]
    kx = sfft.rfftfreq(w)[None, :]
    filt = np.exp(-2.0 * math.pi**2 * length_px**2 * (ky * ky + kx * kx))
    f = sfft.irfft2(sfft.rfft2(noise) * filt, s=(h, w))
    lo, hi = f.min(), f.max()
    return (f - lo) / (hi - lo) if hi > lo else np.zeros((h, w))


def transform_signal(y: np.ndarray, info: dict) -> np.ndarray:
    """Map another rendering of the *same signal* (e.g. the 2x super-resolved image, in the
    units of the input of ``apply_contrast``) through the inversion, power, c, d and
    normalisation recorded in ``info``, without background: the matching "no background" label
    at any sampling. Works for the non-linear (power) case too. Float32 output.
    """
    y = np.asarray(y, dtype=np.float64)
    if info["invert"]:
        y = info["invert_constant"] - y
    if info["beta"] is not None:
        y = np.abs(y) ** info["beta"]
    return ((info["c"] * y + info["d"]) * info["scale"]).astype(np.float32)


def _background(draw: ContrastDraw, shape, peak: float) -> np.ndarray | None:
    h, w = shape
    height = draw.background_height_fraction * peak
    if draw.background == "none" or height <= 0:
        return None
    yy = np.arange(h, dtype=float)[:, None]
    xx = np.arange(w, dtype=float)[None, :]
    if draw.background == "plane":
        u = math.cos(draw.plane_angle_rad) * xx + math.sin(draw.plane_angle_rad) * yy
        umin, umax = u.min(), u.max()
        t = (u - umin) / (umax - umin) if umax > umin else np.zeros_like(u)
        return height * (draw.plane_floor + (1.0 - draw.plane_floor) * t)
    cy = draw.gaussian_centre[0] * (h - 1)
    cx = draw.gaussian_centre[1] * (w - 1)
    s = draw.gaussian_sigma_fraction * min(h, w)
    gy = np.exp(-0.5 * ((yy - cy) / s) ** 2)
    gx = np.exp(-0.5 * ((xx - cx) / s) ** 2)
    return height * gy * gx


def _ratio(y: np.ndarray) -> float:
    m = float(y.mean())
    s = float(y.std())
    return s / m if m > 0 else math.inf


def apply_contrast(y: np.ndarray, draw: ContrastDraw, rng: np.random.Generator | None = None
                   ) -> ContrastResult:
    """Apply eqs. 23-26 to ``y``; returns ``(image, background, info)`` (see module docstring).

    ``rng`` is needed only for the optional low-frequency pattern.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2:
        raise InputError(f"apply_contrast expects a 2D image, got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise InputError("apply_contrast: the image contains NaN or infinite values")
    info: dict = {"invert": draw.invert, "beta": draw.beta, "background": draw.background,
                  "lowfreq": draw.lowfreq}
    sign, const = 1.0, 0.0
    if draw.invert:
        const = float(y.max())
        y1 = const - y
        sign = -1.0
    else:
        y1 = y
    linear = draw.beta is None
    y2 = y1 if linear else np.abs(y1) ** draw.beta
    peak = float(y2.max()) if y2.size else 0.0
    peak = max(peak, 0.0)
    bg = _background(draw, y.shape, peak)
    if draw.lowfreq and draw.lowfreq_height_fraction > 0 and peak > 0:
        if rng is None:
            raise InputError("apply_contrast: a generator is needed for the low-frequency pattern")
        length = draw.lowfreq_length_fraction * min(y.shape)
        lf = draw.lowfreq_height_fraction * peak * smooth_random_field(rng, y.shape, length)
        bg = lf if bg is None else bg + lf
    if bg is None:
        bg = np.zeros_like(y2)
    y3 = y2 + bg
    r_before = _ratio(y3)
    lo, hi = draw.ratio_range
    c, d = 1.0, 0.0
    std = float(y3.std())
    if std > 0 and not (lo <= r_before <= hi):
        d = std / draw.ratio_target - float(y3.mean())
        # A detector signal is never negative: a pedestal that would push the darkest pixel
        # below zero is cut back to it, so the ratio ends as close to the target as it can.
        d = max(d, -float(y3.min()))
    y4 = c * y3 + d
    m = float(y4.max())
    scale = 1.0 / m if m > 0 else 1.0
    image = y4 * scale
    background = c * bg * scale
    info.update({
        "invert_constant": const, "c": c, "d": d, "scale": scale,
        "ratio_before": r_before, "ratio_after": _ratio(image),
        "ratio_target": draw.ratio_target, "linear": linear,
        "signal_gain": sign * c * scale if linear else None,
        "signal_offset": (c * const + d) * scale if linear else None,
    })
    return ContrastResult(image.astype(np.float32), background.astype(np.float32), info)
