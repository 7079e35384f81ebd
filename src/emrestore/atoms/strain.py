"""Strain and rotation maps: from column positions against a reference lattice, and by GPA.

Conventions (shared by both methods so that their maps can be compared directly)
-------------------------------------------------------------------------------
* Positions and vectors are ``(y, x)`` px, ``y`` = row index, pointing *down* the image.
* The tensor components are in the image's ``(x, y)`` frame: ``exx = ∂u_x/∂x``,
  ``eyy = ∂u_y/∂y``, ``exy = (∂u_x/∂y + ∂u_y/∂x) / 2`` (tensor shear, half the engineering shear).
* ``rotation`` is the lattice rotation in radians, positive = counter-clockwise *as displayed*
  (with ``y`` down); to first order ``(∂u_x/∂y − ∂u_y/∂x) / 2``.
* Both methods measure the local deformation gradient ``F = ∂r/∂R`` (deformed position ``r``
  against reference position ``R``) and split it exactly by the polar decomposition
  ``F = Rot(ω) · (I + ε)``: a pure rotation gives ε = 0 to machine precision, a pure strain gives
  ω = 0, and for small deformations ε and ω reduce to the linear definitions above.

Strain is always relative to a reference: with ``reference=None`` the reference is the lattice
fitted to the same positions (or, for GPA, the image's own Bragg spots), so a uniform strain of the
whole field reads as zero and only variations show. Give the unstrained lattice vectors (or a
region of unstrained columns / pixels) to measure absolute strain.

Geometric phase analysis follows Hÿtch, Snoeck & Kilaas, Ultramicroscopy 74, 131 (1998): a Gaussian
mask around a Bragg spot ``g``, inverse FFT ``H_g``, and the phase gradient computed without phase
unwrapping as ``∇ arg H_g = Im(H_g* ∇H_g) / |H_g|²`` with spectral derivatives.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.ndimage import map_coordinates
from scipy.spatial import cKDTree

from ..errors import InputError
from .lattice import (
    _as_basis,
    _as_positions,
    _as_vector,
    _check_pixel_size,
    _index_positions,
    _nn_distance,
    lattice_vectors,
)

__all__ = [
    "bragg_peaks",
    "deformation_to_strain",
    "fit_reference_lattice",
    "gpa",
    "gpa_strain",
    "reciprocal_vectors",
    "sample_map",
    "strain_from_positions",
    "strain_map",
]

_STRAIN_KEYS = ("exx", "eyy", "exy", "rotation")


# ------------------------------------------------------------------------------------------------
# tensor algebra
# ------------------------------------------------------------------------------------------------
def deformation_to_strain(F_xy) -> dict:
    """Strain and rotation from deformation gradients ``F = ∂r/∂R`` in the (x, y) frame.

    ``F_xy[..., i, j] = ∂r_i/∂R_j`` with ``i, j`` in (x, y), ``y`` down. Exact polar decomposition
    ``F = Rot(ω) U``; returns ``exx, eyy, exy`` of ``U − I`` and ``rotation`` ω (radians,
    counter-clockwise as displayed), each with the leading shape of ``F_xy``.
    """
    F = np.asarray(F_xy, dtype=float)
    f00, f01, f10, f11 = F[..., 0, 0], F[..., 0, 1], F[..., 1, 0], F[..., 1, 1]
    omega = np.arctan2(f01 - f10, f00 + f11)
    c, s = np.cos(omega), np.sin(omega)
    # Rot(ω) = [[c, s], [-s, c]] in (x, y-down); U = Rotᵀ F
    u00 = c * f00 - s * f10
    u01 = c * f01 - s * f11
    u10 = s * f00 + c * f10
    u11 = s * f01 + c * f11
    return {
        "exx": u00 - 1.0,
        "eyy": u11 - 1.0,
        "exy": 0.5 * (u01 + u10),
        "rotation": omega,
    }


def _yx_to_xy(m):
    """Swap a (…, 2, 2) matrix written in (y, x) components into (x, y) components."""
    return np.asarray(m)[..., ::-1, ::-1]


# ------------------------------------------------------------------------------------------------
# reference lattice from positions
# ------------------------------------------------------------------------------------------------
def _parse_reference(reference, n):
    """Return ('fit', None) | ('mask', mask) | ('vectors', basis)."""
    if reference is None:
        return "fit", None
    if isinstance(reference, Mapping):
        if "a_vec" not in reference or "b_vec" not in reference:
            raise InputError("a reference mapping needs the keys 'a_vec' and 'b_vec' (px)")
        return "vectors", _as_basis(reference["a_vec"], reference["b_vec"])
    arr = np.asarray(reference)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise InputError(
                f"a reference mask must be a boolean array with one entry per column ({n}), "
                f"got shape {arr.shape}"
            )
        if arr.sum() < 3:
            raise InputError(
                f"the reference mask selects {int(arr.sum())} columns; at least 3 needed"
            )
        return "mask", arr
    if (isinstance(reference, (tuple, list)) and len(reference) == 2) or arr.shape == (2, 2):
        return "vectors", _as_basis(reference[0], reference[1])
    raise InputError(
        "reference must be None, (a_vec, b_vec) in px, a mapping with 'a_vec' and 'b_vec', or a "
        f"boolean mask of reference columns; got {type(reference).__name__}"
    )


def _lstsq_lattice(pos, indices, site, n_sites):
    """Least squares ``r = o_site + n_a a + n_b b``; returns (basis with columns a, b; origins)."""
    onehot = np.zeros((len(pos), n_sites))
    onehot[np.arange(len(pos)), site] = 1.0
    design = np.column_stack([indices.astype(float), onehot])
    present = onehot.sum(axis=0) > 0
    design = design[:, np.concatenate([[True, True], present])]
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise InputError(
            "the columns do not span two lattice directions, so no reference lattice can be fitted"
        )
    coef, *_ = np.linalg.lstsq(design, pos, rcond=None)
    basis = coef[:2].T  # columns a, b as (dy, dx)
    origins = np.full((n_sites, 2), np.nan)
    origins[present] = coef[2:]
    return basis, origins


def fit_reference_lattice(
    positions_px, a_vec=None, b_vec=None, *, mask=None, tolerance: float = 0.25
) -> dict:
    """Fit a lattice ``r = origin_site + n_a a + n_b b`` to column positions by least squares.

    Integer indices come from a breadth-first walk over lattice translations (robust to slowly
    varying strain); the motif sites (sublattices that are not translations of each other) each
    get their own origin, so all columns contribute. ``a_vec``/``b_vec`` are the indexing basis
    (default :func:`lattice_vectors`); ``mask`` restricts the fit to some columns.

    Returns
    -------
    dict
        ``a_vec``, ``b_vec`` fitted (dy, dx) px; ``origins`` (S, 2) per site; ``tau`` (S, 2)
        fractional site offsets relative to site 0; ``indices`` (N, 2) int; ``sublattice`` (N,);
        ``on_lattice`` (N,) (False for sites holding under 2 % of the columns, left out of the
        fit); ``residual_rms_px`` of the fitted columns.
    """
    pos = _as_positions(positions_px)
    if a_vec is None or b_vec is None:
        a_vec, b_vec = lattice_vectors(pos)
    basis = _as_basis(a_vec, b_vec)
    tol_px = float(tolerance) * _nn_distance(pos)
    indices, site, _ = _index_positions(pos, basis, tol_px)
    n_sites = int(site.max()) + 1
    # columns of tiny sites are off-lattice (false detections, interstitials): not fitted
    on_lattice = np.bincount(site)[site] >= max(3, int(0.02 * len(pos)))
    sel = on_lattice.copy()
    if mask is not None:
        sel &= np.asarray(mask, dtype=bool)
    fit_basis, origins = _lstsq_lattice(pos[sel], indices[sel], site[sel], n_sites)
    missing = np.isnan(origins[:, 0])
    if missing.any():
        # sites absent from the fit: their origins with the fitted a and b
        off = pos - indices @ fit_basis.T
        for s_ in np.flatnonzero(missing):
            origins[s_] = off[site == s_].mean(axis=0)
    tau = np.linalg.solve(fit_basis, (origins - origins[0]).T).T
    model = origins[site] + indices @ fit_basis.T
    resid = pos - model
    return {
        "a_vec": fit_basis[:, 0].copy(),
        "b_vec": fit_basis[:, 1].copy(),
        "origins": origins,
        "tau": tau,
        "indices": indices,
        "sublattice": site,
        "on_lattice": on_lattice,
        "residual_rms_px": float(np.sqrt(np.mean(np.sum(resid[sel] ** 2, axis=1)))),
    }


def _local_deformation(pos, ref_pos, use, k):
    """Per-column least-squares ``F`` with ``r_j − r_i ≈ F (R_j − R_i)`` over a neighbourhood.

    The neighbourhood is every column whose *reference* vector is no longer than the ``k``-th
    nearest reference distance (median over columns), so whole shells are taken and the choice
    does not depend on the noisy measured positions (a k-nearest selection on measured positions
    prefers neighbours displaced towards the column and biases the strain towards compression).
    Returns (N, 2, 2) in (y, x) components, NaN for unused or singular columns.
    """
    n = len(pos)
    F = np.full((n, 2, 2), np.nan)
    idx = np.flatnonzero(use)
    m = idx.size
    if k < 2:
        raise InputError(f"n_neighbours must be at least 2, got {k}")
    if m < 3:
        return F
    p, r = pos[idx], ref_pos[idx]
    kq = min(m - 1, 4 * k + 4)
    _, nb = cKDTree(p).query(p, k=kq + 1)
    nb = nb[:, 1:]
    dR = r[nb] - r[:, None, :]
    dr = p[nb] - p[:, None, :]
    lenR = np.hypot(dR[..., 0], dR[..., 1])
    kth = np.sort(lenR, axis=1)[:, min(k, kq) - 1]
    cut = np.median(kth) * (1 + 1e-3)
    w = (lenR <= cut).astype(float)
    A = np.einsum("nk,nki,nkj->nij", w, dR, dR)
    C = np.einsum("nk,nki,nkj->nij", w, dr, dR)
    det = A[:, 0, 0] * A[:, 1, 1] - A[:, 0, 1] * A[:, 1, 0]
    ok = det > 1e-8 * np.einsum("nii->n", A) ** 2
    Fi = np.full((m, 2, 2), np.nan)
    Fi[ok] = C[ok] @ np.linalg.inv(A[ok])
    F[idx] = Fi
    return F


def strain_from_positions(
    positions_px,
    pixel_size_A=None,
    reference=None,
    *,
    n_neighbours: int = 8,
    tolerance: float = 0.25,
) -> dict:
    """Per-column strain and rotation from column positions.

    1. Index the columns on the lattice (cell indices and motif site, see
       :func:`fit_reference_lattice`) and fit the actual mean lattice by least squares.
    2. Build the reference positions ``R_i = B_ref (n_i + τ_site)`` (``τ`` the fractional site
       offsets, which a homogeneous deformation leaves unchanged).
    3. For every column, fit the deformation gradient ``F`` that maps the reference vectors to its
       ``n_neighbours`` nearest neighbours, ``r_j − r_i ≈ F (R_j − R_i)``, by least squares (exact
       for a uniform deformation; linear terms of a smooth field are recovered without bias for a
       symmetric neighbourhood), and split ``F`` into strain and rotation
       (:func:`deformation_to_strain`).

    Parameters
    ----------
    positions_px : (N, 2) array of (y, x) px
    pixel_size_A : Å per pixel (only the displacements and vectors in Å depend on it).
    reference :
        * ``None`` – the lattice fitted to these positions (mean strain ≈ 0, variations only);
        * ``(a_vec, b_vec)`` (or a 2×2 array with rows a, b, or a mapping with
          ``'a_vec'``/``'b_vec'``) – the unstrained lattice
          vectors in px, ``(dy, dx)``; e.g. the ``a_vec``/``b_vec`` of an earlier result on a
          reference area; any lattice translations may be given (for a perovskite, the Sr–Sr
          vectors even when all columns are included);
        * a boolean mask (N,) – the columns of an unstrained region.
    n_neighbours : size of the local neighbourhood: every column whose reference distance is at
        most the ``n_neighbours``-th nearest one (whole shells, chosen on the reference lattice so
        that position noise cannot bias the choice).
    tolerance : link tolerance of the indexing, as a fraction of the nearest-neighbour distance.

    Returns
    -------
    dict
        ``exx``, ``eyy``, ``exy``, ``rotation`` (N,) (dimensionless, radians; NaN where the local
        fit is singular); ``a_vec``, ``b_vec`` the reference lattice (dy, dx) px;
        ``a_vec_measured``, ``b_vec_measured`` the fitted lattice of all columns; ``global``: the
        same four quantities for the homogeneous deformation between the two;
        ``displacement_px`` (N, 2) (dy, dx) from the reference positions
        ``reference_positions_px`` (N, 2); ``indices`` (N, 2); ``sublattice`` (N,);
        ``valid`` (N,) bool (a local fit exists); ``on_lattice`` (N,) bool (False for columns on
        motif sites holding under 2 % of the columns: false detections or interstitials, which
        are left out of every neighbourhood); ``pixel_size_A``; and with a pixel size
        ``displacement_A``, ``a_vec_A``, ``b_vec_A``.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:12, 0:12] * 20.0
    >>> pos = np.column_stack([yy.ravel(), xx.ravel() * 1.01])     # 1 % stretched along x
    >>> s = strain_from_positions(pos, reference=((0, 20.0), (20.0, 0)))
    >>> round(float(np.mean(s["exx"])), 6), bool(np.allclose(s["eyy"], 0, atol=1e-9))
    (0.01, True)
    """
    pos = _as_positions(positions_px)
    px = _check_pixel_size(pixel_size_A)
    n = len(pos)
    mode, ref = _parse_reference(reference, n)

    # indexing basis: translations of the measured lattice (matched to the reference if given)
    try:
        a_m, b_m = lattice_vectors(pos)
        measured = np.column_stack([a_m, b_m])
    except InputError:
        if mode != "vectors":
            raise
        measured = ref
    if mode == "vectors":
        m = np.linalg.solve(measured, ref)
        m_int = np.round(m)
        if np.abs(m - m_int).max() > 0.3 or abs(np.linalg.det(m_int)) < 0.5:
            got = f"a_vec={np.round(ref[:, 0], 3).tolist()} b_vec={np.round(ref[:, 1], 3).tolist()}"
            lat = (
                f"a={np.round(measured[:, 0], 3).tolist()} b={np.round(measured[:, 1], 3).tolist()}"
            )
            raise InputError(
                f"the reference vectors {got} px are not lattice translations of these columns "
                f"(measured lattice {lat} px); check their order (dy, dx) and units (px)"
            )
        index_basis = measured @ m_int
    else:
        index_basis = measured

    fit = fit_reference_lattice(pos, index_basis[:, 0], index_basis[:, 1], tolerance=tolerance)
    actual = np.column_stack([fit["a_vec"], fit["b_vec"]])
    if mode == "vectors":
        ref_basis = ref
    elif mode == "mask":
        fit_ref = fit_reference_lattice(
            pos, index_basis[:, 0], index_basis[:, 1], mask=ref, tolerance=tolerance
        )
        ref_basis = np.column_stack([fit_ref["a_vec"], fit_ref["b_vec"]])
    else:
        ref_basis = actual
    indices, site, tau = fit["indices"], fit["sublattice"], fit["tau"]
    ref_pos = (indices + tau[site]) @ ref_basis.T  # (N, 2) (y, x), up to a translation
    on_lattice = fit["on_lattice"]
    ref_pos = ref_pos + np.mean((pos - ref_pos)[on_lattice], axis=0)
    F_yx = _local_deformation(pos, ref_pos, on_lattice, int(n_neighbours))
    valid = np.isfinite(F_yx[:, 0, 0])
    local = deformation_to_strain(_yx_to_xy(F_yx))
    glob = deformation_to_strain(_yx_to_xy(actual @ np.linalg.inv(ref_basis)))

    disp = pos - ref_pos
    out = {key: local[key] for key in _STRAIN_KEYS}
    out.update(
        a_vec=ref_basis[:, 0].copy(),
        b_vec=ref_basis[:, 1].copy(),
        a_vec_measured=actual[:, 0].copy(),
        b_vec_measured=actual[:, 1].copy(),
    )
    out["global"] = {key: float(glob[key]) for key in _STRAIN_KEYS}
    out.update(
        displacement_px=disp,
        reference_positions_px=ref_pos,
        indices=indices,
        sublattice=site,
        valid=valid,
        on_lattice=on_lattice,
        pixel_size_A=px,
    )
    if px is not None:
        out["displacement_A"] = disp * px
        out["a_vec_A"] = out["a_vec"] * px
        out["b_vec_A"] = out["b_vec"] * px
    return out


def strain_map(positions_px, strain: Mapping, shape, *, method: str = "linear") -> dict:
    """Interpolate per-column strain values onto the pixel grid of an image.

    ``strain`` is the result of :func:`strain_from_positions` (or any mapping holding per-column
    arrays ``exx``, ``eyy``, ``exy``, ``rotation``); ``shape`` is ``(H, W)``. ``method`` is
    ``"linear"`` (barycentric interpolation on the Delaunay triangulation of the columns; NaN
    outside their convex hull) or ``"nearest"`` (value of the nearest column everywhere).
    Returns a dict of ``(H, W)`` float arrays with the same four keys.
    """
    from scipy.spatial import Delaunay

    pos = _as_positions(positions_px)
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError) as exc:
        raise InputError(f"shape must be (H, W), got {shape!r}") from exc
    if h < 1 or w < 1:
        raise InputError(f"shape must be positive, got {shape!r}")
    if method not in ("linear", "nearest"):
        raise InputError(f"method must be 'linear' or 'nearest', got {method!r}")
    vals = {}
    for key in _STRAIN_KEYS:
        v = np.asarray(strain[key], dtype=float)
        if v.shape != (len(pos),):
            raise InputError(f"strain[{key!r}] must hold one value per column ({len(pos)})")
        vals[key] = v
    ok = np.all([np.isfinite(v) for v in vals.values()], axis=0)
    p = pos[ok]
    if len(p) < 3:
        raise InputError("fewer than 3 columns carry finite strain values")
    yy, xx = np.mgrid[0:h, 0:w]
    pts = np.column_stack([yy.ravel(), xx.ravel()]).astype(float)
    if method == "nearest":
        _, j = cKDTree(p).query(pts)
        return {key: v[ok][j].reshape(h, w) for key, v in vals.items()}
    tri = Delaunay(p)
    simplex = tri.find_simplex(pts)
    inside = simplex >= 0
    t = tri.transform[simplex[inside]]
    bary = np.einsum("nij,nj->ni", t[:, :2], pts[inside] - t[:, 2])
    weights = np.column_stack([bary, 1.0 - bary.sum(axis=1)])
    verts = tri.simplices[simplex[inside]]
    out = {}
    for key, v in vals.items():
        flat = np.full(h * w, np.nan)
        flat[inside] = np.einsum("ni,ni->n", weights, v[ok][verts])
        out[key] = flat.reshape(h, w)
    return out


def sample_map(values_2d, positions_px, *, order: int = 1) -> np.ndarray:
    """Values of a 2D map at (y, x) px positions (spline interpolation, NaN outside the map)."""
    m = np.asarray(values_2d, dtype=float)
    if m.ndim != 2:
        raise InputError(f"the map must be 2D, got shape {m.shape}")
    pos = np.asarray(positions_px, dtype=float).reshape(-1, 2)
    return map_coordinates(m, pos.T, order=order, mode="constant", cval=np.nan)


# ------------------------------------------------------------------------------------------------
# geometric phase analysis
# ------------------------------------------------------------------------------------------------
def reciprocal_vectors(a_vec, b_vec) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal lattice vectors ``g_a, g_b`` (cycles/px, (gy, gx)) with ``g_i · r_j = δ_ij``.

    Pass them to :func:`gpa` as the reference spots of an unstrained lattice with vectors
    ``a_vec``, ``b_vec`` (dy, dx) px.
    """
    basis = _as_basis(a_vec, b_vec)
    inv = np.linalg.inv(basis)
    return inv[0].copy(), inv[1].copy()


def _as_image(image) -> np.ndarray:
    try:
        img = np.asarray(image, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"image must be a 2D array of numbers: {exc}") from exc
    if img.ndim != 2:
        raise InputError(f"image must be 2D (H, W), got shape {img.shape}")
    if min(img.shape) < 16:
        raise InputError(f"image of shape {img.shape} is too small for GPA (need ≥ 16 px a side)")
    if not np.isfinite(img).all():
        raise InputError(
            f"image contains {int((~np.isfinite(img)).sum())} NaN or infinite pixels; "
            "fill them first"
        )
    return img


def bragg_peaks(
    image, n_peaks: int = 2, *, min_angle_deg: float = 20.0, exclude_radius: float | None = None
) -> list[np.ndarray]:
    """The strongest, mutually non-collinear Bragg spots of an image, in cycles/px (gy, gx).

    The mean-subtracted, Hann-windowed image's power spectrum is searched in one half-plane
    (Friedel pairs are redundant), outside ``exclude_radius`` (cycles/px; default 4 frequency bins)
    around the origin; each spot is at least ``min_angle_deg`` away in direction from the ones
    already taken, and is refined to sub-bin precision by a log-parabola through its neighbours.
    """
    img = _as_image(image)
    if np.ptp(img) == 0:
        raise InputError("the image is flat (all pixels equal): it has no Bragg spots")
    h, w = img.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    p = np.abs(np.fft.fft2((img - img.mean()) * win)) ** 2
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.fftfreq(w)[None, :]
    kr = np.hypot(ky, kx)
    r0 = 4.0 / min(h, w) if exclude_radius is None else float(exclude_radius)
    allowed = (kr > r0) & ((ky > 0) | ((ky == 0) & (kx > 0)))
    score = np.where(allowed, p, -np.inf)
    flat_order = np.argsort(score, axis=None)[::-1]
    sin_min = np.sin(np.deg2rad(min_angle_deg))
    peaks: list[np.ndarray] = []
    for flat in flat_order:
        if not np.isfinite(score.flat[flat]) or len(peaks) == n_peaks:
            break
        iy, ix = np.unravel_index(flat, p.shape)
        g = np.array([ky[iy, 0], kx[0, ix]])
        if any(
            abs(g[0] * q[1] - g[1] * q[0]) < sin_min * np.hypot(*g) * np.hypot(*q) for q in peaks
        ):
            continue
        # the spot must be a local maximum of the power spectrum
        nbh = p[np.ix_([(iy - 1) % h, iy, (iy + 1) % h], [(ix - 1) % w, ix, (ix + 1) % w])]
        if p[iy, ix] < nbh.max():
            continue
        lp = np.log(np.maximum(nbh, 1e-300))

        def _vertex(l0, l1, l2):
            den = l0 - 2 * l1 + l2
            return 0.0 if den >= 0 else float(np.clip(0.5 * (l0 - l2) / den, -0.5, 0.5))

        dy = _vertex(lp[0, 1], lp[1, 1], lp[2, 1])
        dx = _vertex(lp[1, 0], lp[1, 1], lp[1, 2])
        peaks.append(np.array([g[0] + dy / h, g[1] + dx / w]))
    if len(peaks) < n_peaks:
        raise InputError(
            f"found {len(peaks)} Bragg spot(s), {n_peaks} needed: the image shows no 2D lattice"
        )
    return peaks


def gpa(image, g1=None, g2=None, sigma_mask=None, *, reference_region=None) -> dict:
    """Geometric phase analysis: strain and rotation maps from two Bragg spots.

    Parameters
    ----------
    image : (H, W) array.
    g1, g2 : reference spots (gy, gx) in cycles/px, e.g. from :func:`reciprocal_vectors` of the
        unstrained lattice; default: the two strongest non-collinear spots
        (:func:`bragg_peaks`), so the strain is relative to the image's mean lattice.
    sigma_mask : standard deviation of the Gaussian masks in cycles/px; default
        ``0.2 · min(|g1|, |g2|)``. The maps are smoothed over ``≈ 1/(2π sigma_mask)`` px, and
        values within about three times that of the image edges are unreliable.
    reference_region : optional boolean (H, W) mask of an unstrained area; the reference spots are
        then replaced by the mean local spots over that area (strain there averages to zero).

    Returns
    -------
    dict
        ``exx``, ``eyy``, ``exy``, ``rotation`` (H, W) maps (conventions in the module docstring);
        ``g1``, ``g2`` the reference spots used; ``phase1``, ``phase2`` wrapped geometric phases;
        ``amplitude1``, ``amplitude2``; ``sigma_mask``; ``edge_px`` the unreliable border width.
    """
    img = _as_image(image)
    h, w = img.shape
    if g1 is None or g2 is None:
        found = bragg_peaks(img, 2)
        g1 = found[0] if g1 is None else g1
        g2 = found[1] if g2 is None else g2
    gs = [_as_vector(g1, "g1"), _as_vector(g2, "g2")]
    for name, g in zip(("g1", "g2"), gs):
        if np.abs(g).max() >= 0.5:
            raise InputError(f"{name}={g.tolist()} cycles/px lies beyond the Nyquist frequency 0.5")
    if abs(gs[0][0] * gs[1][1] - gs[0][1] * gs[1][0]) < 1e-3 * np.hypot(*gs[0]) * np.hypot(*gs[1]):
        raise InputError(f"g1={gs[0].tolist()} and g2={gs[1].tolist()} are collinear")
    gmin = min(np.hypot(*g) for g in gs)
    sigma = 0.2 * gmin if sigma_mask is None else float(sigma_mask)
    if not np.isfinite(sigma) or sigma <= 0:
        raise InputError(
            f"sigma_mask must be a positive frequency in cycles/px, got {sigma_mask!r}"
        )

    spec = np.fft.fft2(img - img.mean())
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.fftfreq(w)[None, :]
    yy, xx = np.mgrid[0:h, 0:w]
    grads, phases, amps = [], [], []
    for g in gs:
        mask = np.exp(-((ky - g[0]) ** 2 + (kx - g[1]) ** 2) / (2 * sigma**2))
        sm = spec * mask
        hg = np.fft.ifft2(sm)
        dhy = np.fft.ifft2(sm * (2j * np.pi * ky))
        dhx = np.fft.ifft2(sm * (2j * np.pi * kx))
        amp2 = np.maximum(np.abs(hg) ** 2, np.finfo(float).tiny)
        gx_ = np.imag(np.conj(hg) * dhx) / amp2  # ∂/∂x of arg H_g
        gy_ = np.imag(np.conj(hg) * dhy) / amp2
        grads.append(np.stack([gx_, gy_], axis=-1) / (2 * np.pi))  # (H, W, 2) (x, y), cycles/px
        phases.append(np.angle(hg * np.exp(-2j * np.pi * (g[0] * yy + g[1] * xx))))
        amps.append(np.sqrt(amp2))
    if reference_region is not None:
        region = np.asarray(reference_region, dtype=bool)
        if region.shape != img.shape:
            raise InputError(
                f"reference_region must have the image's shape {img.shape}, got {region.shape}"
            )
        if not region.any():
            raise InputError("reference_region selects no pixel")
        gs = [np.array([gr[region][:, 1].mean(), gr[region][:, 0].mean()]) for gr in grads]
    # ∇(g·R) = Jᵀ g with J = ∂R/∂r  ->  rows: [∇ arg H_1 ; ∇ arg H_2] / 2π = G J
    G = np.array([[gs[0][1], gs[0][0]], [gs[1][1], gs[1][0]]])  # rows (gx, gy)
    phi = np.stack(grads, axis=-2)  # (H, W, 2 spots, 2 derivatives (x, y))
    J = np.linalg.solve(G, phi)  # (H, W, 2, 2): ∂R_i/∂r_j in (x, y)
    F = np.linalg.inv(J)
    maps = deformation_to_strain(F)
    out = {key: maps[key] for key in _STRAIN_KEYS}
    out.update(
        g1=gs[0],
        g2=gs[1],
        phase1=phases[0],
        phase2=phases[1],
        amplitude1=amps[0],
        amplitude2=amps[1],
        sigma_mask=sigma,
        edge_px=int(np.ceil(3.0 / (2 * np.pi * sigma))),
    )
    return out


def gpa_strain(image, g1=None, g2=None, sigma_mask=None, *, reference_region=None) -> dict:
    """The four GPA maps ``exx``, ``eyy``, ``exy``, ``rotation`` only (see :func:`gpa`)."""
    res = gpa(image, g1, g2, sigma_mask, reference_region=reference_region)
    return {key: res[key] for key in _STRAIN_KEYS}
