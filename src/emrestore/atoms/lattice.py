"""Lattice geometry from column positions: neighbours, lattice vectors, distances, sublattices.

Every function here takes plain arrays: ``positions_px`` is an ``(N, 2)`` array of ``(y, x)`` pixel
coordinates (scikit-image order, ``y`` = row, pointing down the image) and vectors are ``(dy, dx)``
in px. Nothing here needs an image, so the functions work equally on fitted, simulated or
hand-picked positions.

The lattice distances follow the benchmarking protocol of Gambini et al. (2023), §3.3 and
appendix C: for every column, the distance to its neighbour along ``+a`` and along ``+b``; the
histograms of these distances, and the *strain error* ``std / mean`` of each, measure how precisely
the columns were located (for independent position noise ``σ`` per coordinate it is
``≈ √2 σ / |a|``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..errors import InputError

__all__ = [
    "Neighbours",
    "distance_histogram",
    "fractional_coordinates",
    "lattice_distances",
    "lattice_vectors",
    "neighbour_vectors",
    "split_sublattices",
    "strain_error",
]


# ------------------------------------------------------------------------------------------------
# input checks
# ------------------------------------------------------------------------------------------------
def _as_positions(positions_px, *, min_points: int = 3, name: str = "positions_px") -> np.ndarray:
    """Validate an ``(N, 2)`` array of finite ``(y, x)`` positions that do not all lie on a line."""
    try:
        pos = np.asarray(positions_px, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{name} must be an (N, 2) array of (y, x) pixel coordinates: {exc}"
        ) from exc
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise InputError(
            f"{name} must be an (N, 2) array of (y, x) pixel coordinates, got shape {pos.shape}"
        )
    n = pos.shape[0]
    if n < min_points:
        raise InputError(
            f"{name} holds {n} column position(s); at least {min_points} are needed to define a "
            "2D lattice"
        )
    bad = ~np.isfinite(pos).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise InputError(
            f"{name} contains NaN or infinite coordinates in {bad.sum()} row(s) "
            f"(first: row {rows[0]}); remove or refit those columns first"
        )
    centred = pos - pos.mean(axis=0)
    sv = np.linalg.svd(centred, compute_uv=False)
    if sv[0] == 0 or sv[-1] <= 1e-9 * sv[0]:
        raise InputError(
            f"the {n} positions in {name} are collinear (they all lie on one line): a 2D lattice "
            "cannot be defined from them"
        )
    return pos


def _as_vector(v, name: str) -> np.ndarray:
    vec = np.asarray(v, dtype=float).reshape(-1)
    if vec.shape != (2,) or not np.isfinite(vec).all():
        raise InputError(f"{name} must be a finite (dy, dx) vector in px, got {v!r}")
    if np.hypot(*vec) == 0:
        raise InputError(f"{name} has zero length")
    return vec


def _as_basis(a_vec, b_vec) -> np.ndarray:
    """Columns of the returned 2×2 matrix are a and b (each (dy, dx)); must be non-collinear."""
    a = _as_vector(a_vec, "a_vec")
    b = _as_vector(b_vec, "b_vec")
    cross = a[0] * b[1] - a[1] * b[0]
    if abs(cross) <= 1e-6 * np.hypot(*a) * np.hypot(*b):
        raise InputError(f"a_vec {a.tolist()} and b_vec {b.tolist()} are collinear")
    return np.column_stack([a, b])


def _check_pixel_size(pixel_size_A):
    if pixel_size_A is None:
        return None
    p = float(pixel_size_A)
    if not np.isfinite(p) or p <= 0:
        raise InputError(
            f"pixel_size_A must be a positive number of Å per pixel, got {pixel_size_A!r}"
        )
    return p


# ------------------------------------------------------------------------------------------------
# neighbours and lattice vectors
# ------------------------------------------------------------------------------------------------
class Neighbours(NamedTuple):
    """The ``k`` nearest neighbours of every column (self excluded), nearest first."""

    vectors: np.ndarray  # (N, k, 2) r_j - r_i as (dy, dx) px
    distances: np.ndarray  # (N, k) px
    indices: np.ndarray  # (N, k) index j of the neighbour


def neighbour_vectors(positions_px, k: int = 6) -> Neighbours:
    """Vectors from every column to its ``k`` nearest neighbours.

    Parameters
    ----------
    positions_px : (N, 2) array of (y, x) px
    k : number of neighbours per column (clipped to ``N - 1``).

    Returns
    -------
    Neighbours
        ``vectors`` (N, k, 2) as (dy, dx) px, ``distances`` (N, k) px and ``indices`` (N, k),
        sorted by increasing distance.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:5, 0:5] * 10.0
    >>> nb = neighbour_vectors(np.column_stack([yy.ravel(), xx.ravel()]), k=4)
    >>> float(nb.distances[12].max())
    10.0
    """
    pos = _as_positions(positions_px)
    k = int(k)
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    k = min(k, len(pos) - 1)
    dist, idx = cKDTree(pos).query(pos, k=k + 1)
    dist, idx = dist[:, 1:], idx[:, 1:]
    vec = pos[idx] - pos[:, None, :]
    return Neighbours(vec, dist, idx)


def _nn_distance(pos: np.ndarray) -> float:
    d, _ = cKDTree(pos).query(pos, k=2)
    d1 = d[:, 1]
    d1 = d1[d1 > 0]
    if d1.size == 0:
        raise InputError("all positions coincide: no lattice spacing can be measured")
    return float(np.median(d1))


def _vector_clusters(pos: np.ndarray, k: int, radius_frac: float = 0.25, max_columns: int = 3000):
    """Cluster the neighbour-vector cloud.

    Returns ``(centres (M, 2), fraction (M,))`` where ``fraction`` is the share of columns that have
    a neighbour within the cluster radius of ``r_i + centre``; a lattice translation has a fraction
    close to 1 (less the edge columns), a motif vector (a bond inside a honeycomb or a dumbbell)
    about 1/2 or less.
    """
    n = len(pos)
    if n > max_columns:  # deterministic subsample of the source columns: the statistics suffice
        src = np.linspace(0, n - 1, max_columns).round().astype(int)
    else:
        src = np.arange(n)
    k = min(k, n - 1)
    d0 = _nn_distance(pos)
    r = radius_frac * d0
    tree = cKDTree(pos)
    _, idx = tree.query(pos[src], k=k + 1)
    idx = idx[:, 1:]
    vec = (pos[idx] - pos[src][:, None, :]).reshape(-1, 2)
    owner = np.repeat(np.arange(len(src)), k)
    vtree = cKDTree(vec)
    density = vtree.query_ball_point(vec, r, return_length=True)
    min_support = max(2, int(0.1 * len(src)))
    order = np.argsort(-density, kind="stable")
    consumed = np.zeros(len(vec), dtype=bool)
    centres, fractions = [], []
    for i in order:
        if density[i] < min_support:
            break
        if consumed[i]:
            continue
        c = vec[i]
        for _ in range(5):  # mean shift with a flat kernel
            members = vtree.query_ball_point(c, r)
            c_new = vec[members].mean(axis=0)
            if np.hypot(*(c_new - c)) < 1e-6 * d0:
                c = c_new
                break
            c = c_new
        members = np.asarray(vtree.query_ball_point(c, r), dtype=int)
        consumed[np.asarray(vtree.query_ball_point(c, 2 * r), dtype=int)] = True
        consumed[i] = True
        if members.size == 0:
            continue
        if any(np.hypot(*(c - cc)) < r for cc in centres):
            continue
        centres.append(c)
        fractions.append(np.unique(owner[members]).size / len(src))
    if not centres:
        return np.zeros((0, 2)), np.zeros(0)
    return np.array(centres), np.array(fractions)


def _gauss_reduce(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange–Gauss reduction: the shortest basis of the lattice spanned by a and b."""
    a, b = a.copy(), b.copy()
    if a @ a > b @ b:
        a, b = b, a
    for _ in range(100):
        m = np.round((a @ b) / (a @ a))
        b = b - m * a
        if b @ b >= a @ a:
            break
        a, b = b, a
    return a, b


def _orient(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convention: ``a`` is the more horizontal vector, pointing to +x; ``b`` points down (+y)."""
    # vectors are (dy, dx)
    if abs(b[1]) / np.hypot(*b) > abs(a[1]) / np.hypot(*a) + 1e-9:
        a, b = b, a
    if a[1] < 0 or (a[1] == 0 and a[0] < 0):
        a = -a
    if b[0] < 0 or (b[0] == 0 and b[1] < 0):
        b = -b
    return a, b


def lattice_vectors(
    positions_px,
    *,
    k: int = 12,
    min_angle_deg: float = 20.0,
    translation_threshold: float = 0.7,
) -> tuple[np.ndarray, np.ndarray]:
    """The two shortest non-collinear lattice translations of a set of column positions.

    The neighbour vectors of every column (``k`` nearest) form a point cloud whose dense clusters
    are the frequent inter-column vectors. A cluster is a lattice *translation* when nearly every
    column has a neighbour at the end of it (at least ``translation_threshold`` times the best
    cluster's share); motif vectors (the bond inside a dumbbell or a honeycomb, the Sr→Ti vector
    of a perovskite whose sublattices are geometrically distinct) are reached from only part of the
    columns and are rejected. The shortest translation is ``a``; ``b`` is the shortest translation
    at least ``min_angle_deg`` away from ``a``'s direction; the pair is Gauss-reduced.

    Purely geometric: when two sublattices sit at the centring positions of each other (e.g. the
    Sr and Ti–O columns of SrTiO3 [001]) the result is the finer, centred lattice; split the
    sublattices by intensity first (:func:`split_sublattices`) to get the lattice of one species.

    Parameters
    ----------
    positions_px : (N, 2) array of (y, x) px
    k : neighbours per column used to build the vector cloud.
    min_angle_deg : the smallest angle accepted between ``a`` and ``b``.
    translation_threshold : see above.

    Returns
    -------
    a_vec, b_vec : (2,) arrays, (dy, dx) in px.
        Convention: ``a`` is the more horizontal of the two and points to +x, ``b`` points to +y
        (down the image).

    Raises
    ------
    InputError
        Fewer than 3 positions, NaNs, collinear points, or no two non-collinear translations.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:10, 0:12]
    >>> pos = np.column_stack([yy.ravel() * 15.0, xx.ravel() * 10.0])
    >>> a, b = lattice_vectors(pos)
    >>> np.round(a, 6).tolist(), np.round(b, 6).tolist()
    ([0.0, 10.0], [15.0, 0.0])
    """
    pos = _as_positions(positions_px)
    centres, frac = _vector_clusters(pos, k=int(k))
    if len(centres) < 2:
        raise InputError(
            f"could not find two lattice directions among {len(pos)} positions: the columns do not "
            "form a 2D lattice (too few columns, or too disordered)"
        )
    keep = frac >= translation_threshold * frac.max()
    cand = centres[keep]
    lengths = np.hypot(cand[:, 0], cand[:, 1])
    order = np.argsort(lengths, kind="stable")
    cand, lengths = cand[order], lengths[order]
    a = cand[0]
    sin_min = np.sin(np.deg2rad(min_angle_deg))
    b = None
    for v, length in zip(cand[1:], lengths[1:]):
        cross = abs(a[0] * v[1] - a[1] * v[0]) / (lengths[0] * length)
        if cross >= sin_min:
            b = v
            break
    if b is None:
        raise InputError(
            f"only one lattice direction was found among {len(pos)} positions (along "
            f"{np.round(a, 3).tolist()} px): a 2D lattice needs two non-collinear directions"
        )
    a, b = _gauss_reduce(a, b)
    return _orient(a, b)


def fractional_coordinates(positions_px, a_vec, b_vec, origin_px=None) -> np.ndarray:
    """Coordinates of the positions in the lattice basis: ``r = origin + f_a a + f_b b``.

    ``origin_px`` defaults to the first position. Returns an (N, 2) array ``(f_a, f_b)``.
    """
    pos = np.asarray(positions_px, dtype=float)
    basis = _as_basis(a_vec, b_vec)
    origin = pos[0] if origin_px is None else _as_vector(origin_px, "origin_px")
    return np.linalg.solve(basis, (pos - origin).T).T


# ------------------------------------------------------------------------------------------------
# distances a and b (Gambini et al. 2023, §3.3 / appendix C)
# ------------------------------------------------------------------------------------------------
def lattice_distances(
    positions_px, a_vec=None, b_vec=None, pixel_size_A=None, *, tolerance: float = 0.25
) -> dict:
    """Per-column distance to the neighbour along ``+a`` and along ``+b``.

    For every column ``i`` the neighbour closest to ``r_i + a`` is looked up; if it lies within
    ``tolerance · |a|`` of that point, the distance ``|r_j − r_i|`` is recorded, else NaN (edge
    columns, vacancies). Same for ``b``. ``a_vec``/``b_vec`` default to :func:`lattice_vectors`.

    Parameters
    ----------
    positions_px : (N, 2) array of (y, x) px
    a_vec, b_vec : (dy, dx) px, optional
    pixel_size_A : Å per pixel; when given the distances are in Å, else in px.
    tolerance : search radius as a fraction of the vector length.

    Returns
    -------
    dict
        ``a``, ``b``: (N,) distances (NaN where no neighbour); ``a_index``, ``b_index``: (N,) the
        neighbour's index or −1; ``a_vec``, ``b_vec`` used (px); ``unit``: ``"A"`` or ``"px"``.
    """
    pos = _as_positions(positions_px)
    px = _check_pixel_size(pixel_size_A)
    if a_vec is None or b_vec is None:
        a0, b0 = lattice_vectors(pos)
        a_vec = a0 if a_vec is None else a_vec
        b_vec = b0 if b_vec is None else b_vec
    basis = _as_basis(a_vec, b_vec)
    tol = float(tolerance)
    if not 0 < tol < 0.5:
        raise InputError(f"tolerance must lie in (0, 0.5) of the vector length, got {tolerance}")
    tree = cKDTree(pos)
    out = {"a_vec": basis[:, 0].copy(), "b_vec": basis[:, 1].copy(), "unit": "A" if px else "px"}
    for name, vec in (("a", basis[:, 0]), ("b", basis[:, 1])):
        d, j = tree.query(pos + vec, k=1, distance_upper_bound=tol * np.hypot(*vec))
        ok = np.isfinite(d)
        dist = np.full(len(pos), np.nan)
        jj = np.where(ok, j, -1)
        dist[ok] = np.hypot(*(pos[j[ok]] - pos[ok]).T)
        if px:
            dist *= px
        out[name] = dist
        out[f"{name}_index"] = jj
    return out


def strain_error(distances) -> float:
    """The strain error ``std / mean`` of a set of lattice distances (NaNs ignored).

    Gambini et al. (2023) use it as the precision of the column localisation: for independent
    position noise ``σ`` per coordinate it is about ``√2 σ / |a|``. The standard deviation uses
    ``ddof = 1``.
    """
    d = np.asarray(distances, dtype=float).ravel()
    d = d[np.isfinite(d)]
    if d.size < 2:
        raise InputError(f"strain_error needs at least 2 finite distances, got {d.size}")
    mean = d.mean()
    if mean <= 0:
        raise InputError(f"the mean distance must be positive, got {mean}")
    return float(d.std(ddof=1) / mean)


def distance_histogram(distances, bins="auto", range=None) -> dict:
    """Histogram and summary numbers of a set of lattice distances (NaNs ignored).

    Returns a dict with ``counts``, ``edges`` (from :func:`numpy.histogram`), ``mean``, ``std``
    (ddof = 1), ``strain_error`` and ``n``. Plotting belongs to the report.
    """
    d = np.asarray(distances, dtype=float).ravel()
    d = d[np.isfinite(d)]
    if d.size < 2:
        raise InputError(f"a distance histogram needs at least 2 finite distances, got {d.size}")
    counts, edges = np.histogram(d, bins=bins, range=range)
    return {
        "counts": counts,
        "edges": edges,
        "mean": float(d.mean()),
        "std": float(d.std(ddof=1)),
        "strain_error": strain_error(d),
        "n": int(d.size),
    }


# ------------------------------------------------------------------------------------------------
# sublattices
# ------------------------------------------------------------------------------------------------
def _same_site_components(pos: np.ndarray, basis: np.ndarray, tol_px: float):
    """Connected components of the graph linking columns that differ by a lattice translation.

    Two columns within ``1.1·max(|a|, |b|, |a±b|/…)`` of each other are linked when their separation
    is within ``tol_px`` of an integer combination of ``a`` and ``b``. Each component is a set of
    columns on one motif site. Returns ``(n_components, labels, pairs (M, 2), steps (M, 2))``
    where ``steps`` are the integer lattice steps of the linking pairs.
    """
    reach = 1.1 * max(np.hypot(*basis[:, 0]), np.hypot(*basis[:, 1]))
    pairs = cKDTree(pos).query_pairs(reach, output_type="ndarray")
    if len(pairs) == 0:
        labels = np.arange(len(pos))
        return len(pos), labels, np.zeros((0, 2), int), np.zeros((0, 2), int)
    dr = pos[pairs[:, 1]] - pos[pairs[:, 0]]
    f = np.linalg.solve(basis, dr.T).T
    steps = np.round(f)
    resid = (f - steps) @ basis.T
    ok = (np.hypot(resid[:, 0], resid[:, 1]) < tol_px) & np.any(steps != 0, axis=1)
    pairs, steps = pairs[ok], steps[ok].astype(int)
    n = len(pos)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    ncomp, labels = connected_components(graph, directed=False)
    return ncomp, labels, pairs, steps


def _index_positions(pos: np.ndarray, basis: np.ndarray, tol_px: float):
    """Integer cell indices and motif-site labels of every column.

    Columns linked by lattice translations (see :func:`_same_site_components`) are indexed by a
    breadth-first walk that adds the *local* integer step of every link, so slowly varying strain
    or rotation does not corrupt the indices far from the start. Components with the same
    fractional offset modulo the lattice are one motif site; their relative integer shift comes
    from the global fractional coordinates.

    Returns ``(indices (N, 2) int, site (N,) int, tau (S, 2))`` with ``tau`` the fractional offset
    of each site in [0, 1) (site labels ordered by decreasing number of columns) and
    ``pos ≈ origin + basis @ (indices + tau[site])``.
    """
    n = len(pos)
    ncomp, labels, pairs, steps = _same_site_components(pos, basis, tol_px)
    # adjacency lists with the integer step from i to j
    rel = np.zeros((n, 2), dtype=np.int64)
    if len(pairs):
        nbr: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
        for (i, j), (sa, sb) in zip(pairs.tolist(), steps.tolist()):
            nbr[i].append((j, sa, sb))
            nbr[j].append((i, -sa, -sb))
        seen = np.zeros(n, dtype=bool)
        for start in range(n):
            if seen[start]:
                continue
            seen[start] = True
            queue = [start]
            head = 0
            while head < len(queue):
                i = queue[head]
                head += 1
                ra, rb = rel[i]
                for j, sa, sb in nbr[i]:
                    if not seen[j]:
                        seen[j] = True
                        rel[j, 0] = ra + sa
                        rel[j, 1] = rb + sb
                        queue.append(j)
    origin = pos[np.argmin(np.hypot(*(pos - pos.mean(axis=0)).T))]
    f = np.linalg.solve(basis, (pos - origin).T).T
    delta = f - rel  # per column: component offset (integer shift + site offset)
    comp_sizes = np.bincount(labels, minlength=ncomp)
    comp_order = np.argsort(-comp_sizes, kind="stable")
    site_tau: list[np.ndarray] = []
    site_of_comp = np.empty(ncomp, dtype=int)
    shift_of_comp = np.zeros((ncomp, 2), dtype=np.int64)
    order_members = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(comp_sizes)])
    for c in comp_order:
        members = order_members[bounds[c] : bounds[c + 1]]
        d_c = np.median(delta[members], axis=0)
        for s, ts in enumerate(site_tau):
            d = (d_c - ts + 0.5) % 1.0 - 0.5
            if np.hypot(*(basis @ d)) < tol_px:
                site_of_comp[c] = s
                shift_of_comp[c] = np.round(d_c - ts).astype(np.int64)
                break
        else:
            t = d_c % 1.0
            site_of_comp[c] = len(site_tau)
            shift_of_comp[c] = np.round(d_c - t).astype(np.int64)
            site_tau.append(t)
    site = site_of_comp[labels]
    indices = rel + shift_of_comp[labels]
    counts = np.bincount(site, minlength=len(site_tau))
    order = np.argsort(-counts, kind="stable")
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))
    return indices, remap[site], np.array(site_tau)[order]


def _split_geometry(pos, n, a_vec, b_vec, tol_frac):
    if a_vec is None or b_vec is None:
        a_vec, b_vec = lattice_vectors(pos)
    basis = _as_basis(a_vec, b_vec)
    tol_px = tol_frac * _nn_distance(pos)
    _, site, tau = _index_positions(pos, basis, tol_px)
    if n is not None and len(tau) > n:
        # merge the smallest sites into the nearest of the n largest (periodic distance)
        main = tau[:n]
        for s in range(n, len(tau)):
            d = (main - tau[s] + 0.5) % 1.0 - 0.5
            dist = np.hypot(*(d @ basis.T).T)
            site[site == s] = int(np.argmin(dist))
    return site


def _split_intensity(intensities, n, max_n, seed):
    from .counting import fit_gaussian_mixture_1d, select_gaussian_mixture_1d

    x = np.asarray(intensities, dtype=float).ravel()
    if n is not None:
        fit = fit_gaussian_mixture_1d(x, int(n), shared_variance=False, seed=seed)
    else:
        fit = select_gaussian_mixture_1d(
            x, max_components=max_n, criterion="bic", shared_variance=False, seed=seed
        )
    # fit["means"] ascending; label 0 = brightest
    labels = fit["posterior"].argmax(axis=1)
    return (fit["n_components"] - 1 - labels).astype(int)


def split_sublattices(
    positions_px,
    intensities=None,
    n: int | None = None,
    *,
    method: str = "auto",
    max_n: int = 4,
    a_vec=None,
    b_vec=None,
    tolerance: float = 0.25,
    seed: int = 0,
) -> np.ndarray:
    """Label every column with its sublattice.

    Two ways, chosen by ``method``:

    ``"intensity"``
        A 1D Gaussian mixture (one mean and width per sublattice) over the column intensities
        (e.g. the SCS); the number of sublattices is ``n`` or, if ``None``, chosen by BIC among
        1..``max_n``. Labels are ordered by decreasing mean intensity (0 = brightest).
    ``"geometry"``
        Columns are on the same sublattice when they differ by a lattice translation
        (``a_vec``/``b_vec``, default :func:`lattice_vectors`) to within ``tolerance`` × the
        nearest-neighbour distance; the graph of such links is split into connected components and
        components with the same position modulo the lattice are merged. Robust to slowly
        varying strain. Labels are ordered by decreasing size (0 = most columns). With ``n``,
        the smaller extra sites are merged into the nearest of the ``n`` largest.
    ``"auto"``
        ``"intensity"`` if intensities are given, else ``"geometry"``.

    Returns
    -------
    labels : (N,) int array
    """
    pos = _as_positions(positions_px)
    if n is not None and int(n) < 1:
        raise InputError(f"n must be a positive number of sublattices, got {n}")
    if method == "auto":
        method = "intensity" if intensities is not None else "geometry"
    if method == "intensity":
        if intensities is None:
            raise InputError("method='intensity' needs the column intensities")
        x = np.asarray(intensities, dtype=float).ravel()
        if x.shape[0] != pos.shape[0]:
            raise InputError(
                f"got {x.shape[0]} intensities for {pos.shape[0]} positions; one per column needed"
            )
        return _split_intensity(x, n, max_n, seed)
    if method == "geometry":
        return _split_geometry(pos, n, a_vec, b_vec, tolerance)
    raise InputError(f"method must be 'auto', 'intensity' or 'geometry', got {method!r}")
