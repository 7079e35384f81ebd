"""Sub-pixel refinement of atomic columns: joint Gaussian model fit and centre of mass.

The model fit (``method="gaussian"``) describes the image as a sum of 2-D Gaussian columns on a
background,

    μ(p) = Σ_k A_k exp(-½ (p - c_k)ᵀ P_k (p - c_k)) + b(p),

sampled at pixel centres p, with P_k = I/σ_k² (circular) or a full 2×2 precision matrix
(elliptical), and b a constant or a plane. It is fitted by Poisson maximum likelihood (Fisher
scoring) when the data are counts and by least squares otherwise.

How it is fast. Columns closer than about 4σ are linked into groups (connected components of that
neighbour graph, at most ``max_group`` columns each); each group is fitted on its own patch of
pixels (every pixel within the window radius of one of its columns) with its own background.
The tails of all the other columns that reach into a patch are included in the model as a fixed
term, updated between rounds (block-Jacobi iterations), so the fit is joint across the image
while every group's Levenberg-Marquardt / Fisher-scoring iteration runs vectorised over all
groups of the same size at once. A width shared by all columns (``widths="same"``) is updated by
an exact Gauss-Newton step on the whole image (Schur complement over the groups).

Uncertainties. The covariance of each group's parameters is the inverse Fisher information of the
fitted model: Σ (∂μ/∂θ)(∂μ/∂θ)ᵀ/μ for Poisson data (the CRLB evaluated at the fitted
parameters), s² (JᵀJ)⁻¹ with s² the residual variance for least squares.

The centre of mass (``method="com"``) is an iterated, background-subtracted, Gaussian-weighted
centroid in a window re-centred on the current sub-pixel estimate: the weights move continuously
with the estimate, so it converges to the true centre of a symmetric column instead of snapping to
the pixel grid.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..io import check_image, check_pixel_size
from .detect import looks_like_counts

__all__ = [
    "ColumnTable",
    "looks_like_counts",
    "refine_columns",
    "render_columns",
]

_TWO_PI = 2.0 * np.pi


# --------------------------------------------------------------------------------------------
# result table
# --------------------------------------------------------------------------------------------
@dataclass
class ColumnTable:
    """Refined atomic columns: one entry per column, arrays of equal length.

    Positions are (y, x) in pixels with the origin at the centre of the first pixel. Quantities in
    Å (``y_A``, ``x_A``, ``scs_A2``, …) are NaN when the pixel size is unknown.

    Attributes
    ----------
    y_px, x_px : position in pixels.
    sigma_y_px, sigma_x_px : 1-σ uncertainty of the position (from the Fisher information).
    amplitude : peak height above the background (image units).
    width_px : Gaussian width σ (px); for elliptical columns the geometric mean √(major·minor).
    width_major_px, width_minor_px, width_angle_rad : elliptical widths (None when circular); the
        angle is that of the major axis, counter-clockwise from +x towards −y (image display).
    background : background under the column (image units).
    scs_px2 : scattering cross-section, the integrated intensity 2π A σ_major σ_minor, in image
        units × px² (counts when the image holds counts per pixel).
    scs_std_px2 : its 1-σ uncertainty (conditional on a shared width when ``widths="same"``).
    converged : False where the fit did not converge or left the window.
    group : index of the group of overlapping columns fitted together.
    """

    y_px: np.ndarray
    x_px: np.ndarray
    sigma_y_px: np.ndarray
    sigma_x_px: np.ndarray
    amplitude: np.ndarray
    width_px: np.ndarray
    background: np.ndarray
    scs_px2: np.ndarray
    scs_std_px2: np.ndarray
    converged: np.ndarray
    group: np.ndarray
    width_major_px: np.ndarray | None = None
    width_minor_px: np.ndarray | None = None
    width_angle_rad: np.ndarray | None = None
    pixel_size_A: float | None = None
    method: str = "gaussian"
    noise: str = "gaussian"
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y_px.size)

    # ---- derived quantities -----------------------------------------------------------------
    @property
    def positions_px(self) -> np.ndarray:
        """(N, 2) array of (y, x) in pixels."""
        return np.column_stack([self.y_px, self.x_px])

    def _scaled(self, values, power=1):
        if self.pixel_size_A is None:
            return np.full(np.shape(values), np.nan)
        return np.asarray(values) * self.pixel_size_A**power

    @property
    def y_A(self) -> np.ndarray:
        return self._scaled(self.y_px)

    @property
    def x_A(self) -> np.ndarray:
        return self._scaled(self.x_px)

    @property
    def sigma_y_A(self) -> np.ndarray:
        return self._scaled(self.sigma_y_px)

    @property
    def sigma_x_A(self) -> np.ndarray:
        return self._scaled(self.sigma_x_px)

    @property
    def width_A(self) -> np.ndarray:
        return self._scaled(self.width_px)

    @property
    def scs_A2(self) -> np.ndarray:
        """Integrated intensity in image units × Å² (NaN without a pixel size)."""
        return self._scaled(self.scs_px2, 2)

    @property
    def scs(self) -> np.ndarray:
        """SCS in image units × Å² when the pixel size is known, else × px²."""
        return self.scs_px2 if self.pixel_size_A is None else self.scs_A2

    def subset(self, mask) -> ColumnTable:
        """A new table holding only the columns selected by a boolean mask or index array."""
        kw = {}
        for name in self.__dataclass_fields__:
            val = getattr(self, name)
            if isinstance(val, np.ndarray) and val.shape[:1] == self.y_px.shape:
                kw[name] = val[mask]
            else:
                kw[name] = val
        return ColumnTable(**kw)

    # ---- export ------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, np.ndarray]:
        """Plain ``{column name: array}`` with explicit units, the same columns as the CSV."""
        out: dict[str, np.ndarray] = {
            "x_px": self.x_px,
            "y_px": self.y_px,
        }
        has_a = self.pixel_size_A is not None
        if has_a:
            out["x_A"] = self.x_A
            out["y_A"] = self.y_A
        out["sigma_x_px"] = self.sigma_x_px
        out["sigma_y_px"] = self.sigma_y_px
        if has_a:
            out["sigma_x_A"] = self.sigma_x_A
            out["sigma_y_A"] = self.sigma_y_A
        out["amplitude_counts"] = self.amplitude
        out["width_px"] = self.width_px
        if has_a:
            out["width_A"] = self.width_A
        if self.width_major_px is not None:
            out["width_major_px"] = self.width_major_px
            out["width_minor_px"] = self.width_minor_px
            out["width_angle_deg"] = np.degrees(self.width_angle_rad)
        out["background_counts"] = self.background
        out["scs_counts_px2"] = self.scs_px2
        out["scs_std_counts_px2"] = self.scs_std_px2
        if has_a:
            out["scs_counts_A2"] = self.scs_A2
            out["scs_std_counts_A2"] = self._scaled(self.scs_std_px2, 2)
        out["converged"] = self.converged.astype(int)
        out["group"] = self.group
        return out

    def to_csv(self, path, *, protect=()) -> None:
        """Write the table as CSV (atomically: temporary file, then rename).

        "counts" in a column name means the image's own units (counts per pixel for counting
        data); "_px"/"_A" give lengths in pixels or Å, "_px2"/"_A2" areas. Columns in Å are
        present only when the pixel size is known. ``protect``: paths never to overwrite.
        """
        from ..io import write_atomically

        data = self.as_dict()
        names = list(data)
        rows = np.column_stack([np.asarray(data[n], dtype=float) for n in names])
        int_cols = {"converged", "group"}

        def _write(tmp):
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(names)
                for row in rows:
                    w.writerow([
                        str(int(v)) if n in int_cols else f"{v:.8g}" for n, v in zip(names, row)
                    ])

        write_atomically(path, _write, protect=protect)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def render_columns(shape, positions_px, scs, width_px, background=0.0) -> np.ndarray:
    """Render circular Gaussian columns, sampled at pixel centres (the model that is fitted).

    Parameters
    ----------
    shape : (rows, cols)
    positions_px : (N, 2) array of (y, x)
    scs : float or (N,) array
        Integrated intensity of each column (image units × px²); peak height = scs / (2π σ²).
    width_px : float or (N,) array
        Gaussian σ in pixels.
    background : float or (rows, cols) array

    Returns
    -------
    (rows, cols) float64 array
    """
    pos = np.atleast_2d(np.asarray(positions_px, float))
    n = pos.shape[0]
    scs = np.broadcast_to(np.asarray(scs, float), (n,))
    sig = np.broadcast_to(np.asarray(width_px, float), (n,))
    out = np.zeros(shape, float) + background
    if n == 0:
        return out
    r = int(np.ceil(6.0 * sig.max())) + 1
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    cy = np.floor(pos[:, 0]).astype(int)
    cx = np.floor(pos[:, 1]).astype(int)
    py = cy[:, None] + oy.ravel()[None, :]
    px = cx[:, None] + ox.ravel()[None, :]
    inside = (py >= 0) & (py < shape[0]) & (px >= 0) & (px < shape[1])
    dy = py - pos[:, :1]
    dx = px - pos[:, 1:]
    amp = scs / (_TWO_PI * sig**2)
    val = amp[:, None] * np.exp(-0.5 * (dy * dy + dx * dx) / sig[:, None] ** 2)
    flat = (py * shape[1] + px)[inside]
    out += np.bincount(flat, val[inside], minlength=shape[0] * shape[1]).reshape(shape)
    return out


def _patch_percentile(img, iy, ix, r, q):
    """q-th percentile of the (2r+1)² pixels around each (iy, ix), clipped at the edges."""
    h, w = img.shape
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    out = np.empty(len(iy))
    chunk = max(1, 2_000_000 // oy.size)
    for s in range(0, len(iy), chunk):
        py = np.clip(iy[s : s + chunk, None] + oy.ravel()[None], 0, h - 1)
        px = np.clip(ix[s : s + chunk, None] + ox.ravel()[None], 0, w - 1)
        out[s : s + chunk] = np.percentile(img[py, px], q, axis=1)
    return out


def _nearest_neighbour_distance(points):
    from scipy.spatial import cKDTree

    if len(points) < 2:
        return np.full(len(points), np.inf)
    d, _ = cKDTree(points).query(points, k=2)
    return d[:, 1]


def _group_columns(points, link_px, max_group):
    """Connected components of the 'closer than link_px' graph, split to at most max_group."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(points)
    if n == 1:
        return [np.array([0])]
    pairs = cKDTree(points).query_pairs(link_px, output_type="ndarray")
    if len(pairs):
        adj = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        _, labels = connected_components(adj, directed=False)
    else:
        labels = np.arange(n)
    order = np.argsort(labels, kind="stable")
    splits = np.flatnonzero(np.diff(labels[order])) + 1
    groups = []
    stack = list(np.split(order, splits))
    while stack:
        g = stack.pop()
        if len(g) <= max_group:
            groups.append(np.sort(g))
            continue
        # bisect along the principal axis at the median
        p = points[g] - points[g].mean(0)
        _, _, vt = np.linalg.svd(p, full_matrices=False)
        proj = p @ vt[0]
        cut = np.argsort(proj)
        half = len(g) // 2
        stack += [g[cut[:half]], g[cut[half:]]]
    return groups


def _estimate_width(image, points, sigma_guess):
    """Width σ (px) from a Gaussian fit to the average of the candidates' neighbourhoods."""
    h, w = image.shape
    nn = _nearest_neighbour_distance(points)
    nn_med = float(np.median(nn)) if np.isfinite(nn).any() else 8.0 * sigma_guess
    r = int(np.clip(np.ceil(max(2.5 * sigma_guess, 0.5 * nn_med)), 3, 40))
    r = min(r, (min(h, w) - 1) // 2)
    if r < 2:
        return sigma_guess
    iy = np.rint(points[:, 0]).astype(int)
    ix = np.rint(points[:, 1]).astype(int)
    ok = (iy >= r) & (iy < h - r) & (ix >= r) & (ix < w - r)
    if not ok.any():
        return sigma_guess
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    patches = image[iy[ok, None, None] + oy[None], ix[ok, None, None] + ox[None]]
    avg = patches.mean(0).astype(np.float64)
    # least-squares fit of one Gaussian + constant, with rounding offsets averaged in
    yy, xx = oy.astype(float).ravel(), ox.astype(float).ravel()
    d = avg.ravel()
    bg = np.percentile(d, 5)
    amp = max(d[yy.size // 2] - bg, 1e-12)
    s = sigma_guess
    cy = cx = 0.0
    theta = np.array([cy, cx, amp, s, bg])
    lam = 1e-3

    def resid(t):
        g = np.exp(-0.5 * ((yy - t[0]) ** 2 + (xx - t[1]) ** 2) / t[3] ** 2)
        return d - (t[2] * g + t[4]), g

    res, g = resid(theta)
    cost = res @ res
    for _ in range(100):
        dy, dx = yy - theta[0], xx - theta[1]
        s2 = theta[3] ** 2
        jac = np.stack([theta[2] * g * dy / s2, theta[2] * g * dx / s2, g,
                        theta[2] * g * (dy * dy + dx * dx) / theta[3] ** 3, np.ones_like(g)], 1)
        hmat = jac.T @ jac
        step = np.linalg.solve(hmat + lam * np.diag(np.diag(hmat) + 1e-12), jac.T @ res)
        trial = theta + step
        if trial[3] <= 0.2 or trial[3] > r:
            lam *= 10
            continue
        res_t, g_t = resid(trial)
        c_t = res_t @ res_t
        if c_t < cost:
            done = cost - c_t < 1e-12 * cost
            theta, res, g, cost = trial, res_t, g_t, c_t
            lam = max(lam / 3, 1e-9)
            if done:
                break
        else:
            lam *= 4
            if lam > 1e10:
                break
    s = float(abs(theta[3]))
    if not np.isfinite(s) or s <= 0.2:
        return sigma_guess
    # rounding candidates to pixels blurs the average by 1/12 px² per axis
    return float(np.sqrt(max(s * s - 1.0 / 12.0, 0.04)))


# --------------------------------------------------------------------------------------------
# batched model
# --------------------------------------------------------------------------------------------
class _Spec:
    """Parameter layout of a bucket of groups with K columns each."""

    def __init__(self, k, elliptical, width_local, nbg):
        self.k = k
        self.elliptical = elliptical
        self.nw = 3 if elliptical else 1  # width parameters per column (or shared)
        self.width_local = width_local
        self.npc = 3 + (self.nw if width_local else 0)  # per-column parameters
        self.nbg = nbg
        self.p = k * self.npc + nbg


def _precision(wpar, elliptical):
    """(a, b, c) of the precision matrix from width parameters (..., nw)."""
    if not elliptical:
        p = np.exp(2.0 * wpar[..., 0])
        return p, np.zeros_like(p), p
    l11 = np.exp(wpar[..., 0])
    v = wpar[..., 1]
    l22 = np.exp(wpar[..., 2])
    return l11 * l11, l11 * v, v * v + l22 * l22


def _split(theta, spec, wglob):
    g = theta.shape[0]
    cols = theta[:, : spec.k * spec.npc].reshape(g, spec.k, spec.npc)
    if spec.width_local:
        wpar = cols[..., 3:]
    else:
        wpar = np.broadcast_to(wglob, (g, spec.k, spec.nw))
    return cols[..., 0], cols[..., 1], cols[..., 2], wpar, theta[:, spec.k * spec.npc :]


def _width_derivs(ag, dy, dx, a, b, c, elliptical):
    """Derivatives of A·g with respect to the width parameters (list of arrays like ``ag``).

    Circular: u = -ln σ (precision p = e^{2u}). Elliptical: the precision matrix is L Lᵀ with
    L = [[e^{u1}, 0], [v, e^{u2}]].
    """
    if not elliptical:
        return [-ag * a * (dy * dy + dx * dx)]
    l11 = np.sqrt(a)
    v = b / l11
    l22sq = c - (b * b) / a
    dga = -0.5 * dy * dy * ag
    dgb = -dy * dx * ag
    dgc = -0.5 * dx * dx * ag
    return [dga * 2 * a + dgb * b, dgb * l11 + dgc * 2 * v, dgc * 2 * l22sq]


def _model(theta, spec, wglob, pts, jac=False, jac_global=False):
    """Model values (G, M), and optionally the Jacobians (G, M, P) and (G, M, nw)."""
    py, px, ty, tx, fixed = pts["py"], pts["px"], pts["ty"], pts["tx"], pts["fixed"]
    y, x, amp, wpar, bg = _split(theta, spec, wglob)
    a, b, c = _precision(wpar, spec.elliptical)
    dy = py[:, None, :] - y[..., None]
    dx = px[:, None, :] - x[..., None]
    a_, b_, c_ = a[..., None], b[..., None], c[..., None]
    q = a_ * dy * dy + 2.0 * b_ * dy * dx + c_ * dx * dx
    gauss = np.exp(-0.5 * q)
    ag = amp[..., None] * gauss
    mu = ag.sum(1) + fixed
    if spec.nbg >= 1:
        mu = mu + bg[:, :1]
    if spec.nbg == 3:
        mu = mu + bg[:, 1:2] * ty + bg[:, 2:3] * tx
    if not (jac or jac_global):
        return mu, None, None
    wcols = _width_derivs(ag, dy, dx, a_, b_, c_, spec.elliptical)
    jl = None
    if jac:
        g, m = mu.shape
        per = [ag * (a_ * dy + b_ * dx), ag * (b_ * dy + c_ * dx), gauss]
        if spec.width_local:
            per += wcols
        # (G, K, npc, M) -> (G, M, K*npc)
        jcols = np.stack(per, axis=2).reshape(g, spec.k * spec.npc, m)
        bgcols = [np.ones_like(mu)] if spec.nbg >= 1 else []
        if spec.nbg == 3:
            bgcols += [np.broadcast_to(ty, mu.shape), np.broadcast_to(tx, mu.shape)]
        if bgcols:
            jcols = np.concatenate([jcols, np.stack(bgcols, axis=1)], axis=1)
        jl = jcols.transpose(0, 2, 1)
    jg = None
    if jac_global:
        jg = np.stack([wc.sum(1) for wc in wcols], axis=-1)
        if "fixed_dw" in pts:  # the other columns' tails change with the shared width too
            jg = jg + pts["fixed_dw"]
    return mu, jl, jg


def _wgram(ja, w, jb):
    """Batched weighted Gram matrices Σ_m ja[g,m,p] w[g,m] jb[g,m,q] -> (G, P, Q)."""
    return np.matmul((ja * w[..., None]).transpose(0, 2, 1), jb)


def _objective(mu, data, mask, poisson):
    if poisson:
        bad = (mu <= 0) & mask
        with np.errstate(divide="ignore", invalid="ignore"):
            val = np.where(mask, mu - data * np.log(np.where(mu > 0, mu, 1.0)), 0.0).sum(1)
        val[bad.any(1)] = np.inf
        return val
    r = np.where(mask, data - mu, 0.0)
    return (r * r).sum(1)


def _weights(mu, data, mask, poisson):
    if poisson:
        mu_safe = np.where(mu > 0, mu, 1e-300)
        w = np.where(mask, 1.0 / mu_safe, 0.0)
        r = np.where(mask, (data - mu) / mu_safe, 0.0)
    else:
        w = mask.astype(float)
        r = np.where(mask, data - mu, 0.0)
    return w, r


def _valid(theta, spec, wglob, start, max_shift, wmin, wmax):
    y, x, amp, wpar, _ = _split(theta, spec, wglob)
    ok = np.all(np.isfinite(theta), axis=1)
    shift2 = (y - start[..., 0]) ** 2 + (x - start[..., 1]) ** 2
    ok &= np.all(shift2 <= max_shift**2, axis=1)
    ok &= np.all(amp > 0, axis=1)
    if spec.width_local:
        a, b, c = _precision(wpar, spec.elliptical)
        lo, hi = 1.0 / wmax**2, 1.0 / wmin**2
        det = a * c - b * b
        ok &= np.all((a >= lo) & (c >= lo) & (a <= hi) & (c <= hi) & (det > 0), axis=(1,))
    return ok


def _freeze(hmat, grad, which, idx):
    """Hold parameter ``idx`` fixed in the groups ``which`` (in place): unit row, zero gradient."""
    if not np.any(which):
        return
    hmat[which, idx, :] = 0.0
    hmat[which, :, idx] = 0.0
    hmat[which, idx, idx] = 1.0
    grad[which, idx] = 0.0


def _lm(*args, **kwargs):
    """Vectorised Levenberg-Marquardt / Fisher scoring (see :func:`_lm_steps`).

    Trial steps that overflow (e.g. a width parameter thrown far out) are simply rejected, so
    floating-point warnings are silenced inside.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        return _lm_steps(*args, **kwargs)


def _lm_steps(theta, spec, wglob, pts, data, mask, poisson, start, max_shift, wmin, wmax,
              max_iter=60, tol=1e-6, bg_floor=None, lam0=None):
    """Vectorised Levenberg-Marquardt / Fisher scoring on all groups of one bucket.

    ``bg_floor``: lower bound for a constant background (Poisson data, where μ must stay > 0):
    steps are projected onto it and a background resting on it is held fixed (active set).
    """
    g = theta.shape[0]
    ib = spec.k * spec.npc
    theta = theta.copy()
    lam = np.full(g, 1e-3) if lam0 is None else np.clip(lam0, 1e-7, 1e-2)
    done = np.zeros(g, bool)
    conv = np.zeros(g, bool)
    npix = mask.sum(1)
    ref = np.where(mask, data * data, 0.0).sum(1) + 1e-300
    mu, _, _ = _model(theta, spec, wglob, pts)
    f = _objective(mu, data, mask, poisson)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        act = np.flatnonzero(~done)
        if act.size == 0:
            break
        if act.size == g:
            sub, dat, msk = pts, data, mask
        else:
            sub = {k: v[act] for k, v in pts.items()}
            dat, msk = data[act], mask[act]
        th = theta[act]
        mu_a, jl, _ = _model(th, spec, wglob, sub, jac=True)
        w, r = _weights(mu_a, dat, msk, poisson)
        hmat = _wgram(jl, w, jl)
        grad = np.matmul(r[:, None, :], jl)[:, 0, :]
        if bg_floor is not None:
            # active set: a background at its floor that wants to go lower is held fixed
            _freeze(hmat, grad, (th[:, ib] <= bg_floor * (1 + 1e-9)) & (grad[:, ib] < 0), ib)
        diag = np.einsum("gpp->gp", hmat)
        diag = np.maximum(diag, 1e-12 * diag.max(1, keepdims=True) + 1e-300)
        # Newton decrement: the expected objective decrease of a full step
        try:
            step0 = np.linalg.solve(hmat + 1e-12 * diag[..., None] * np.eye(spec.p),
                                    grad[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step0 = np.zeros_like(grad)
        dec = np.einsum("gp,gp->g", grad, step0)
        if poisson:
            scale = np.ones(act.size)
        else:
            dof = np.maximum(npix[act] - spec.p, 1)
            scale = np.maximum(f[act] / dof, 1e-30)
        small = np.abs(dec) / scale < tol
        if not poisson:
            small |= f[act] <= 1e-24 * ref[act]  # exact fit (noise-free data)
        amat = hmat + (lam[act][:, None] * diag)[..., None] * np.eye(spec.p)
        try:
            step = np.linalg.solve(amat, grad[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.zeros_like(grad)
            for i in range(act.size):
                try:
                    step[i] = np.linalg.lstsq(amat[i], grad[i], rcond=None)[0]
                except np.linalg.LinAlgError:
                    pass
        trial = th + step
        if bg_floor is not None:
            trial[:, ib] = np.maximum(trial[:, ib], bg_floor)
        ok = _valid(trial, spec, wglob, start[act], max_shift, wmin, wmax)
        mu_t, _, _ = _model(trial, spec, wglob, sub)
        f_t = _objective(mu_t, dat, msk, poisson)
        f_t[~ok] = np.inf
        better = f_t < f[act]
        acc = act[better]
        theta[acc] = trial[better]
        f[acc] = f_t[better]
        lam[acc] = np.maximum(lam[acc] / 4.0, 1e-7)
        rej = act[~better]
        lam[rej] = lam[rej] * 5.0
        stalled = lam[act] > 1e7
        done[act[small | stalled]] = True
        # stalled at round-off level with a negligible expected decrease: a minimum as well
        conv[act[small | (stalled & (np.abs(dec) / scale < 1e-4))]] = True
    return theta, f, conv, lam


def _fisher(theta, spec, wglob, pts, data, mask, poisson, f, bg_floor=None):
    """Covariance of the local parameters (G, P, P) at the fitted values."""
    mu, jl, _ = _model(theta, spec, wglob, pts, jac=True)
    w, _ = _weights(mu, data, mask, poisson)
    hmat = _wgram(jl, w, jl)
    if bg_floor is not None:
        ib = spec.k * spec.npc
        # a background on its bound is not estimated (it is known to be ≈ 0)
        _freeze(hmat, np.zeros(hmat.shape[:2]), theta[:, ib] <= bg_floor * (1 + 1e-6), ib)
    cov = np.full_like(hmat, np.nan)
    for i in range(hmat.shape[0]):
        try:
            cov[i] = np.linalg.inv(hmat[i])
        except np.linalg.LinAlgError:
            pass
    if not poisson:
        dof = np.maximum(mask.sum(1) - spec.p, 1)
        cov *= (f / dof)[:, None, None]
    return cov, mu


# --------------------------------------------------------------------------------------------
# main entry
# --------------------------------------------------------------------------------------------
def _check_candidates(candidates, shape):
    cand = np.asarray(candidates, dtype=float)
    if cand.size == 0:
        raise InputError(
            "no candidate columns to refine: none were found in the image "
            "(check the image contrast, or lower the detection threshold)"
        )
    if cand.ndim != 2 or cand.shape[1] != 2:
        raise InputError(f"candidates must be an (N, 2) array of (y, x), got shape {cand.shape}")
    if not np.all(np.isfinite(cand)):
        raise InputError("candidates contain NaN or infinite coordinates")
    h, w = shape
    outside = (cand[:, 0] < -0.5) | (cand[:, 0] > h - 0.5) | (cand[:, 1] < -0.5) | (
        cand[:, 1] > w - 0.5
    )
    if outside.any():
        raise InputError(
            f"{int(outside.sum())} candidate(s) lie outside the image of shape {shape} "
            "(coordinates are (y, x) in pixels)"
        )
    return cand


def _resolve_noise(noise, image):
    if noise not in ("auto", "poisson", "gaussian"):
        raise InputError(f"noise must be 'auto', 'poisson' or 'gaussian', got {noise!r}")
    if noise == "auto":
        return "poisson" if looks_like_counts(image) else "gaussian"
    if noise == "poisson" and image.min() < 0:
        raise InputError("noise='poisson' needs non-negative counts; the image has negative values")
    return noise


def refine_columns(
    image,
    candidates,
    *,
    method: str = "gaussian",
    widths: str = "same",
    elliptical: bool = False,
    noise: str = "auto",
    pixel_size_A: float | None = None,
    window_px: float | None = None,
    background: str = "constant",
    width_px: float | None = None,
    max_group: int = 8,
    max_rounds: int = 8,
    max_iter: int = 60,
    tol_px: float = 1e-3,
    split_merged: bool = True,
) -> ColumnTable:
    """Refine atomic-column positions to sub-pixel precision, with uncertainties.

    Parameters
    ----------
    image : (rows, cols) array
        The image, in its own units (counts per pixel for counting data).
    candidates : (N, 2) array
        Starting positions (y, x) in pixels, e.g. from :func:`find_candidates`.
    method : "gaussian" or "com"
        Joint Gaussian model fit (default) or iterated weighted centre of mass.
    widths : "same" or "different"
        One Gaussian width for all columns, or one per column. Per-column widths are poorly
        determined at low dose (below a few hundred counts per column their SCS scatter and bias
        grow quickly): prefer "same" there, as StatSTEM does.
    elliptical : bool
        Elliptical Gaussians (σ_major, σ_minor, angle) instead of circular ones.
    noise : "auto", "poisson" or "gaussian"
        Poisson maximum likelihood (counts) or least squares. ``"auto"`` uses Poisson only if the
        image looks like raw counts (:func:`looks_like_counts`) and the fitted residuals confirm it
        (Pearson dispersion between 0.5 and 2); analog data with a detector offset get least
        squares.
    pixel_size_A : float, optional
        Å per pixel, for the quantities in Å.
    window_px : float, optional
        Fitting-window radius around each column; default 3σ + 1 px.
    background : "constant", "plane" or float
        Local background of each group of columns (fitted), or a known constant background in
        image units (e.g. ``0.0`` for a counting detector with no dark counts; this avoids the
        bias of a fitted background that must stay ≥ 0 when the true one is 0).
    width_px : float, optional
        Starting column width σ; estimated from the image when omitted.
    max_group : int
        Largest number of overlapping columns fitted together.
    max_rounds, max_iter : int
        Outer (neighbour-update) rounds and inner iterations per round.
    tol_px : float
        Stop the outer rounds when no column moves more than this (px) in a round.
    split_merged : bool
        Test every isolated column that looks elongated for being two unresolved columns (e.g. a
        dumbbell found as one candidate): one and two Gaussians are fitted to the same pixels and
        the pair is kept when the Bayesian information criterion prefers it; the whole image is
        then refitted. The table can therefore hold more columns than there were candidates
        (``info["n_split"]`` says how many were split). Independently of this option, two
        columns that converge to within 1 width of each other are merged into the stronger one
        (``info["n_merged"]``), and a column whose SCS is below 3 times its own uncertainty is
        removed as a false candidate (``info["n_dropped"]``).

    Returns
    -------
    ColumnTable

    Raises
    ------
    InputError
        No candidates, invalid arguments, NaN/Inf in the image, pixel size ≤ 0, or an image smaller
        than one column window.
    """
    img = check_image(image).astype(np.float64)
    pixel_size_A = check_pixel_size(pixel_size_A)
    cand = _check_candidates(candidates, img.shape)
    if method not in ("gaussian", "com"):
        raise InputError(f"method must be 'gaussian' or 'com', got {method!r}")
    if widths not in ("same", "different"):
        raise InputError(f"widths must be 'same' or 'different', got {widths!r}")
    if isinstance(background, str):
        if background not in ("constant", "plane"):
            raise InputError(
                f"background must be 'constant', 'plane' or a number, got {background!r}")
    else:
        try:
            background = float(background)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"background must be 'constant', 'plane' or a number, got {background!r}"
            ) from exc
        if not np.isfinite(background):
            raise InputError("a fixed background must be a finite number")
    if window_px is not None and not (float(window_px) >= 1.0):
        raise InputError(f"window_px must be at least 1 px, got {window_px!r}")
    if width_px is not None and not (float(width_px) > 0):
        raise InputError(f"width_px must be > 0, got {width_px!r}")

    if width_px is None:
        # a rough start from the column spacing, refined by a fit to the average column
        nn = _nearest_neighbour_distance(cand)
        if np.isfinite(nn).any():
            guess = float(np.clip(np.median(nn) / 6.0, 0.7, min(img.shape) / 8.0))
        else:
            from .detect import estimate_column_sigma

            guess = estimate_column_sigma(img)
        sigma0 = _estimate_width(img, cand, guess)
    else:
        sigma0 = float(width_px)
    radius = float(window_px) if window_px is not None else 3.0 * sigma0 + 1.0
    side = int(2 * np.ceil(radius) + 1)
    if min(img.shape) < side:
        raise InputError(
            f"image of shape {img.shape} is smaller than one column window ({side} px across, "
            f"for a column width σ ≈ {sigma0:.2f} px); use a larger image or a smaller window_px"
        )
    noise_used = _resolve_noise(noise, img)

    if method == "com":
        return _refine_com(img, cand, sigma0, radius, noise_used, pixel_size_A)

    def fit(noise_model, cand):
        args = (radius, widths, elliptical, noise_model, background, pixel_size_A, max_group,
                max_rounds, max_iter, tol_px)
        if widths == "same" and not elliptical:
            return _refine_gaussian(img, cand, sigma0, *args)
        # per-column or elliptical widths start from the circular shared-width solution, which is
        # far better conditioned than a cold start when counts are low
        first = _refine_gaussian(img, cand, sigma0, radius, "same", False, noise_model,
                                 background, pixel_size_A, max_group, max_rounds, max_iter,
                                 tol_px)
        init = {"amplitude": first.amplitude, "width_px": first.width_px,
                "background": first.background}
        start = np.column_stack([first.y_px, first.x_px])
        moved = np.hypot(*(start - cand).T) > radius
        start[moved] = cand[moved]
        table = _refine_gaussian(img, start, sigma0, *args, init=init)
        table.converged &= first.converged
        return table

    table = fit(noise_used, cand)
    if noise == "auto" and noise_used == "poisson":
        disp = table.info.get("dispersion", float("nan"))
        if np.isfinite(disp) and not (0.5 <= disp <= 2.0):
            warnings.warn(
                f"the image has integer values but its noise is not Poisson (residual dispersion "
                f"{disp:.2f}, expected ≈ 1): refitting by least squares",
                stacklevel=2,
            )
            noise_used = "gaussian"
            table = fit(noise_used, cand)
    # model selection: two columns closer than 1.0 width are one column; an elongated isolated
    # column may be two (see _split_merged)
    n_split = n_merged = n_dropped = 0
    for _ in range(2):
        keep = _duplicates_removed(table, 1.0)
        n_merged += int((~keep).sum())
        # a weak "column" (SCS under half the median) whose SCS is also below 3 standard
        # deviations of its own uncertainty is noise (a false candidate): it is removed rather
        # than fitted. (Significance alone is not enough: a false candidate beside a real column
        # makes both amplitudes uncertain.)
        with np.errstate(invalid="ignore", divide="ignore"):
            weak = ~(table.scs_px2 >= 3.0 * table.scs_std_px2)
            weak &= ~(table.scs_px2 >= 0.5 * np.nanmedian(table.scs_px2))
        weak &= keep
        if weak.all():
            weak[:] = False
        n_dropped += int(weak.sum())
        keep &= ~weak
        if not keep.all():
            table = fit(noise_used, table.positions_px[keep])
        if not split_merged:
            break
        new_cand, k = _split_merged(img, table, radius, noise_used, background)
        if k == 0:
            break
        n_split += k
        table = fit(noise_used, new_cand)
    table.info["n_split"] = n_split
    table.info["n_merged"] = n_merged
    table.info["n_dropped"] = n_dropped
    return table


def _duplicates_removed(table, factor):
    """Mask keeping the stronger of any two columns closer than ``factor`` × the median width."""
    from scipy.spatial import cKDTree

    n = len(table)
    keep = np.ones(n, bool)
    if n < 2:
        return keep
    width = float(np.nanmedian(table.width_px))
    if not np.isfinite(width):
        return keep
    pos = table.positions_px
    ok = np.all(np.isfinite(pos), axis=1)
    pairs = cKDTree(np.where(ok[:, None], pos, -1e9)).query_pairs(factor * width,
                                                                 output_type="ndarray")
    if len(pairs) == 0:
        return keep
    strength = np.nan_to_num(table.scs_px2, nan=-np.inf)
    # strongest first: a column survives unless a stronger surviving one is too close
    for i, j in sorted(pairs.tolist(), key=lambda ij: -max(strength[ij[0]], strength[ij[1]])):
        if keep[i] and keep[j]:
            keep[j if strength[i] >= strength[j] else i] = False
    return keep


def _split_merged(img, table, radius, noise, background, min_elongation=1.6, min_sep=1.3):
    """Replace columns that two circular Gaussians describe better than one elliptical one (BIC).

    Returns the new candidate positions and the number of columns split.
    """
    n = len(table)
    pos = table.positions_px
    if n == 0:
        return pos, 0
    poisson = noise == "poisson"
    h, w = img.shape
    width = np.where(np.isfinite(table.width_px), table.width_px, np.nanmedian(table.width_px))
    single = np.bincount(table.group)[table.group] == 1
    full = render_columns(img.shape, pos, table.scs_px2, width, 0.0)
    r = int(np.ceil(radius))
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    py = np.rint(pos[:, :1]).astype(int) + oy.ravel()[None]
    px = np.rint(pos[:, 1:]).astype(int) + ox.ravel()[None]
    inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    pyc, pxc = np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)
    dy, dx = py - pos[:, :1], px - pos[:, 1:]
    d2 = dy * dy + dx * dx
    own = table.amplitude[:, None] * np.exp(-0.5 * d2 / width[:, None] ** 2)
    sig = img[pyc, pxc] - table.background[:, None] - (full[pyc, pxc] - own)
    wgt = np.exp(-0.5 * d2 / (1.5 * width[:, None]) ** 2) * inside * (d2 <= radius * radius)
    ws = wgt * sig
    tot = ws.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cyy = (ws * dy * dy).sum(1) / tot
        cxx = (ws * dx * dx).sum(1) / tot
        cxy = (ws * dy * dx).sum(1) / tot
    tr, det = cyy + cxx, cyy * cxx - cxy * cxy
    disc = np.sqrt(np.maximum(0.25 * tr * tr - det, 0.0))
    l1, l2 = 0.5 * tr + disc, 0.5 * tr - disc
    # Noise alone elongates the moments: for an isotropic column with N_eff effective counts,
    # e = (λ1 - λ2)/(λ1 + λ2) is Rayleigh-distributed with scale ≈ 1/√N_eff; its 99.9th
    # percentile is 3.7/√N_eff.
    if poisson:
        var_pix = np.maximum(img[pyc, pxc], 0.0)
    else:
        from .detect import estimate_noise_std

        var_pix = np.full(pyc.shape, estimate_noise_std(img) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        n_eff = tot * tot / np.maximum((wgt * wgt * var_pix).sum(1), 1e-300)
        elong = (l1 - l2) / (l1 + l2)
        needed = np.maximum((min_elongation - 1) / (min_elongation + 1),
                            3.7 / np.sqrt(np.maximum(n_eff, 1e-300)))
    screen = single & (tot > 0) & (n_eff > 25) & (l2 > 0) & (elong > needed) & table.converged
    idx = np.flatnonzero(screen)
    if idx.size == 0:
        return pos, 0
    # principal axis (y, x) of the elongation
    ang = 0.5 * np.arctan2(2 * cxy[idx], cyy[idx] - cxx[idx])
    e = np.column_stack([np.cos(ang), np.sin(ang)])
    # Unresolved pairs of a crystal are elongated alike; elongations from neighbour light, noise
    # or distortions point every which way. Keep only the columns whose elongation vector
    # (sign-free) is shared by at least 30 % of the screened ones (and three in all).
    ev = np.sqrt(np.maximum(l1[idx] - l2[idx], 0.0))[:, None] * e
    ev[ev[:, 0] < 0] *= -1
    if idx.size >= 3:
        from scipy.spatial import cKDTree

        tree = cKDTree(np.concatenate([ev, -ev]))
        tol_e = np.maximum(0.3 * np.hypot(ev[:, 0], ev[:, 1]), 0.5)
        support = np.array([len(tree.query_ball_point(v, t)) for v, t in zip(ev, tol_e)])
        like = support >= max(3, 0.3 * idx.size)
    else:
        like = np.zeros(idx.size, bool)
    if not like.any():
        return pos, 0
    idx, ang, e = idx[like], ang[like], e[like]
    # for a pair at ±δ, the weighted variance along the axis grows by about δ² (1 + w²/ww²)⁻²…;
    # a rough start is enough, the fit does the rest
    delta = np.clip(np.sqrt(np.maximum(l1[idx] - l2[idx], 0.0)) * 1.3, 0.5 * width[idx],
                    1.5 * width[idx])
    c = pos[idx]
    pair = np.stack([c - delta[:, None] * e, c + delta[:, None] * e], axis=1)  # (M, 2, 2)
    flat = pair.reshape(-1, 2)
    gk = np.arange(2 * idx.size).reshape(-1, 2)
    pyp, pxp, mask, data = _gather_patches(img, flat, gk, radius)
    known_bg = None if isinstance(background, str) else float(background)
    nbg = 0 if known_bg is not None else 1
    # others' tails on the patch pixels
    fl = (np.clip(pyp, 0, h - 1) * w + np.clip(pxp, 0, w - 1)).astype(int)
    own_p = table.amplitude[idx, None] * np.exp(
        -0.5 * ((pyp - c[:, :1]) ** 2 + (pxp - c[:, 1:]) ** 2) / width[idx, None] ** 2)
    fixed = full.ravel()[fl] - own_p
    if known_bg is not None:
        fixed = fixed + known_bg
    fixed = np.where(mask, fixed, 0.0)
    pts = {"py": pyp, "px": pxp, "ty": np.zeros_like(pyp), "tx": np.zeros_like(pyp),
           "fixed": fixed}
    wmed = float(np.median(width))
    wlo, whi = max(0.25, wmed / 3.0), 3.0 * wmed
    bg_floor = 1e-6 * max(float(img.mean()), 1e-3) if (poisson and nbg) else None
    u = -np.log(width[idx])
    bg0 = table.background[idx]
    if bg_floor is not None:
        bg0 = np.maximum(bg0, 10 * bg_floor)
    # the single-column alternative is an elliptical Gaussian, so that columns made elongated by
    # the probe or by scan distortions are not mistaken for pairs
    spec1 = _Spec(1, True, True, nbg)
    th1 = np.column_stack([c, table.amplitude[idx], u, np.zeros_like(u), u]
                          + ([bg0] if nbg else []))
    spec2 = _Spec(2, False, True, nbg)
    a_half = 0.5 * table.amplitude[idx] * 1.5
    th2 = np.column_stack([pair[:, 0], a_half, u, pair[:, 1], a_half, u] + ([bg0] if nbg else []))
    wg = np.zeros(1)
    th1, f1, _, _ = _lm(th1, spec1, wg, pts, data, mask, poisson, c[:, None, :], radius,
                          wlo, whi, bg_floor=bg_floor, max_iter=40)
    th2, f2, ok2, _ = _lm(th2, spec2, wg, pts, data, mask, poisson, pair, radius,
                          wlo, whi, bg_floor=bg_floor, max_iter=40)
    npix = mask.sum(1)
    if poisson:
        gain = 2.0 * (f1 - f2)
    else:
        gain = (f1 - f2) / np.maximum(f1 / np.maximum(npix - spec1.p, 1), 1e-300)
    penalty = (spec2.p - spec1.p) * np.log(np.maximum(npix, 2))
    y2, x2, a2, w2, _ = _split(th2, spec2, wg)
    sep = np.hypot(y2[:, 0] - y2[:, 1], x2[:, 0] - x2[:, 1])
    s2 = a2 * np.exp(-2.0 * w2[..., 0])  # ∝ SCS
    balance = s2.min(1) / np.maximum(s2.max(1), 1e-300)
    # the fitted pair must be two resolved peaks: a saddle of at least 1 % between them (a single
    # non-Gaussian column fitted by two overlapping Gaussians gives a flat top instead)
    tt = np.linspace(0.0, 1.0, 41)
    ly = y2[:, :1] + (y2[:, 1:] - y2[:, :1]) * tt  # (M, T)
    lx = x2[:, :1] + (x2[:, 1:] - x2[:, :1]) * tt
    prof = sum(
        a2[:, j : j + 1]
        * np.exp(-0.5 * ((ly - y2[:, j : j + 1]) ** 2 + (lx - x2[:, j : j + 1]) ** 2)
                 * np.exp(2.0 * w2[:, j : j + 1, 0]))
        for j in range(2)
    )
    peaks = np.minimum(prof[:, :8].max(1), prof[:, -8:].max(1))
    dip = prof[:, 8:-8].min(1) / np.maximum(peaks, 1e-300)
    base = ok2 & (gain > penalty) & (sep > min_sep * wmed) & (balance > 0.15)
    strict = base & (dip < 0.99)
    accept = base.copy()
    # Crystal consistency: unresolved pairs in a crystal repeat with the same separation vector;
    # misfits of real (non-Gaussian, scan-distorted) columns give random ones. A split is kept
    # only if its vector is shared by at least 30 % of the clearly resolved proposals (those with
    # a saddle) and by at least three pairs in all, counting the already resolved close pairs
    # (groups of two) as support. Proposals without a saddle are kept only through this support.
    if strict.any():
        vec = np.column_stack([y2[:, 1] - y2[:, 0], x2[:, 1] - x2[:, 0]])
        flip = (vec[:, 0] < 0) | ((vec[:, 0] == 0) & (vec[:, 1] < 0))
        vec[flip] *= -1
        ref = vec[strict]
        sizes = np.bincount(table.group)
        pairs = [np.flatnonzero(table.group == g) for g in np.flatnonzero(sizes == 2)]
        if pairs:
            pv = np.array([pos[p[1]] - pos[p[0]] for p in pairs])
            pflip = (pv[:, 0] < 0) | ((pv[:, 0] == 0) & (pv[:, 1] < 0))
            pv[pflip] *= -1
        else:
            pv = np.zeros((0, 2))
        tol = np.maximum(0.2 * np.hypot(vec[:, 0], vec[:, 1]), 1.0)

        def support(v, t, others):
            if len(others) == 0:
                return 0
            d = np.minimum(np.hypot(*(others - v).T), np.hypot(*(others + v).T))
            return int((d < t).sum())

        n_strict = int(strict.sum())
        for i in np.flatnonzero(base):
            own = support(vec[i], tol[i], ref)
            if own < max(1.0, 0.3 * n_strict) or own + support(vec[i], tol[i], pv) < 3:
                accept[i] = False
    else:
        accept[:] = False
    if not accept.any():
        return pos, 0
    keep = np.ones(n, bool)
    keep[idx[accept]] = False
    new = np.concatenate([pos[keep], np.column_stack([y2[accept].ravel(), x2[accept].ravel()])])
    new[:, 0] = np.clip(new[:, 0], -0.5, h - 0.5)
    new[:, 1] = np.clip(new[:, 1], -0.5, w - 0.5)
    return new, int(accept.sum())


def _gather_patches(img, cand, groups_k, radius):
    """Pixel coordinates, data and masks for groups of equal size K: arrays (G, M)."""
    h, w = img.shape
    pos = cand[groups_k]  # (G, K, 2)
    # boxes anchored on the rounded extreme columns, so that the disc masks of different groups
    # share nearly the same pixel offsets and the common box stays small
    rad_i = int(np.ceil(radius))
    lo = np.rint(pos.min(1)).astype(int) - rad_i  # (G, 2)
    hi = np.rint(pos.max(1)).astype(int) + rad_i
    size = (hi - lo).max(0) + 1  # common box
    oy, ox = np.mgrid[0 : size[0], 0 : size[1]]
    py = lo[:, 0, None] + oy.ravel()[None, :]
    px = lo[:, 1, None] + ox.ravel()[None, :]
    inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    d2 = (py[:, None, :] - pos[..., 0:1]) ** 2 + (px[:, None, :] - pos[..., 1:2]) ** 2
    near = (d2 <= radius * radius).any(1)
    mask = inside & near
    # drop box pixels that no group uses
    used = mask.any(0)
    py, px, mask = py[:, used], px[:, used], mask[:, used]
    data = img[np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)]
    data = np.where(mask, data, 0.0)
    return py.astype(float), px.astype(float), mask, data


def _refine_gaussian(img, cand, sigma0, radius, widths, elliptical, noise, background,
                     pixel_size_A, max_group, max_rounds, max_iter, tol_px, init=None):
    from scipy.spatial import cKDTree

    poisson = noise == "poisson"
    n = len(cand)
    known_bg = None if isinstance(background, str) else float(background)
    nbg = 0 if known_bg is not None else (3 if background == "plane" else 1)
    width_local = widths == "different"
    nw = 3 if elliptical else 1
    # widths may range over a factor 3 around the starting width (heavy vs light columns); a column
    # that runs into a bound is flagged as not converged
    wmin, wmax = max(0.25, sigma0 / 3.0), max(3.0 * sigma0, 1.0)
    max_shift = max(radius, 1.0)

    # Poisson data need μ > 0 everywhere: a constant background is kept above a tiny floor
    bg_floor = 1e-6 * max(float(img.mean()), 1e-3) if (poisson and nbg == 1) else None

    groups = _group_columns(cand, 4.0 * sigma0, max(1, int(max_group)))
    group_id = np.empty(n, int)
    for gi, g in enumerate(groups):
        group_id[g] = gi
    by_k: dict[int, list[np.ndarray]] = {}
    for g in groups:
        by_k.setdefault(len(g), []).append(g)

    # per-column state (global arrays)
    u0 = -np.log(sigma0)
    wpar_init = np.array([u0]) if not elliptical else np.array([u0, 0.0, u0])
    col_y = cand[:, 0].copy()
    col_x = cand[:, 1].copy()
    col_w = np.tile(wpar_init, (n, 1))  # width params per column
    wglob = wpar_init.copy()
    if init is not None:  # warm start from a simpler model (circular, shared width)
        u = -np.log(init["width_px"])
        if elliptical:
            col_w = np.column_stack([u, np.zeros(n), u])
        else:
            col_w = u[:, None].copy()
        wglob = np.median(col_w, axis=0)

    # initial amplitudes and backgrounds from the data
    h, w = img.shape
    iy = np.clip(np.rint(col_y).astype(int), 0, h - 1)
    ix = np.clip(np.rint(col_x).astype(int), 0, w - 1)
    from scipy import ndimage

    sm = ndimage.uniform_filter(img, 3, mode="nearest")
    bg_init_col = _patch_percentile(img, iy, ix, int(np.ceil(radius)), 10.0)
    col_a = np.maximum(sm[iy, ix] - bg_init_col, 1e-6 * max(np.abs(img).max(), 1e-12))
    if init is not None:
        col_a = init["amplitude"].copy()
        bg_init_col = init["background"].copy()
    if known_bg is not None:
        bg_init_col = np.full(n, known_bg)

    buckets = []
    # batches of at most 4 000 groups bound the memory of the vectorised arrays
    batches = [(k, glist[i : i + 4000]) for k, glist in sorted(by_k.items())
               for i in range(0, len(glist), 4000)]
    for k, glist in batches:
        gk = np.array(glist)  # (G, K)
        py, px, mask, data = _gather_patches(img, cand, gk, radius)
        centre = cand[gk].mean(1)  # (G, 2)
        ty = (py - centre[:, :1]) / radius
        tx = (px - centre[:, 1:]) / radius
        spec = _Spec(k, elliptical, width_local, nbg)
        theta = np.zeros((len(gk), spec.p))
        cols = theta[:, : k * spec.npc].reshape(len(gk), k, spec.npc)
        cols[..., 0] = col_y[gk]
        cols[..., 1] = col_x[gk]
        cols[..., 2] = col_a[gk]
        if width_local:
            cols[..., 3:] = col_w[gk]
        theta[:, : k * spec.npc] = cols.reshape(len(gk), -1)
        if nbg:
            bg0 = bg_init_col[gk].mean(1)
            if bg_floor is not None:
                bg0 = np.maximum(bg0, 10.0 * bg_floor)
            theta[:, k * spec.npc] = bg0
        buckets.append({
            "k": k, "groups": gk, "spec": spec, "theta": theta, "mask": mask, "data": data,
            "pts": {"py": py, "px": px, "ty": ty, "tx": tx, "fixed": np.zeros_like(data)},
            "start": cand[gk],
        })

    # The tails of the other columns reaching into a patch enter the model as a fixed term. Every
    # column is rendered once per round onto the whole image within a disc of 4.5 widths; a group's
    # own columns, rendered with the same disc, are subtracted again on its patch.
    h_img, w_img = img.shape

    def col_precision():
        wp = col_w if width_local else np.broadcast_to(wglob, (n, nw))
        return _precision(wp, elliptical)

    def render_all(a, bb, c):
        det = a * c - bb * bb
        # largest width of each column: 1/sqrt(smallest eigenvalue of the precision matrix)
        lam_min = 0.5 * (a + c) - np.sqrt(0.25 * (a - c) ** 2 + bb * bb)
        rdisc = 4.5 / np.sqrt(np.maximum(lam_min, 1e-12))
        rr = int(np.ceil(min(rdisc.max(), max(h_img, w_img))))
        oy, ox = np.mgrid[-rr : rr + 1, -rr : rr + 1]
        total = np.zeros(h_img * w_img)
        total_dw = [np.zeros(h_img * w_img) for _ in range(nw)] if not width_local else []
        chunk = max(1, 4_000_000 // oy.size)
        for s0 in range(0, n, chunk):
            sl = slice(s0, s0 + chunk)
            py = np.floor(col_y[sl, None]).astype(int) + oy.ravel()[None]
            px = np.floor(col_x[sl, None]).astype(int) + ox.ravel()[None]
            dy = py - col_y[sl, None]
            dx = px - col_x[sl, None]
            ok = (py >= 0) & (py < h_img) & (px >= 0) & (px < w_img)
            ok &= dy * dy + dx * dx <= rdisc[sl, None] ** 2
            q = a[sl, None] * dy * dy + 2 * bb[sl, None] * dy * dx + c[sl, None] * dx * dx
            val = col_a[sl, None] * np.exp(-0.5 * q)
            where = (py * w_img + px)[ok]
            total += np.bincount(where, val[ok], minlength=h_img * w_img)
            if not width_local:
                dws = _width_derivs(val, dy, dx, a[sl, None], bb[sl, None], c[sl, None],
                                    elliptical)
                for t_dw, dv in zip(total_dw, dws):
                    t_dw += np.bincount(where, dv[ok], minlength=h_img * w_img)
        del det
        return total, total_dw, rdisc

    def update_fixed():
        a, bb, c = col_precision()
        total, total_dw, rdisc = render_all(a, bb, c)
        for b in buckets:
            gk = b["groups"]
            py, px = b["pts"]["py"], b["pts"]["px"]
            dy = py[:, None, :] - col_y[gk][..., None]
            dx = px[:, None, :] - col_x[gk][..., None]
            q = (a[gk][..., None] * dy * dy + 2 * bb[gk][..., None] * dy * dx
                 + c[gk][..., None] * dx * dx)
            inside = dy * dy + dx * dx <= rdisc[gk][..., None] ** 2
            own_k = np.where(inside, col_a[gk][..., None] * np.exp(-0.5 * q), 0.0)
            own = own_k.sum(1)
            flat = (np.clip(py, 0, h_img - 1) * w_img + np.clip(px, 0, w_img - 1)).astype(int)
            fixed = total[flat] - own
            if not width_local:
                own_dw = _width_derivs(own_k, dy, dx, a[gk][..., None], bb[gk][..., None],
                                       c[gk][..., None], elliptical)
                b["pts"]["fixed_dw"] = np.stack(
                    [np.where(b["mask"], t_dw[flat] - o.sum(1), 0.0)
                     for t_dw, o in zip(total_dw, own_dw)], axis=-1)
            if known_bg is not None:
                fixed = fixed + known_bg
            b["pts"]["fixed"] = np.where(b["mask"], fixed, 0.0)

    def scatter_back(b):
        spec, gk = b["spec"], b["groups"]
        y, x, amp, wpar, _ = _split(b["theta"], spec, wglob)
        col_y[gk] = y
        col_x[gk] = x
        col_a[gk] = amp
        if width_local:
            col_w[gk] = wpar

    converged_all = np.zeros(n, bool)
    movement = np.zeros(n)
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007
        prev = np.column_stack([col_y, col_x]).copy()
        prev_w = wglob.copy()
        update_fixed()
        for b in buckets:
            theta, f, conv, lam = _lm(b["theta"], b["spec"], wglob, b["pts"], b["data"],
                                      b["mask"], poisson, b["start"], max_shift, wmin, wmax,
                                      max_iter=max_iter, bg_floor=bg_floor, lam0=b.get("lam"))
            b["theta"], b["f"], b["conv"], b["lam"] = theta, f, conv, lam
            scatter_back(b)
            converged_all[b["groups"].ravel()] = np.repeat(conv, b["k"])
        if not width_local:
            wglob = _global_width_step(buckets, wglob, poisson, wmin, wmax, bg_floor)
            for b in buckets:
                scatter_back(b)
        movement = np.abs(np.column_stack([col_y, col_x]) - prev).max(1)
        # a handful of unstable columns (e.g. spurious candidates sharing one blob) must not keep
        # the whole image iterating: they are flagged below instead
        moved = float(np.quantile(movement, 0.99)) if n >= 100 else float(movement.max())
        if moved < tol_px and np.abs(wglob - prev_w).max() < 1e-4:
            break

    # final fixed term and uncertainties
    update_fixed()
    out = {k: np.full(n, np.nan) for k in (
        "sy", "sx", "bgc", "scs_std", "wmaj", "wmin", "wang")}
    total_chi = 0.0
    total_dof = 0.0
    for b in buckets:
        spec, gk = b["spec"], b["groups"]
        mu_f, _, _ = _model(b["theta"], spec, wglob, b["pts"])
        f = _objective(mu_f, b["data"], b["mask"], poisson)
        cov, mu = _fisher(b["theta"], spec, wglob, b["pts"], b["data"], b["mask"], poisson, f,
                          bg_floor)
        m = b["mask"]
        if poisson:
            # Pearson dispersion over pixels expecting at least one count: the statistic is
            # unstable where μ ≪ 1 and adds nothing there
            use = m & (mu >= 1.0)
            pearson = (b["data"] - mu) ** 2 / np.maximum(mu, 1e-300)
            total_chi += float(np.where(use, pearson, 0.0).sum())
            total_dof += float(use.sum())
        k, npc = spec.k, spec.npc
        idx = np.arange(k) * npc
        var = np.einsum("gpp->gp", cov)
        with np.errstate(invalid="ignore"):
            out["sy"][gk] = np.where(var[:, idx] >= 0, np.sqrt(np.abs(var[:, idx])), np.nan)
            out["sx"][gk] = np.where(var[:, idx + 1] >= 0, np.sqrt(np.abs(var[:, idx + 1])),
                                     np.nan)
        y, x, amp, wpar, bgp = _split(b["theta"], spec, wglob)
        bgc = np.repeat(bgp[:, :1], k, axis=1) if nbg else np.full((len(gk), k), known_bg)
        if spec.nbg == 3:
            centre = cand[gk].mean(1)
            bgc = bgc + bgp[:, 1:2] * (y - centre[:, :1]) / radius + bgp[:, 2:3] * (
                x - centre[:, 1:]) / radius
        out["bgc"][gk] = bgc
        # SCS uncertainty by the delta method (local parameters only)
        a, bb, c = _precision(wpar, elliptical)
        det = a * c - bb * bb
        scs = _TWO_PI * amp / np.sqrt(det)
        grad = np.zeros((len(gk), k, spec.p))
        for j in range(k):
            grad[:, j, j * npc + 2] = scs[:, j] / amp[:, j]
            if width_local:
                if elliptical:
                    # det = (l11 l22)^2 -> scs ∝ exp(-u1 - u2)
                    grad[:, j, j * npc + 3] = -scs[:, j]
                    grad[:, j, j * npc + 5] = -scs[:, j]
                else:
                    grad[:, j, j * npc + 3] = -2.0 * scs[:, j]
        scs_var = np.einsum("gkp,gpq,gkq->gk", grad, cov, grad)
        out["scs_std"][gk] = np.sqrt(np.maximum(scs_var, 0))
        if elliptical:
            for gi in range(len(gk)):
                for j in range(k):
                    pm = np.array([[a[gi, j], bb[gi, j]], [bb[gi, j], c[gi, j]]])
                    evals, evecs = np.linalg.eigh(pm)  # ascending precision = descending width
                    major = evecs[:, 0]  # (y, x) direction of the largest width
                    out["wmaj"][gk[gi, j]] = 1 / np.sqrt(evals[0])
                    out["wmin"][gk[gi, j]] = 1 / np.sqrt(evals[1])
                    out["wang"][gk[gi, j]] = np.arctan2(-major[0], major[1])
    dispersion = total_chi / total_dof if (poisson and total_dof >= 100) else float("nan")

    a, bb, c = col_precision()
    det = a * c - bb * bb
    scs = _TWO_PI * col_a / np.sqrt(det)
    width = det ** (-0.25)
    conv = converged_all.copy()
    if width_local:  # a width on its bound is not a fitted width
        wmaj = 1.0 / np.sqrt(np.maximum(0.5 * (a + c) - np.sqrt(0.25 * (a - c) ** 2 + bb * bb),
                                        1e-300))
        wmin_ = 1.0 / np.sqrt(0.5 * (a + c) + np.sqrt(0.25 * (a - c) ** 2 + bb * bb))
        conv &= (wmaj < 0.99 * wmax) & (wmin_ > 1.01 * wmin)
    conv &= movement <= max(10.0 * tol_px, 0.05)  # still moving in the last round
    conv &= (col_y > -0.5) & (col_y < h - 0.5) & (col_x > -0.5) & (col_x < w - 0.5)
    shift = np.hypot(col_y - cand[:, 0], col_x - cand[:, 1])
    conv &= shift < max_shift
    conv &= np.isfinite(out["sy"]) & np.isfinite(out["sx"])
    # duplicates: two columns that converged onto each other
    if n > 1:
        pos = np.column_stack([col_y, col_x])
        pairs = cKDTree(pos).query_pairs(1.2 * float(np.median(width)), output_type="ndarray")
        for i, j in pairs:
            weaker = i if scs[i] < scs[j] else j
            conv[weaker] = False
    info = {
        "width_init_px": sigma0,
        "window_px": radius,
        "rounds": rounds,
        "n_groups": len(groups),
        "group_sizes": {int(k): len(v) for k, v in by_k.items()},
    }
    if poisson:
        info["dispersion"] = dispersion
    if not width_local:
        info["shared_width_px"] = float(np.median(width))
    return ColumnTable(
        y_px=col_y.copy(), x_px=col_x.copy(), sigma_y_px=out["sy"], sigma_x_px=out["sx"],
        amplitude=col_a.copy(), width_px=width, background=out["bgc"], scs_px2=scs,
        scs_std_px2=out["scs_std"], converged=conv, group=group_id,
        width_major_px=out["wmaj"] if elliptical else None,
        width_minor_px=out["wmin"] if elliptical else None,
        width_angle_rad=out["wang"] if elliptical else None,
        pixel_size_A=pixel_size_A, method="gaussian", noise=noise, info=info,
    )


def _global_width_step(buckets, wglob, poisson, wmin, wmax, bg_floor=None):
    """Gauss-Newton step for the shared width with the local parameters profiled out (Schur)."""
    nw = wglob.size
    s_tot = np.zeros((nw, nw))
    r_tot = np.zeros(nw)
    parts = []
    for b in buckets:
        spec = b["spec"]
        mu, jl, jg = _model(b["theta"], spec, wglob, b["pts"], jac=True, jac_global=True)
        w, r = _weights(mu, b["data"], b["mask"], poisson)
        hll = _wgram(jl, w, jl)
        hlw = _wgram(jl, w, jg)
        hww = _wgram(jg, w, jg)
        gl = np.matmul(r[:, None, :], jl)[:, 0, :]
        gw = np.matmul(r[:, None, :], jg)[:, 0, :]
        if bg_floor is not None:
            ib = spec.k * spec.npc
            at = b["theta"][:, ib] <= bg_floor * (1 + 1e-9)
            _freeze(hll, gl, at, ib)
            hlw[at, ib, :] = 0.0
        diag = np.einsum("gpp->gp", hll)
        hll = hll + 1e-10 * diag[..., None] * np.eye(spec.p)
        rhs = np.concatenate([hlw, gl[..., None]], axis=2)
        try:
            sol = np.linalg.solve(hll, rhs)
        except np.linalg.LinAlgError:
            return wglob
        xw, xg = sol[..., :nw], sol[..., nw]
        s_tot += (hww - np.einsum("gpi,gpj->gij", hlw, xw)).sum(0)
        r_tot += (gw - np.einsum("gpi,gp->gi", hlw, xg)).sum(0)
        parts.append((xw, xg))
    if not poisson:
        # scale-free: least-squares normal equations need no residual-variance weighting here
        pass
    try:
        dw = np.linalg.solve(s_tot + 1e-12 * np.diag(np.diag(s_tot)), r_tot)
    except np.linalg.LinAlgError:
        return wglob
    f0 = sum(float(np.sum(b["f"])) for b in buckets)
    t = 1.0
    for _ in range(8):
        new_w = wglob + t * dw
        a, _, c = _precision(new_w, bool(nw == 3))
        if np.all(a <= 1 / wmin**2) and np.all(a >= 1 / wmax**2) and np.all(c >= 1 / wmax**2):
            trial = []
            f1 = 0.0
            for b, (xw, xg) in zip(buckets, parts):
                dth = t * (xg - xw @ dw)
                th = b["theta"] + dth
                if bg_floor is not None:
                    ib = b["spec"].k * b["spec"].npc
                    th[:, ib] = np.maximum(th[:, ib], bg_floor)
                ok = _valid(th, b["spec"], new_w, b["start"], max(1.0, 1e9), wmin, wmax)
                # a group whose local update is invalid keeps its local parameters
                th[~ok] = b["theta"][~ok]
                mu, _, _ = _model(th, b["spec"], new_w, b["pts"])
                fb = _objective(mu, b["data"], b["mask"], poisson)
                f1 += float(np.sum(fb))
                trial.append((th, fb))
            if np.isfinite(f1) and f1 <= f0:
                for b, (th, fb) in zip(buckets, trial):
                    b["theta"], b["f"] = th, fb
                return new_w
        t *= 0.5
    return wglob


# --------------------------------------------------------------------------------------------
# centre of mass
# --------------------------------------------------------------------------------------------
def _refine_com(img, cand, sigma0, radius, noise, pixel_size_A, max_iter=200, tol=1e-7):
    """Iterated background-subtracted Gaussian-weighted centroid (vectorised)."""
    h, w = img.shape
    n = len(cand)
    r = int(np.ceil(radius)) + 1
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    oy, ox = oy.ravel().astype(float), ox.ravel().astype(float)
    # local background: a low percentile around each column
    iy = np.clip(np.rint(cand[:, 0]).astype(int), 0, h - 1)
    ix = np.clip(np.rint(cand[:, 1]).astype(int), 0, w - 1)
    bg = _patch_percentile(img, iy, ix, r, 5.0)
    cy, cx = cand[:, 0].copy(), cand[:, 1].copy()
    sw2 = sigma0**2
    done = np.zeros(n, bool)
    for _ in range(max_iter):
        by = np.floor(cy).astype(int)
        bx = np.floor(cx).astype(int)
        py = by[:, None] + oy[None, :]
        px = bx[:, None] + ox[None, :]
        inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
        vals = img[np.clip(py, 0, h - 1).astype(int), np.clip(px, 0, w - 1).astype(int)]
        dy, dx = py - cy[:, None], px - cx[:, None]
        d2 = dy * dy + dx * dx
        # Gaussian weight times a soft-edged disc, both centred on the sub-pixel estimate
        wt = np.exp(-0.5 * d2 / sw2) * np.clip(radius + 0.5 - np.sqrt(d2), 0.0, 1.0) * inside
        s = wt * (vals - bg[:, None])
        tot = s.sum(1)
        ok = tot > 0
        ny = np.where(ok, cy + (s * dy).sum(1) / np.where(ok, tot, 1), cy)
        nx = np.where(ok, cx + (s * dx).sum(1) / np.where(ok, tot, 1), cx)
        # the weighted centroid of a Gaussian of width σ with weight width σ moves half-way:
        # a doubled step (over-relaxation) converges much faster
        step_y, step_x = 2.0 * (ny - cy), 2.0 * (nx - cx)
        stepn = np.hypot(step_y, step_x)
        clip = np.minimum(1.0, 1.0 / np.maximum(stepn, 1e-300))
        cy = np.where(done, cy, cy + step_y * clip)
        cx = np.where(done, cx, cx + step_x * clip)
        done |= stepn < tol
        if done.all():
            break
    # uncertainties of the (non-iterated) weighted centroid, and intensities
    by = np.floor(cy).astype(int)
    bx = np.floor(cx).astype(int)
    py = by[:, None] + oy[None, :]
    px = bx[:, None] + ox[None, :]
    inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    vals = img[np.clip(py, 0, h - 1).astype(int), np.clip(px, 0, w - 1).astype(int)]
    dy, dx = py - cy[:, None], px - cx[:, None]
    d2 = dy * dy + dx * dx
    wt = np.exp(-0.5 * d2 / sw2) * np.clip(radius + 0.5 - np.sqrt(d2), 0.0, 1.0) * inside
    sig = vals - bg[:, None]
    tot = (wt * sig).sum(1)
    if noise == "poisson":
        var_pix = np.maximum(vals, 0.0)
    else:
        from .detect import estimate_noise_std

        var_pix = np.full_like(vals, estimate_noise_std(img) ** 2)
    # weighted centroid of a Gaussian with weights of the same width moves half-way, so the
    # fixed point's error is twice the one-step centroid error
    with np.errstate(invalid="ignore", divide="ignore"):
        sy = 2.0 * np.sqrt((wt * wt * dy * dy * var_pix).sum(1)) / np.abs(tot)
        sx = 2.0 * np.sqrt((wt * wt * dx * dx * var_pix).sum(1)) / np.abs(tot)
    disc = (d2 <= radius * radius) & inside
    scs = (sig * disc).sum(1)
    scs_std = np.sqrt((var_pix * disc).sum(1))
    ry = np.clip(np.rint(cy).astype(int), 0, h - 1)
    rx = np.clip(np.rint(cx).astype(int), 0, w - 1)
    amp = img[ry, rx] - bg
    shift = np.hypot(cy - cand[:, 0], cx - cand[:, 1])
    conv = done & (shift < radius) & (tot > 0)
    return ColumnTable(
        y_px=cy, x_px=cx, sigma_y_px=sy, sigma_x_px=sx, amplitude=amp,
        width_px=np.full(n, np.nan), background=bg, scs_px2=scs, scs_std_px2=scs_std,
        converged=conv, group=np.arange(n), pixel_size_A=pixel_size_A, method="com", noise=noise,
        info={"width_init_px": sigma0, "window_px": radius,
              "scs_note": "background-subtracted sum within the window radius"},
    )
