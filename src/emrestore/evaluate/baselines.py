"""Classic restorations to compare learned ones against: Gaussian, median, Wiener, NLM, BM3D.

Every function maps a float ``(rows, cols)`` image to a float32 image of the same shape and the
same units (counts in, counts out), so that the same localisation and quantification can follow
any of them.

- :func:`gaussian_filter`: isotropic Gaussian smoothing. The paper's baseline (Gambini et al.
  2023, seed 000), with the width chosen on a *separate* tuning set by
  :func:`tune_gaussian_sigma` (best mean PSNR against the infinite-dose images), never on the
  images being scored.
- :func:`median_filter`: square median window.
- :func:`wiener_filter`: the local adaptive Wiener filter (:func:`scipy.signal.wiener`) with the
  noise variance measured on the image (:func:`emrestore.atoms.detect.estimate_noise_std`).
- :func:`nlm_filter`: non-local means (:func:`skimage.restoration.denoise_nl_means`) with the noise
  level from :func:`skimage.restoration.estimate_sigma`.
- :func:`bm3d_filter`: BM3D (PyPI ``bm3d``, optional) on the Anscombe transform of the counts,
  mapped back with the exact unbiased inverse (closed-form approximation of Mäkitalo & Foi 2011).
  The detector gain (units per electron) and offset are passed in or estimated from the image
  (:func:`estimate_gain_offset`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..io import check_image

__all__ = [
    "DEFAULT_SIGMAS_PX",
    "anscombe",
    "bm3d_available",
    "bm3d_filter",
    "estimate_gain_offset",
    "gaussian_filter",
    "inverse_anscombe_unbiased",
    "median_filter",
    "nlm_filter",
    "tune_gaussian_sigma",
    "wiener_filter",
]

#: Gaussian widths (px) tried by :func:`tune_gaussian_sigma`.
DEFAULT_SIGMAS_PX = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)


def _as_float(image) -> np.ndarray:
    return check_image(image).astype(np.float64)


# ------------------------------------------------------------------------------------------------
# Gaussian, median, Wiener, NLM
# ------------------------------------------------------------------------------------------------
def gaussian_filter(image, sigma_px: float) -> np.ndarray:
    """Gaussian smoothing with standard deviation ``sigma_px`` (px); edges reflected."""
    sigma = float(sigma_px)
    if not sigma >= 0:
        raise InputError(f"sigma_px must be >= 0, got {sigma_px!r}")
    im = _as_float(image)
    if sigma == 0:
        return im.astype(np.float32)
    return ndimage.gaussian_filter(im, sigma, mode="reflect").astype(np.float32)


def tune_gaussian_sigma(pairs, sigmas_px=DEFAULT_SIGMAS_PX) -> tuple[float, dict[float, float]]:
    """The Gaussian width with the best mean PSNR over ``(noisy, infinite_dose)`` tuning pairs.

    Use images that are *not* scored afterwards (a separate tuning set), so that the baseline is
    what a careful user could have chosen beforehand.

    Returns
    -------
    sigma_px : float
        The best width.
    scores : dict
        Mean PSNR (dB) for every width tried.
    """
    from .metrics import psnr

    pairs = list(pairs)
    if not pairs:
        raise InputError("tune_gaussian_sigma needs at least one (noisy, reference) pair")
    scores = {}
    for s in sigmas_px:
        scores[float(s)] = float(np.mean([psnr(ref, gaussian_filter(x, s)) for x, ref in pairs]))
    best = max(scores, key=scores.get)
    return best, scores


def median_filter(image, size_px: int = 3) -> np.ndarray:
    """Median over a ``size_px`` × ``size_px`` window; edges reflected."""
    size = int(size_px)
    if size < 1:
        raise InputError(f"size_px must be a positive window size, got {size_px!r}")
    return ndimage.median_filter(_as_float(image), size=size, mode="reflect").astype(np.float32)


def wiener_filter(image, size_px: int = 5, noise_std: float | None = None) -> np.ndarray:
    """Local adaptive Wiener filter (:func:`scipy.signal.wiener`).

    ``noise_std`` (image units) defaults to the robust wavelet estimate of the pixel noise, so that
    the filter smooths flat regions and leaves the columns' edges where the local variance exceeds
    the noise.
    """
    from scipy.signal import wiener

    from ..atoms.detect import estimate_noise_std

    im = _as_float(image)
    noise = estimate_noise_std(im) if noise_std is None else float(noise_std)
    size = int(size_px)
    if size < 1:
        raise InputError(f"size_px must be a positive window size, got {size_px!r}")
    if noise <= 0:
        return im.astype(np.float32)
    return wiener(im, mysize=size, noise=noise * noise).astype(np.float32)


def nlm_filter(image, *, patch_size: int = 5, patch_distance: int = 6,
               h_factor: float = 0.8) -> np.ndarray:
    """Non-local means with the noise level estimated from the image.

    ``h = h_factor × σ_noise`` with σ from :func:`skimage.restoration.estimate_sigma`; the image
    is processed in its own units.
    """
    from skimage.restoration import denoise_nl_means, estimate_sigma

    im = _as_float(image)
    sigma = float(estimate_sigma(im))
    if not sigma > 0:
        return im.astype(np.float32)
    out = denoise_nl_means(im, h=h_factor * sigma, sigma=sigma, patch_size=int(patch_size),
                           patch_distance=int(patch_distance), fast_mode=True,
                           preserve_range=True)
    return np.asarray(out, dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# Anscombe + BM3D
# ------------------------------------------------------------------------------------------------
_ZERO_COUNT_D = 2.0 * np.sqrt(3.0 / 8.0)  # Anscombe value of 0 counts


def anscombe(counts) -> np.ndarray:
    """Anscombe transform ``2 √(x + 3/8)``: Poisson counts → unit-variance Gaussian."""
    x = np.asarray(counts, dtype=np.float64)
    return 2.0 * np.sqrt(np.maximum(x, 0.0) + 3.0 / 8.0)


def inverse_anscombe_unbiased(d) -> np.ndarray:
    """Exact unbiased inverse of the Anscombe transform (closed form, Mäkitalo & Foi 2011).

    Maps a denoised transformed value ``d`` to the expected count whose transform has expectation
    ``d``:  ``d²/4 + √(3/2)/(4 d) − 11/(8 d²) + 5√(3/2)/(8 d³) − 1/8``. The closed form diverges as
    ``d → 0``; values below the transform of zero counts (``2 √(3/8)``, where the formula gives 0)
    are mapped to 0.
    """
    d = np.maximum(np.asarray(d, dtype=np.float64), _ZERO_COUNT_D)
    r = np.sqrt(1.5)
    out = 0.25 * d**2 + 0.25 * r / d - 11.0 / 8.0 / d**2 + 0.625 * r / d**3 - 0.125
    return np.maximum(out, 0.0)


def estimate_gain_offset(image, *, bins: int = 24) -> tuple[float, float]:
    """Detector gain (image units per detected electron) and offset (image units) of an image.

    An integer image whose noise variance matches its mean is taken as raw counts (gain 1,
    offset 0). Otherwise the noise variance is measured against the local mean: pixels are binned
    by the mean of their 2×2 block, the variance of the finest diagonal wavelet coefficient
    ``(a − b − c + d)/2`` (insensitive to smooth structure) is taken per bin, and a straight line
    ``var = gain × (mean − offset)`` is fitted (Poisson shot noise scaled by the gain). Correlated
    noise (fast-scan blur) lowers the measured variance and hence the gain: pass a calibration
    when you have one.

    Returns
    -------
    gain, offset : float
    """
    from ..atoms.detect import looks_like_counts

    im = _as_float(image)
    if looks_like_counts(im):
        return 1.0, 0.0
    h, w = (im.shape[0] // 2) * 2, (im.shape[1] // 2) * 2
    if h < 4 or w < 4:
        raise InputError(f"image of shape {im.shape} is too small to estimate a detector gain")
    a, b = im[0:h:2, 0:w:2], im[0:h:2, 1:w:2]
    c, e = im[1:h:2, 0:w:2], im[1:h:2, 1:w:2]
    mean = ((a + b + c + e) / 4.0).ravel()
    det = ((a - b - c + e) / 2.0).ravel()
    edges = np.unique(np.quantile(mean, np.linspace(0.02, 0.98, bins + 1)))
    which = np.digitize(mean, edges[1:-1])
    mx, vy, wt = [], [], []
    for k in range(len(edges) - 1):
        sel = which == k
        if sel.sum() < 20:
            continue
        dk = det[sel]
        # robust variance (MAD), insensitive to the odd zinger
        mad = np.median(np.abs(dk - np.median(dk))) / 0.6745
        mx.append(float(np.median(mean[sel])))
        vy.append(float(mad * mad))
        wt.append(float(sel.sum()))
    if len(mx) < 3 or np.ptp(mx) <= 0:
        raise InputError("cannot estimate a detector gain: the image has too little contrast")
    slope, intercept = np.polyfit(np.array(mx), np.array(vy), 1, w=np.sqrt(np.array(wt)))
    if not slope > 0:
        raise InputError("cannot estimate a detector gain: the noise does not grow with the signal "
                         "(not shot-noise limited); pass gain and offset")
    offset = -intercept / slope
    offset = min(offset, float(np.percentile(im, 0.1)))
    return float(slope), float(offset)


def bm3d_available() -> bool:
    """Whether the optional ``bm3d`` package can be imported."""
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


def bm3d_filter(image, *, gain: float | None = None, offset: float | None = None) -> np.ndarray:
    """BM3D on the Anscombe-transformed counts, with the exact unbiased inverse.

    Parameters
    ----------
    image : (rows, cols) array in detector units.
    gain : float, optional
        Image units per detected electron; with ``offset``, converts the image to counts
        ``(image − offset) / gain``. Estimated by :func:`estimate_gain_offset` when omitted.
    offset : float, optional
        Detector offset in image units (0 for a counting detector).

    Raises
    ------
    InputError
        When the ``bm3d`` package is not installed (``pip install bm3d``).
    """
    try:
        import bm3d
    except ImportError as exc:
        raise InputError("the bm3d workflow needs the optional package 'bm3d' "
                         "(pip install bm3d)") from exc
    im = _as_float(image)
    if gain is None or offset is None:
        g, o = estimate_gain_offset(im)
        gain = g if gain is None else gain
        offset = o if offset is None else offset
    gain, offset = float(gain), float(offset)
    if not gain > 0:
        raise InputError(f"gain must be > 0 image units per electron, got {gain!r}")
    counts = (im - offset) / gain
    d = np.asarray(bm3d.bm3d(anscombe(counts), sigma_psd=1.0), dtype=np.float64)
    return (inverse_anscombe_unbiased(d) * gain + offset).astype(np.float32)
