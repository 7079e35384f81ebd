"""S(T)EM and SEM scan and detector distortions (Lobato et al. 2023 eqs 41-55; Lin et al. 2021).

Input: the **expected counts** image (mean detected electrons per pixel, already dose-scaled, see
:mod:`.dose`), optionally rendered with a margin around the field of view. Output: the recorded
image in detector units, float32:

* electron-counting detector: integer counts;
* analog (scintillator + photomultiplier) detector: ``round(gain · electrons + offset)`` clipped to
  the ADC range, e.g. values ~33 000 on a 16-bit ADC as in real HAADF files.

The chain, in the paper's order::

    scan geometry (X/Y/XY AR(1) jitter, sinusoidal line jitter, linear drift; bicubic resampling)
    → Poisson shot noise → PMT gain noise + read noise → fast-scan PSF (causal, along rows)
    → row-line noise → black pixels (not SEM) → zingers → ADC gain/offset → upper clip → quantise

Conventions
-----------
* Rows are scan lines (slow direction ``y``, top to bottom); columns the fast direction ``x``
  (left to right). Every scan displacement is **one value per scan line**: output pixel
  ``(i, j)`` records the specimen at ``(i + dy[i], j + dx[i])`` in the undistorted frame.
* The undistorted frame is the output grid: if the input is larger than ``distortion.shape`` by
  ``2·m`` pixels, the output grid sits at offset ``m`` and the clean target is the centred crop
  ``input[m:m+H, m:m+W]`` (:func:`center_crop`). Render with ``m >= margin_px(distortion)`` so
  jitter never pulls in clamped edges.
* Labels (atom positions) normally stay in the undistorted frame: the restoration target is the
  undistorted geometry. :func:`distorted_coordinates` maps positions into the distorted frame if a
  label must follow the scan distortion.
* Fast-scan PSF: ``psf(x)`` is zero for ``x > 0`` where ``x = -lag`` and ``lag`` counts pixels
  *after* the current one along the scan; the recorded value at column ``j`` is
  ``sum_lag h[lag] · x[j - lag]`` (the detector remembers earlier pixels; bright features trail to
  the right). Left of the first column the first value is repeated (the beam waits there during
  flyback).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import scipy.fft as sfft
from scipy.signal import lfilter

from .._rng import chance, integer, log_uniform, uniform
from ..errors import ConfigError, InputError
from ._interp import resample_along, resample_rows_constant, shift_rows
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
    "FastScanResponse",
    "StemDistortion",
    "StemDistortionParams",
    "apply_fast_scan",
    "ar1_series",
    "black_pixels",
    "center_crop",
    "clip_upper",
    "distort_stem",
    "distorted_coordinates",
    "draw_stem_distortion",
    "fast_scan_psf",
    "fast_scan_shift_px",
    "line_jitter",
    "linear_drift",
    "margin_px",
    "pmt_gain_spread",
    "pmt_noise",
    "poisson_noise",
    "quantise",
    "row_line_noise",
    "scan_displacements",
    "scan_jitter",
    "to_detector_units",
    "zingers",
]

MODALITIES = ("stem", "sem")


# --------------------------------------------------------------------------------------------
# Scan geometry
# --------------------------------------------------------------------------------------------

def ar1_series(n: int, phi: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary AR(1) displacement series of eq. 41 (Yule-Walker scheme), float64 (n,).

    ``Δ_1 = a_1 / sqrt(1 - φ²)``, ``Δ_k = φ Δ_{k-1} + a_k`` with ``a_k ~ N(0, sigma)``; the
    stationary standard deviation is ``sigma / sqrt(1 - φ²)`` and the lag-1 autocorrelation ``φ``.
    ``sigma`` is in the unit wanted for ``Δ`` (pixels for :func:`scan_jitter`).
    """
    if not 0.0 <= phi < 1.0:
        raise InputError(f"AR(1) correlation φ must lie in [0, 1), got {phi}")
    if sigma < 0:
        raise InputError(f"AR(1) innovation σ must be >= 0, got {sigma}")
    a = rng.normal(0.0, 1.0, int(n)) * float(sigma)
    if n:
        a[0] /= math.sqrt(1.0 - phi * phi)
    return lfilter([1.0], [1.0, -float(phi)], a)


def line_jitter(n_rows: int, amplitude_px: float, period_lines: float, phase_rad: float,
                rng: np.random.Generator) -> np.ndarray:
    """Per-line displacement ``A · N(0, 1)_i · sin(2π i / P + φ)`` (Lin et al. 2021, scan noise).

    Random line-to-line deviations modulated by a periodic interference (mains hum) whose period
    is ``period_lines`` scan lines. Returns float64 (n_rows,) in pixels.
    """
    if period_lines <= 0:
        raise InputError(f"line-jitter period must be > 0 lines, got {period_lines}")
    i = np.arange(int(n_rows), dtype=np.float64)
    return float(amplitude_px) * rng.normal(0.0, 1.0, int(n_rows)) * np.sin(
        2.0 * np.pi * i / float(period_lines) + float(phase_rad))


def linear_drift(n_rows: int, velocity_px_per_line: float) -> np.ndarray:
    """Specimen drift during the scan, ``v · (i - (n-1)/2)`` px per line, zero at the middle line.

    Referencing the middle line keeps the field of view centred. Drift within one line (at most
    ``v`` pixels) is neglected: x-drift shears the image, y-drift stretches or squeezes it.
    """
    i = np.arange(int(n_rows), dtype=np.float64)
    return float(velocity_px_per_line) * (i - (n_rows - 1) / 2.0)


def _offsets(in_shape, out_shape) -> tuple[int, int]:
    dh, dw = in_shape[0] - out_shape[0], in_shape[1] - out_shape[1]
    if dh < 0 or dw < 0:
        raise InputError(f"the input image {tuple(in_shape)} is smaller than the output "
                         f"{tuple(out_shape)}")
    return dh // 2, dw // 2


def center_crop(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The centred ``shape`` window of ``image``: the undistorted frame of :func:`scan_jitter`."""
    oy, ox = _offsets(np.shape(image), shape)
    return np.asarray(image)[oy:oy + shape[0], ox:ox + shape[1]]


def scan_jitter(image: np.ndarray, dx_px, dy_px, out_shape: tuple[int, int] | None = None
                ) -> np.ndarray:
    """Resample ``image`` on the jittered scan grid with bicubic (Keys) interpolation (eq. 42).

    Output pixel ``(i, j)`` takes the value of the centred frame at ``(i + dy[i], j + dx[i, j])``.

    Parameters
    ----------
    image : (H_in, W_in) array
        Undistorted image, possibly with a margin around ``out_shape``.
    dx_px : scalar, (H,) or (H, W)
        Fast-scan displacement in pixels, per line or per pixel.
    dy_px : scalar or (H,)
        Slow-scan displacement in pixels, per line.
    out_shape : (H, W), optional
        Output grid, centred in ``image``; defaults to ``image.shape``.

    Indices beyond the input are clamped to its edge. Exact separable tensor-product bicubic:
    one pass between whole rows (``dy`` is constant along a line), one pass along each row.
    """
    src = check_image(image, "image")
    out_shape = tuple(src.shape) if out_shape is None else tuple(int(v) for v in out_shape)
    h, w = out_shape
    oy, ox = _offsets(src.shape, out_shape)
    dy = np.broadcast_to(np.asarray(dy_px, dtype=np.float64), (h,))
    dx = np.asarray(dx_px, dtype=np.float64)
    if dx.ndim == 0:
        dx = np.full(h, float(dx))
    if np.any(dy):
        rows = resample_rows_constant(src, np.arange(h) + oy + dy)
    else:
        rows = src[oy:oy + h]
    if not np.any(dx):
        out = rows[:, ox:ox + w]
    elif dx.ndim == 1:
        out = shift_rows(rows, dx, w, ox)
    else:
        out = resample_along(rows, np.arange(w) + ox + np.broadcast_to(dx, (h, w)), axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------

def pmt_gain_spread(photons_per_electron: float, quantum_efficiency: float, dynode_gain: float,
                    photon_number_variance: float | None = None) -> float:
    """Relative width σ/(m_c η G) of a photomultiplier pulse per incident electron (eq. 44).

    ``sqrt((1 - η + 1/(δ - 1)) / (m_c η) + δ_c² / m_c²)`` with ``m_c`` photons collected per
    electron, ``η`` the photocathode quantum efficiency, ``δ`` the gain per dynode and ``δ_c²``
    the variance of the photon number (Poisson: ``δ_c² = m_c``, the default).
    """
    m_c, eta, delta = float(photons_per_electron), float(quantum_efficiency), float(dynode_gain)
    if m_c <= 0 or not 0 < eta <= 1 or delta <= 1:
        raise InputError("PMT parameters need m_c > 0, 0 < η <= 1 and dynode gain δ > 1, got "
                         f"m_c={m_c}, η={eta}, δ={delta}")
    var_c = m_c if photon_number_variance is None else float(photon_number_variance)
    return math.sqrt((1.0 - eta + 1.0 / (delta - 1.0)) / (m_c * eta) + var_c / m_c ** 2)


def pmt_noise(counts: np.ndarray, rng: np.random.Generator, *, gain_spread: float,
              read_noise_e: float = 0.0) -> np.ndarray:
    """Photomultiplier output in electron units: ``n + N(0, sqrt(spread² n + σ_read²))`` (eq. 46).

    Each detected electron yields a pulse whose height fluctuates by ``gain_spread`` (eq. 44, see
    :func:`pmt_gain_spread`); the pulses of ``n`` electrons add in variance. ``read_noise_e`` is
    the signal-independent Gaussian noise of eq. 46 expressed in electrons.
    """
    counts = np.asarray(counts, dtype=np.float32)
    var = np.maximum(counts, 0) * np.float32(gain_spread) ** 2 + np.float32(read_noise_e) ** 2
    return gaussian_noise(counts, np.sqrt(var), rng)


@dataclass(frozen=True)
class FastScanResponse:
    """Parameters of the fast-scan point-spread function (eqs 47-50), lengths in pixels.

    ``psf = psf_detector ⊗ psf_readout`` along the fast-scan direction, both zero for ``x > 0``:

    * detector (scintillator + PMT decay): Lorentzian ``α / (4π² x² + α²)``; its half width at
      half maximum is ``α / 2π`` px;
    * readout electronics: damped oscillator ``exp(x / decay) · sin(2π x / period + phase)``
      (eq. 49 written with a positive decay length; ``x <= 0``).
    """

    alpha: float
    decay_px: float
    period_px: float
    phase_rad: float
    kernel_px: int = 64


def _lorentz_bins(n: int, alpha: float) -> np.ndarray:
    # Exact integral of α/(4π²x²+α²) over each pixel bin [x-½, x+½] ∩ (-∞, 0], x = 0, -1, ...
    x = -np.arange(n, dtype=np.float64)
    upper = np.minimum(x + 0.5, 0.0)
    lower = x - 0.5
    return (np.arctan(2 * np.pi * upper / alpha) - np.arctan(2 * np.pi * lower / alpha)) / (
        2 * np.pi)


def _oscillator_bins(n: int, decay: float, period: float, phase: float) -> np.ndarray:
    # Exact integral of exp(x/τ) sin(kx + θ) over the same bins; antiderivative
    # G(x) = exp(x/τ) (sin(kx+θ)/τ - k cos(kx+θ)) / (1/τ² + k²).
    k = 2 * np.pi / period

    def antiderivative(x):
        return np.exp(x / decay) * (np.sin(k * x + phase) / decay - k * np.cos(k * x + phase)) / (
            1.0 / decay ** 2 + k * k)

    x = -np.arange(n, dtype=np.float64)
    return antiderivative(np.minimum(x + 0.5, 0.0)) - antiderivative(x - 0.5)


def _causal_kernel(response: FastScanResponse) -> np.ndarray:
    """h[lag], lag = 0 … kernel_px-1, summing to 1."""
    n = int(response.kernel_px)
    det = _lorentz_bins(n, response.alpha)
    det /= det.sum()
    osc = _oscillator_bins(n, response.decay_px, response.period_px, response.phase_rad)
    total = osc.sum()
    if total <= 0:
        raise InputError(f"fast-scan readout response integrates to {total:.3g} <= 0: "
                         "choose a phase closer to π/2 or a longer period")
    h = np.convolve(det, osc / total)[:n]
    return h / h.sum()


def fast_scan_psf(n_px: int, response: FastScanResponse) -> np.ndarray:
    """Sampled fast-scan PSF on ``x = -(n_px-1) … n_px-1`` px (length ``2·n_px - 1``).

    Element ``m`` holds ``psf(x = m - (n_px - 1))``: zero for ``x > 0`` (causal, see module
    notes), pixel-integrated, truncated to ``n_px`` taps and normalised to sum 1.
    """
    h = _causal_kernel(replace(response, kernel_px=int(n_px)))
    psf = np.zeros(2 * int(n_px) - 1)
    psf[: int(n_px)] = h[::-1]
    return psf


def fast_scan_shift_px(response: FastScanResponse | None, sigma_px: float) -> float:
    """How far (px, towards +x) the fast-scan PSF moves the peak of a Gaussian column of
    ``sigma_px``: the detector's memory trails every column to the right, by 0.1-2.4 px over the
    sampler's ranges. 0 without a fast-scan response. The same for every column of a frame."""
    if response is None:
        return 0.0
    sigma = float(sigma_px)
    if not (np.isfinite(sigma) and sigma > 0):
        raise InputError(f"sigma_px must be a positive number of pixels, got {sigma_px!r}")
    h = _causal_kernel(response)
    lags = np.arange(h.size, dtype=np.float64)
    # the recorded profile of a column at 0 is sum_lag h[lag] g(t - lag); its maximum lies
    # between 0 and the kernel's reach
    t = np.arange(-2.0 * sigma, min(float(h.size), 6.0 * sigma + 8.0), 0.01)
    profile = np.exp(-0.5 * ((t[:, None] - lags[None, :]) / sigma) ** 2) @ h
    k = int(np.clip(np.argmax(profile), 1, t.size - 2))
    y0, y1, y2 = profile[k - 1:k + 2]
    curvature = y0 - 2.0 * y1 + y2
    step = 0.5 * (y0 - y2) / curvature if curvature < 0 else 0.0
    return float(t[k] + step * 0.01)


def apply_fast_scan(image: np.ndarray, response: FastScanResponse) -> np.ndarray:
    """Causal 1-D convolution of every row with the fast-scan PSF (eq. 47), FFT based, float32."""
    img = np.asarray(image, dtype=np.float32)
    h = _causal_kernel(response)
    n = h.size
    padded = np.concatenate([np.repeat(img[:, :1], n - 1, axis=1), img], axis=1)
    nfft = sfft.next_fast_len(padded.shape[1] + n - 1, real=True)
    spec = sfft.rfft(padded, nfft, axis=1) * sfft.rfft(h.astype(np.float32), nfft)
    full = sfft.irfft(spec, nfft, axis=1)
    return np.ascontiguousarray(full[:, n - 1: n - 1 + img.shape[1]], dtype=np.float32)


def row_line_noise(image: np.ndarray, n_lines: int, rng: np.random.Generator, *,
                   length_fraction: tuple[float, float] = (0.05, 1.0),
                   factor: tuple[float, float] = (0.5, 1.5)) -> np.ndarray:
    """Row-line noise (eq. 51): segments of scan lines replaced by their mean × U(factor).

    ``n_lines`` segments, each on a random row, starting at a random column, with a length drawn
    as a fraction of the row width.
    """
    out = np.array(image, dtype=np.float32, copy=True)
    h, w = out.shape
    for _ in range(int(n_lines)):
        length = max(1, round(uniform(rng, length_fraction) * w))
        row = int(rng.integers(0, h))
        start = int(rng.integers(0, w - length + 1))
        seg = out[row, start:start + length]
        seg[...] = seg.mean() * np.float32(uniform(rng, factor))
    return out


# --------------------------------------------------------------------------------------------
# Parameters and drawn distortions
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StemDistortionParams:
    """Probabilities and ranges of every S(T)EM/SEM distortion; ranges are ``(low, high)``.

    Values quoted by Lobato et al. (2023) are marked [L]; by Lin et al. (2021) [T]; the others are
    emrestore's choices (the paper fitted them to experiments without publishing the numbers) and
    are documented with their reasoning.

    Scan geometry
        jitter_probability [L] 0.9; jitter_kind_probabilities [L] X, Y, XY = 0.25, 0.25, 0.5;
        jitter_sigma_A [L] innovation σ of eq. 41 in Å (converted with the pixel size);
        jitter_phi [L] AR(1) coefficient. Each series has one value per scan line: X-jitter shifts
        a line along the fast direction, Y-jitter records it at a shifted slow position (stretch,
        squeeze, line interchange). At small pixels the paper's σ range means large shifts (0.8 Å
        is 16 px at 0.05 Å/px); :func:`margin_px` sizes the render margin.
        line_jitter_* [T]: sinusoidally modulated line jitter, amplitude in Å (Lin et al. use
        0.2 Å), period in scan lines (mains hum aliased to the line rate). drift_px_per_line:
        specimen drift speed, pixels per scan line (0.02 px/line is ~5 px over a 256-line
        frame), random direction.
    Detector
        counting_probability: electron-counting detector (integer counts, no PMT noise, no
        fast-scan blur) versus analog PMT + ADC. pmt_*: photons per electron ``m_c`` (~100 [L]),
        photocathode efficiency ``η`` and dynode gain ``δ`` entering eq. 44. read_noise_e: σ of
        eq. 46 in electrons. adc_bits, adc_gain_adu_per_e (log-uniform; a real SrTiO3 HAADF frame
        shows ≈ 20 ADU per electron from its mean-variance line), adc_offset_fraction (of the ADC
        range; real 16-bit HAADF data sit at ~33 000 ADU, 0.5 of the range).
    Fast scan (analog only)
        fast_scan_alpha: Lorentzian α (HWHM = α/2π px); fast_scan_decay_px, fast_scan_period_px,
        fast_scan_phase_rad: damped oscillator; kernel truncated to fast_scan_kernel_px taps.
        The defaults span the fast-scan noise correlation of real HAADF frames: lag-1 correlation
        of line-differenced noise from ≈ 0 (Si [110], 25 µs dwell) through 0.12 (SrTiO3, Osiris)
        to 0.8 (a strongly smeared perovskite frame).
    Line-to-line intensity (emrestore's addition, measured on real frames)
        line_gain_*: each scan line's beam current / detector gain varies by an AR(1) series
        across lines (relative σ, correlation φ), and analog readouts add a per-line DC offset
        (line_offset_sigma_e, electrons). Real HAADF frames (SrTiO3, perovskite) show row-mean
        fluctuations 3-3.6× the shot-noise expectation, which jitter alone does not produce.
    Others
        row_line_*: number of segments, length as a fraction of the width, factor [L] 0.5-1.5.
        black_pixel_fraction, zinger_fraction: fraction of pixels (log-uniform); zinger_factor.
        upper_clip_fraction: saturation at ``mean + f·(max - mean)`` of the recorded image.
    """

    jitter_probability: float = 0.9
    jitter_kind_probabilities: tuple[float, float, float] = (0.25, 0.25, 0.5)
    jitter_sigma_A: tuple[float, float] = (0.0025, 0.8)
    jitter_phi: tuple[float, float] = (0.0, 0.7)
    line_jitter_probability: float = 0.3
    line_jitter_amplitude_A: tuple[float, float] = (0.02, 0.3)
    line_jitter_period_lines: tuple[float, float] = (2.0, 50.0)
    drift_probability: float = 0.3
    drift_px_per_line: tuple[float, float] = (0.0, 0.02)

    counting_probability: float = 0.25
    pmt_photons_per_electron: tuple[float, float] = (50.0, 150.0)
    pmt_quantum_efficiency: tuple[float, float] = (0.1, 0.3)
    pmt_dynode_gain: tuple[float, float] = (3.0, 6.0)
    read_noise_e: tuple[float, float] = (0.0, 0.5)
    adc_bits: tuple[int, ...] = (12, 16)
    adc_gain_adu_per_e: tuple[float, float] = (1.0, 100.0)
    adc_offset_fraction: tuple[float, float] = (0.0, 0.55)

    fast_scan_probability: float = 0.8
    fast_scan_alpha: tuple[float, float] = (0.5, 6.0)
    fast_scan_decay_px: tuple[float, float] = (0.1, 1.5)
    fast_scan_period_px: tuple[float, float] = (4.0, 40.0)
    fast_scan_phase_rad: tuple[float, float] = (0.25 * math.pi, 0.75 * math.pi)
    fast_scan_kernel_px: int = 64

    line_gain_probability: float = 0.5
    line_gain_sigma: tuple[float, float] = (0.002, 0.05)
    line_gain_phi: tuple[float, float] = (0.0, 0.9)
    line_offset_sigma_e: tuple[float, float] = (0.0, 0.3)

    row_line_probability: float = 0.2
    row_line_count: tuple[int, int] = (1, 8)
    row_line_length_fraction: tuple[float, float] = (0.05, 1.0)
    row_line_factor: tuple[float, float] = (0.5, 1.5)

    black_pixel_probability: float = 0.2
    black_pixel_fraction: tuple[float, float] = (1e-5, 1e-3)
    zinger_probability: float = 0.2
    zinger_fraction: tuple[float, float] = (1e-5, 5e-4)
    zinger_factor: tuple[float, float] = (2.0, 10.0)

    upper_clip_probability: float = 0.1
    upper_clip_fraction: tuple[float, float] = (0.5, 1.0)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_probability") and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{f.name}: a probability in [0, 1] is required, got {value}")
        kinds = self.jitter_kind_probabilities
        if len(kinds) != 3 or min(kinds) < 0 or sum(kinds) <= 0:
            raise ConfigError("jitter_kind_probabilities: three non-negative weights (X, Y, XY) "
                              f"are required, got {kinds}")
        check_range("jitter_sigma_A", self.jitter_sigma_A, 0.0)
        check_range("jitter_phi", self.jitter_phi, 0.0, 0.99)
        check_range("line_jitter_amplitude_A", self.line_jitter_amplitude_A, 0.0)
        check_range("line_jitter_period_lines", self.line_jitter_period_lines, 1e-6)
        check_range("drift_px_per_line", self.drift_px_per_line, 0.0)
        check_range("pmt_quantum_efficiency", self.pmt_quantum_efficiency, 1e-6, 1.0)
        check_range("pmt_dynode_gain", self.pmt_dynode_gain, 1.0 + 1e-6)
        check_range("pmt_photons_per_electron", self.pmt_photons_per_electron, 1e-6)
        check_range("read_noise_e", self.read_noise_e, 0.0)
        check_range("adc_gain_adu_per_e", self.adc_gain_adu_per_e, 1e-9)
        check_range("adc_offset_fraction", self.adc_offset_fraction, 0.0, 0.9)
        if not self.adc_bits or any(int(b) < 1 or int(b) > 32 for b in self.adc_bits):
            raise ConfigError(f"adc_bits: one or more bit depths in 1..32, got {self.adc_bits}")
        check_range("fast_scan_alpha", self.fast_scan_alpha, 1e-6)
        check_range("fast_scan_decay_px", self.fast_scan_decay_px, 1e-6)
        check_range("fast_scan_period_px", self.fast_scan_period_px, 1e-6)
        check_range("fast_scan_phase_rad", self.fast_scan_phase_rad, 0.0, math.pi)
        if self.fast_scan_kernel_px < 1:
            raise ConfigError(f"fast_scan_kernel_px must be >= 1, got {self.fast_scan_kernel_px}")
        check_range("line_gain_sigma", self.line_gain_sigma, 0.0, 0.5)
        check_range("line_gain_phi", self.line_gain_phi, 0.0, 0.99)
        check_range("line_offset_sigma_e", self.line_offset_sigma_e, 0.0)
        check_range("row_line_count", self.row_line_count, 0)
        check_range("row_line_length_fraction", self.row_line_length_fraction, 0.0, 1.0)
        check_range("row_line_factor", self.row_line_factor, 0.0)
        check_range("black_pixel_fraction", self.black_pixel_fraction, 1e-12, 1.0)
        check_range("zinger_fraction", self.zinger_fraction, 1e-12, 1.0)
        check_range("zinger_factor", self.zinger_factor, 0.0)
        check_range("upper_clip_fraction", self.upper_clip_fraction, 0.0, 1.0)

    def all_on(self) -> StemDistortionParams:
        """The same ranges with every distortion switched on (analog detector, XY jitter)."""
        probs = {f.name: 1.0 for f in fields(self) if f.name.endswith("_probability")}
        probs["counting_probability"] = 0.0
        return replace(self, jitter_kind_probabilities=(0.0, 0.0, 1.0), **probs)


@dataclass(frozen=True)
class StemDistortion:
    """The concrete distortion of one image, drawn by :func:`draw_stem_distortion`.

    Lengths in pixels unless the name says otherwise. A zero amplitude/fraction or ``None`` means
    the effect is off. The displacement series are regenerated from ``geometry_seed`` by
    :func:`scan_displacements`, so this record stays small and serialisable (:meth:`to_dict`).
    """

    modality: str
    shape: tuple[int, int]
    pixel_size_A: float
    geometry_seed: int
    jitter_kind: str = "none"          # "none" | "x" | "y" | "xy"
    jitter_sigma_x_px: float = 0.0
    jitter_phi_x: float = 0.0
    jitter_sigma_y_px: float = 0.0
    jitter_phi_y: float = 0.0
    line_jitter_amplitude_px: float = 0.0
    line_jitter_period_lines: float = 1.0
    line_jitter_phase_rad: float = 0.0
    line_jitter_phase_offset_y_rad: float = 0.0
    drift_x_px_per_line: float = 0.0
    drift_y_px_per_line: float = 0.0
    detector: str = "analog"           # "analog" | "counting"
    pmt_gain_spread: float = 0.0
    read_noise_e: float = 0.0
    adc_bits: int = 16
    adc_gain_adu_per_e: float = 1.0
    adc_offset_adu: float = 0.0
    fast_scan: FastScanResponse | None = None
    line_gain_sigma: float = 0.0
    line_gain_phi: float = 0.0
    line_offset_sigma_e: float = 0.0
    row_lines: int = 0
    row_line_length_fraction: tuple[float, float] = (0.05, 1.0)
    row_line_factor: tuple[float, float] = (0.5, 1.5)
    black_pixel_fraction: float = 0.0
    zinger_fraction: float = 0.0
    zinger_factor: tuple[float, float] = (2.0, 10.0)
    upper_clip_fraction: float | None = None

    def to_dict(self) -> dict:
        """Plain-Python record of every drawn value (JSON-serialisable)."""
        out = asdict(self)
        out["shape"] = list(self.shape)
        for key in ("row_line_length_fraction", "row_line_factor", "zinger_factor"):
            out[key] = list(out[key])
        return out


def draw_stem_distortion(rng: np.random.Generator, params: StemDistortionParams,
                         shape: tuple[int, int], modality: str = "stem", *,
                         pixel_size_A: float, max_expected_counts: float | None = None
                         ) -> StemDistortion:
    """Draw the concrete distortion of one S(T)EM (or SEM) image of output ``shape``.

    Parameters
    ----------
    rng : numpy Generator
    params : StemDistortionParams
    shape : (H, W)
        The recorded (output) image size; the expected-counts input may carry a margin.
    modality : "stem" | "sem"
        SEM uses the same chain without black pixels (dark spots there are pores, Lobato et al.).
    pixel_size_A : float
        Pixel size in Å; converts the jitter amplitudes given in Å to pixels.
    max_expected_counts : float, optional
        Largest expected count of the image; if given, the analog gain is capped so that the
        signal fits the ADC range (an operator sets brightness/contrast so), otherwise saturation
        is left to chance.
    """
    if modality not in MODALITIES:
        raise InputError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if not (pixel_size_A > 0 and math.isfinite(pixel_size_A)):
        raise InputError(f"pixel size must be a finite number > 0 Å, got {pixel_size_A}")
    h, w = (int(v) for v in shape)
    if h < 1 or w < 1:
        raise InputError(f"shape must be positive, got {shape}")
    p = params
    kw: dict = {}
    if chance(rng, p.jitter_probability):
        weights = np.asarray(p.jitter_kind_probabilities, dtype=float)
        kind = ("x", "y", "xy")[int(rng.choice(3, p=weights / weights.sum()))]
        kw["jitter_kind"] = kind
        for axis in ("x", "y"):
            sigma = uniform(rng, p.jitter_sigma_A) / pixel_size_A
            phi = uniform(rng, p.jitter_phi)
            if axis in kind:
                kw[f"jitter_sigma_{axis}_px"] = sigma
                kw[f"jitter_phi_{axis}"] = phi
    if chance(rng, p.line_jitter_probability):
        kw["line_jitter_amplitude_px"] = uniform(rng, p.line_jitter_amplitude_A) / pixel_size_A
        kw["line_jitter_period_lines"] = log_uniform(rng, p.line_jitter_period_lines)
        kw["line_jitter_phase_rad"] = uniform(rng, (0.0, 2 * math.pi))
        kw["line_jitter_phase_offset_y_rad"] = uniform(rng, (0.0, 2 * math.pi))
    if chance(rng, p.drift_probability):
        speed = uniform(rng, p.drift_px_per_line)
        angle = uniform(rng, (0.0, 2 * math.pi))
        kw["drift_x_px_per_line"] = speed * math.cos(angle)
        kw["drift_y_px_per_line"] = speed * math.sin(angle)

    counting = chance(rng, p.counting_probability)
    kw["detector"] = "counting" if counting else "analog"
    if not counting:
        kw["pmt_gain_spread"] = pmt_gain_spread(uniform(rng, p.pmt_photons_per_electron),
                                                uniform(rng, p.pmt_quantum_efficiency),
                                                uniform(rng, p.pmt_dynode_gain))
        kw["read_noise_e"] = uniform(rng, p.read_noise_e)
        bits, gain, offset = draw_adc(rng, p.adc_bits, p.adc_offset_fraction, p.adc_gain_adu_per_e,
                                       max_expected_counts)
        kw.update(adc_bits=bits, adc_gain_adu_per_e=gain, adc_offset_adu=offset)
        if chance(rng, p.fast_scan_probability):
            kw["fast_scan"] = _draw_fast_scan(rng, p)
    if chance(rng, p.line_gain_probability):
        kw["line_gain_sigma"] = log_uniform(rng, p.line_gain_sigma)
        kw["line_gain_phi"] = uniform(rng, p.line_gain_phi)
        if not counting:
            kw["line_offset_sigma_e"] = uniform(rng, p.line_offset_sigma_e)
    if chance(rng, p.row_line_probability):
        kw["row_lines"] = integer(rng, p.row_line_count)
        kw["row_line_length_fraction"] = tuple(p.row_line_length_fraction)
        kw["row_line_factor"] = tuple(p.row_line_factor)
    if modality == "stem" and chance(rng, p.black_pixel_probability):
        kw["black_pixel_fraction"] = log_uniform(rng, p.black_pixel_fraction)
    if chance(rng, p.zinger_probability):
        kw["zinger_fraction"] = log_uniform(rng, p.zinger_fraction)
        kw["zinger_factor"] = tuple(p.zinger_factor)
    if chance(rng, p.upper_clip_probability):
        kw["upper_clip_fraction"] = uniform(rng, p.upper_clip_fraction)
    return StemDistortion(modality=modality, shape=(h, w), pixel_size_A=float(pixel_size_A),
                          geometry_seed=int(rng.integers(0, 2 ** 63 - 1)), **kw)


def _draw_fast_scan(rng: np.random.Generator, p: StemDistortionParams) -> FastScanResponse:
    """Fast-scan response with a well-behaved readout (negative lobes <= 25 % of positive)."""
    for _ in range(100):
        response = FastScanResponse(
            alpha=uniform(rng, p.fast_scan_alpha), decay_px=uniform(rng, p.fast_scan_decay_px),
            period_px=uniform(rng, p.fast_scan_period_px),
            phase_rad=uniform(rng, p.fast_scan_phase_rad), kernel_px=int(p.fast_scan_kernel_px))
        osc = _oscillator_bins(response.kernel_px, response.decay_px, response.period_px,
                               response.phase_rad)
        if osc.sum() > 0 and -osc[osc < 0].sum() <= 0.25 * osc[osc > 0].sum():
            return response
    return FastScanResponse(alpha=response.alpha, decay_px=response.decay_px,
                            period_px=1e6, phase_rad=0.5 * math.pi,
                            kernel_px=int(p.fast_scan_kernel_px))


# --------------------------------------------------------------------------------------------
# Applying a drawn distortion
# --------------------------------------------------------------------------------------------

def scan_displacements(distortion: StemDistortion) -> tuple[np.ndarray, np.ndarray]:
    """Per-line displacements ``(dy, dx)`` in pixels, each float64 (H,), of ``distortion``.

    Output line ``i`` records the undistorted frame at ``(i + dy[i], j + dx[i])``. Deterministic:
    the same distortion always gives the same series.
    """
    d = distortion
    h = int(d.shape[0])
    g = np.random.default_rng(d.geometry_seed)
    dx = ar1_series(h, d.jitter_phi_x, d.jitter_sigma_x_px, g)
    dy = ar1_series(h, d.jitter_phi_y, d.jitter_sigma_y_px, g)
    if "x" not in d.jitter_kind:
        dx[:] = 0.0
    if "y" not in d.jitter_kind:
        dy[:] = 0.0
    if d.line_jitter_amplitude_px:
        dx += line_jitter(h, d.line_jitter_amplitude_px, d.line_jitter_period_lines,
                          d.line_jitter_phase_rad, g)
        dy += line_jitter(h, d.line_jitter_amplitude_px, d.line_jitter_period_lines,
                          d.line_jitter_phase_rad + d.line_jitter_phase_offset_y_rad, g)
    dx += linear_drift(h, d.drift_x_px_per_line)
    dy += linear_drift(h, d.drift_y_px_per_line)
    return dy, dx


def margin_px(distortion: StemDistortion) -> int:
    """Margin (px, each side) the input needs so that resampling never reaches its edge.

    ``ceil(max |displacement|) + 2`` (the cubic kernel reaches 2 px); 0 without scan distortion.
    """
    dy, dx = scan_displacements(distortion)
    reach = float(max(np.abs(dy).max(initial=0.0), np.abs(dx).max(initial=0.0)))
    return 0 if reach == 0.0 else math.ceil(reach) + 2


def distorted_coordinates(positions_px, distortion: StemDistortion,
                          width_px: float | None = None) -> np.ndarray:
    """Where undistorted positions ``(y, x)`` (output frame, px) appear in the distorted image.

    ``width_px=None``: the point itself. Inverts ``Y = i + dy(i)``: among the fractional lines
    where the scanned row position crosses ``Y``, the one nearest ``Y`` is taken (with line
    interchanges a point may be recorded twice); then ``x = X - dx(i)``. Positions the scan never
    reaches are extrapolated with the nearest line's displacement.

    ``width_px=σ``: the centroid of a column imaged as a Gaussian of that σ (px). Every scan line
    ``i`` that passes within a few σ of the column records a slice of it, weighted by
    ``exp(-(i + dy(i) - Y)² / 2σ²)`` and shifted by its own ``dx(i)``; the column shows at the
    weighted mean of those lines and shifts. With line-to-line jitter the single line through
    the column's centre can be off that centroid by the jitter's σ, which is as large as a
    detector's matching radius for close columns (dumbbells); the centroid is what a fit or a
    peak finder on the recorded column recovers. Where no line comes within 4σ, the point rule
    applies.

    Returns float64 (N, 2).
    """
    pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    dy, dx = scan_displacements(distortion)
    h = dy.size
    rows = np.arange(h, dtype=np.float64)
    s = rows + dy                                   # undistorted y recorded by each line
    out = np.empty_like(pos)
    if h == 1:
        out[:, 0] = pos[:, 0] - dy[0]
        out[:, 1] = pos[:, 1] - dx[0]
        return out
    y = pos[:, :1]
    lo, hi = s[None, :-1] - y, s[None, 1:] - y      # (N, H-1)
    crosses = (lo * hi <= 0) & (lo != hi)
    frac = np.where(crosses, lo / np.where(lo != hi, lo - hi, 1.0), 0.0)
    cand = rows[None, :-1] + frac
    dist = np.where(crosses, np.abs(cand - y), np.inf)
    best = np.argmin(dist, axis=1)
    found = np.isfinite(dist[np.arange(len(pos)), best])
    i_frac = cand[np.arange(len(pos)), best]
    nearest = np.clip(np.rint(pos[:, 0]), 0, h - 1).astype(int)
    fallback = pos[:, 0] - dy[nearest]
    i_frac = np.where(found, i_frac, fallback)
    out[:, 0] = i_frac
    out[:, 1] = pos[:, 1] - np.interp(i_frac, rows, dx)
    if width_px is None or not len(pos):
        return out
    sigma = float(width_px)
    if not (np.isfinite(sigma) and sigma > 0):
        raise InputError(f"width_px must be a positive number of pixels, got {width_px!r}")
    u = (s[None, :] - y) / sigma                    # (N, H)
    weight = np.where(np.abs(u) < 4.0, np.exp(-0.5 * u * u), 0.0)
    total = weight.sum(axis=1)
    seen = total > 1e-6
    safe = np.where(seen, total, 1.0)
    centroid_y = (weight * rows[None, :]).sum(axis=1) / safe
    centroid_x = pos[:, 1] - (weight * dx[None, :]).sum(axis=1) / safe
    out[seen, 0] = centroid_y[seen]
    out[seen, 1] = centroid_x[seen]
    return out


def to_detector_units(expected_counts: np.ndarray, distortion: StemDistortion) -> np.ndarray:
    """The clean image in the recorded image's units: ``gain · counts + offset`` (analog) or counts.

    Only the deterministic, geometry-free part of the detector chain: no noise, no blur, no clip,
    no rounding, so that the clean target and :func:`distort_stem`'s output share units.
    """
    return to_adc_units(expected_counts, distortion)


def distort_stem(expected_counts: np.ndarray, distortion: StemDistortion,
                 rng: np.random.Generator, *, timings: dict | None = None) -> np.ndarray:
    """Record an S(T)EM/SEM image: apply the whole distortion chain to ``expected_counts``.

    Parameters
    ----------
    expected_counts : (H_in, W_in) array
        Mean detected electrons per pixel (float, >= 0), at least ``distortion.shape``; a larger
        input is a margin around the centred output (see module notes).
    distortion : StemDistortion
    rng : numpy Generator
        Draws the noise realisations (shot noise, PMT noise, pixel and line positions).
    timings : dict, optional
        If given, seconds spent per stage are added under ``"stem.<stage>"``.

    Returns
    -------
    (H, W) float32 image in detector units (integer valued).
    """
    clock = time.perf_counter
    t0 = clock()
    d = distortion
    img = check_image(expected_counts, "expected counts", min_shape=d.shape)
    stamps: list[tuple[str, float]] = []

    def mark(name: str) -> None:
        stamps.append((name, clock()))

    dy, dx = scan_displacements(d)
    x = scan_jitter(img, dx, dy, d.shape)
    mark("jitter")
    if d.line_gain_sigma:
        gain = 1.0 + ar1_series(x.shape[0], d.line_gain_phi, d.line_gain_sigma, rng)
        x = x * np.maximum(gain, 0.0).astype(np.float32)[:, None]
    x = poisson_noise(x, rng)
    mark("poisson")
    analog = d.detector == "analog"
    if analog:
        x = pmt_noise(x, rng, gain_spread=d.pmt_gain_spread, read_noise_e=d.read_noise_e)
        if d.line_offset_sigma_e:
            offsets = rng.normal(0.0, d.line_offset_sigma_e, x.shape[0]).astype(np.float32)
            x = x + offsets[:, None]
        mark("pmt")
        if d.fast_scan is not None:
            x = apply_fast_scan(x, d.fast_scan)
            mark("fast_scan")
    if d.row_lines:
        x = row_line_noise(x, d.row_lines, rng, length_fraction=d.row_line_length_fraction,
                           factor=d.row_line_factor)
    if d.black_pixel_fraction and d.modality == "stem":
        x = black_pixels(x, rng.binomial(x.size, d.black_pixel_fraction), rng)
    if d.zinger_fraction:
        x = zingers(x, rng.binomial(x.size, d.zinger_fraction), rng, factor=d.zinger_factor)
    mark("pixels")
    if analog:
        x = to_detector_units(x, d)
    if d.upper_clip_fraction is not None:
        x = clip_upper(x, saturation_level(x, d.upper_clip_fraction))
    x = quantise(x, bits=d.adc_bits if analog else None)
    mark("adc")
    if timings is not None:
        previous = t0
        for name, stamp in stamps:
            timings[f"stem.{name}"] = timings.get(f"stem.{name}", 0.0) + stamp - previous
            previous = stamp
    return x
