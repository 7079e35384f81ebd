"""Candidate atomic-column positions: local maxima, Laplacian of Gaussian, difference of Gaussian.

Everything is automatic by default. The lattice spacing is taken from the image's
autocorrelation (:func:`estimate_lattice_spacing`), the column width from the autocorrelation's
central peak (:func:`estimate_column_sigma`), and the threshold from the noise level
(:func:`estimate_noise_std`). From these follow the smoothing, the minimum separation between
candidates and the minimum peak prominence. Every default can be overridden.

Candidates are only starting points: :func:`emrestore.atoms.refine.refine_columns` turns them into
sub-pixel positions with uncertainties.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..io import check_image

__all__ = [
    "estimate_column_sigma",
    "estimate_lattice_spacing",
    "estimate_noise_std",
    "find_candidates",
    "looks_like_counts",
]


def estimate_noise_std(image) -> float:
    """Robust standard deviation of the pixel noise, in image units.

    Median absolute deviation of the finest diagonal Haar wavelet coefficients
    ``(a - b - c + d) / 2`` over 2×2 blocks (Donoho's estimator): smooth structure such as atomic
    columns a few pixels wide hardly contributes, white noise passes unchanged. For Poisson data it
    reflects the typical (median) pixel's noise.
    """
    im = np.asarray(image, dtype=np.float64)
    h, w = (im.shape[0] // 2) * 2, (im.shape[1] // 2) * 2
    if h < 2 or w < 2:
        return 0.0
    im = im[:h, :w]
    d = (im[0::2, 0::2] - im[0::2, 1::2] - im[1::2, 0::2] + im[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(d - np.median(d))) / 0.6745)


def looks_like_counts(image) -> bool:
    """Whether an image plausibly holds raw Poisson counts (so Poisson likelihood applies).

    Requires non-negative integer values whose noise variance is comparable to their mean. The
    variance is measured by the finest diagonal Haar wavelet coefficients d = (a - b - c + e)/2 of
    2×2 blocks, for which E[d²] equals the block's mean count under Poisson noise: the ratio
    mean(d²) / mean(image) must lie between 0.5 and 4 (smooth structure adds a little). Analog
    detector data with an offset (e.g. HAADF values around 33 000 with a noise std of 70, ratio
    0.15) are integers but fail. The fit also checks the Pearson dispersion of its residuals.
    """
    im = np.asarray(image, dtype=np.float64)
    if im.size < 4 or im.min() < 0:
        return False
    if not np.all(np.abs(im - np.rint(im)) < 1e-6):
        return False
    h, w = (im.shape[0] // 2) * 2, (im.shape[1] // 2) * 2
    if h < 2 or w < 2:
        return False
    im = im[:h, :w]
    mean = float(im.mean())
    if mean <= 0:
        return False
    d = (im[0::2, 0::2] - im[0::2, 1::2] - im[1::2, 0::2] + im[1::2, 1::2]) / 2.0
    ratio = float(np.mean(d * d)) / mean
    return 0.5 <= ratio <= 4.0


_ACF_CACHE: dict = {}


def _unbiased_autocorrelation(image, max_lag):
    """Mean-subtracted autocorrelation, normalised by the overlap count at each lag.

    Returns an array of shape (2 L + 1, 2 L + 1) centred on lag (0, 0), L = max_lag, scaled so that
    the value at zero lag is 1 (None for a flat image). The last image's autocorrelation is kept,
    so that the spacing and width estimates of one image share one FFT.
    """
    im = np.asarray(image, dtype=np.float64)
    h, w = im.shape
    key = (im.shape, hash(im.tobytes()))
    cached = _ACF_CACHE.get("key") == key and _ACF_CACHE["lag"] >= max_lag
    if not cached:
        lag = int(max(max_lag, min(h, w) // 3))
        lag = min(lag, min(h, w) - 1)
        im = im - im.mean()
        fy, fx = 2 * h, 2 * w
        spec = np.fft.rfft2(im, s=(fy, fx))
        ac = np.fft.irfft2(spec * np.conj(spec), s=(fy, fx))
        ly = np.arange(-lag, lag + 1)
        ac = np.roll(ac, (lag, lag), axis=(0, 1))[: 2 * lag + 1, : 2 * lag + 1]
        count = (h - np.abs(ly))[:, None] * (w - np.abs(ly))[None, :]
        ac = ac / np.maximum(count, 1.0)
        _ACF_CACHE.clear()
        _ACF_CACHE.update(key=key, lag=lag, ac=ac)
    lag = _ACF_CACHE["lag"]
    full = _ACF_CACHE["ac"]
    ac = full[lag - max_lag : lag + max_lag + 1, lag - max_lag : lag + max_lag + 1]
    zero = ac[max_lag, max_lag]
    if zero <= 0:
        return None
    return ac / zero


def estimate_lattice_spacing(image, *, max_spacing_px: float | None = None) -> float:
    """Shortest repeat distance between bright columns, in pixels, from the autocorrelation.

    The autocorrelation of an image of atomic columns has a peak at every vector joining two
    columns; the distance to the nearest strong peak (at least half as high as the strongest
    non-central one) is the nearest-neighbour spacing of the bright columns. Noise only adds to the
    zero lag, which is ignored.

    Parameters
    ----------
    image : (rows, cols) array
    max_spacing_px : float, optional
        Largest spacing looked for; default a third of the smaller image side.

    Returns
    -------
    float
        Spacing in pixels (sub-pixel, from a parabolic fit around the peak).

    Raises
    ------
    InputError
        If no periodic structure is found (flat or amorphous image, or too small).
    """
    im = check_image(image)
    side = min(im.shape)
    if max_spacing_px is None:
        max_spacing_px = side / 3.0
    max_lag = int(min(max_spacing_px, side - 2))
    if max_lag < 3:
        raise InputError(f"image of shape {im.shape} is too small to estimate a lattice spacing")
    ac = _unbiased_autocorrelation(im, max_lag)
    if ac is None:
        raise InputError("the image is flat: no lattice spacing can be estimated")
    from skimage.feature import peak_local_max

    ly, lx = np.mgrid[-max_lag : max_lag + 1, -max_lag : max_lag + 1]
    rad = np.hypot(ly, lx)
    # The zero lag holds the noise power: replace it by its neighbours' mean so that the central
    # peak stays a (single) maximum, then drop the central peak itself.
    ac = ac.copy()
    ac[max_lag, max_lag] = 0.25 * (ac[max_lag - 1, max_lag] + ac[max_lag + 1, max_lag]
                                   + ac[max_lag, max_lag - 1] + ac[max_lag, max_lag + 1])
    work = ac.copy()
    work[rad > max_lag] = -np.inf
    peaks = peak_local_max(np.where(np.isfinite(work), work, -1e300), min_distance=2,
                           exclude_border=False)
    peaks = peaks[rad[peaks[:, 0], peaks[:, 1]] >= 1.5] if len(peaks) else peaks
    if len(peaks) == 0:
        raise InputError("no periodic structure found in the image (autocorrelation has no peak)")
    heights = work[peaks[:, 0], peaks[:, 1]]
    keep = np.isfinite(heights) & (heights > 0)
    peaks, heights = peaks[keep], heights[keep]
    if len(peaks) == 0:
        raise InputError("no periodic structure found in the image (autocorrelation has no peak)")
    # a peak must stand out from its surroundings: compare with the autocorrelation's floor
    floor = np.percentile(work[np.isfinite(work)], 20)
    prominence = heights - floor
    strong = prominence >= 0.5 * prominence.max()
    peaks = peaks[strong]
    dist = rad[peaks[:, 0], peaks[:, 1]]
    best = peaks[np.argmin(dist)]
    # sub-pixel refinement by a separable parabola
    py, px = int(best[0]), int(best[1])
    off = []
    for axis in (0, 1):
        if axis == 0:
            lo, c, hi = ac[py - 1, px], ac[py, px], ac[py + 1, px]
        else:
            lo, c, hi = ac[py, px - 1], ac[py, px], ac[py, px + 1]
        den = lo - 2 * c + hi
        off.append(0.0 if den >= 0 else float(np.clip(0.5 * (lo - hi) / den, -0.5, 0.5)))
    return float(np.hypot(py - max_lag + off[0], px - max_lag + off[1]))


def estimate_column_sigma(image, spacing_px: float | None = None) -> float:
    """Gaussian width σ (px) of the columns, from the autocorrelation's central peak.

    The autocorrelation of Gaussian columns of width σ has a central peak of width σ√2. The
    radial profile at lags 1 … spacing/2 (the noise-dominated zero lag excluded) is fitted with a
    Gaussian plus a constant. A starting value: :func:`refine_columns` refines widths per column.
    """
    im = check_image(image)
    if spacing_px is None:
        try:
            spacing_px = estimate_lattice_spacing(im)
        except InputError:
            spacing_px = min(im.shape) / 4.0
    max_lag = int(max(4, min(np.ceil(spacing_px / 2.0), min(im.shape) // 2 - 1)))
    ac = _unbiased_autocorrelation(im, max_lag)
    if ac is None:
        return max(1.0, spacing_px / 6.0)
    ly, lx = np.mgrid[-max_lag : max_lag + 1, -max_lag : max_lag + 1]
    rad = np.hypot(ly, lx)
    rbin = np.rint(rad).astype(int)
    sums = np.bincount(rbin.ravel(), ac.ravel())
    cnts = np.bincount(rbin.ravel())
    prof = sums / np.maximum(cnts, 1)
    r = np.arange(prof.size, dtype=float)
    sel = (r >= 1) & (r <= max_lag)
    rr, pp = r[sel], prof[sel]
    base = pp.min()
    top = pp[0] - base
    if top <= 0:
        return max(1.0, spacing_px / 6.0)
    # use the part of the profile above ~20 % of its lag-1 value (the central peak)
    use = (pp - base) > 0.2 * top
    # stop at the first lag where the profile drops below the threshold
    stop = np.argmin(use) if not use.all() else use.size
    rr, pp = rr[: max(stop, 2)], pp[: max(stop, 2)] - base
    pp = np.maximum(pp, 1e-12 * top)
    if rr.size >= 2:
        slope = np.polyfit(rr**2, np.log(pp), 1)[0]
        sigma_ac = np.sqrt(-1.0 / (2.0 * slope)) if slope < 0 else spacing_px / 4.0
    else:
        sigma_ac = spacing_px / 4.0
    sigma = sigma_ac / np.sqrt(2.0)
    return float(np.clip(sigma, 0.5, max(0.5, spacing_px / 2.0)))


def _background_map(image, block):
    """Smooth local background: 20th percentile in blocks of ``block`` px, minimum over the 3×3
    neighbouring blocks, interpolated back to full resolution."""
    h, w = image.shape
    block = int(max(2, min(block, h, w)))
    ny, nx = -(-h // block), -(-w // block)
    pad = np.pad(image, ((0, ny * block - h), (0, nx * block - w)), mode="reflect")
    tiles = pad.reshape(ny, block, nx, block).transpose(0, 2, 1, 3).reshape(ny, nx, -1)
    low = np.percentile(tiles, 20, axis=-1)
    low = ndimage.minimum_filter(low, size=3, mode="nearest")
    if ny == 1 and nx == 1:
        return np.full(image.shape, float(low[0, 0]))
    # block centres -> pixel coordinates, bilinear interpolation (edge values extended)
    cy = (np.arange(ny) + 0.5) * block - 0.5
    cx = (np.arange(nx) + 0.5) * block - 0.5
    fy = np.interp(np.arange(h), cy, np.arange(ny))
    fx = np.interp(np.arange(w), cx, np.arange(nx))
    return ndimage.map_coordinates(low, np.meshgrid(fy, fx, indexing="ij"), order=1,
                                   mode="nearest")


def _merge_close(points, score, min_sep):
    """Keep the higher-scoring of any two points closer than ``min_sep`` (greedy)."""
    if len(points) < 2 or min_sep <= 0:
        return points
    from scipy.spatial import cKDTree

    order = np.argsort(-score)
    pts = points[order]
    tree = cKDTree(pts)
    keep = np.ones(len(pts), bool)
    for i in range(len(pts)):
        if not keep[i]:
            continue
        for j in tree.query_ball_point(pts[i], r=min_sep - 1e-9):
            if j > i:
                keep[j] = False
    return pts[keep]


def find_candidates(
    image,
    method: str = "peaks",
    min_separation_px: float | None = None,
    threshold: float | None = None,
    *,
    sigma_px: float | None = None,
    spacing_px: float | None = None,
    exclude_border_px: int = 1,
    return_info: bool = False,
):
    """Find candidate atomic-column positions.

    Parameters
    ----------
    image : (rows, cols) array
        Bright columns on a darker background (HAADF-like). Invert TEM images first.
    method : "peaks", "log" or "dog"
        ``"peaks"``: local maxima of the image smoothed by a Gaussian of half the column width
        (:func:`skimage.feature.peak_local_max`). ``"log"`` / ``"dog"``: scale-space blob detectors
        (:func:`skimage.feature.blob_log`, :func:`skimage.feature.blob_dog`) over σ/2 … 2σ.
    min_separation_px : float, optional
        Minimum distance between two candidates. Default: min(0.5 × lattice spacing, 1.5 σ),
        at least 1 px, which keeps the two columns of a resolved dumbbell apart.
    threshold : float, optional
        Minimum peak prominence (smoothed peak value minus the local background, a low percentile
        over about 1.5 lattice spacings) as a fraction (0–1) of the most prominent candidate's.
        Default (None): automatic, 5 times the noise standard deviation of the smoothed image.
    sigma_px, spacing_px : float, optional
        Column width and lattice spacing in pixels; estimated from the image when omitted.
    exclude_border_px : int
        Ignore maxima this close to the image edge.
    return_info : bool
        Also return a dict with the parameters actually used.

    Returns
    -------
    (N, 2) float ndarray
        Candidate positions (y, x) in pixels, brightest first; empty (0, 2) if none.
    """
    im = check_image(image).astype(np.float64)
    if method not in ("peaks", "log", "dog"):
        raise InputError(f"method must be 'peaks', 'log' or 'dog', got {method!r}")
    if threshold is not None and not (0.0 <= float(threshold) <= 1.0):
        raise InputError(f"threshold is a fraction between 0 and 1, got {threshold!r}")
    if min_separation_px is not None and not (float(min_separation_px) > 0):
        raise InputError(f"min_separation_px must be > 0, got {min_separation_px!r}")
    empty = np.zeros((0, 2))
    if np.ptp(im) == 0:
        return (empty, {}) if return_info else empty
    if spacing_px is None:
        try:
            spacing_px = estimate_lattice_spacing(im)
        except InputError:
            spacing_px = None
    if sigma_px is None:
        sigma_px = estimate_column_sigma(im, spacing_px)
    sigma_px = float(sigma_px)
    if spacing_px is None:
        spacing_px = 6.0 * sigma_px
    if min_separation_px is None:
        min_separation_px = max(1.0, min(0.5 * spacing_px, 1.5 * sigma_px))
    min_sep = float(min_separation_px)

    noise = estimate_noise_std(im)
    from skimage import feature

    counts = looks_like_counts(im)

    def smoothed_and_cut(s):
        sm = ndimage.gaussian_filter(im, s, mode="reflect")
        bgm = _background_map(sm, int(np.ceil(1.5 * max(spacing_px, 3 * sigma_px))))
        # white noise std after Gaussian smoothing with std s: σ_n / (2 √π s). For counts the
        # noise that makes false maxima is the background's, √b (at least one count's worth).
        sigma_n = np.sqrt(np.maximum(bgm, 1.0)) if counts else noise
        return sm, bgm, sigma_n / (2.0 * np.sqrt(np.pi) * s)

    def prominent(points, sm, bgm, noise_s):
        if len(points) == 0:
            return points, np.zeros(0)
        iy = np.clip(np.rint(points[:, 0]).astype(int), 0, im.shape[0] - 1)
        ix = np.clip(np.rint(points[:, 1]).astype(int), 0, im.shape[1] - 1)
        prom = sm[iy, ix] - bgm[iy, ix]
        if np.ndim(noise_s):
            noise_s = noise_s[iy, ix]
        if threshold is None:
            cut = np.where(noise_s > 0, 5.0 * noise_s, 1e-6 * max(prom.max(), 0.0))
        else:
            cut = float(threshold) * max(prom.max(), 0.0)
        keep = prom > cut
        return points[keep], prom[keep]

    border = max(0, int(exclude_border_px))
    if method == "peaks":
        # Two smoothing scales: σ/2 keeps close pairs (dumbbells) apart; σ (the matched filter)
        # has the best signal-to-noise ratio for faint columns. A matched-filter peak is added
        # only where no σ/2 peak lies within 2σ.
        sm1, bg1, ns1 = smoothed_and_cut(max(0.5 * sigma_px, 0.5))
        p1 = feature.peak_local_max(sm1, min_distance=max(1, int(np.floor(min_sep))),
                                    exclude_border=border).astype(float)
        p1, prom1 = prominent(p1, sm1, bg1, ns1)
        sm2, bg2, ns2 = smoothed_and_cut(max(sigma_px, 0.5))
        p2 = feature.peak_local_max(sm2, min_distance=max(1, int(np.floor(min_sep))),
                                    exclude_border=border).astype(float)
        p2, prom2 = prominent(p2, sm2, bg2, ns2)
        if len(p1) and len(p2):
            from scipy.spatial import cKDTree

            d, _ = cKDTree(p1).query(p2)
            extra = d > 2.0 * sigma_px
            p2, prom2 = p2[extra], prom2[extra]
        pts = np.concatenate([p1, p2]) if len(p2) else p1
        # rank by signal-to-noise ratio (a noise-free or coarsely quantised float frame has an
        # estimated noise of exactly 0: then the two scales rank alike)
        n1, n2 = float(np.median(ns1)), float(np.median(ns2))
        prominence = np.concatenate([prom1, prom2 * (n1 / n2 if n2 > 0 else 1.0)])
        cut = 5.0 * float(np.median(ns1)) if threshold is None else float(threshold)
    else:
        lo, hi = max(0.5, 0.7 * sigma_px), max(1.0, 1.5 * sigma_px)
        norm = (im - im.min()) / np.ptp(im)
        if method == "log":
            blobs = feature.blob_log(norm, min_sigma=lo, max_sigma=hi, num_sigma=6,
                                     threshold=None, threshold_rel=0.05, overlap=1.0,
                                     exclude_border=border)
        else:
            blobs = feature.blob_dog(norm, min_sigma=lo, max_sigma=hi, threshold=None,
                                     threshold_rel=0.05, overlap=1.0, exclude_border=border)
        pts = blobs[:, :2].astype(float) if len(blobs) else empty
        sm1, bg1, ns1 = smoothed_and_cut(max(0.5 * sigma_px, 0.5))
        pts, prominence = prominent(pts, sm1, bg1, ns1)
        cut = 5.0 * float(np.median(ns1)) if threshold is None else float(threshold)
    if len(pts) == 0:
        return (empty, {}) if return_info else empty
    pts = _merge_close(pts, prominence, min_sep)
    info = {
        "method": method,
        "sigma_px": sigma_px,
        "spacing_px": float(spacing_px),
        "min_separation_px": min_sep,
        "prominence_cut": float(cut),
        "noise_std": noise,
    }
    return (pts, info) if return_info else pts
