"""Render undistorted images y = sum_i f_Z(|r - r_i|) (x) PSF (seed 001 eq. 16, seed 003 model).

Geometry
--------
Positions are Cartesian, in A, as ``ase.Atoms.positions``: column 0 is x (along image columns),
column 1 is y (along image rows); a third column (z, along the beam) is ignored. Pixel (r, c) of
an ``(H, W)`` image with pixel size ``dr`` has its centre at (y, x) = (r dr, c dr); the image covers
[-dr/2, (H - 1/2) dr) x [-dr/2, (W - 1/2) dr). Column labels are returned as (y, x).

Super-resolution: ``supersample=s`` renders the *same field of view* on an (sH, sW) grid with pixel
dr/s. Fine pixel i has its centre at y = (i + 1/2) dr/s - dr/2, so a coarse pixel coordinate p maps
to the fine coordinate s p + (s - 1)/2 (``supersampled_coordinates``); each s x s block of fine
pixels tiles one coarse pixel. Values keep their units (intensity at a point), so
sum(fine) (dr/s)^2 = sum(coarse) dr^2.

Semantics and accuracy
----------------------
Pixel values are point samples of the continuous image y(r) (eq. 16 evaluated at pixel centres).
The rendering runs in Fourier space on an internal grid ``o`` times finer than the output:

1. atoms are spread onto the internal grid with a cubic B-spline (4 x 4 weights per atom, one
   ``np.bincount``), i.e. convolved with a known kernel;
2. one real FFT per species, multiplied by that species' profile transform F_Z(|k|) (analytic
   Gaussian and exponential terms, a cached Hankel transform for the Butterworth term; evaluated
   through a shared radial table). With many species the tables are first reduced to a few basis
   functions, F_Z ~ sum_j c_Zj B_j (pivoted Gram-Schmidt in a k- and OTF-weighted norm, relative
   residual < tol/4 per species; typically rank 3-7 with a probe), atoms are spread with weights
   c_Zj and only one FFT per basis function is needed; the k = 0 term is then corrected exactly.
   A cost model picks the cheaper of the two routes;
3. the sum is multiplied once by OTF(k) W(k) / B(k): the PSF transfer function, a smooth
   anti-alias taper W (1 below 0.4 of the internal sampling frequency per axis, raised cosine to 0
   at the internal Nyquist frequency) and B = sinc^4 per axis, which undoes the spreading kernel
   and restores exact sub-pixel positions. Frequencies beyond the PSF cut-off (2 alpha / lambda
   for a probe) are skipped altogether;
4. one inverse FFT, pruned: the column transforms run only over the frequency block below the
   cut-off and the row transforms only over the rows that are kept (every o-th internal pixel).

Super-resolved labels: ``render_atoms_with_supersampled`` returns the image and a finer sampling
of a window of it from the same spectrum (zero-padding plus a sub-pixel phase ramp: exact
band-limited interpolation whenever the internal grid resolved every kernel, i.e. o was not
capped), so a 2x label costs one extra pruned inverse FFT instead of a second rendering on a
4x larger grid. Where o is capped it renders the window separately, as ``render_atoms`` does.

``o`` is the smallest integer for which the kernel (PSF x f_Z) holds less than ``tol`` of its
spectral L1 mass outside the taper's pass band, capped at ``max_oversample`` (default 2). Where
that suffices, the result matches a direct real-space evaluation to ~1e-3 of the peak (measured
1e-5 to 8e-4), peak positions are exact to far below 0.01 px, and the k = 0 term is exact, so
sum(image) dr^2 equals the summed integrated intensities up to the tails that leave the field.
When the cap binds (a profile much narrower than the pixel and no probe, e.g. the cusp of the
exponential term, or a fine probe on a coarse pixel), W acts as an anti-alias filter: the result
is y blurred by about one internal pixel, still point-sampled, with exact integrated intensity.

Boundaries: the internal grid is padded by the kernel radius at which it falls below 1e-3 of its
peak (probe Airy tails included; at most ``max_pad_px`` output pixels); atoms farther outside than
the padding are dropped, and the periodic FFT wraps only tails below that level.

Cost (one core, 256 x 256 px, probe, o = 1): about 5-10 ms for 20 000 atoms of 1-4 species and
10-15 ms with 16 species; 100 species or o = 2 cost a few times more. ``max_oversample=1`` gives
the fastest, purely band-limited rendering on coarse pixels.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from ..errors import InputError
from .profiles import AtomProfiles

__all__ = [
    "choose_oversampling",
    "group_columns",
    "render_atoms",
    "render_atoms_with_supersampled",
    "render_columns",
    "render_kernel",
    "supersampled_coordinates",
]

_PASS = 0.40  # pass band of the anti-alias taper (fraction of the internal sampling frequency)
_STOP = 0.50
_SPLINE_ORDER = 3  # cubic B-spline spreading (4 x 4 points per atom)
_TABLE_SIZE = 2048


def supersampled_coordinates(positions_px, factor: int) -> np.ndarray:
    """Map (y, x) pixel coordinates of a coarse image onto its ``factor``x supersampled grid."""
    p = np.asarray(positions_px, dtype=float)
    return factor * p + 0.5 * (factor - 1)


# --------------------------------------------------------------------------------------------
# spreading kernel
# --------------------------------------------------------------------------------------------


def _bspline3(x: np.ndarray) -> np.ndarray:
    """Cubic B-spline (reference implementation, used by the tests)."""
    a = np.abs(x)
    return (np.maximum(2.0 - a, 0.0) ** 3 - 4.0 * np.maximum(1.0 - a, 0.0) ** 3) / 6.0


def _spread_weights(u: np.ndarray, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cubic B-spline weights of the 4 grid points around coordinates u (indices
    taken mod n when n is given; the renderer keeps every atom 2 points inside its grid)."""
    base = np.floor(u)
    t = u - base
    t2 = t * t
    t3 = t2 * t
    s = 1.0 - t
    w = np.empty((u.size, 4))
    w[:, 0] = s * s * s
    w[:, 1] = 4.0 - 6.0 * t2 + 3.0 * t3
    w[:, 2] = 1.0 + 3.0 * t + 3.0 * t2 - 3.0 * t3
    w[:, 3] = t3
    w *= 1.0 / 6.0
    idx = base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
    return (idx if n is None else np.mod(idx, n)), w


def _deconvolution_1d(n: int) -> np.ndarray:
    kappa = sfft.fftfreq(n)
    return np.sinc(kappa) ** (_SPLINE_ORDER + 1)


def _taper_1d(kappa: np.ndarray) -> np.ndarray:
    a = np.abs(kappa)
    w = np.ones_like(a)
    mid = (a > _PASS) & (a < _STOP)
    w[mid] = 0.5 * (1.0 + np.cos(math.pi * (a[mid] - _PASS) / (_STOP - _PASS)))
    w[a >= _STOP] = 0.0
    return w


# --------------------------------------------------------------------------------------------
# choosing the internal grid
# --------------------------------------------------------------------------------------------


def choose_oversampling(band_limit_inv_A: float, pixel_size_A: float, max_oversample: int) -> int:
    """Smallest integer o with band_limit * pixel / o inside the taper pass band, capped."""
    if not math.isfinite(band_limit_inv_A):
        return int(max_oversample)
    o = math.ceil(band_limit_inv_A * pixel_size_A / _PASS - 1e-9)
    return int(min(max(o, 1), max_oversample))


def _psf_band(psf, tol):
    return math.inf if psf is None else psf.band_limit_inv_A(tol)


def _psf_extent(psf, rel):
    return 0.0 if psf is None else psf.extent_A(rel)


class _Kernels:
    """Radial transforms of the species kernels: ``table(k)`` gives an (nk, len(k)) array.

    ``bands`` is a sequence of band limits (1/A) or of zero-argument callables giving them, in
    the order in which they are most likely to be the largest (then :meth:`max_band` usually
    evaluates only the first: with a probe, one profile already reaches beyond its band).
    """

    def __init__(self, table, bands, extents):
        self.table, self.bands, self.extents = table, list(bands), list(extents)

    def __len__(self):
        return len(self.extents)

    def max_band(self, cap: float = math.inf) -> float:
        """min(largest band limit, cap), evaluating the band limits only until one reaches cap."""
        best = -math.inf
        for b in self.bands:
            best = max(best, b() if callable(b) else b)
            if best >= cap:
                return cap
        return min(best, cap) if self.bands else cap


def _psf_cutoff(psf) -> float:
    return math.inf if psf is None else float(psf.cutoff_inv_A())


def _psf_envelope(psf, k: np.ndarray) -> np.ndarray:
    return np.ones_like(k) if psf is None else psf.otf_envelope(k)


def _lowrank(tabs: np.ndarray, weight: np.ndarray, tol: float, max_rank: int = 24):
    """Low-rank form F_Z ~ sum_j coef[Z, j] basis[j] of the species tables (weighted by
    ``weight`` in k) with every species' relative residual below ``tol``.

    Pivoted Gram-Schmidt on the rows (no LAPACK: a threaded SVD of this small matrix costs far
    more than it computes on a busy machine). Returns ``(coef (nk, R), basis (R, T))`` or None
    when no rank below nk (and ``max_rank``) reaches the tolerance.
    """
    nk = tabs.shape[0]
    a = tabs[:, ::4] * weight[None, ::4]
    norms = np.sqrt(np.einsum("ij,ij->i", a, a))
    norms[norms == 0] = 1.0
    resid = a / norms[:, None]
    res2 = np.einsum("ij,ij->i", resid, resid)
    coefs, combos = [], []  # c[:, j] and q_j as combinations of the normalised rows
    limit = min(nk - 1, max_rank)
    while res2.max() > tol * tol:
        if len(coefs) >= limit:
            return None
        p = int(np.argmax(res2))
        rp = float(np.sqrt(res2[p]))
        q = resid[p] / rp
        combo = np.zeros(nk)
        combo[p] = 1.0
        for c_prev, m_prev in zip(coefs, combos):
            combo -= c_prev[p] * m_prev
        combo /= rp
        c = np.einsum("ij,j->i", resid, q)
        resid -= c[:, None] * q[None, :]
        res2 = np.einsum("ij,ij->i", resid, resid)
        coefs.append(c)
        combos.append(combo)
    if not coefs:
        return None
    coef = norms[:, None] * np.stack(coefs, axis=1)
    basis = np.einsum("jz,zt->jt", np.stack(combos), tabs / norms[:, None])
    return coef, basis


# rough single-core costs in ns, measured on the development machine
_NS_PER_GRID_POINT_AND_PLANE = 6.0  # bincount zeroing + cast + rfft2 + multiply-add
_NS_PER_SPREAD_ENTRY = 5.0
_NS_PER_WEIGHTED_SPREAD_ENTRY = 4.0


def _render_core(points_yx_A: np.ndarray, group: np.ndarray, kernels: _Kernels, psf,
                 out_shape: tuple[int, int], pixel_A: float, origin_A: float,
                 max_oversample: int, tol: float, max_pad_px: int | None,
                 fine: tuple[tuple[float, float], float, tuple[int, int]] | None = None):
    """The image on ``out_shape``; with ``fine = ((y, x) of the first sample in A, spacing in A,
    shape)`` also that sampling of the same continuous image, returned as a second array (None
    where the internal grid cannot resolve it exactly: oversampling capped)."""
    ho, wo = out_shape
    rel = 1e-3
    extent = max(kernels.extents, default=0.0) + _psf_extent(psf, rel)
    cap = max_pad_px if max_pad_px is not None else max(64, max(ho, wo) // 4)
    pad = int(min(math.ceil(extent / pixel_A) + 2, cap))
    band = kernels.max_band(_psf_band(psf, tol))
    o = choose_oversampling(band, pixel_A, max_oversample)
    h = pixel_A / o
    # internal point j sits at y0 + j h; two spare points at each end keep the 4 x 4 spreading
    # stencil of every retained atom inside the grid (no wrapping of indices needed)
    ny = sfft.next_fast_len(o * (ho + 2 * pad) + 4, real=True)
    nx = sfft.next_fast_len(o * (wo + 2 * pad) + 4, real=True)
    y0 = origin_A - pad * pixel_A - 2 * h
    x0 = origin_A - pad * pixel_A - 2 * h

    # atoms that can reach the image
    y = points_yx_A[:, 0]
    x = points_yx_A[:, 1]
    lo_y, hi_y = origin_A - pad * pixel_A, origin_A + (ho - 1 + pad) * pixel_A
    lo_x, hi_x = origin_A - pad * pixel_A, origin_A + (wo - 1 + pad) * pixel_A
    keep = (y >= lo_y) & (y <= hi_y) & (x >= lo_x) & (x <= hi_x)
    y, x, group = y[keep], x[keep], group[keep].astype(np.int64)
    if y.size == 0:
        empty = np.zeros(out_shape, dtype=np.float32)
        return empty if fine is None else (empty, np.zeros(fine[2], dtype=np.float32))

    # Only frequencies below the PSF cut-off matter (the OTF is zero, or < 1e-8, beyond): the
    # per-kernel work is restricted to that block of the rfft2 lattice, rows 0..my-1 and the
    # last my-1 rows (negative frequencies), columns 0..mx-1.
    ncol = nx // 2 + 1
    kcut = _psf_cutoff(psf)
    my = min(ny // 2, int(kcut * ny * h) + 2) if math.isfinite(kcut) else ny // 2
    mx = min(ncol, int(kcut * nx * h) + 2) if math.isfinite(kcut) else ncol
    block = (2 * my - 1) * mx < 0.6 * ny * ncol
    rows = np.concatenate([np.arange(my), np.arange(ny - my + 1, ny)]) if block else None
    ky = sfft.fftfreq(ny, d=h)[:, None]
    kx = sfft.rfftfreq(nx, d=h)[None, :]
    if block:
        ky, kx = ky[rows], kx[:, :mx]

    def forward(grid):
        if not block:
            return sfft.rfft2(grid.astype(np.float32), workers=1)
        r = sfft.rfft(grid.astype(np.float32), axis=1, workers=1)[:, :mx]
        return sfft.fft(r, axis=0, workers=1)[rows]

    # radial tables of the kernels up to the cut-off (or the lattice's largest |k|)
    kabs = np.sqrt(ky * ky + kx * kx)
    kmax = min(float(kabs.max()), kcut)
    dk = kmax / (_TABLE_SIZE - 1)
    ktab = np.arange(_TABLE_SIZE) * dk
    pos = kabs / dk
    idx = pos.astype(np.int64)
    frac = (pos - idx).astype(np.float32)
    beyond = idx >= _TABLE_SIZE - 1
    idx[beyond] = _TABLE_SIZE  # two trailing zeros in every table
    frac[beyond] = 0.0
    tabs = np.zeros((len(kernels), _TABLE_SIZE + 2))
    tabs[:, :_TABLE_SIZE] = kernels.table(ktab)

    # spreading: indices and weights of the 4 x 4 neighbours of every atom
    nk = len(kernels)
    plane = ny * nx
    iy, wy = _spread_weights((y - y0) / h)
    ix, wx = _spread_weights((x - x0) / h)
    weights = (wy[:, :, None] * wx[:, None, :]).reshape(len(y), 16)
    counts = np.bincount(group, minlength=nk)
    present = np.nonzero(counts)[0]
    lowrank = None
    if present.size >= 4:
        # weight ~ k |OTF| W: the image error of a kernel error dF is ~ int |dF| |OTF| W k dk
        wk = (ktab + dk) * np.abs(_psf_envelope(psf, ktab)) * _taper_1d(ktab * h)
        # profiles alone (exponential cusp) have heavy spectral tails: demand more there
        lowrank = _lowrank(tabs[present, :_TABLE_SIZE], wk, (0.25 if psf else 0.05) * tol)
        if lowrank is not None:
            n16 = 16 * len(y)
            direct = (present.size * plane * _NS_PER_GRID_POINT_AND_PLANE
                      + n16 * _NS_PER_SPREAD_ENTRY)
            rank = lowrank[0].shape[1]
            low = (rank * (n16 * _NS_PER_WEIGHTED_SPREAD_ENTRY
                           + plane * (_NS_PER_GRID_POINT_AND_PLANE - 1.0))
                   + n16 * _NS_PER_SPREAD_ENTRY)
            if low >= direct:
                lowrank = None

    def weighted_transform(tab, f):
        tab = tab.astype(np.float32)
        slope = np.zeros_like(tab)
        slope[:-1] = tab[1:] - tab[:-1]
        f *= tab[idx] + frac * slope[idx]
        return f

    spec = None
    if lowrank is None:
        flat = ((group * plane + iy[:, 0] * nx)[:, None, None] + (np.arange(4) * nx)[:, None]
                + ix[:, None, :])
        grids = np.bincount(flat.ravel(), weights.ravel(), minlength=nk * plane)
        grids = grids.reshape(nk, ny, nx)
        for g in present.tolist():
            f = weighted_transform(tabs[g], forward(grids[g]))
            spec = f if spec is None else spec + f
    else:
        coef, basis = lowrank
        full = np.zeros((nk, coef.shape[1]))
        full[present] = coef
        flat = ((iy[:, 0] * nx)[:, None, None] + (np.arange(4) * nx)[:, None]
                + ix[:, None, :]).ravel()
        for j in range(coef.shape[1]):
            wj = (weights * full[group, j][:, None]).ravel()
            grid = np.bincount(flat, wj, minlength=plane).reshape(ny, nx)
            tab = np.zeros(_TABLE_SIZE + 2)
            tab[:_TABLE_SIZE] = basis[j]
            f = weighted_transform(tab, forward(grid))
            spec = f if spec is None else spec + f
        # restore the exact k = 0 term (integrated intensities) of every species
        dc_error = tabs[present, 0] - coef @ basis[:, 0]
        spec[0, 0] += np.float32(np.dot(counts[present], dc_error))

    by = _deconvolution_1d(ny)
    bx = _deconvolution_1d(nx)[:ncol]
    wy_t = _taper_1d(sfft.fftfreq(ny))
    wx_t = _taper_1d(sfft.rfftfreq(nx))
    fy, fx = wy_t / by, wx_t / bx
    if block:
        fy, fx = fy[rows], fx[:mx]
    factor = fy[:, None] * fx[None, :]
    if psf is not None:
        factor = factor * psf.otf_2d(ky, kx)
    spec *= factor.astype(np.complex64 if np.iscomplexobj(factor) else np.float32)
    if not block:
        rows, mx = np.arange(ny), ncol
    grid = (ny, nx, h, y0, x0)
    out = _sample_spectrum(spec, rows, grid, (origin_A, origin_A), pixel_A, out_shape)
    if fine is None:
        return out
    # The internal grid resolves the band of every kernel (o not capped): any other sampling of
    # the same field is exact band-limited interpolation of this spectrum.
    exact = choose_oversampling(band, pixel_A, 10**6) <= o
    fine_out = _sample_spectrum(spec, rows, grid, *fine) if exact else None
    return out, fine_out


def _sample_spectrum(spec: np.ndarray, rows: np.ndarray, grid, start_yx_A, spacing_A: float,
                     shape: tuple[int, int]) -> np.ndarray:
    """Samples of the image whose rfft2 on ``grid = (ny, nx, h, y0, x0)`` (point (j, i) at
    (y0 + j h, x0 + i h)) is ``spec`` (rows ``rows``, columns 0 .. spec.shape[1] - 1, every other
    coefficient zero), on a lattice of ``shape`` points ``spacing_A`` apart starting at
    ``start_yx_A``.

    ``spacing_A`` must be a rational multiple p/m of h with m <= 8: the spectrum is zero-padded m
    times (exact for a band-limited image) and phase-shifted onto the lattice's sub-grid offset.
    Pruned inverse transform: the column transforms run only on the non-zero columns and the row
    transforms only on the rows that are kept.
    """
    ny, nx, h, y0, x0 = grid
    ratio = spacing_A / h
    for m in range(1, 9):
        step = round(ratio * m)
        if step >= 1 and abs(ratio * m - step) < 1e-6 * m:
            break
    else:
        raise InputError(f"sampling {spacing_A} A is not a simple fraction of the grid {h} A")
    hf = h / m
    starts, shifts = [], []
    for s0, g0 in ((start_yx_A[0], y0), (start_yx_A[1], x0)):
        u = (s0 - g0) / hf
        j = math.floor(u + 1e-6)
        starts.append(j)
        shifts.append((u - j) * hf if abs(u - j) > 1e-6 else 0.0)
    mx = spec.shape[1]
    big_y, big_x = m * ny, m * nx
    if starts[0] < 0 or starts[1] < 0 or starts[0] + step * (shape[0] - 1) >= big_y \
            or starts[1] + step * (shape[1] - 1) >= big_x:
        raise InputError("requested samples lie outside the rendering grid")
    if shifts[0] or shifts[1]:
        ky = sfft.fftfreq(ny, d=h)[rows]
        kx = sfft.rfftfreq(nx, d=h)[:mx]
        ramp_y = np.exp(2j * math.pi * ky * shifts[0]).astype(np.complex64)
        ramp_x = np.exp(2j * math.pi * kx * shifts[1]).astype(np.complex64)
        spec = spec * ramp_y[:, None] * ramp_x[None, :]
    padded = np.zeros((big_y, mx), dtype=np.complex64)
    padded[np.where(rows < (ny + 1) // 2, rows, rows + big_y - ny)] = spec
    cols = sfft.ifft(padded, axis=0, workers=1, overwrite_x=True)
    cols = cols[starts[0]: starts[0] + step * (shape[0] - 1) + 1: step]
    img = sfft.irfft(cols, n=big_x, axis=1, workers=1)
    out = img[:, starts[1]: starts[1] + step * (shape[1] - 1) + 1: step]
    return out * np.float32(m * m / (h * h))


def _species_groups(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct atomic numbers and each atom's index into them (bincount, no sort)."""
    if numbers.min() < 0:
        raise InputError("atomic numbers must be positive")
    present = np.bincount(numbers)
    species = np.nonzero(present)[0]
    lut = np.zeros(present.size, dtype=np.int64)
    lut[species] = np.arange(species.size)
    return species, lut[numbers]


def _check_common(shape, pixel_size_A, supersample):
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"shape must be (H, W) with H, W >= 1, got {shape!r}")
    if not pixel_size_A > 0:
        raise InputError(f"pixel_size_A must be positive, got {pixel_size_A}")
    if int(supersample) != supersample or supersample < 1:
        raise InputError(f"supersample must be a positive integer, got {supersample}")


def _positions_yx(positions_A: np.ndarray, n: int) -> np.ndarray:
    p = np.asarray(positions_A, dtype=float)
    if p.ndim != 2 or p.shape[0] != n or p.shape[1] < 2:
        raise InputError(
            f"positions_A must be an (N, 2) or (N, 3) array of (x, y[, z]) in A for N={n} atoms, "
            f"got shape {p.shape}")
    if not np.all(np.isfinite(p[:, :2])):
        raise InputError("positions_A contain NaN or infinite values")
    return np.ascontiguousarray(p[:, [1, 0]])


def render_atoms(atoms_numbers, positions_A, profiles: AtomProfiles, shape: tuple[int, int],
                 pixel_size_A: float, probe=None, supersample: int = 1, *,
                 max_oversample: int = 2, tol: float = 2e-3,
                 max_pad_px: int | None = None) -> np.ndarray:
    """Undistorted image y = sum_i f_Z(|r - r_i|) (x) PSF, shape ``(s H, s W)``, float32.

    Parameters
    ----------
    atoms_numbers : (N,) atomic numbers; every one must be in ``profiles.species``.
    positions_A : (N, 2|3) Cartesian positions (x, y[, z]) in A (``ase.Atoms.positions``).
    profiles : per-species profiles (``draw_atom_profiles``).
    shape : (H, W) of the image at pixel ``pixel_size_A`` (A).
    probe : ``optics.Probe``, ``optics.GaussianPSF`` or None (profiles only).
    supersample : s; render the same field on an (sH, sW) grid with pixel dr/s (see module doc).
    max_oversample : cap on the internal oversampling (cost grows as its square).
    tol : spectral mass allowed outside the pass band when choosing the oversampling.
    max_pad_px : cap on the padding (output pixels); default max(64, max(H, W)/4).

    Returns
    -------
    float32 array in intensity units; sum(y) (dr/s)^2 ~ sum of ``profiles.integrated_intensity``
    over atoms inside the field (exactly, up to tails leaving the field).
    """
    _check_common(shape, pixel_size_A, supersample)
    numbers = np.asarray(atoms_numbers).astype(np.int64).ravel()
    pos = _positions_yx(positions_A, numbers.size)
    s = int(supersample)
    pix = pixel_size_A / s
    out_shape = (s * int(shape[0]), s * int(shape[1]))
    origin = -0.5 * (s - 1) / s * pixel_size_A
    if numbers.size == 0:
        return np.zeros(out_shape, dtype=np.float32)
    group, kernels = _atom_kernels(numbers, profiles, tol)
    return _render_core(pos, group, kernels, probe, out_shape, pix, origin,
                        max_oversample, tol, max_pad_px)


def _atom_kernels(numbers: np.ndarray, profiles: AtomProfiles, tol: float):
    species, group = _species_groups(numbers)
    missing = sorted(set(species.tolist()) - set(profiles.species))
    if missing:
        raise InputError(f"render_atoms: no profile for Z={missing}; "
                         f"profiles cover {list(profiles.species)}")
    zs = species.tolist()
    # narrowest profiles first: their transforms reach farthest
    by_width = sorted(zs, key=lambda z: profiles.params(z)[2])
    kernels = _Kernels(
        lambda k: profiles.transform_many(zs, k),
        [lambda z=z: profiles.band_limit_inv_A(z, tol) for z in by_width],
        [profiles.extent_A(z, 1e-3) for z in zs],
    )
    return group, kernels


def render_atoms_with_supersampled(atoms_numbers, positions_A, profiles: AtomProfiles,
                                   shape: tuple[int, int], pixel_size_A: float, probe=None, *,
                                   window_px: tuple[int, int, int, int], supersample: int = 2,
                                   max_oversample: int = 2, tol: float = 2e-3,
                                   max_pad_px: int | None = None
                                   ) -> tuple[np.ndarray, np.ndarray]:
    """``render_atoms`` on ``shape`` plus a ``supersample``-times finer image of a window of it,
    from one spreading and one set of forward transforms.

    ``window_px = (top, left, H, W)``: the second image is what
    ``render_atoms(numbers, positions_A - (left, top) * pixel_size_A, profiles, (H, W),
    pixel_size_A, probe, supersample)`` returns (the window's coarse pixel (0, 0) is pixel
    (top, left) of the first image), up to the renderer's accuracy (~1e-3 of the peak; atoms
    outside the window but inside the first field contribute their tails, as they should).
    It is obtained by band-limited interpolation of the first image's spectrum, which is exact
    whenever the internal grid resolved every kernel (oversampling not capped). Otherwise (a
    kernel much sharper than the pixel: fine probes on coarse pixels) the window is rendered on
    its own finer grid, at the cost of a second ``render_atoms`` call.

    Returns ``(image (H0, W0), fine (s H, s W))``, float32, same units as ``render_atoms``.
    """
    _check_common(shape, pixel_size_A, supersample)
    top, left, hw, ww = (int(v) for v in window_px)
    if hw < 1 or ww < 1:
        raise InputError(f"window_px must be (top, left, H, W) with H, W >= 1, got {window_px!r}")
    numbers = np.asarray(atoms_numbers).astype(np.int64).ravel()
    pos = _positions_yx(positions_A, numbers.size)
    s = int(supersample)
    out_shape = (int(shape[0]), int(shape[1]))
    fine_shape = (s * hw, s * ww)
    if numbers.size == 0:
        return np.zeros(out_shape, np.float32), np.zeros(fine_shape, np.float32)
    group, kernels = _atom_kernels(numbers, profiles, tol)
    inside = 0 <= top and 0 <= left and top + hw <= out_shape[0] and left + ww <= out_shape[1]
    if inside:
        lead = 0.5 * (s - 1) / s  # fine pixel 0 sits this many coarse pixels before the window
        start = ((top - lead) * pixel_size_A, (left - lead) * pixel_size_A)
        image, fine = _render_core(pos, group, kernels, probe, out_shape, pixel_size_A, 0.0,
                                   max_oversample, tol, max_pad_px,
                                   fine=(start, pixel_size_A / s, fine_shape))
    else:
        image = _render_core(pos, group, kernels, probe, out_shape, pixel_size_A, 0.0,
                             max_oversample, tol, max_pad_px)
        fine = None
    if fine is None:
        shifted = pos - np.array([top * pixel_size_A, left * pixel_size_A])
        fine = _render_core(shifted, group, kernels, probe, fine_shape, pixel_size_A / s,
                            -0.5 * (s - 1) / s * pixel_size_A, max_oversample, tol, None)
    return image, fine


def render_kernel(positions_yx_A, shape: tuple[int, int], pixel_size_A: float, psf=None,
                  weights=None, *, max_oversample: int = 4, tol: float = 2e-3,
                  max_pad_px: int | None = None) -> np.ndarray:
    """Render point objects of integrated intensity ``weights`` (default 1) blurred by ``psf``.

    Positions are (y, x) in A with the same pixel convention as ``render_atoms``.
    """
    _check_common(shape, pixel_size_A, 1)
    pos = np.atleast_2d(np.asarray(positions_yx_A, dtype=float))
    if weights is None:
        weights = np.ones(pos.shape[0])
    w = np.asarray(weights, dtype=float).ravel()
    values, group = np.unique(w, return_inverse=True)
    kernels = _Kernels(lambda k: values[:, None] * np.ones((1, k.size)),
                       [math.inf] * values.size, [0.0] * values.size)
    return _render_core(pos, group.ravel(), kernels, psf, tuple(shape), pixel_size_A, 0.0,
                        max_oversample, tol, max_pad_px)


# --------------------------------------------------------------------------------------------
# column labels
# --------------------------------------------------------------------------------------------


def group_columns(xy_A: np.ndarray, merge_radius_A: float) -> np.ndarray:
    """Column labels of projected positions (A): stacks of atoms and the atoms near them.

    A column is a site where two or more atoms coincide in projection (to 1e-3 of the merge
    radius); sites closer than ``merge_radius_A`` join one column (single linkage among sites
    only). Every other atom joins the nearest column within ``merge_radius_A``; the remaining
    atoms link among themselves. Linking all atoms at once would let displaced atoms and
    amorphous neighbours chain whole columns of a crystal together into one.
    """
    n = xy_A.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # collapse exact duplicates first: zone-axis columns are stacks of atoms at one (x, y), and
    # pair counts would otherwise grow as the column length squared
    step = 1e-3 * merge_radius_A
    q = np.round(xy_A / step).astype(np.int64)
    q -= q.min(axis=0)
    key = q[:, 0] * (int(q[:, 1].max()) + 1) + q[:, 1]
    _, first, inverse, multiplicity = np.unique(key, return_index=True, return_inverse=True,
                                                return_counts=True)
    inverse = inverse.reshape(-1)
    upos = q[first] * step
    m = upos.shape[0]
    is_site = multiplicity >= 2
    labels = np.full(m, -1, dtype=np.int64)
    n_columns = 0
    if is_site.any():
        sites = np.flatnonzero(is_site)
        tree = cKDTree(upos[sites])
        pairs = tree.query_pairs(merge_radius_A, output_type="ndarray")
        graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                                  shape=(sites.size, sites.size))
        n_columns, site_labels = csgraph.connected_components(graph, directed=False)
        labels[sites] = site_labels
        loose = np.flatnonzero(~is_site)
        if loose.size:
            dist, nearest = tree.query(upos[loose], distance_upper_bound=merge_radius_A)
            near = np.isfinite(dist)
            labels[loose[near]] = site_labels[nearest[near]]
    alone = np.flatnonzero(labels < 0)
    if alone.size:
        # the rest link among themselves only (two atoms closer than the radius image as one)
        pairs = cKDTree(upos[alone]).query_pairs(merge_radius_A, output_type="ndarray")
        if len(pairs):
            graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                                      shape=(alone.size, alone.size))
            _, loose_labels = csgraph.connected_components(graph, directed=False)
        else:
            loose_labels = np.arange(alone.size)
        labels[alone] = n_columns + loose_labels
    return labels[inverse].astype(np.int64)


def _majority_species(labels: np.ndarray, group: np.ndarray, species: np.ndarray,
                      count: np.ndarray) -> np.ndarray:
    """Most frequent species of each column (ties: the heavier); one-atom columns directly."""
    dominant = np.empty(count.size, dtype=species.dtype)
    single = count[labels] == 1
    dominant[labels[single]] = species[group[single]]
    if not single.all():
        ns = species.size
        key, n = np.unique(labels[~single] * ns + group[~single], return_counts=True)
        col, sp = key // ns, key % ns
        order = np.lexsort((sp, n, col))  # per column: count, then Z, ascending
        col, sp = col[order], sp[order]
        last = np.append(col[1:] != col[:-1], True)
        dominant[col[last]] = species[sp[last]]
    return dominant


def render_columns(atoms_numbers, positions_A, profiles: AtomProfiles, shape: tuple[int, int],
                   pixel_size_A: float, *, merge_radius_A: float = 0.25,
                   margin_px: float = 0.0, column_direction=None) -> dict[str, np.ndarray]:
    """Per-column ground truth for the image rendered by ``render_atoms`` with the same inputs.

    Atoms are grouped into projected columns by single linkage of their (x, y) positions within
    ``merge_radius_A`` (a randomly oriented specimen gives mostly one-atom "columns"). Columns whose
    centre lies inside the field of view, enlarged by ``margin_px`` pixels, are returned.
    ``column_direction`` (x, y, z), the lattice direction that was put along the beam before the
    mistilt: atoms are then linked along that tilted line rather than straight down z, so that a
    mistilted column, which projects to a streak longer than ``merge_radius_A`` in a thick
    crystal, stays one column (its label is still the centroid of its projected streak).

    Returns
    -------
    dict of arrays, one row per column:
      ``position_px`` (N, 2) (y, x) pixel coordinates (intensity-weighted centroid; this is where
      the linear image of the column peaks for aligned columns);
      ``position_A`` (N, 2) (y, x) in A; ``species`` (N,) the majority Z (ties: heavier);
      ``atom_count`` (N,); ``integrated_intensity`` (N,) sum of int f_Z d^2r of its atoms in the
      units of ``render_atoms`` x A^2 (the probe is normalised, so convolution keeps it; to express
      it in final-image units multiply by ``ContrastResult.signal_gain`` from
      ``background.apply_contrast``, which is NaN when the contrast map was non-linear).
    """
    numbers = np.asarray(atoms_numbers).astype(np.int64).ravel()
    pos = _positions_yx(positions_A, numbers.size)
    h, w = int(shape[0]), int(shape[1])
    empty = {
        "position_px": np.zeros((0, 2)), "position_A": np.zeros((0, 2)),
        "species": np.zeros(0, dtype=np.int64), "atom_count": np.zeros(0, dtype=np.int64),
        "integrated_intensity": np.zeros(0),
    }
    if numbers.size == 0:
        return empty
    species, group = _species_groups(numbers)
    missing = sorted(set(species.tolist()) - set(profiles.species))
    if missing:
        raise InputError(f"render_columns: no profile for Z={missing}")
    intensity = np.array([profiles.integrated_intensity(z) for z in species.tolist()])[group]
    # only atoms that can belong to a column inside the (enlarged) field matter
    m = (margin_px + 1.0) * pixel_size_A + merge_radius_A
    inside = ((pos[:, 0] > -m) & (pos[:, 0] < (h - 1) * pixel_size_A + m)
              & (pos[:, 1] > -m) & (pos[:, 1] < (w - 1) * pixel_size_A + m))
    pos, group, intensity = pos[inside], group[inside], intensity[inside]
    if pos.shape[0] == 0:
        return empty
    link_xy = pos[:, ::-1]
    if column_direction is not None and positions_A is not None:
        d = np.asarray(column_direction, dtype=float)
        z = np.asarray(positions_A, dtype=float).reshape(numbers.size, -1)
        if z.shape[1] == 3 and abs(d[2]) > 0.5:
            z = z[inside, 2]
            # where each atom's column line crosses the mid-plane of the specimen
            link_xy = link_xy - np.outer(z - z.mean(), d[:2] / d[2])
    labels = group_columns(link_xy, merge_radius_A)
    nc = int(labels.max()) + 1
    total = np.bincount(labels, intensity, minlength=nc)
    count = np.bincount(labels, minlength=nc)
    cy = np.bincount(labels, intensity * pos[:, 0], minlength=nc) / total
    cx = np.bincount(labels, intensity * pos[:, 1], minlength=nc) / total
    dominant = _majority_species(labels, group, species, count)
    pos_a = np.column_stack([cy, cx])
    pos_px = pos_a / pixel_size_A
    lo = -0.5 - margin_px
    keep = ((pos_px[:, 0] >= lo) & (pos_px[:, 0] < h - 0.5 + margin_px)
            & (pos_px[:, 1] >= lo) & (pos_px[:, 1] < w - 0.5 + margin_px))
    order = np.lexsort((pos_px[keep, 1], pos_px[keep, 0]))
    return {
        "position_px": pos_px[keep][order],
        "position_A": pos_a[keep][order],
        "species": dominant[keep][order].astype(np.int64),
        "atom_count": count[keep][order].astype(np.int64),
        "integrated_intensity": total[keep][order],
    }
