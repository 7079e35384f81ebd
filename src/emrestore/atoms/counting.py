"""Atom counting from scattering cross-sections (SCS).

Two routes:

* :func:`count_atoms_gmm` — the statistics-based method of StatSTEM (Van Aert et al., PRB 87,
  064107, 2013; De Backer et al., Ultramicroscopy 134, 23, 2013): the SCS of all columns are
  modelled as a mixture of Gaussians with one shared width, one component per atom count; the
  number of components is chosen by minimising the integrated classification likelihood (ICL) or
  BIC; every column gets the count of its most probable component.
* :func:`count_atoms_library` — comparison with simulated SCS values for 1..N atoms (Lobato et al.
  2023 count the atoms of their Pt particle this way).

The expectation–maximisation fit is written here in numpy (vectorised over columns and
components, deterministic for a given seed).
"""

from __future__ import annotations

import numpy as np

from .._rng import as_generator
from ..errors import InputError

__all__ = [
    "count_atoms_gmm",
    "count_atoms_library",
    "fit_gaussian_mixture_1d",
    "select_gaussian_mixture_1d",
]

_LOG_2PI = np.log(2 * np.pi)


def _as_values(x, name: str, min_n: int = 2) -> np.ndarray:
    try:
        v = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a 1D array of numbers: {exc}") from exc
    if v.ndim != 1:
        if v.ndim == 0 or sum(s > 1 for s in v.shape) > 1:
            raise InputError(f"{name} must be a 1D array, got shape {v.shape}")
        v = v.ravel()
    if v.size < min_n:
        raise InputError(f"{name} holds {v.size} value(s); at least {min_n} are needed")
    bad = ~np.isfinite(v)
    if bad.any():
        raise InputError(
            f"{name} contains {bad.sum()} NaN or infinite value(s) (first at index "
            f"{np.flatnonzero(bad)[0]}); remove those columns first"
        )
    return v


# ------------------------------------------------------------------------------------------------
# EM for a 1D Gaussian mixture
# ------------------------------------------------------------------------------------------------
def _logsumexp_rows(a):
    m = a.max(axis=1, keepdims=True)
    return (np.log(np.exp(a - m).sum(axis=1, keepdims=True)) + m)[:, 0]


def _em(x, means, var, weights, shared, var_floor, max_iter, tol):
    """Run EM from the given start; x is standardised. Returns (means, var, weights, ll, tau)."""
    n = x.size
    ll_old = -np.inf
    for _ in range(max_iter):
        logp = (
            np.log(np.maximum(weights, 1e-300))
            - 0.5 * (x[:, None] - means) ** 2 / var
            - 0.5 * np.log(var)
            - 0.5 * _LOG_2PI
        )
        ll_i = _logsumexp_rows(logp)
        ll = float(ll_i.sum())
        tau = np.exp(logp - ll_i[:, None])
        nk = tau.sum(axis=0)
        weights = nk / n
        safe = np.maximum(nk, 1e-300)
        means = np.where(nk > 1e-12, (tau * x[:, None]).sum(axis=0) / safe, means)
        sq = tau * (x[:, None] - means) ** 2
        if shared:
            var = np.full_like(means, max(sq.sum() / n, var_floor))
        else:
            var = np.where(nk > 1e-12, sq.sum(axis=0) / safe, var)
            var = np.maximum(var, var_floor)
        if ll - ll_old <= tol * abs(ll) and ll >= ll_old:
            break
        ll_old = ll
    # final E step so that tau and ll match the returned parameters
    logp = (
        np.log(np.maximum(weights, 1e-300))
        - 0.5 * (x[:, None] - means) ** 2 / var
        - 0.5 * np.log(var)
        - 0.5 * _LOG_2PI
    )
    ll_i = _logsumexp_rows(logp)
    tau = np.exp(logp - ll_i[:, None])
    return means, var, weights, float(ll_i.sum()), tau


def _kmeans_dp_1d(x, max_k, max_points=1200):
    """Globally optimal 1D k-means for every k = 1..max_k by dynamic programming.

    The sorted data are first merged into at most ``max_points`` consecutive weighted groups (exact
    when N ≤ max_points). Returns a list whose entry ``k - 1`` holds the ``k`` sorted cluster means.
    Wang & Song, "Ckmeans.1d.dp", R Journal 3 (2011).
    """
    xs = np.sort(x)
    n = xs.size
    if n > max_points:
        edges = np.linspace(0, n, max_points + 1).round().astype(int)
        w = np.diff(edges).astype(float)
        s = np.add.reduceat(xs, edges[:-1])
        v = s / w
    else:
        w = np.ones(n)
        v = xs
    m = v.size
    c0 = np.concatenate([[0.0], np.cumsum(w)])
    c1 = np.concatenate([[0.0], np.cumsum(w * v)])
    c2 = np.concatenate([[0.0], np.cumsum(w * v * v)])
    # cost[i, j]: within-group sum of squares of points i..j (inclusive), inf for i > j
    i = np.arange(m)[:, None]
    j = np.arange(m)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        n_ij = c0[j + 1] - c0[i]
        s_ij = c1[j + 1] - c1[i]
        cost = c2[j + 1] - c2[i] - s_ij**2 / n_ij
    cost = np.where(j >= i, np.maximum(cost, 0.0), np.inf)
    max_k = min(max_k, m)
    d_prev = cost[0].copy()  # one cluster covering 0..j
    back = [np.zeros(m, dtype=int)]
    for _k in range(2, max_k + 1):
        # d[j] = min over i ≥ 1 of d_prev[i - 1] + cost[i, j]
        tot = d_prev[:-1, None] + cost[1:, :]
        arg = np.argmin(tot, axis=0)
        d_new = tot[arg, np.arange(m)]
        back.append(arg + 1)
        d_prev = d_new
    out = []
    for k in range(1, max_k + 1):
        # backtrack the boundaries of the k clusters ending at m - 1
        bounds = []
        end = m - 1
        for kk in range(k, 0, -1):
            start = back[kk - 1][end] if kk > 1 else 0
            bounds.append((start, end))
            end = start - 1
        means = [(c1[e + 1] - c1[b]) / (c0[e + 1] - c0[b]) for b, e in reversed(bounds)]
        out.append(np.array(means))
    return out


def _standardise(x_raw):
    loc = float(x_raw.mean())
    scale = float(x_raw.std())
    if scale == 0:
        scale = 1.0
    return (x_raw - loc) / scale, loc, scale


def _fit_standardised(x, g, shared, starts, max_iter, tol, n_probe=20):
    """EM from every start for ``n_probe`` iterations, then the best one to convergence."""
    var_floor = 1e-12 if shared else 1e-4
    probes = []
    for m0 in starts:
        m0 = np.sort(np.asarray(m0, dtype=float))
        # initial width: the spread of a hard assignment to the start means
        lab = np.abs(x[:, None] - m0).argmin(axis=1)
        var0 = max(float(np.mean((x - m0[lab]) ** 2)), 1e-6)
        w0 = np.bincount(lab, minlength=g).astype(float) + 1.0
        w0 /= w0.sum()
        probes.append(_em(x, m0, np.full(g, var0), w0, shared, var_floor, n_probe, tol))
    best = max(probes, key=lambda r: r[3])
    return _em(x, best[0], best[1], best[2], shared, var_floor, max_iter, tol)


def _package(res, g, shared, loc, scale, n):
    means, var, weights, ll, tau = res
    order = np.argsort(means, kind="stable")
    return {
        "n_components": g,
        "means": means[order] * scale + loc,
        "sigmas": np.sqrt(var[order]) * scale,
        "weights": weights[order],
        # likelihood of the data in their own units
        "log_likelihood": ll - n * np.log(scale),
        "posterior": tau[:, order],
        "n_parameters": (2 * g) if shared else (3 * g - 1),
    }


def _starts(x, g, rng, n_init, dp_means=None):
    if g == 1:
        return [np.array([x.mean()])]
    lo, hi = x.min(), x.max()
    starts = [
        dp_means if dp_means is not None else _kmeans_dp_1d(x, g)[g - 1],
        lo + (hi - lo) / g * (np.arange(g) + 0.5),
    ]
    for _ in range(max(0, int(n_init))):
        starts.append(rng.choice(x, size=g, replace=False))
    return starts


def fit_gaussian_mixture_1d(
    values,
    n_components: int,
    *,
    shared_variance: bool = True,
    n_init: int = 1,
    seed=0,
    max_iter: int = 2000,
    tol: float = 1e-8,
) -> dict:
    """Maximum-likelihood 1D Gaussian mixture by EM, best of several starts.

    Starts: the globally optimal k-means clustering (dynamic programming), means evenly spaced
    between the extremes, and ``n_init`` random sets of data points (``seed``). Each runs a few EM
    iterations; the best continues to convergence (relative log-likelihood change < ``tol``).
    Components are returned sorted by increasing mean.

    Returns
    -------
    dict
        ``n_components``, ``means`` (G,), ``sigmas`` (G,) (all equal when ``shared_variance``),
        ``weights`` (G,), ``log_likelihood``, ``posterior`` (N, G), ``n_parameters``.
    """
    x_raw = _as_values(values, "values")
    g = int(n_components)
    if g < 1:
        raise InputError(f"n_components must be at least 1, got {n_components}")
    if g > x_raw.size:
        raise InputError(f"cannot fit {g} components to {x_raw.size} values")
    x, loc, scale = _standardise(x_raw)
    rng = as_generator(seed)
    res = _fit_standardised(x, g, shared_variance, _starts(x, g, rng, n_init), max_iter, tol)
    return _package(res, g, shared_variance, loc, scale, x.size)


def _criteria(fit: dict, n: int) -> tuple[float, float]:
    bic = -2.0 * fit["log_likelihood"] + fit["n_parameters"] * np.log(n)
    tau = np.clip(fit["posterior"], 1e-300, 1.0)
    entropy = float(-(fit["posterior"] * np.log(tau)).sum())
    return float(bic), float(bic + 2.0 * entropy)


def select_gaussian_mixture_1d(
    values,
    max_components: int,
    *,
    criterion: str = "icl",
    shared_variance: bool = True,
    min_components: int = 1,
    n_init: int = 1,
    seed=0,
    max_iter: int = 1000,
) -> dict:
    """Fit mixtures of ``min_components..max_components`` components; keep the best by a criterion.

    ``criterion`` is ``"icl"`` (BIC plus twice the classification entropy
    ``−Σ τ log τ``; Biernacki et al. 2000, used by StatSTEM) or ``"bic"``
    (``−2 log L + p log N``); the smallest value wins, with one exception for ICL: the
    one-component model has zero entropy, so when many equally spaced components overlap (noise
    ≈ 1/4 of the spacing, the usual atom-counting regime) ICL can rank it first although the
    likelihood strongly favours the multi-component model; the ICL curve then shows its real,
    deep minimum further on (De Backer et al. 2013 select such a local minimum). Therefore, if
    ICL's overall minimum is at one component, the best multi-component ICL value is taken
    whenever BIC also prefers that model to the single Gaussian.

    Returns the selected fit (see :func:`fit_gaussian_mixture_1d`) with, in addition,
    ``components`` (the G tried), ``bic``, ``icl``, ``log_likelihoods`` and ``criterion_values``
    (arrays over G) and ``criterion``.
    """
    x = _as_values(values, "values")
    crit = criterion.lower()
    if crit not in ("icl", "bic"):
        raise InputError(f"criterion must be 'icl' or 'bic', got {criterion!r}")
    gmin = max(1, int(min_components))
    gmax = int(max_components)
    if gmax < gmin:
        raise InputError(f"max_components ({gmax}) must be ≥ min_components ({gmin})")
    gmax = min(gmax, x.size)
    xs, loc, scale = _standardise(x)
    rng = as_generator(seed)
    dp = _kmeans_dp_1d(xs, gmax)
    fits, bics, icls = [], [], []
    for g in range(gmin, gmax + 1):
        dp_means = dp[g - 1] if g - 1 < len(dp) else None
        starts = _starts(xs, g, rng, n_init, dp_means)
        res = _fit_standardised(xs, g, shared_variance, starts, max_iter, 1e-8)
        fit = _package(res, g, shared_variance, loc, scale, x.size)
        b, i = _criteria(fit, x.size)
        fits.append(fit)
        bics.append(b)
        icls.append(i)
    values_c = np.array(icls if crit == "icl" else bics)
    best = int(np.argmin(values_c))
    if crit == "icl" and best == 0 and gmin == 1 and values_c.size > 1:
        alt = 1 + int(np.argmin(values_c[1:]))
        if bics[alt] < bics[0]:
            best = alt
    out = dict(fits[best])
    out.update(
        components=np.arange(gmin, gmax + 1),
        bic=np.array(bics),
        icl=np.array(icls),
        log_likelihoods=np.array([f["log_likelihood"] for f in fits]),
        criterion=crit,
        criterion_values=values_c,
    )
    return out


# ------------------------------------------------------------------------------------------------
# atom counting
# ------------------------------------------------------------------------------------------------
def count_atoms_gmm(
    scs,
    max_components: int | None = None,
    criterion: str = "icl",
    *,
    min_count: int | None = None,
    n_components: int | None = None,
    n_init: int = 1,
    seed=0,
    max_iter: int = 1000,
) -> tuple[np.ndarray, dict]:
    """Count the atoms in every column from its SCS with a Gaussian mixture (StatSTEM method).

    The SCS distribution is modelled as ``Σ_g w_g N(μ_g, σ²)``: one component per atom count, all
    with the same width ``σ`` (the noise), free means and weights. Mixtures with 1 to
    ``max_components`` components are fitted by EM; the number of components minimising the
    criterion (``"icl"``, default, or ``"bic"``) is kept unless ``n_components`` fixes it. Each
    column is assigned to its most probable component; the components, sorted by mean, are counts
    ``n0, n0 + 1, …``.

    The offset ``n0`` (the count of the lowest component) is ``min_count`` if given. Otherwise it
    is estimated from the spacing of the means: ``n0 = max(1, round(μ₁ / (μ₂ − μ₁)))``, which is
    right when the SCS grows about linearly from zero at low counts (a concave SCS(n) makes the
    ratio an overestimate for large ``n0``). With one component, ``n0 = 1``. Give ``min_count``,
    or use :func:`count_atoms_library`, when simulations are available.

    Components that no column is assigned to, or counts missing from the specimen, shift the ranks:
    inspect ``fit_info["means"]`` for uneven spacing.

    Parameters
    ----------
    scs : (N,) scattering cross-sections (any consistent unit, e.g. e⁻·Å² or fraction·Å²).
    max_components : the largest number of components tried; default ``min(25, N // 4)``.
    criterion : ``"icl"`` or ``"bic"``.
    min_count : atom count of the lowest component, if known.
    n_components : skip the selection and fit this many components.
    n_init, seed : random EM starts (besides two deterministic ones) and their seed.
    max_iter : EM iterations per number of components (mixtures with more components than the
        data support converge slowly; their criterion is already far above the minimum).

    Returns
    -------
    counts : (N,) int array
    fit_info : dict
        ``n_components``, ``means``, ``sigma``, ``weights``, ``offset`` (= n0), ``posterior``
        (N, G; columns in count order), ``components`` (G tried), ``criterion``,
        ``criterion_values``, ``icl``, ``bic``, ``log_likelihoods``, ``log_likelihood``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> n_true = rng.integers(1, 6, 400)
    >>> counts, info = count_atoms_gmm(n_true * 1.0 + rng.normal(0, 0.1, 400), max_components=8)
    >>> info["n_components"], bool(np.all(counts == n_true))
    (5, True)
    """
    x = _as_values(scs, "scs", min_n=2)
    if min_count is not None and (int(min_count) != min_count or min_count < 0):
        raise InputError(f"min_count must be a non-negative integer, got {min_count!r}")
    if n_components is not None:
        fit = select_gaussian_mixture_1d(
            x,
            int(n_components),
            min_components=int(n_components),
            criterion=criterion,
            n_init=n_init,
            seed=seed,
            max_iter=max_iter,
        )
    else:
        if max_components is None:
            max_components = min(25, max(1, x.size // 4))
        if int(max_components) < 1:
            raise InputError(f"max_components must be at least 1, got {max_components}")
        fit = select_gaussian_mixture_1d(
            x,
            int(max_components),
            criterion=criterion,
            n_init=n_init,
            seed=seed,
            max_iter=max_iter,
        )
    means = fit["means"]
    g = fit["n_components"]
    if min_count is not None:
        n0 = int(min_count)
    elif g >= 2 and means[1] > means[0]:
        n0 = max(1, round(means[0] / (means[1] - means[0])))
    else:
        n0 = 1
    rank = fit["posterior"].argmax(axis=1)
    counts = (rank + n0).astype(int)
    info = {
        "n_components": g,
        "means": means,
        "sigma": float(fit["sigmas"][0]),
        "weights": fit["weights"],
        "offset": n0,
        "posterior": fit["posterior"],
        "components": fit["components"],
        "criterion": fit["criterion"],
        "criterion_values": fit["criterion_values"],
        "icl": fit["icl"],
        "bic": fit["bic"],
        "log_likelihoods": fit["log_likelihoods"],
        "log_likelihood": fit["log_likelihood"],
    }
    return counts, info


def count_atoms_library(scs, library_scs_per_count, counts=None) -> np.ndarray:
    """Count atoms by matching each SCS to the nearest value of a simulated library.

    Parameters
    ----------
    scs : (N,) measured scattering cross-sections.
    library_scs_per_count : (M,) simulated SCS; entry ``k`` is for ``counts[k]`` atoms.
    counts : (M,) atom counts of the library entries; default ``1..M``.

    Returns
    -------
    (N,) int array of atom counts.

    Examples
    --------
    >>> count_atoms_library([0.9, 2.2, 3.6], [1.0, 2.0, 3.0, 4.0]).tolist()
    [1, 2, 4]
    """
    x = _as_values(scs, "scs", min_n=1)
    lib = _as_values(library_scs_per_count, "library_scs_per_count", min_n=1)
    if counts is None:
        n_of = np.arange(1, lib.size + 1)
    else:
        n_of = np.asarray(counts).ravel()
        if n_of.shape != lib.shape:
            raise InputError(
                f"counts has {n_of.size} entries but the library has {lib.size}; one count per "
                "library value is needed"
            )
        if not np.all(np.isfinite(n_of.astype(float))) or np.any(n_of != np.round(n_of)):
            raise InputError("counts must be integers")
        n_of = n_of.astype(int)
    order = np.argsort(lib, kind="stable")
    lib_s, n_s = lib[order], n_of[order]
    # nearest library value via the sorted library: compare the two bracketing entries
    j = np.clip(np.searchsorted(lib_s, x), 1, max(1, lib_s.size - 1))
    if lib_s.size == 1:
        return np.full(x.size, n_s[0], dtype=int)
    left, right = lib_s[j - 1], lib_s[j]
    pick = np.where(np.abs(x - left) <= np.abs(right - x), j - 1, j)
    return n_s[pick].astype(int)
