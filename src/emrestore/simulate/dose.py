"""Electron dose in physical units: from beam current, dwell time and pixel size to expected counts.

The simulator's clean signal is a *fractional intensity*: the fraction of the incident beam that
reaches the detector at a pixel (Gambini et al. 2023, §2.2). The number of electrons a pixel
records on average is that fraction times the area dose times the pixel area::

    expected counts = fraction × dose (e⁻/Å²) × pixel_size (Å)²

For example 1000 e⁻/Å² on 0.1 Å pixels puts 10 e⁻ on each pixel; a pixel that scatters 10 % of
the beam into the detector expects 1 count.

Lobato et al. (2023) draw a dimensionless dose scale α from an exponential law so that low doses
are frequent. emrestore keeps doses in e⁻/Å² instead; :class:`DoseParams` offers the same choice
of laws (log-uniform, uniform, truncated exponential) over a range in physical units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, InputError
from .config import check_range

#: Elementary charge (C), exact in the 2019 SI.
ELEMENTARY_CHARGE_C = 1.602176634e-19

_LAWS = ("log-uniform", "uniform", "exponential")


@dataclass(frozen=True)
class DoseParams:
    """How the area dose of one simulated image is drawn.

    Attributes
    ----------
    dose_e_per_A2 : (low, high)
        Range of the area dose in e⁻/Å². The default spans very low dose (100 e⁻/Å²) to a
        comfortable HR-STEM dose (2·10⁴ e⁻/Å²); Gambini et al. train on 500-10 000 e⁻/Å², Lobato
        et al. evaluate at 5·10²-5·10⁵ e⁻/Å².
    law : "log-uniform" | "uniform" | "exponential"
        ``log-uniform`` gives every decade the same weight; ``exponential`` is the truncated
        exponential law of Lobato et al. (favours low doses).
    exponential_scale_e_per_A2 : float
        Scale (mean before truncation) of the exponential law, e⁻/Å².
    """

    dose_e_per_A2: tuple[float, float] = (100.0, 20000.0)
    law: str = "log-uniform"
    exponential_scale_e_per_A2: float = 5000.0

    def __post_init__(self) -> None:
        check_range("dose_e_per_A2", self.dose_e_per_A2)
        if not self.dose_e_per_A2[0] > 0:
            raise ConfigError(
                f"dose_e_per_A2: the lower dose must be > 0 e⁻/Å², got {self.dose_e_per_A2[0]}")
        if self.law not in _LAWS:
            raise ConfigError(f"law: expected one of {_LAWS}, got {self.law!r}")
        if not self.exponential_scale_e_per_A2 > 0:
            raise ConfigError("exponential_scale_e_per_A2 must be > 0 e⁻/Å², "
                              f"got {self.exponential_scale_e_per_A2}")


def draw_dose(rng: np.random.Generator, params: DoseParams = DoseParams()) -> float:
    """Draw one area dose in e⁻/Å² according to ``params``.

    The exponential law is truncated to the range by inverse-CDF sampling (no rejection loop), so
    every draw consumes exactly one uniform number whatever the law.

    Examples
    --------
    >>> lo, hi = 500.0, 1e4
    >>> d = draw_dose(np.random.default_rng(0), DoseParams((lo, hi), law="exponential"))
    >>> lo <= d <= hi
    True
    """
    lo, hi = (float(v) for v in params.dose_e_per_A2)
    u = float(rng.random())
    if params.law == "uniform":
        return lo + (hi - lo) * u
    if params.law == "log-uniform":
        return float(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u))
    scale = float(params.exponential_scale_e_per_A2)
    # Inverse CDF of an exponential restricted to [lo, hi].
    span = 1.0 - math.exp(-(hi - lo) / scale)
    return float(min(hi, lo - scale * math.log1p(-u * span)))


def _positive(name: str, value: float, unit: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a number in {unit}, got {value!r}") from exc
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a finite number > 0 {unit}, got {value}")
    return value


def dose_per_pixel(dose_e_per_A2: float, pixel_size_A: float) -> float:
    """Electrons incident on one pixel: area dose (e⁻/Å²) × pixel area (Å²)."""
    dose = _positive("dose", dose_e_per_A2, "e⁻/Å²")
    size = _positive("pixel size", pixel_size_A, "Å")
    return dose * size * size


def expected_counts(fractional_intensity, dose_e_per_A2: float, pixel_size_A: float) -> np.ndarray:
    """Mean number of detected electrons per pixel (float32), before any noise.

    Parameters
    ----------
    fractional_intensity : array_like
        Fraction of the incident beam reaching the detector at each pixel (≈ 0.1-0.15 for HAADF
        on a thick crystal). Must be finite; small negative values (interpolation ringing) are
        kept here and clipped at zero by the Poisson step.
    dose_e_per_A2 : float
        Area dose in e⁻/Å² (> 0).
    pixel_size_A : float
        Pixel size in Å (> 0).

    Examples
    --------
    >>> float(expected_counts(np.array([0.1]), 1000.0, 0.1)[0])
    1.0
    """
    scale = dose_per_pixel(dose_e_per_A2, pixel_size_A)
    image = np.asarray(fractional_intensity, dtype=np.float64)
    if not np.all(np.isfinite(image)):
        raise InputError("fractional intensity contains NaN or infinite values "
                         f"({int(np.count_nonzero(~np.isfinite(image)))} of {image.size} pixels)")
    return (image * scale).astype(np.float32)


def dose_for_mean_counts(mean_counts: float, mean_fraction: float, pixel_size_A: float) -> float:
    """Area dose (e⁻/Å²) at which an image of mean fractional intensity expects ``mean_counts``.

    Lobato et al. draw the dose scale so that the mean count per pixel lies in [0.5, 750] with an
    exponential law; drawing ``mean_counts`` that way and converting with this function gives the
    same statistics in physical units.

    Examples
    --------
    >>> round(dose_for_mean_counts(1.0, 0.1, 0.1), 6)   # 1 count, 0.1 Å pixels, 10 % scattered
    1000.0
    """
    counts = _positive("mean counts", mean_counts, "electrons per pixel")
    fraction = _positive("mean fractional intensity", mean_fraction, "(fraction of the beam)")
    size = _positive("pixel size", pixel_size_A, "Å")
    return float(counts / (fraction * size * size))


def electrons_per_pixel(beam_current_pA: float, dwell_time_us: float) -> float:
    """Electrons delivered to one scan position: I·t/e.

    Examples
    --------
    >>> round(electrons_per_pixel(1.0, 1.0), 3)   # 1 pA for 1 µs
    6.242
    """
    current = _positive("beam current", beam_current_pA, "pA") * 1e-12
    dwell = _positive("dwell time", dwell_time_us, "µs") * 1e-6
    return current * dwell / ELEMENTARY_CHARGE_C


def dose_from_beam(beam_current_pA: float, dwell_time_us: float, pixel_size_A: float) -> float:
    """Area dose in e⁻/Å² of a scan with one dwell per pixel: I·t / (e · pixel area)."""
    size = _positive("pixel size", pixel_size_A, "Å")
    return electrons_per_pixel(beam_current_pA, dwell_time_us) / (size * size)
