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
  noise variance measured on the image (:func:`emrestore.atoms.detect.estimate_noise_std`, with a
  fallback for sparse counts).
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


def _noise_std(im: np.ndarray) -> float:
    """Pixel noise σ: the robust wavelet (MAD) estimate, or, for sparse counts where more than
    half of the wavelet coefficients are 0 (and the MAD is 0), their plain standard deviation."""
    from ..atoms.detect import estimate_noise_std

    sigma = estimate_noise_std(im)
    if sigma > 0:
        return float(sigma)
    h, w = (im.shape[0] // 2) * 2, (im.shape[1] // 2) * 2
    if h < 2 or w < 2:
        return 0.0
    d = (im[0:h:2, 0:w:2] - im[0:h:2, 1:w:2] - im[1:h:2, 0:w:2] + im[1:h:2, 1:w:2]) / 2.0
    return float(np.std(d))


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

    ``noise_std`` (image units) defaults to the wavelet estimate of the pixel noise, so that the
    filter smooths flat regions and leaves the columns' edges where the local variance exceeds
    the noise.
    """
    from scipy.signal import wiener

    im = _as_float(image)
    noise = _noise_std(im) if noise_std is None else float(noise_std)
    size = int(size_px)
    if size < 1:
        raise InputError(f"size_px must be a positive window size, got {size_px!r}")
    if noise <= 0:
        return im.astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):  # flat windows: 0/0, replaced below
        out = wiener(im, mysize=size, noise=noise * noise)
    return np.where(np.isfinite(out), out, im).astype(np.float32)


def nlm_filter(image, *, patch_size: int = 5, patch_distance: int = 6,
               h_factor: float = 0.8) -> np.ndarray:
    """Non-local means with the noise level estimated from the image.

    ``h = h_factor × σ_noise`` with σ from :func:`skimage.restoration.estimate_sigma` (or, for
    sparse counts where that robust estimate is 0, the wavelet coefficients' standard deviation);
    the image is processed in its own units.
    """
    from skimage.restoration import denoise_nl_means, estimate_sigma

    im = _as_float(image)
    sigma = float(estimate_sigma(im))
    if not sigma > 0:
        sigma = _noise_std(im)
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

    The noise variance is measured against the local mean: pixels are binned by the mean of
    their 2×2 block, the variance of the finest diagonal wavelet coefficient ``(a − b − c + d)/2``
    (insensitive to smooth structure; the largest 1 % are dropped against zingers) is taken per
    bin, and a straight line ``var = gain × (mean − offset)`` is fitted (shot noise scaled by the
    gain). Raw counts give gain ≈ 1 and offset ≈ 0. Correlated noise (fast-scan blur) lowers the
    measured variance and hence the gain: pass a calibration when you have one.

    Returns
    -------
    gain, offset : float

    Raises
    ------
    InputError
        Too small or too flat an image, or noise that does not grow with the signal.
    """
    from ..atoms.detect import looks_like_counts

    im = _as_float(image)
    h, w = (im.shape[0] // 2) * 2, (im.shape[1] // 2) * 2
    if h < 4 or w < 4:
        raise InputError(f"image of shape {im.shape} is too small to estimate a detector gain")
    a, b = im[0:h:2, 0:w:2], im[0:h:2, 1:w:2]
    c, e = im[1:h:2, 0:w:2], im[1:h:2, 1:w:2]
    mean = ((a + b + c + e) / 4.0).ravel()
    det2 = (((a - b - c + e) / 2.0) ** 2).ravel()
    edges = np.unique(np.quantile(mean, np.linspace(0.02, 0.98, bins + 1)))
    which = np.digitize(mean, edges[1:-1])
    mx, vy, wt = [], [], []
    for k in range(len(edges) - 1):
        sel = which == k
        if sel.sum() < 20:
            continue
        dk = np.sort(det2[sel])[: max(1, int(0.99 * sel.sum()))]
        mx.append(float(np.mean(mean[sel])))
        vy.append(float(np.mean(dk)))
        wt.append(float(sel.sum()))
    slope = 0.0
    if len(mx) >= 3 and np.ptp(mx) > 0:
        slope, intercept = np.polyfit(np.array(mx), np.array(vy), 1, w=np.sqrt(np.array(wt)))
    if not slope > 0:
        if looks_like_counts(im):
            return 1.0, 0.0
        raise InputError("cannot estimate a detector gain: the noise does not grow with the "
                         "signal (too flat, or not shot-noise limited); pass gain and offset")
    offset = min(-intercept / slope, float(np.percentile(im, 0.1)))
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
