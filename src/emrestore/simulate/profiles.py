"""Projected atomic-signal profiles f_Z(r): the per-species building block of an undistorted image.

Model (seed 001, eq. 17). Each atom of atomic number Z contributes a radially symmetric profile

    f_Z(r) = h1 exp(-r^2 / (2 r_m^2)) + h2 exp(-r / r_m) + h3 / (1 + (r / r_m)^(2n))

(the paper's typeset eq. 17 is garbled, "(r_m^2)^2" and "r_m^m"; this is the form its text
describes: a Gaussian, an exponential and a Butterworth term sharing one radius r_m), with
n ~ U[4, 16] and the shape weights h_i ~ U[0.5, 1].

Radius (eqs. 18-21). r_m is proportional to a power-transformed 2D mean-square radius r_hat_Z of
the projected atomic potential V_Z^p:

    r_m(Z) = a r_hat_Z^alpha + b,   a = Std_Z{r_hat} / Std_Z{r_hat^alpha},
                                     b = E_Z{r_hat} - a E_Z{r_hat^alpha},   alpha ~ U[0.75, 1.25],

where the mean and standard deviation run over Z = 1..103, so the transform keeps the mean and the
spread of r_hat over the periodic table and only changes how r_m orders the elements.

How r_hat_Z is obtained (our choice, no tabulated potentials are copied). For a neutral atom with
electron density rho_e the Poisson equation links the moments of the potential to those of the
density: the Fourier transform of the charge density is Z - F_e(q) = q^2 <r^2>/6 - q^4 <r^4>/120 +
..., hence V(q) ~ <r^2>/6 - q^2 <r^4>/120 and, projecting along the beam,

    r_hat_Z^2 = int r^2 V^p r dr / int V^p r dr = <r^4> / (5 <r^2>),

with <r^k> = sum over electrons of the k-th radial moment. The moments come from Slater's
screening rules (J. C. Slater, Phys. Rev. 36, 57 (1930)): ground-state configurations by the
Madelung (n + l) filling order (the handful of exceptions such as Cr and Cu are ignored),
effective charges Z_eff = Z - S from Slater's shielding constants, effective principal quantum
numbers n* = 1, 2, 3, 3.7, 4.0, 4.2 and 4.3 (n = 7, a common extension), and Slater-type orbitals
r^(n*-1) exp(-zeta r), zeta = Z_eff / n*, whose moments are closed form:
<r^k> = Gamma(2n* + 1 + k) / (Gamma(2n* + 1) (2 zeta)^k). The result has the shell structure of
real atoms (alkali metals wide, noble gases compact; hydrogen comes out at 0.65 A exactly), ranges
0.30-2.2 A over Z = 1..103 and needs no data table. The Molière/Thomas-Fermi alternative gives a
smooth r_hat ~ Z^(-1/3) without shell structure, which is why we did not use it.

Mapping r_m onto realistic widths. r_hat is the width of the whole potential, tails included
(about 1.2 A on average), while the object function of an incoherent (HAADF-like) image is much
narrower: the probe, not the atom, sets most of the width of an imaged column. We therefore
keep eq. 18 up to a per-image scale: r_m(Z) = s (a r_hat^alpha + b) / E_Z{r_hat}, where s, the
mean of r_m over the periodic table, is drawn from ``AtomProfileParams.radius_scale_A`` (default
0.10-0.30 A, an object width of thermal vibration plus the ADF scattering kernel; the probe of
``optics.py`` adds the rest). For images rendered without a probe (the paper's original use,
f_Z is then the whole column image) pass a wider range such as (0.25, 0.8) A.

Intensities (eq. 22). The integrated intensity of quasi-incoherently scattered electrons scales
as Z^gamma, gamma in [1, 2]. The h_i drawn in [0.5, 1] fix the *shape* of each profile; an overall
per-species factor then sets int f_Z d^2r proportional to Z^gamma (gamma ~ U[1, 2]), perturbed by a
log-uniform jitter (``intensity_jitter``) that is clamped so that the integrated intensity stays
strictly increasing in Z with at least half the nominal Z^gamma ratio between neighbouring species.
The heaviest species keeps its drawn h_i (scale factor 1); lighter species are scaled relative to
it. Units are arbitrary intensity (profile heights of order 1) times A^2 for integrals.

The 2D Fourier transform of the Butterworth term has no closed form: it is a Gauss-Legendre
Hankel transform tabulated on a grid of n values 0.1 apart (computed 16 grid values at a time,
one matrix product, and cached per process) and interpolated linearly in n (relative error
< 1e-4).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln, j0

from .._rng import uniform
from ..errors import ConfigError, InputError
from .config import check_range

__all__ = [
    "BOHR_RADIUS_A",
    "MAX_Z",
    "MULTISLICE_CALIBRATED_PROFILES",
    "AtomProfileParams",
    "AtomProfiles",
    "draw_atom_profiles",
    "projected_potential_rms_radius_A",
    "slater_configuration",
]

BOHR_RADIUS_A = 0.529177210903
MAX_Z = 103

# --------------------------------------------------------------------------------------------
# r_hat_Z from Slater's rules
# --------------------------------------------------------------------------------------------

_MADELUNG = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (4, 0), (3, 2), (4, 1), (5, 0), (4, 2),
             (5, 1), (6, 0), (4, 3), (5, 2), (6, 1), (7, 0), (5, 3), (6, 2), (7, 1))
_CAPACITY = {0: 2, 1: 6, 2: 10, 3: 14}
_N_STAR = {1: 1.0, 2: 2.0, 3: 3.0, 4: 3.7, 5: 4.0, 6: 4.2, 7: 4.3}
# Slater's grouping, in order: [1s] [2s,2p] [3s,3p] [3d] [4s,4p] [4d] [4f] [5s,5p] [5d] [5f] ...
_GROUPS = ((1, "sp"), (2, "sp"), (3, "sp"), (3, 2), (4, "sp"), (4, 2), (4, 3), (5, "sp"), (5, 2),
           (5, 3), (6, "sp"), (6, 2), (7, "sp"))


def _group(n: int, l: int) -> int:
    return _GROUPS.index((n, "sp") if l < 2 else (n, l))


def slater_configuration(Z: int) -> list[tuple[int, int, int, float]]:
    """Ground-state subshells of element Z as ``(n, l, electrons, Z_eff)`` by Slater's rules.

    Filling follows the Madelung order; ``Z_eff = Z - S`` with Slater's shielding constants
    (0.30 within 1s, 0.35 within a group, 0.85 for s/p electrons one shell down, 1.00 further
    down and for everything left of a d or f group).
    """
    Z = int(Z)
    if not 1 <= Z <= MAX_Z:
        raise InputError(f"atomic number must be in 1..{MAX_Z}, got {Z}")
    occupied, left = [], Z
    for n, l in _MADELUNG:
        if left <= 0:
            break
        e = min(_CAPACITY[l], left)
        occupied.append((n, l, e))
        left -= e
    out = []
    for n, l, e in occupied:
        g = _group(n, l)
        shielding = 0.0
        for n2, l2, e2 in occupied:
            g2 = _group(n2, l2)
            count = e2 - (1 if (n2, l2) == (n, l) else 0)
            if g2 == g:
                shielding += count * (0.30 if n == 1 else 0.35)
            elif g2 < g:
                if l < 2:
                    shielding += count * (0.85 if n2 == n - 1 else 1.0 if n2 < n - 1 else 0.0)
                else:
                    shielding += count
        out.append((n, l, e, Z - shielding))
    return out


def _rhat_A(Z: int) -> float:
    m2 = m4 = 0.0
    for n, _l, e, z_eff in slater_configuration(Z):
        ns = _N_STAR[n]
        two_zeta = 2.0 * z_eff / ns
        base = gammaln(2 * ns + 1)
        m2 += e * math.exp(gammaln(2 * ns + 3) - base) / two_zeta**2
        m4 += e * math.exp(gammaln(2 * ns + 5) - base) / two_zeta**4
    return math.sqrt(m4 / (5.0 * m2)) * BOHR_RADIUS_A


_RHAT_TABLE_A = np.array([_rhat_A(z) for z in range(1, MAX_Z + 1)])


def projected_potential_rms_radius_A(Z) -> np.ndarray | float:
    """2D root-mean-square radius r_hat_Z (A) of the projected potential of element(s) Z (eq. 21).

    Computed from Slater-rule orbitals via r_hat^2 = <r^4> / (5 <r^2>); see the module docstring.
    """
    z = np.asarray(Z)
    if np.any(z < 1) or np.any(z > MAX_Z):
        raise InputError(f"atomic numbers must be in 1..{MAX_Z}, got {Z!r}")
    out = _RHAT_TABLE_A[z.astype(int) - 1]
    return float(out) if out.ndim == 0 else out


# --------------------------------------------------------------------------------------------
# Hankel transform of the Butterworth term, b_n(kappa) = 2 pi int J0(2 pi kappa u) u/(1+u^2n) du
# --------------------------------------------------------------------------------------------

_KAPPA_MAX = 40.0  # beyond this (k * r_m) the Butterworth transform is set to zero (< 1e-3 rel.)
_KAPPA_TABLE = np.linspace(0.0, _KAPPA_MAX, 2001)
_U_MAX = 5.0


@functools.lru_cache(maxsize=1)
def _hankel_matrix() -> tuple[np.ndarray, np.ndarray]:
    # composite 8-point Gauss-Legendre on 90 panels of [0, _U_MAX]
    nodes, weights = np.polynomial.legendre.leggauss(8)
    edges = np.linspace(0.0, _U_MAX, 91)
    half = 0.5 * np.diff(edges)
    u = ((edges[:-1] + half)[:, None] + half[:, None] * nodes[None, :]).ravel()
    w = (half[:, None] * weights[None, :]).ravel()
    mat = j0(2.0 * np.pi * np.outer(_KAPPA_TABLE, u)) * (2.0 * np.pi * u * w)[None, :]
    return mat, u


_N_STEP = 0.1


_CHUNK = 16  # grid orders computed together: one pass over the Hankel matrix serves them all


@functools.cache
def _butterworth_chunk(c: int) -> np.ndarray:
    """b_n on ``_KAPPA_TABLE`` for the grid orders n = i * _N_STEP, i in [c, c + 1) * _CHUNK."""
    mat, u = _hankel_matrix()
    n = np.arange(c * _CHUNK, (c + 1) * _CHUNK) * _N_STEP
    with np.errstate(over="ignore"):
        weights = 1.0 / (1.0 + u[None, :] ** (2.0 * n[:, None]))
    # one matrix-vector product per order (the matrix stays in cache): unlike a matrix-matrix
    # product, its rounding does not depend on the number of BLAS threads
    tables = np.stack([mat @ w for w in weights])
    for j, nj in enumerate(n):  # exact k = 0 value, far tail included (defined for n > 1)
        tables[j, 0] = 2.0 * np.pi * _butterworth_area_factor(nj) if nj > 1.0 else np.inf
    tables.flags.writeable = False
    return tables


def _butterworth_node(i: int) -> np.ndarray:
    """b_n on ``_KAPPA_TABLE`` for the grid order n = i * _N_STEP (r_m = 1); read-only."""
    return _butterworth_chunk(i // _CHUNK)[i % _CHUNK]


def _butterworth_table(n: float) -> np.ndarray:
    """b_n(kappa) = 2 pi int J0(2 pi kappa u) u / (1 + u^2n) du on ``_KAPPA_TABLE``.

    Linear interpolation in n between cached tables 0.1 apart (relative error < 1e-4); the
    value at kappa = 0 is exact.
    """
    x = n / _N_STEP
    i = math.floor(x)
    t = x - i
    table = (1.0 - t) * _butterworth_node(i) + t * _butterworth_node(i + 1) if t > 1e-12 \
        else _butterworth_node(i).copy()
    table[0] = 2.0 * np.pi * _butterworth_area_factor(n)
    return table


@functools.cache
def _butterworth_tail_node(i: int) -> np.ndarray:
    """L1 mass of |b_n| outside kappa (per unit 2 pi), for the grid order n = i * _N_STEP."""
    kap = _KAPPA_TABLE
    bt = np.abs(_butterworth_node(i)) * 2.0 * np.pi * kap
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (bt[1:] + bt[:-1]) * np.diff(kap))])
    return (cum[-1] - cum) / (2.0 * math.pi)


def _butterworth_tail(n: float) -> np.ndarray:
    x = n / _N_STEP
    i = math.floor(x)
    t = x - i
    return (1.0 - t) * _butterworth_tail_node(i) + t * _butterworth_tail_node(i + 1)


def _butterworth_area_factor(n: float) -> float:
    """c_n = int_0^inf u / (1 + u^(2n)) du = (pi / 2n) / sin(pi / n)."""
    return (math.pi / (2.0 * n)) / math.sin(math.pi / n)


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AtomProfileParams:
    """Ranges for the atom-profile model (seed 001, eqs. 17-22); defaults are the paper's.

    Attributes
    ----------
    n_range : Butterworth order n ~ U[4, 16].
    h_range : shape weights h1, h2, h3 ~ U[0.5, 1] (relative; see eq. 22 handling).
    alpha_range : power alpha of eq. 18, U[0.75, 1.25].
    radius_scale_A : mean of r_m over Z = 1..103 in A, drawn uniformly per image (our mapping of
        eq. 18 onto object widths; the probe adds the rest). Use about (0.25, 0.8) without a probe.
    gamma_range : exponent of the Z^gamma integrated-intensity law, U[1, 2].
    intensity_jitter : half-width of a uniform perturbation of log(integrated intensity).
    """

    n_range: tuple[float, float] = (4.0, 16.0)
    h_range: tuple[float, float] = (0.5, 1.0)
    alpha_range: tuple[float, float] = (0.75, 1.25)
    radius_scale_A: tuple[float, float] = (0.10, 0.30)
    gamma_range: tuple[float, float] = (1.0, 2.0)
    intensity_jitter: float = 0.1

    def __post_init__(self):
        check_range("n_range", self.n_range, lo=2.0)
        check_range("h_range", self.h_range, lo=0.0)
        if self.h_range[1] <= 0:
            raise ConfigError("h_range: the upper bound must be positive")
        check_range("alpha_range", self.alpha_range, lo=0.05)
        check_range("radius_scale_A", self.radius_scale_A, lo=1e-3, hi=10.0)
        check_range("gamma_range", self.gamma_range, lo=0.0)
        if not 0.0 <= self.intensity_jitter < 1.0:
            raise ConfigError(f"intensity_jitter must be in [0, 1), got {self.intensity_jitter}")


#: The atom-profile ranges after the multislice calibration (issue 7, docs/simulation.md §5):
#: HAADF multislice of the calibration specimens implies γ 1.27-3.25 and r_m scales of
#: 0.15-0.39 Å, outside the paper's U[1, 2] and 0.10-0.30 Å. The training libraries that follow the
#: calibration take them from configs/sampler-calibrated.toml (a test keeps the two equal); the
#: benchmark's linear twin of the multislice series renders with them.
MULTISLICE_CALIBRATED_PROFILES = AtomProfileParams(gamma_range=(1.0, 3.35),
                                                   radius_scale_A=(0.10, 0.45))


# --------------------------------------------------------------------------------------------
# Concrete profiles
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AtomProfiles:
    """Concrete per-species profile parameters of one image.

    ``species[i]`` has weights ``h[i] = (h1, h2, h3)`` (intensity units), Butterworth order
    ``n[i]`` and radius ``r_m_A[i]`` (A). ``alpha``, ``gamma`` and ``radius_scale_A`` record the
    per-image draws. Instances are hashable (all tuples), so derived tables can be cached.
    """

    species: tuple[int, ...]
    h: tuple[tuple[float, float, float], ...]
    n: tuple[float, ...]
    r_m_A: tuple[float, ...]
    alpha: float = 1.0
    gamma: float = 1.0
    radius_scale_A: float = 0.2

    def __post_init__(self):
        k = len(self.species)
        if not (len(self.h) == len(self.n) == len(self.r_m_A) == k):
            raise InputError("AtomProfiles: species, h, n and r_m_A must have the same length")
        if len(set(self.species)) != k:
            raise InputError(f"AtomProfiles: duplicate species in {self.species}")
        for z, hh, nn, rm in zip(self.species, self.h, self.n, self.r_m_A):
            if len(hh) != 3 or min(hh) < 0:
                raise InputError(f"AtomProfiles: Z={z}: h must be three non-negative numbers")
            if nn <= 1.0 or rm <= 0:
                raise InputError(f"AtomProfiles: Z={z}: need n > 1 and r_m > 0 (n={nn}, r_m={rm})")

    # -- lookup ------------------------------------------------------------------------------
    def _index(self, Z: int) -> int:
        try:
            return self.species.index(int(Z))
        except ValueError:
            raise InputError(
                f"no atom profile for Z={int(Z)}; this image's species are {list(self.species)}"
            ) from None

    def params(self, Z: int) -> tuple[tuple[float, float, float], float, float]:
        """``(h, n, r_m_A)`` of species Z."""
        i = self._index(Z)
        return self.h[i], self.n[i], self.r_m_A[i]

    # -- real space --------------------------------------------------------------------------
    def radial(self, Z: int, r_A) -> np.ndarray:
        """f_Z(r) at distances ``r_A`` (A), eq. 17 (intensity units)."""
        (h1, h2, h3), n, rm = self.params(Z)
        x = np.abs(np.asarray(r_A, dtype=float)) / rm
        return h1 * np.exp(-0.5 * x * x) + h2 * np.exp(-x) + h3 / (1.0 + x ** (2.0 * n))

    def integrated_intensity(self, Z: int) -> float:
        """int f_Z d^2r in intensity x A^2 (closed form)."""
        (h1, h2, h3), n, rm = self.params(Z)
        return 2.0 * math.pi * rm * rm * (h1 + h2 + h3 * _butterworth_area_factor(n))

    def extent_A(self, Z: int, rel: float = 1e-3) -> float:
        """Radius (A) beyond which f_Z stays below ``rel`` times its peak (closed-form bound:
        the largest radius at which any one term still exceeds a third of that level)."""
        (h1, h2, h3), n, rm = self.params(Z)
        level = rel * (h1 + h2 + h3) / 3.0
        x = 0.0
        if h1 > level:
            x = max(x, math.sqrt(2.0 * math.log(h1 / level)))
        if h2 > level:
            x = max(x, math.log(h2 / level))
        if h3 > level:
            x = max(x, (h3 / level - 1.0) ** (1.0 / (2.0 * n)))
        return float(x * rm)

    # -- Fourier space -----------------------------------------------------------------------
    def transform(self, Z: int, k_inv_A) -> np.ndarray:
        """2D Fourier transform F_Z(k) = int f_Z(r) exp(-2 pi i k.r) d^2r at |k| (1/A).

        Gaussian and exponential terms are analytic; the Butterworth term uses a cached
        Gauss-Legendre Hankel transform (set to zero beyond k r_m = 40, where it is < 1e-3 of
        its value at k = 0). F_Z(0) equals ``integrated_intensity(Z)``.
        """
        (h1, h2, h3), n, rm = self.params(Z)
        k = np.abs(np.asarray(k_inv_A, dtype=float))
        a = 2.0 * math.pi * rm * k
        out = 2.0 * math.pi * rm * rm * (h1 * np.exp(-0.5 * a * a) + h2 * (1.0 + a * a) ** -1.5)
        if h3 > 0:
            table = _butterworth_table(n)
            out = out + h3 * rm * rm * np.interp(k * rm, _KAPPA_TABLE, table, right=0.0)
        return out

    def transform_many(self, species, k_inv_A) -> np.ndarray:
        """``transform`` for several species at once: array (len(species), len(k))."""
        k = np.abs(np.asarray(k_inv_A, dtype=float)).ravel()
        rows = [self._index(z) for z in species]
        h = np.array([self.h[i] for i in rows])
        rm = np.array([self.r_m_A[i] for i in rows])[:, None]
        a2 = (2.0 * math.pi * rm * k[None, :]) ** 2
        out = h[:, 0:1] * np.exp(-0.5 * a2) + h[:, 1:2] / ((1.0 + a2) * np.sqrt(1.0 + a2))
        out *= 2.0 * math.pi * rm * rm
        for j, i in enumerate(rows):
            if h[j, 2] > 0:
                table = _butterworth_table(self.n[i])
                out[j] += h[j, 2] * rm[j, 0] ** 2 * np.interp(k * rm[j, 0], _KAPPA_TABLE, table,
                                                             right=0.0)
        return out

    def band_limit_inv_A(self, Z: int, tol: float = 1e-3) -> float:
        """Radius K (1/A) such that |F_Z| beyond K holds at most ``tol`` of its L1 mass.

        The L1 mass of |F_Z| over the plane is f_Z(0) for the positive terms; the exponential
        term's cusp gives a slowly decaying tail (mass h2 / sqrt(1 + (2 pi r_m K)^2)), so without a
        probe this radius is large.
        """
        (h1, h2, h3), n, rm = self.params(Z)
        kap = _KAPPA_TABLE
        btail = _butterworth_tail(n) if h3 > 0 else 0.0 * kap
        a = 2.0 * math.pi * kap
        tail = h1 * np.exp(-0.5 * a * a) + h2 / np.sqrt(1.0 + a * a) + h3 * btail
        total = tail[0]
        ok = np.nonzero(tail <= tol * total)[0]
        if ok.size:
            return float(kap[ok[0]] / rm)
        # exponential tail: solve h2 / sqrt(1 + a^2) = tol * total
        a_need = math.sqrt(max((h2 / (tol * total)) ** 2 - 1.0, 0.0))
        return float(max(a_need / (2.0 * math.pi), kap[-1]) / rm)

    # -- export ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain, JSON-serialisable record of the drawn values (integrated intensities included)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # no deep copy
        d["species"] = list(self.species)
        d["h"] = [list(x) for x in self.h]
        d["n"] = list(self.n)
        d["r_m_A"] = list(self.r_m_A)
        d["integrated_intensity"] = [self.integrated_intensity(z) for z in self.species]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AtomProfiles:
        return cls(
            species=tuple(int(z) for z in d["species"]),
            h=tuple(tuple(float(v) for v in x) for x in d["h"]),
            n=tuple(float(v) for v in d["n"]),
            r_m_A=tuple(float(v) for v in d["r_m_A"]),
            alpha=float(d.get("alpha", 1.0)),
            gamma=float(d.get("gamma", 1.0)),
            radius_scale_A=float(d.get("radius_scale_A", 0.2)),
        )


def radius_law_A(alpha: float, radius_scale_A: float) -> np.ndarray:
    """r_m for Z = 1..103 (index Z - 1) by eqs. 18-20, rescaled to mean ``radius_scale_A``."""
    r = _RHAT_TABLE_A
    ra = r**alpha
    a = r.std() / ra.std()
    b = r.mean() - a * ra.mean()
    rm = a * ra + b
    rm = np.maximum(rm, 0.05 * r.mean())  # eq. 18 can only go negative for extreme alpha
    return rm * (radius_scale_A / r.mean())


def draw_atom_profiles(rng: np.random.Generator, species, params: AtomProfileParams | None = None
                       ) -> AtomProfiles:
    """Draw concrete profiles for the atomic numbers in ``species`` (any order, duplicates ok).

    Parameters
    ----------
    rng : numpy Generator (the only source of randomness).
    species : iterable of atomic numbers 1..103.
    params : ranges; defaults to ``AtomProfileParams()``.

    Returns
    -------
    AtomProfiles with species sorted by Z and integrated intensities strictly increasing in Z.
    """
    params = params or AtomProfileParams()
    zs = sorted({int(z) for z in np.atleast_1d(np.asarray(species, dtype=int)).ravel()})
    if not zs:
        raise InputError("draw_atom_profiles: no species given")
    if zs[0] < 1 or zs[-1] > MAX_Z:
        raise InputError(f"atomic numbers must be in 1..{MAX_Z}, got {zs}")
    alpha = uniform(rng, params.alpha_range)
    scale = uniform(rng, params.radius_scale_A)
    gamma = uniform(rng, params.gamma_range)
    rm_all = radius_law_A(alpha, scale)
    k = len(zs)
    weights = params.h_range[0] + (params.h_range[1] - params.h_range[0]) * rng.random((k, 3))
    n_lo, n_hi = params.n_range
    n_values = n_lo + (n_hi - n_lo) * rng.random(k)
    jitter = params.intensity_jitter * (2.0 * rng.random(k) - 1.0)

    z_arr = np.array(zs, dtype=float)
    log_target = gamma * np.log(z_arr) + jitter
    for j in range(1, k):  # eq. 22: strictly increasing, at least half the nominal step
        floor = log_target[j - 1] + 0.5 * gamma * math.log(z_arr[j] / z_arr[j - 1])
        log_target[j] = max(log_target[j], floor)

    rms = rm_all[np.array(zs) - 1]
    unit_int = np.array([
        2.0 * math.pi * rms[i] ** 2
        * (weights[i, 0] + weights[i, 1] + weights[i, 2] * _butterworth_area_factor(n_values[i]))
        for i in range(k)
    ])
    target = np.exp(log_target - log_target[-1]) * unit_int[-1]
    amp = target / unit_int
    h = tuple(tuple(float(v) for v in amp[i] * weights[i]) for i in range(k))
    return AtomProfiles(
        species=tuple(zs),
        h=h,
        n=tuple(float(v) for v in n_values),
        r_m_A=tuple(float(v) for v in rms),
        alpha=float(alpha),
        gamma=float(gamma),
        radius_scale_A=float(scale),
    )
