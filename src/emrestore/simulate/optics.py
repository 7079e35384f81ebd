"""Probe optics for the linear (incoherent) imaging model, and simple isotropic point spreads.

Linear imaging model (seed 003, "Forward model"): an incoherent ADF-STEM image is the object
function convolved with the probe intensity, I = sigma (x) |psi|^2, where the probe is

    psi(r) = FT^-1[ A(k) exp(-i chi(k)) ],     A(k) = 1 for |k| <= alpha / lambda, 0 beyond.

Aberration function (Krivanek / abTEM sign convention, k in 1/A, lambda in A):

    chi(k) = pi lambda C1 k^2 + (pi/2) C3 lambda^3 k^4 + (pi/3) C5 lambda^5 k^6
           + pi lambda A1 k^2 cos 2(phi - phi_A1)                       (two-fold astigmatism)
           + (2 pi/3) lambda^2 B2 k^3 cos(phi - phi_B2)                  (axial coma)
           + (2 pi/3) lambda^2 A2 k^3 cos 3(phi - phi_A2)                (three-fold astigmatism)

C1 is the defocus; C1 < 0 is under-focus (a weaker lens), so the Scherzer-type optimum of an
uncorrected probe is C1 = -sqrt(C3 lambda). Coma and three-fold astigmatism are odd in k and make
the probe non-centrosymmetric; with them zero the probe intensity is centrosymmetric.

Relativistic wavelength: lambda = h / sqrt(2 m0 e V (1 + e V / (2 m0 c^2))), CODATA constants.

Finite (incoherent) source size: the probe intensity is convolved with a Gaussian of the given FWHM
(its transfer function exp(-2 pi^2 sigma^2 k^2) multiplies the probe's OTF).

Sampling. The probe intensity is band-limited at 2 alpha / lambda. It is computed once per probe on
its own grid, fine enough for that band (pixel <= 1/(4.4 alpha/lambda)) and wide enough for the
ray displacement |grad chi| / 2 pi plus the Airy tails, so a coarse image pixel never aliases it.
What the renderer needs is the optical transfer function OTF(k) = FT[|psi|^2](k) / FT[|psi|^2](0)
at the image's lattice frequencies: for a round probe it is a radial table obtained from the
projection-slice theorem (1D FT of the projected intensity, zero-padded for a fine k step), for a
non-round probe the 2D OTF is interpolated (cubic splines) from a twice zero-padded FFT.

TEM / SEM. ``GaussianPSF`` is an isotropic Gaussian point spread (an information-limit or beam
blur, FWHM in A) with the same interface; the TEM camera MTF belongs to the detector stage.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy import constants, ndimage, sparse
from scipy.special import j0

from .._rng import chance, uniform
from ..errors import ConfigError, InputError
from .config import check_range

__all__ = [
    "GaussianPSF",
    "GaussianPSFParams",
    "Probe",
    "ProbeParams",
    "draw_gaussian_psf",
    "draw_probe",
    "electron_wavelength_A",
    "fwhm_from_sigma",
    "probe_intensity",
    "probe_otf",
    "rfft_frequencies",
]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def fwhm_from_sigma(sigma):
    return sigma * FWHM_PER_SIGMA


def electron_wavelength_A(voltage_kV: float) -> float:
    """Relativistic electron wavelength in A for an accelerating voltage in kV."""
    if voltage_kV <= 0:
        raise InputError(f"accelerating voltage must be positive, got {voltage_kV} kV")
    v = voltage_kV * 1e3
    e, m0, c, h = constants.e, constants.m_e, constants.c, constants.h
    p = math.sqrt(2.0 * m0 * e * v * (1.0 + e * v / (2.0 * m0 * c * c)))
    return h / p * 1e10


def rfft_frequencies(shape: tuple[int, int], pixel_size_A: float) -> tuple[np.ndarray, np.ndarray]:
    """(ky[:, None], kx[None, :]) in 1/A for ``scipy.fft.rfft2`` of an array of ``shape``."""
    ny, nx = shape
    ky = sfft.fftfreq(ny, d=pixel_size_A)[:, None]
    kx = sfft.rfftfreq(nx, d=pixel_size_A)[None, :]
    return ky, kx


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeParams:
    """Ranges for an HR-STEM probe; one probe is drawn per image by ``draw_probe``.

    Aberration-corrected probes (probability ``corrected_probability``): convergence semi-angle
    U[15, 35] mrad, defocus C1 U[-30, 30] A, C3 U[-5, 5] um, C5 U[-3, 3] mm.
    Uncorrected probes: C3 U[0.5, 2.0] mm, near-optimum alpha = (4 lambda / C3)^(1/4) x U[0.85, 1.1]
    kept in [8, 15] mrad, and C1 = -sqrt(C3 lambda) x U[0.8, 1.2] (under-focus).
    With probability ``residual_probability`` small non-round residuals are added: two-fold
    astigmatism A1 U[0, 15] A, coma B2 U[0, 300] A, three-fold A2 U[0, 300] A, random azimuths.
    Source size: Gaussian, FWHM U[0.3, 1.0] A (seed 003 uses 0.8-1.6 A "source size").
    Voltages are drawn from ``voltage_kV_choices``.
    """

    voltage_kV_choices: tuple[float, ...] = (60.0, 80.0, 100.0, 120.0, 200.0, 300.0)
    corrected_probability: float = 0.8
    convergence_mrad: tuple[float, float] = (15.0, 35.0)
    defocus_A: tuple[float, float] = (-30.0, 30.0)
    c3_um: tuple[float, float] = (-5.0, 5.0)
    c5_mm: tuple[float, float] = (-3.0, 3.0)
    uncorrected_c3_mm: tuple[float, float] = (0.5, 2.0)
    uncorrected_convergence_mrad: tuple[float, float] = (8.0, 15.0)
    uncorrected_alpha_factor: tuple[float, float] = (0.85, 1.1)
    uncorrected_defocus_factor: tuple[float, float] = (0.8, 1.2)
    residual_probability: float = 0.25
    astigmatism_A: tuple[float, float] = (0.0, 15.0)
    coma_A: tuple[float, float] = (0.0, 300.0)
    threefold_A: tuple[float, float] = (0.0, 300.0)
    source_fwhm_A: tuple[float, float] = (0.3, 1.0)

    def __post_init__(self):
        if not self.voltage_kV_choices or min(self.voltage_kV_choices) <= 0:
            raise ConfigError("voltage_kV_choices: need at least one positive voltage")
        for name in ("corrected_probability", "residual_probability"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {p}")
        check_range("convergence_mrad", self.convergence_mrad, lo=0.1, hi=200.0)
        check_range("uncorrected_convergence_mrad", self.uncorrected_convergence_mrad, lo=0.1)
        check_range("defocus_A", self.defocus_A)
        check_range("c3_um", self.c3_um)
        check_range("c5_mm", self.c5_mm)
        check_range("uncorrected_c3_mm", self.uncorrected_c3_mm, lo=0.0)
        check_range("uncorrected_alpha_factor", self.uncorrected_alpha_factor, lo=0.01)
        check_range("uncorrected_defocus_factor", self.uncorrected_defocus_factor)
        check_range("astigmatism_A", self.astigmatism_A, lo=0.0)
        check_range("coma_A", self.coma_A, lo=0.0)
        check_range("threefold_A", self.threefold_A, lo=0.0)
        check_range("source_fwhm_A", self.source_fwhm_A, lo=0.0)


# --------------------------------------------------------------------------------------------
# Probe
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A concrete STEM probe. Lengths in A, angles in mrad / radians, voltage in kV."""

    voltage_kV: float = 200.0
    convergence_mrad: float = 25.0
    defocus_A: float = 0.0
    c3_A: float = 0.0
    c5_A: float = 0.0
    astigmatism_A: float = 0.0
    astigmatism_angle_rad: float = 0.0
    coma_A: float = 0.0
    coma_angle_rad: float = 0.0
    threefold_A: float = 0.0
    threefold_angle_rad: float = 0.0
    source_fwhm_A: float = 0.0
    corrected: bool = True

    def __post_init__(self):
        if self.voltage_kV <= 0 or self.convergence_mrad <= 0:
            raise InputError("Probe: voltage and convergence angle must be positive")
        if self.source_fwhm_A < 0:
            raise InputError("Probe: source FWHM must be >= 0")

    @property
    def wavelength_A(self) -> float:
        return electron_wavelength_A(self.voltage_kV)

    @property
    def aperture_inv_A(self) -> float:
        """Aperture radius alpha / lambda in reciprocal space (1/A)."""
        return self.convergence_mrad * 1e-3 / self.wavelength_A

    @property
    def is_round(self) -> bool:
        return self.astigmatism_A == 0 and self.coma_A == 0 and self.threefold_A == 0

    @property
    def is_centrosymmetric(self) -> bool:
        return self.coma_A == 0 and self.threefold_A == 0

    def chi(self, kx, ky) -> np.ndarray:
        """Aberration phase chi (rad) at reciprocal-space coordinates (1/A)."""
        lam = self.wavelength_A
        kx = np.asarray(kx, dtype=float)
        ky = np.asarray(ky, dtype=float)
        k2 = kx * kx + ky * ky
        out = (math.pi * lam * self.defocus_A * k2
               + 0.5 * math.pi * self.c3_A * lam**3 * k2 * k2
               + (math.pi / 3.0) * self.c5_A * lam**5 * k2 * k2 * k2)
        if not self.is_round:
            phi = np.arctan2(ky, kx)
            k = np.sqrt(k2)
            out = out + math.pi * lam * self.astigmatism_A * k2 * np.cos(
                2.0 * (phi - self.astigmatism_angle_rad))
            out = out + (2.0 * math.pi / 3.0) * lam**2 * k2 * k * (
                self.coma_A * np.cos(phi - self.coma_angle_rad)
                + self.threefold_A * np.cos(3.0 * (phi - self.threefold_angle_rad)))
        return out

    def ray_displacement_A(self) -> float:
        """Largest geometric ray displacement |grad chi| / 2 pi over the aperture (A)."""
        kmax = self.aperture_inv_A
        lam = self.wavelength_A
        k = np.linspace(0.0, kmax, 256)
        d = (np.abs(lam * self.defocus_A * k + self.c3_A * lam**3 * k**3
                    + self.c5_A * lam**5 * k**5)
             + lam * abs(self.astigmatism_A) * k
             + lam**2 * (abs(self.coma_A) + abs(self.threefold_A)) * k * k)
        return float(d.max())

    # -- derived quantities ------------------------------------------------------------------
    def _grid(self) -> _ProbeGrid:
        return _probe_grid(self)

    def otf_radial(self, k_inv_A) -> np.ndarray:
        """OTF at |k| (round probes only; includes the source blur)."""
        if not self.is_round:
            raise InputError("otf_radial: the probe is not round; use otf_2d")
        return self._grid().radial_otf(k_inv_A)

    def otf_2d(self, ky, kx) -> np.ndarray:
        """OTF (complex for non-centrosymmetric probes) at lattice points (1/A), OTF(0) = 1."""
        ky, kx = np.asarray(ky, float), np.asarray(kx, float)
        if not self.is_round and ky.ndim == kx.ndim == 2 and ky.shape[1] == kx.shape[0] == 1:
            # a lattice (rows of ky times columns of kx): separable interpolation
            return self._grid().interpolate_lattice(ky[:, 0], kx[0, :])
        ky, kx = np.broadcast_arrays(ky, kx)
        if self.is_round:
            return self.otf_radial(np.hypot(ky, kx))
        return self._grid().interpolate(ky, kx)

    def extent_A(self, rel: float = 1e-3) -> float:
        """Radius (A) beyond which the probe intensity stays below ``rel`` times its peak."""
        return self._grid().extent_A(rel)

    def cutoff_inv_A(self) -> float:
        """Spatial frequency (1/A) beyond which the OTF is exactly zero: 2 alpha / lambda."""
        return 2.0 * self.aperture_inv_A

    def otf_envelope(self, k_inv_A) -> np.ndarray:
        """|OTF| at |k| (exact for round probes; along kx for non-round ones)."""
        g = self._grid()
        return np.interp(np.abs(k_inv_A), g.k_table, np.abs(g.otf_table), right=0.0)

    def band_limit_inv_A(self, tol: float = 1e-3) -> float:
        """Radius (1/A) outside which |OTF| holds at most ``tol`` of its L1 mass."""
        return self._grid().band_limit(tol)

    @property
    def fwhm_A(self) -> float:
        """FWHM (A) of the probe intensity including the source blur (azimuthal average)."""
        return self._grid().fwhm_A()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["wavelength_A"] = self.wavelength_A
        d["kind"] = "probe"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Probe:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class _ProbeGrid:
    """Probe intensity on its own well-sampled grid plus derived OTF tables (one per probe)."""

    def __init__(self, probe: Probe):
        lam = probe.wavelength_A
        kmax = probe.aperture_inv_A
        h = 1.0 / (4.4 * kmax)
        sigma_s = probe.source_fwhm_A / FWHM_PER_SIGMA
        airy = 30.0 * lam / (2.0 * math.pi * probe.convergence_mrad * 1e-3)  # v = 30 radius
        field = max(16.0, 4.0 * probe.ray_displacement_A() + 2.0 * airy + 8.0 * sigma_s)
        n = sfft.next_fast_len(math.ceil(field / h))
        if n > 1024:
            n = 1024
        field = n * h
        self.h, self.n = h, n
        k1 = sfft.fftfreq(n, d=h)
        kx, ky = k1[None, :], k1[:, None]
        k = np.hypot(kx, ky)
        dk = 1.0 / field
        # aperture with a one-sample soft edge (reduces staircase effects of the sampled disc)
        aperture = np.clip((kmax - k) / dk + 0.5, 0.0, 1.0)
        pupil = aperture * np.exp(-1j * probe.chi(kx, ky))
        psi = sfft.ifft2(pupil)
        intensity = (psi.real**2 + psi.imag**2)
        otf = sfft.fft2(intensity)
        otf = otf / otf[0, 0]
        source = np.exp(-2.0 * math.pi**2 * sigma_s**2 * k * k)
        otf = otf * source
        self.centro = probe.is_centrosymmetric
        if self.centro:
            otf = otf.real
        self.otf = otf
        self.k_support = 2.0 * kmax
        self.sigma_s = sigma_s
        img = sfft.ifft2(otf).real
        self.image = sfft.fftshift(img) / img.sum()  # centred at (n//2, n//2), sum 1
        self.round = probe.is_round
        # radial table via the projection-slice theorem (exact for round probes)
        pad = 16 * n
        proj = np.zeros(pad)
        proj[(np.arange(n) - n // 2) % pad] = self.image.sum(axis=0)  # origin at index 0
        ft = sfft.rfft(proj)
        self.k_table = sfft.rfftfreq(pad, d=h)
        tab = ft.real / ft.real[0] if self.round else np.abs(ft) / abs(ft[0])
        tab = tab.copy()
        tab[self.k_table > self.k_support] = 0.0
        self.otf_table = tab  # for non-round probes: |OTF| along kx, used only for band limits
        self._interp_cache: dict = {}
        self._fwhm: float | None = None

    # 2D interpolation for non-round probes -------------------------------------------------
    def _padded(self):
        if "pad" not in self._interp_cache:
            n2 = 2 * self.n
            img = np.zeros((n2, n2))
            j = (np.arange(self.n) - self.n // 2) % n2  # origin at index 0
            img[np.ix_(j, j)] = self.image
            f = sfft.fftshift(sfft.fft2(img))
            f = f / f[n2 // 2, n2 // 2]
            re = ndimage.spline_filter(f.real, order=3, mode="grid-wrap")
            im = ndimage.spline_filter(f.imag, order=3, mode="grid-wrap")
            self._interp_cache["pad"] = (re, im, 1.0 / (n2 * self.h), n2)
        return self._interp_cache["pad"]

    def interpolate(self, ky, kx) -> np.ndarray:
        re, im, dk, n2 = self._padded()
        coords = np.stack([ky / dk + n2 // 2, kx / dk + n2 // 2])
        out = ndimage.map_coordinates(re, coords, order=3, mode="grid-wrap", prefilter=False)
        if not self.centro:
            out = out + 1j * ndimage.map_coordinates(im, coords, order=3, mode="grid-wrap",
                                                     prefilter=False)
        out[np.hypot(ky, kx) > self.k_support] = 0.0
        return out

    def radial_otf(self, k_inv_A) -> np.ndarray:
        """Linear interpolation of the radial OTF table at |k| (0 beyond it): ``np.interp`` on
        the uniform ``k_table`` without its per-point binary search."""
        k = np.abs(np.asarray(k_inv_A, dtype=float))
        table = self.otf_table
        x = k * (1.0 / self.k_table[1])
        i = np.minimum(x.astype(np.intp), table.size - 2)
        t = x - i
        out = table[i] * (1.0 - t) + table[i + 1] * t
        return np.where(x > table.size - 1, 0.0, out)

    def interpolate_lattice(self, ky: np.ndarray, kx: np.ndarray) -> np.ndarray:
        """``interpolate`` at every (ky[i], kx[j]): the same cubic B-spline, evaluated as two 1-D
        passes (4 taps along ky for the needed columns, then 4 along kx) instead of 16 taps per
        point, a few times faster on the renderer's frequency blocks."""
        re, im, dk, n2 = self._padded()
        if "coef" not in self._interp_cache:
            self._interp_cache["coef"] = re if self.centro else re + 1j * im
        coef = self._interp_cache["coef"]
        iy, wy = _bspline_taps(ky / dk + n2 // 2, n2)
        ix, wx = _bspline_taps(kx / dk + n2 // 2, n2)
        # sparse 4-band interpolation matrices: out = Wy @ coef @ Wx^T
        wy_mat = sparse.csr_matrix((wy.ravel(), iy.ravel(), np.arange(0, iy.size + 1, 4)),
                                   shape=(ky.size, n2))
        wx_mat = sparse.csr_matrix((wx.ravel(), ix.ravel(), np.arange(0, ix.size + 1, 4)),
                                   shape=(kx.size, n2))
        out = np.asarray((wx_mat @ (wy_mat @ coef).T).T)
        out[np.hypot(ky[:, None], kx[None, :]) > self.k_support] = 0.0
        return out

    def extent_A(self, rel: float) -> float:
        img = self.image
        c = self.n // 2
        yy, xx = np.indices(img.shape)
        r = np.hypot(yy - c, xx - c) * self.h
        above = r[img > rel * img.max()]
        return float(above.max() + self.h) if above.size else self.h

    def band_limit(self, tol: float) -> float:
        k = self.k_table
        w = np.abs(self.otf_table) * 2.0 * math.pi * k
        cum = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * np.diff(k))])
        tail = cum[-1] - cum
        ok = np.nonzero(tail <= tol * cum[-1])[0]
        return float(k[ok[0]]) if ok.size else float(self.k_support)

    def fwhm_A(self) -> float:
        """FWHM of the azimuthally averaged intensity, from a Hankel transform of the OTF."""
        if self._fwhm is None:
            self._fwhm = self._compute_fwhm()
        return self._fwhm

    def _compute_fwhm(self) -> float:
        if self.round:
            k, otf = self.k_table, self.otf_table
            step = max(1, k.size // 1024)
            k, otf = k[::step], otf[::step]
        else:
            k1 = sfft.fftfreq(self.n, d=self.h)
            kk = np.hypot(k1[None, :], k1[:, None]).ravel()
            dk = 1.0 / (self.n * self.h)
            b = np.round(kk / dk).astype(int)
            otf = np.bincount(b, np.real(self.otf).ravel()) / np.maximum(np.bincount(b), 1)
            k = np.arange(otf.size) * dk
        sel = k <= self.k_support
        k, otf = k[sel], otf[sel]
        wk = otf * k * np.gradient(k)

        def intensity(r):
            return j0(2.0 * math.pi * np.outer(r, k)) @ wk

        i0 = float(intensity(np.zeros(1))[0])
        r_hi = 4.0 / max(self.k_support, 1e-9) + 6.0 * self.sigma_s
        lo, hi = 0.0, r_hi
        for _ in range(3):  # bracket the half-maximum crossing, then refine the bracket
            r = np.linspace(lo, hi, 48)
            prof = intensity(r)
            i = int(np.argmax(prof < 0.5 * i0))
            if i == 0:
                return float("nan")
            lo, hi = r[i - 1], r[i]
        p0, p1 = intensity(np.array([lo, hi]))
        return float(2.0 * (lo + (0.5 * i0 - p0) * (hi - lo) / (p1 - p0)))


def _bspline_taps(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (mod n) and cubic B-spline weights of the 4 coefficients around coordinates x
    (``scipy.ndimage.map_coordinates(order=3, mode="grid-wrap", prefilter=False)``)."""
    base = np.floor(x)
    t = x - base
    s = 1.0 - t
    w = np.stack([s * s * s, 4.0 - 6.0 * t * t + 3.0 * t * t * t,
                  1.0 + 3.0 * t + 3.0 * t * t - 3.0 * t * t * t, t * t * t], axis=1) / 6.0
    idx = np.mod(base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], n)
    return idx, w


@functools.lru_cache(maxsize=64)
def _probe_grid(probe: Probe) -> _ProbeGrid:
    return _ProbeGrid(probe)


# --------------------------------------------------------------------------------------------
# Gaussian point spread (TEM / SEM information limit, beam blur)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianPSF:
    """Isotropic Gaussian point spread of the given FWHM (A); interface as ``Probe``."""

    fwhm_A: float = 1.0

    def __post_init__(self):
        if self.fwhm_A < 0:
            raise InputError(f"GaussianPSF: FWHM must be >= 0, got {self.fwhm_A}")

    @property
    def sigma_A(self) -> float:
        return self.fwhm_A / FWHM_PER_SIGMA

    is_round = True
    is_centrosymmetric = True

    def otf_radial(self, k_inv_A) -> np.ndarray:
        k = np.asarray(k_inv_A, dtype=float)
        return np.exp(-2.0 * math.pi**2 * self.sigma_A**2 * k * k)

    def otf_2d(self, ky, kx) -> np.ndarray:
        return self.otf_radial(np.hypot(ky, kx))

    def extent_A(self, rel: float = 1e-3) -> float:
        return self.sigma_A * math.sqrt(2.0 * math.log(1.0 / rel))

    def cutoff_inv_A(self) -> float:
        """Frequency (1/A) beyond which the OTF is below 1e-8 (infinite for a zero width)."""
        return self.band_limit_inv_A(1e-8)

    def otf_envelope(self, k_inv_A) -> np.ndarray:
        return self.otf_radial(k_inv_A)

    def band_limit_inv_A(self, tol: float = 1e-3) -> float:
        if self.sigma_A == 0:
            return math.inf
        return math.sqrt(math.log(1.0 / tol) / (2.0 * math.pi**2 * self.sigma_A**2))

    def to_dict(self) -> dict:
        return {"kind": "gaussian", "fwhm_A": self.fwhm_A}

    @classmethod
    def from_dict(cls, d: dict) -> GaussianPSF:
        return cls(fwhm_A=float(d["fwhm_A"]))


@dataclass(frozen=True)
class GaussianPSFParams:
    """Range of the FWHM (A) of an isotropic Gaussian blur (TEM information limit, SEM beam)."""

    fwhm_A: tuple[float, float] = (0.6, 2.0)

    def __post_init__(self):
        check_range("fwhm_A", self.fwhm_A, lo=0.0)


def draw_gaussian_psf(rng: np.random.Generator, params: GaussianPSFParams | None = None
                      ) -> GaussianPSF:
    params = params or GaussianPSFParams()
    return GaussianPSF(fwhm_A=uniform(rng, params.fwhm_A))


# --------------------------------------------------------------------------------------------
# Drawing and evaluating
# --------------------------------------------------------------------------------------------


def draw_probe(rng: np.random.Generator, params: ProbeParams | None = None) -> Probe:
    """Draw one concrete probe from ``params`` (see ``ProbeParams`` for the ranges)."""
    params = params or ProbeParams()
    voltage = float(params.voltage_kV_choices[int(rng.integers(len(params.voltage_kV_choices)))])
    lam = electron_wavelength_A(voltage)
    corrected = chance(rng, params.corrected_probability)
    if corrected:
        alpha = uniform(rng, params.convergence_mrad)
        c1 = uniform(rng, params.defocus_A)
        c3 = uniform(rng, params.c3_um) * 1e4
        c5 = uniform(rng, params.c5_mm) * 1e7
    else:
        c3 = uniform(rng, params.uncorrected_c3_mm) * 1e7
        alpha_opt = (4.0 * lam / c3) ** 0.25 * 1e3
        alpha = alpha_opt * uniform(rng, params.uncorrected_alpha_factor)
        lo, hi = params.uncorrected_convergence_mrad
        alpha = min(max(alpha, lo), hi)
        c1 = -math.sqrt(c3 * lam) * uniform(rng, params.uncorrected_defocus_factor)
        c5 = 0.0
    a1 = b2 = a2 = 0.0
    t1 = t2 = t3 = 0.0
    if chance(rng, params.residual_probability):
        a1 = uniform(rng, params.astigmatism_A)
        b2 = uniform(rng, params.coma_A)
        a2 = uniform(rng, params.threefold_A)
        t1, t2, t3 = (float(v) for v in rng.uniform(0.0, 2.0 * math.pi, 3))
    return Probe(
        voltage_kV=voltage, convergence_mrad=float(alpha), defocus_A=float(c1), c3_A=float(c3),
        c5_A=float(c5), astigmatism_A=float(a1), astigmatism_angle_rad=t1, coma_A=float(b2),
        coma_angle_rad=t2, threefold_A=float(a2), threefold_angle_rad=t3,
        source_fwhm_A=uniform(rng, params.source_fwhm_A), corrected=corrected,
    )


def probe_otf(shape: tuple[int, int], pixel_size_A: float, probe) -> np.ndarray:
    """Transfer function of ``probe`` on the ``scipy.fft.rfft2`` lattice of an image ``shape``.

    Multiply ``rfft2(image)`` by this array and ``irfft2`` to convolve (periodically) an image of
    pixel ``pixel_size_A`` with the normalised probe intensity. Value 1 at k = 0; complex only for
    non-centrosymmetric probes. Frequencies beyond the image's Nyquist limit are simply absent, so
    nothing aliases.
    """
    ky, kx = rfft_frequencies(shape, pixel_size_A)
    return probe.otf_2d(ky, kx)


def probe_intensity(shape: tuple[int, int], pixel_size_A: float, probe) -> np.ndarray:
    """Probe intensity sampled on an image grid, centred on pixel (H//2, W//2), summing to 1.

    The values are point samples of the continuous intensity (computed via the renderer's
    oversampled Fourier route, so a pixel coarse compared with the probe does not alias the
    calculation itself; the samples of such a probe are of course sparse).
    """
    from .render import render_kernel

    h, w = shape
    img = render_kernel(np.array([[(h // 2) * pixel_size_A, (w // 2) * pixel_size_A]]),
                        shape, pixel_size_A, psf=probe)
    s = img.sum(dtype=np.float64)
    return (img / s).astype(np.float32) if s != 0 else img
