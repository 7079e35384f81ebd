"""TEM camera model: modulation-transfer function and detector noise (Lobato et al. 2023, 27-40).

Input: the **expected counts** image (mean primary electrons per pixel, see :mod:`.dose`).
Output: the recorded frame in detector units, float32 (integer valued): counts for a direct
detector in counting mode, ``round(gain · signal + offset)`` clipped to the ADC range for an
integrating CCD/CMOS camera.

The MTF (eqs 27-29) blurs the *clean* image too: it cannot be told apart from other microscope
settings, so the paper embeds it in the target. Apply it with :func:`apply_mtf` to the clean
expected counts *before* :func:`distort_tem`; :func:`distort_tem` itself does not apply it.

Noise chain (integrating camera), in the paper's order::

    shot noise (Poisson) → fixed-pattern (photo-response) non-uniformity → dark-current
    non-uniformity (log-normal + hot pixels) with dark shot noise → readout: thermal (white),
    flicker (1/f), reset (per row) → black-pixel clusters → zinger clusters → ADC gain/offset
    → upper clip → quantisation

A counting camera records Poisson counts, black clusters, zingers and saturation only. Noise
amplitudes are in electrons (primary-electron equivalents) unless the name says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache

import numpy as np
import scipy.fft as sfft

from .._rng import chance, integer, log_uniform, uniform
from ..errors import ConfigError, InputError
from .config import check_range
from .detector import (
    black_pixels,
    check_image,
    clip_upper,
    draw_adc,
    gaussian_noise,
    poisson_noise,
    quantise,
    saturation_level,
    to_adc_units,
    zingers,
)

__all__ = [
    "TemDistortion",
    "TemDistortionParams",
    "apply_mtf",
    "dark_current_map",
    "distort_tem",
    "draw_mtf_params",
    "draw_tem_distortion",
    "fixed_pattern_noise",
    "flicker_noise",
    "mtf",
    "mtf_is_valid",
    "mtf_radial",
    "reset_noise",
    "to_detector_units",
]


# --------------------------------------------------------------------------------------------
# Modulation-transfer function
# --------------------------------------------------------------------------------------------

def mtf_radial(g, a: float, b: float, c: float) -> np.ndarray:
    """Rotationally symmetric MTF_r(g) = a·exp(-g²/2b²) + (1-a)·exp(-g²/2c²), eq. 29.

    ``g`` is the spatial frequency in units of the Nyquist frequency (1 = 0.5 cycles/px).
    """
    g2 = np.square(np.asarray(g, dtype=np.float64))
    return a * np.exp(-g2 / (2 * b * b)) + (1.0 - a) * np.exp(-g2 / (2 * c * c))


def mtf_is_valid(a: float, b: float, c: float) -> bool:
    """The paper's acceptance rule: MTF_r >= 0 and non-increasing on 1000 points over 0-10 Nyquist.

    (Non-strict: far out both Gaussians underflow to exactly 0.)
    """
    if not (a > 0 and b > 0 and c > 0):
        return False
    values = mtf_radial(np.linspace(0.0, 10.0, 1000), a, b, c)
    return bool(np.all(values >= 0.0) and np.all(np.diff(values) <= 1e-15))


def _frequencies(shape: tuple[int, int], real: bool) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    v = (np.fft.fftfreq(h) * 2.0)[:, None]          # units of Nyquist (0.5 cycles/px)
    u = ((np.fft.rfftfreq(w) if real else np.fft.fftfreq(w)) * 2.0)[None, :]
    return v, u


def _mtf_grid(shape, a, b, c, real: bool) -> np.ndarray:
    v, u = _frequencies(shape, real)
    radial = mtf_radial(np.sqrt(u * u + v * v), a, b, c)
    # sinc(π u / 2) in the paper's (unnormalised) notation is np.sinc(u / 2).
    return radial * np.sinc(u / 2.0) * np.sinc(v / 2.0)


def mtf(shape: tuple[int, int], a: float, b: float, c: float) -> np.ndarray:
    """Camera MTF on the ``numpy.fft.fft2`` grid of ``shape`` (eq. 28), float64.

    ``MTF = MTF_r · sinc(πu/2) · sinc(πv/2)`` with ``(u, v)`` in units of Nyquist; the sinc
    factors are the convolution over the square pixel area. Equals 1 at zero frequency.
    """
    return _mtf_grid(tuple(int(s) for s in shape), a, b, c, real=False)


def apply_mtf(image: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """Convolve ``image`` with the camera PSF (eq. 27) via FFT (periodic edges), float32.

    Use it on the clean expected counts before :func:`distort_tem` so that the target contains it;
    render a margin if wrap-around at the edges matters.
    """
    img = check_image(image, "image")
    spec = sfft.rfft2(img) * _mtf_grid(img.shape, a, b, c, real=True)
    return sfft.irfft2(spec, s=img.shape).astype(np.float32)


def draw_mtf_params(rng: np.random.Generator, a_range: tuple[float, float] = (0.0, 1.5),
                    b_range: tuple[float, float] = (0.25, 2.5),
                    c_range: tuple[float, float] = (0.25, 2.5)) -> tuple[float, float, float]:
    """Draw ``(a, b, c)`` of eq. 29 until :func:`mtf_is_valid` accepts them (the paper's rule).

    ``a > 1`` gives a negative second term (a sharper core over a wide pedestal) and is where the
    rule rejects. ``b, c`` are widths in Nyquist units. Ranges are emrestore's choice.
    """
    for _ in range(10_000):
        a, b, c = uniform(rng, a_range), uniform(rng, b_range), uniform(rng, c_range)
        if mtf_is_valid(a, b, c):
            return a, b, c
    raise ConfigError(f"no valid MTF found in a={a_range}, b={b_range}, c={c_range}")


# --------------------------------------------------------------------------------------------
# Detector noise
# --------------------------------------------------------------------------------------------

def fixed_pattern_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Photo-response non-uniformity after flat-fielding: ``x ← x + x·N(0, σ)`` (eq. 31)."""
    img = np.asarray(image, dtype=np.float32)
    gain = 1.0 + np.float32(sigma) * rng.standard_normal(img.shape, dtype=np.float32)
    return img * gain


def dark_current_map(shape: tuple[int, int], mean_e: float, relative_spread: float,
                     hot_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Dark-current non-uniformity (eq. 32): mean dark electrons per pixel, float32.

    The body is log-normal with mean ``mean_e`` and standard deviation ``relative_spread·mean_e``;
    a fraction ``hot_fraction`` of "hot" pixels is uniform in ``[μ + 5σ, μ + 8σ]``.
    """
    mean, std = float(mean_e), float(relative_spread) * float(mean_e)
    if mean <= 0:
        return np.zeros(shape, dtype=np.float32)
    s2 = math.log1p((std / mean) ** 2)               # parameters of the underlying normal
    dcnu = rng.lognormal(math.log(mean) - s2 / 2, math.sqrt(s2), shape).astype(np.float32)
    n_hot = int(rng.binomial(dcnu.size, min(max(hot_fraction, 0.0), 1.0)))
    if n_hot:
        idx = rng.integers(0, dcnu.size, n_hot)        # repeats are rare and harmless
        dcnu.reshape(-1)[idx] = mean + std * (5.0 + 3.0 * rng.random(n_hot))
    return dcnu


def flicker_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator, *,
                  exponent: float = 1.0) -> np.ndarray:
    """Flicker (1/f) noise ``F(N(0, 1) / f^exponent)`` scaled to standard deviation σ (eq. 35).

    ``f`` is the radial spatial frequency; ``exponent = 1`` is the paper's eq. 35 (amplitude ∝
    1/f, i.e. power ∝ 1/f²); ``0.5`` gives power ∝ 1/f. The zero frequency is removed.
    """
    h, w = (int(s) for s in shape)
    white = rng.standard_normal((h, w), dtype=np.float32)
    spec = sfft.rfft2(white)
    spec *= _inverse_frequency_power((h, w), float(exponent))
    field = sfft.irfft2(spec, s=(h, w))
    std = float(field.std())
    return (field * (float(sigma) / std if std > 0 else 0.0)).astype(np.float32)


@lru_cache(maxsize=8)
def _inverse_frequency_power(shape: tuple[int, int], exponent: float) -> np.ndarray:
    """``1 / f**exponent`` on the rfft2 grid (0 at f = 0), float32, cached per shape."""
    v, u = _frequencies(shape, real=True)
    f = np.sqrt(u * u + v * v)
    f[0, 0] = np.inf
    out = (1.0 / f ** exponent).astype(np.float32)
    out.setflags(write=False)
    return out


def reset_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Reset (row) noise: one ``N(0, σ)`` value added to every pixel of a row (eq. 36)."""
    img = np.asarray(image, dtype=np.float32)
    rows = rng.standard_normal((img.shape[0], 1), dtype=np.float32) * np.float32(sigma)
    return img + rows


# --------------------------------------------------------------------------------------------
# Parameters and drawn distortions
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TemDistortionParams:
    """Probabilities and ranges of the TEM camera model; ranges are ``(low, high)``.

    The paper gives the model, not the numbers (except hot pixels at μ+5σ…μ+8σ and the MTF
    acceptance rule); these ranges are emrestore's choices for a camera recording ~1-100
    electrons per pixel:

    * mtf_a/b/c: eq. 29 (b, c in Nyquist units); the MTF itself is applied by the caller.
    * counting_probability: direct detector in counting mode (no gain/readout noises).
    * fpn_sigma: residual gain non-uniformity after flat-field, relative (≤ 5 %).
    * dark_mean_e (log-uniform), dark_relative_spread, hot_pixel_fraction: eq. 32.
    * read_noise_e, flicker_sigma_e, reset_sigma_e: σ of eqs 34-36 in electrons.
    * black_* / zinger_*: number of seed points and random-walk steps of the clusters (eqs
      37-38); black sensitivity 0-0.1, zinger factor as given.
    * upper_clip_fraction: saturation at ``mean + f·(max - mean)``.
    * adc_*: bit depth, gain in ADU per electron (log-uniform), offset as a fraction of range.
    """

    mtf_a: tuple[float, float] = (0.0, 1.5)
    mtf_b: tuple[float, float] = (0.25, 2.5)
    mtf_c: tuple[float, float] = (0.25, 2.5)
    counting_probability: float = 0.2
    fpn_probability: float = 0.5
    fpn_sigma: tuple[float, float] = (0.0, 0.05)
    dark_probability: float = 0.5
    dark_mean_e: tuple[float, float] = (0.01, 2.0)
    dark_relative_spread: tuple[float, float] = (0.1, 1.0)
    hot_pixel_fraction: tuple[float, float] = (0.0, 1e-3)
    read_probability: float = 0.8
    read_noise_e: tuple[float, float] = (0.0, 1.0)
    flicker_probability: float = 0.3
    flicker_sigma_e: tuple[float, float] = (0.0, 0.5)
    reset_probability: float = 0.3
    reset_sigma_e: tuple[float, float] = (0.0, 0.5)
    black_pixel_probability: float = 0.2
    black_pixel_points: tuple[int, int] = (1, 20)
    black_pixel_walk_steps: tuple[int, int] = (0, 15)
    zinger_probability: float = 0.2
    zinger_points: tuple[int, int] = (1, 10)
    zinger_walk_steps: tuple[int, int] = (0, 20)
    zinger_factor: tuple[float, float] = (2.0, 10.0)
    upper_clip_probability: float = 0.1
    upper_clip_fraction: tuple[float, float] = (0.5, 1.0)
    adc_bits: tuple[int, ...] = (12, 14, 16)
    adc_gain_adu_per_e: tuple[float, float] = (0.5, 50.0)
    adc_offset_fraction: tuple[float, float] = (0.0, 0.1)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_probability"):
                if not 0.0 <= value <= 1.0:
                    raise ConfigError(f"{f.name}: a probability in [0, 1] is required, got {value}")
            elif f.name != "adc_bits":
                check_range(f.name, value, 0.0)
        if not self.adc_bits or any(int(b) < 1 or int(b) > 32 for b in self.adc_bits):
            raise ConfigError(f"adc_bits: one or more bit depths in 1..32, got {self.adc_bits}")
        check_range("fpn_sigma", self.fpn_sigma, 0.0, 1.0)
        check_range("adc_offset_fraction", self.adc_offset_fraction, 0.0, 0.9)
        check_range("adc_gain_adu_per_e", self.adc_gain_adu_per_e, 1e-9)
        check_range("upper_clip_fraction", self.upper_clip_fraction, 0.0, 1.0)
        check_range("hot_pixel_fraction", self.hot_pixel_fraction, 0.0, 1.0)

    def all_on(self) -> TemDistortionParams:
        """The same ranges with every effect on (integrating camera)."""
        probs = {f.name: 1.0 for f in fields(self) if f.name.endswith("_probability")}
        probs["counting_probability"] = 0.0
        return replace(self, **probs)


@dataclass(frozen=True)
class TemDistortion:
    """The concrete camera distortion of one TEM frame (drawn by :func:`draw_tem_distortion`).

    Zero amplitudes/counts or ``None`` mean the effect is off. ``mtf`` is ``(a, b, c)`` for
    :func:`apply_mtf`, which the caller applies to the clean image.
    """

    shape: tuple[int, int]
    mtf: tuple[float, float, float]
    detector: str = "analog"          # "analog" (CCD/CMOS) | "counting" (direct detector)
    fpn_sigma: float = 0.0
    dark_mean_e: float = 0.0
    dark_relative_spread: float = 0.0
    hot_pixel_fraction: float = 0.0
    read_noise_e: float = 0.0
    flicker_sigma_e: float = 0.0
    reset_sigma_e: float = 0.0
    black_pixel_points: int = 0
    black_pixel_walk_steps: int = 0
    zinger_points: int = 0
    zinger_walk_steps: int = 0
    zinger_factor: tuple[float, float] = (2.0, 10.0)
    upper_clip_fraction: float | None = None
    adc_bits: int = 16
    adc_gain_adu_per_e: float = 1.0
    adc_offset_adu: float = 0.0

    def to_dict(self) -> dict:
        """Plain-Python record of every drawn value (JSON-serialisable)."""
        out = asdict(self)
        for key in ("shape", "mtf", "zinger_factor"):
            out[key] = list(out[key])
        return out


def draw_tem_distortion(rng: np.random.Generator, params: TemDistortionParams,
                        shape: tuple[int, int], *, max_expected_counts: float | None = None
                        ) -> TemDistortion:
    """Draw the concrete camera distortion of one TEM frame of output ``shape``.

    ``max_expected_counts`` (optional) caps the ADC gain so that the signal fits the ADC range.
    """
    h, w = (int(v) for v in shape)
    if h < 1 or w < 1:
        raise InputError(f"shape must be positive, got {shape}")
    p = params
    kw: dict = {"mtf": draw_mtf_params(rng, p.mtf_a, p.mtf_b, p.mtf_c)}
    counting = chance(rng, p.counting_probability)
    kw["detector"] = "counting" if counting else "analog"
    if not counting:
        if chance(rng, p.fpn_probability):
            kw["fpn_sigma"] = uniform(rng, p.fpn_sigma)
        if chance(rng, p.dark_probability):
            kw["dark_mean_e"] = log_uniform(rng, p.dark_mean_e)
            kw["dark_relative_spread"] = uniform(rng, p.dark_relative_spread)
            kw["hot_pixel_fraction"] = uniform(rng, p.hot_pixel_fraction)
        if chance(rng, p.read_probability):
            kw["read_noise_e"] = uniform(rng, p.read_noise_e)
        if chance(rng, p.flicker_probability):
            kw["flicker_sigma_e"] = uniform(rng, p.flicker_sigma_e)
        if chance(rng, p.reset_probability):
            kw["reset_sigma_e"] = uniform(rng, p.reset_sigma_e)
        bits, gain, offset = draw_adc(rng, p.adc_bits, p.adc_offset_fraction, p.adc_gain_adu_per_e,
                                       max_expected_counts)
        kw.update(adc_bits=bits, adc_gain_adu_per_e=gain, adc_offset_adu=offset)
    if chance(rng, p.black_pixel_probability):
        kw["black_pixel_points"] = integer(rng, p.black_pixel_points)
        kw["black_pixel_walk_steps"] = integer(rng, p.black_pixel_walk_steps)
    if chance(rng, p.zinger_probability):
        kw["zinger_points"] = integer(rng, p.zinger_points)
        kw["zinger_walk_steps"] = integer(rng, p.zinger_walk_steps)
        kw["zinger_factor"] = tuple(p.zinger_factor)
    if chance(rng, p.upper_clip_probability):
        kw["upper_clip_fraction"] = uniform(rng, p.upper_clip_fraction)
    return TemDistortion(shape=(h, w), **kw)


# --------------------------------------------------------------------------------------------
# Applying a drawn distortion
# --------------------------------------------------------------------------------------------

def to_detector_units(expected_counts: np.ndarray, distortion: TemDistortion) -> np.ndarray:
    """The clean image in the recorded frame's units (``gain · counts + offset`` or counts)."""
    return to_adc_units(expected_counts, distortion)


def distort_tem(expected_counts: np.ndarray, distortion: TemDistortion,
                rng: np.random.Generator) -> np.ndarray:
    """Record a TEM frame: the camera noise chain applied to ``expected_counts`` (MTF excluded).

    Parameters
    ----------
    expected_counts : (H_in, W_in) array
        Mean primary electrons per pixel (already MTF-blurred by the caller), at least
        ``distortion.shape``; a larger input is centre-cropped.
    distortion : TemDistortion
    rng : numpy Generator

    Returns
    -------
    (H, W) float32 frame in detector units (integer valued).
    """
    d = distortion
    img = check_image(expected_counts, "expected counts", min_shape=d.shape)
    h, w = d.shape
    oy, ox = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    x = poisson_noise(img[oy:oy + h, ox:ox + w], rng)
    analog = d.detector == "analog"
    if analog:
        if d.fpn_sigma:
            x = fixed_pattern_noise(x, d.fpn_sigma, rng)
        if d.dark_mean_e:
            dcnu = dark_current_map(x.shape, d.dark_mean_e, d.dark_relative_spread,
                                    d.hot_pixel_fraction, rng)
            x = x + poisson_noise(dcnu, rng)
        if d.read_noise_e:
            x = gaussian_noise(x, d.read_noise_e, rng)
        if d.flicker_sigma_e:
            x = x + flicker_noise(x.shape, d.flicker_sigma_e, rng)
        if d.reset_sigma_e:
            x = reset_noise(x, d.reset_sigma_e, rng)
    if d.black_pixel_points:
        x = black_pixels(x, d.black_pixel_points, rng, walk_steps=d.black_pixel_walk_steps)
    if d.zinger_points:
        x = zingers(x, d.zinger_points, rng, walk_steps=d.zinger_walk_steps,
                    factor=d.zinger_factor)
    if analog:
        x = to_detector_units(x, d)
    if d.upper_clip_fraction is not None:
        x = clip_upper(x, saturation_level(x, d.upper_clip_fraction))
    return quantise(x, bits=d.adc_bits if analog else None)
