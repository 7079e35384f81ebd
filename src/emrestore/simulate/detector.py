"""Detector effects shared by the TEM and S(T)EM noise models (Lobato et al. 2023, eqs 30-55).

Every function takes and returns float32 images in *electron units* unless it says otherwise, and
takes its randomness from a ``numpy.random.Generator``. The modality modules (:mod:`.stem`,
:mod:`.tem`) compose them in the paper's order.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError


def check_image(image, name: str = "image", *, min_shape: tuple[int, int] | None = None
                ) -> np.ndarray:
    """Return ``image`` as a 2-D float32 array, or raise InputError (NaN, wrong rank, too small)."""
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a 2-D image (rows, columns), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{name}: expected a real numeric image, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(f"{name}: {bad} of {arr.size} pixels are NaN or infinite")
    if min_shape is not None and (arr.shape[0] < min_shape[0] or arr.shape[1] < min_shape[1]):
        raise InputError(f"{name}: shape {arr.shape} is smaller than the required {min_shape}")
    return arr


def poisson_noise(expected_counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shot noise: one Poisson draw per pixel with the expected count as mean (eqs 30, 45).

    Negative expectations (interpolation ringing) are treated as zero. Returns float32 counts.
    """
    lam = np.maximum(np.asarray(expected_counts, dtype=np.float64), 0.0)
    return rng.poisson(lam).astype(np.float32)


def gaussian_noise(image: np.ndarray, sigma, rng: np.random.Generator) -> np.ndarray:
    """``image + N(0, sigma)``; ``sigma`` is a scalar or a per-pixel array in the image's units."""
    noise = rng.standard_normal(np.shape(image), dtype=np.float32)
    return (image + noise * np.asarray(sigma, dtype=np.float32)).astype(np.float32, copy=False)


def random_walk_pixels(shape: tuple[int, int], n_points: int, walk_steps: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Flat indices of ``n_points`` uniform seeds grown by a 4-neighbour random walk.

    Each seed takes ``walk_steps`` unit steps (up, down, left or right); every visited pixel is
    part of the cluster (eqs 37-38: black pixels and zingers as small regions). Walks stop at the
    image border. Indices may repeat.
    """
    h, w = shape
    n_points = int(n_points)
    if n_points <= 0:
        return np.zeros(0, dtype=np.intp)
    start = np.stack([rng.integers(0, h, n_points), rng.integers(0, w, n_points)], axis=-1)
    if walk_steps > 0:
        moves = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])
        steps = moves[rng.integers(0, 4, (n_points, int(walk_steps)))]
        path = start[:, None, :] + np.concatenate(
            [np.zeros((n_points, 1, 2), dtype=steps.dtype), np.cumsum(steps, axis=1)], axis=1)
        path = path.reshape(-1, 2)
    else:
        path = start
    path = np.clip(path, 0, [h - 1, w - 1])
    return (path[:, 0] * w + path[:, 1]).astype(np.intp)


def black_pixels(image: np.ndarray, n_points: int, rng: np.random.Generator, *,
                 walk_steps: int = 0, sensitivity: tuple[float, float] = (0.0, 0.1)
                 ) -> np.ndarray:
    """Dead or insensitive pixels: ``x ← x · S_black`` (eqs 37, 52).

    ``n_points`` seeds (grown into clusters by ``walk_steps`` random-walk steps, TEM) have their
    value multiplied by a sensitivity drawn per pixel from ``U(sensitivity)``.
    """
    out = np.array(image, dtype=np.float32, copy=True)
    idx = random_walk_pixels(out.shape, n_points, walk_steps, rng)
    if idx.size:
        lo, hi = sensitivity
        out.reshape(-1)[idx] *= (lo + (hi - lo) * rng.random(idx.size)).astype(np.float32)
    return out


def zingers(image: np.ndarray, n_points: int, rng: np.random.Generator, *,
            walk_steps: int = 0, factor: tuple[float, float] = (2.0, 10.0)) -> np.ndarray:
    """Bright spurious spots (X-rays, cosmic rays): ``x ← x · S_zinger`` (eqs 38, 53).

    The multiplied value is floored at the image mean so that a zinger is bright on a dark region
    too (a photon burst adds signal whatever the local dose). ``factor`` is drawn per pixel.
    """
    out = np.array(image, dtype=np.float32, copy=True)
    idx = random_walk_pixels(out.shape, n_points, walk_steps, rng)
    if idx.size:
        lo, hi = factor
        flat = out.reshape(-1)
        level = np.float32(max(float(out.mean()), 1.0))
        gain = (lo + (hi - lo) * rng.random(idx.size)).astype(np.float32)
        flat[idx] = np.maximum(flat[idx], level) * gain
    return out


def clip_upper(image: np.ndarray, threshold: float) -> np.ndarray:
    """Saturation: ``x ← min(x, T_u)`` (eqs 39, 54)."""
    return np.minimum(image, np.float32(threshold)).astype(np.float32, copy=False)


def saturation_level(image: np.ndarray, fraction: float) -> float:
    """``mean + fraction · (max - mean)`` of ``image``: where a detector with headroom saturates."""
    mean = float(image.mean())
    return mean + float(fraction) * (float(image.max()) - mean)


def quantise(image: np.ndarray, gain: float = 1.0, *, bits: int | None = None,
             offset: float = 0.0) -> np.ndarray:
    """ADC: ``round(gain · x + offset)``, clipped to ``[0, 2**bits - 1]`` (eqs 40, 55).

    With ``bits=None`` only negative values are clipped (an electron-counting detector). Returns
    float32 holding integer values.
    """
    out = np.rint(np.asarray(image, dtype=np.float32) * np.float32(gain) + np.float32(offset))
    hi = None if bits is None else float(2 ** int(bits) - 1)
    return np.clip(out, 0.0, hi).astype(np.float32, copy=False)


def draw_adc(rng: np.random.Generator, bits_choices, offset_fraction: tuple[float, float],
             gain_adu_per_e: tuple[float, float], max_expected_counts: float | None = None
             ) -> tuple[int, float, float]:
    """Draw an analog-to-digital converter: ``(bits, gain in ADU per electron, offset in ADU)``.

    The gain is log-uniform in ``gain_adu_per_e``; the offset a fraction of the ADC range. With
    ``max_expected_counts`` the gain is capped so that the brightest pixel plus five standard
    deviations of its shot noise stays inside the range, as an operator sets the contrast.
    """
    bits = int(bits_choices[int(rng.integers(0, len(bits_choices)))])
    full = float(2 ** bits - 1)
    lo, hi = offset_fraction
    offset = float(np.floor((lo + (hi - lo) * rng.random()) * full))
    glo, ghi = gain_adu_per_e
    gain = float(np.exp(np.log(glo) + (np.log(ghi) - np.log(glo)) * rng.random()))
    if max_expected_counts is not None and max_expected_counts > 0:
        peak = 1.2 * max_expected_counts + 5.0 * math.sqrt(max_expected_counts) + 1.0
        gain = min(gain, 0.95 * (full - offset) / peak)
    return bits, gain, offset


def to_adc_units(expected_counts: np.ndarray, distortion) -> np.ndarray:
    """Counts in the recorded image's units: ``gain · counts + offset`` (analog) or counts.

    Only the deterministic part of the detector chain (no noise, blur, clip or rounding), so a
    clean target and the recorded image share units. ``distortion`` is a drawn STEM or TEM
    detector record (``detector``, ``adc_gain_adu_per_e``, ``adc_offset_adu``).
    """
    img = np.asarray(expected_counts, dtype=np.float32)
    if distortion.detector == "counting":
        return img.copy()
    return (img * np.float32(distortion.adc_gain_adu_per_e)
            + np.float32(distortion.adc_offset_adu)).astype(np.float32)
