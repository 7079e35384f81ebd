"""Multislice ground truth with abTEM: HAADF, ADF, ABF and BF images with frozen phonons.

The fast simulator (``profiles`` + ``optics`` + ``render``) is a linear, incoherent model: each
atom adds a fixed profile blurred by the probe intensity. Real HAADF images carry physics that it
leaves out: channelling and cross-talk between columns, thermal diffuse scattering, intensities
that grow sub-linearly with thickness, probe tails. This module runs abTEM's multislice on the
same specimens (``ase.Atoms``) with the same optics (the parameter names and units of
:class:`emrestore.simulate.optics.Probe`), so the two can be compared and the fast model's ranges
calibrated against it (``benchmarks/calibrate_linear_model.py``, ``docs/simulation.md``).

abTEM (GPL-3.0) is an *optional* extra, ``pip install emrestore[multislice]``; it is imported
only inside the functions that run it, never when emrestore or this module is imported.

Physics and numerics
--------------------
* Potential: independent-atom model (Lobato parametrisation by default), infinite projection,
  slices of ``slice_thickness_A`` (the cell height is divided into equal slices no thicker).
* Frozen phonons: ``frozen_phonons`` configurations, every atom displaced by an independent
  Gaussian of standard deviation ``phonon_sigma_A`` along x, y and z (σ² is the mean-square
  displacement along one axis, U_iso; room-temperature values are 0.06-0.10 Å). The detected
  intensities are averaged over the configurations; this average is what carries the thermal
  diffuse background in the ADF signal. ``frozen_phonons=0`` gives the static (elastic) lattice.
* Probe: aperture of semi-angle ``convergence_mrad``, aberration function in the Krivanek
  convention of ``optics.py`` (C1 = defocus, C1 < 0 under-focus, relative to the entrance
  surface), C3, C5, two-fold and three-fold astigmatism and axial coma with their azimuths.
  abTEM uses the same sign convention: its vacuum probe matches ``optics.probe_intensity``
  (``tests/simulate/test_multislice.py``).
* Finite source: the incoherent source blur (Gaussian of FWHM ``source_fwhm_A``) is applied to
  the images after the multislice, which is exact for an incoherent source.
* Detectors: annular, fraction of the incident beam between inner and outer angles (mrad):
  HAADF 70-200, ADF 35-70, ABF α/2-α and BF 0-α/2 by default (α the convergence semi-angle).
* Sampling: the wave grid ``sampling_A`` must resolve the largest detector angle under abTEM's
  2/3 anti-aliasing aperture: θ_max <= λ / (3 dx). ``None`` chooses dx = 0.98 λ / (3 θ_max)
  (0.041 Å for 200 mrad at 200 kV).

Periodic crystals
-----------------
An atoms object periodic along x and y (``pbc[0] and pbc[1]``, a rectangular cell with a along x
and b along y, e.g. from :func:`zone_axis_cell`) is scanned over *one* cell, on a grid at least
as fine as the probe's Nyquist step λ / (4α). An ADF-STEM image as a function of the probe
position is band-limited at 2α/λ (it is bilinear in the probe, whose spectrum stops at α/λ), so
these samples determine the whole periodic image exactly: :func:`tile_periodic` evaluates its
Fourier series on any pixel grid, at any in-plane rotation and shift. The potential is repeated
laterally until every probe is at least ``lateral_padding_A + beam_spread · α · thickness`` away
from its own periodic images, so the probe never interferes with itself.

Finite specimens (``pbc`` False along x or y, e.g. ``build_specimen(...).atoms`` whose cell is
the box) are padded with vacuum by the same distance on every side and scanned at the output
pixels directly (pixel (r, c) at (y, x) = (r dr, c dr), as ``render.render_atoms``).

Caching
-------
With ``cache_dir``, the raw scan (every detector, every exit thickness) is stored as
``<sha256>.npz``, written atomically. The key hashes every parameter that changes the scan (all
of :class:`MultisliceParams` except the source size, which is applied after the cache, and the
device), the atoms (numbers, positions, cell, pbc), the scan grid, the padding, the exit
thicknesses and the abTEM version. A hit is loaded without running abTEM.

Cost (CPU, one core): roughly (probe positions) × (slices) × (frozen phonons) × two FFTs of the
padded wave grid. A 16 × 16 scan of SrTiO3 [001] through 4 unit cells on a 196² grid with one
configuration takes a few seconds; 40 nm with 8 configurations on a 27 Å (650²) grid takes hours
on a CPU and minutes on a GPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft as sfft
from ase import Atoms
from ase.data import chemical_symbols

from ..errors import ConfigError, InputError
from ..image import Image
from .config import check_range, from_dict, to_dict
from .optics import FWHM_PER_SIGMA, Probe, electron_wavelength_A

__all__ = [
    "DETECTORS",
    "INSTALL_HINT",
    "MultisliceParams",
    "abtem_available",
    "column_sites",
    "multislice_work",
    "simulate_multislice",
    "tile_periodic",
    "zone_axis_cell",
]

#: Detector names, in the order of the returned stacks.
DETECTORS = ("HAADF", "ADF", "ABF", "BF")

INSTALL_HINT = ("the multislice engine needs abTEM, an optional extra: "
                "pip install emrestore[multislice]  (or: pip install abtem)")

_CACHE_FORMAT = 1

#: Fields of MultisliceParams that do not change the scan (applied afterwards, or bookkeeping).
_NOT_IN_KEY = ("source_fwhm_A", "device")


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultisliceParams:
    """Optics, detectors and numerics of one multislice simulation.

    The optics fields have the names and units of :class:`emrestore.simulate.optics.Probe`
    (lengths in Å, angles in mrad and radians, voltage in kV); :meth:`from_probe` copies them
    from a probe drawn for the fast model and :attr:`probe` gives that probe back.

    Attributes
    ----------
    voltage_kV, convergence_mrad, defocus_A, c3_A, c5_A, astigmatism_A, astigmatism_angle_rad,
    coma_A, coma_angle_rad, threefold_A, threefold_angle_rad, source_fwhm_A :
        as ``optics.Probe``; defocus relative to the entrance surface, C1 < 0 under-focus.
    haadf_mrad, adf_mrad : (inner, outer) detector angles in mrad.
    abf_mrad, bf_mrad : (inner, outer) in mrad; ``None``: (α/2, α) and (0, α/2).
    sampling_A : wave and potential grid spacing in Å; ``None``: 0.98 λ / (3 θ_max), the
        coarsest grid that keeps the outermost detector angle inside abTEM's anti-aliasing
        aperture.
    slice_thickness_A : largest slice thickness in Å (the cell height is cut into equal slices).
    frozen_phonons : number of frozen-phonon configurations (0: static lattice, no TDS).
    phonon_sigma_A : r.m.s. displacement per axis in Å (σ² = U_iso) for every element ...
    phonon_sigma_by_Z : ... except those listed here as ((Z, σ_Å), ...).
    seed : seed of the frozen-phonon displacements (the same seed gives the same images).
    lateral_padding_A, beam_spread : every probe is kept at least
        ``lateral_padding_A + beam_spread * α * thickness`` away from the edge of the simulated
        field (finite specimens) or from its own periodic image / 2 (periodic cells); the second
        term follows the geometric widening of the convergent beam with depth.
    scan_step_A : probe step over a periodic cell in Å, or "nyquist" for λ / (4α) (the coarsest
        step that keeps the images exact, see the module docstring).
    parametrization : "lobato" or "kirkland" (abTEM's atomic potentials).
    device : "auto" (GPU through CuPy when one is usable, else CPU), "cpu" or "gpu".
    """

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
    haadf_mrad: tuple[float, float] = (70.0, 200.0)
    adf_mrad: tuple[float, float] = (35.0, 70.0)
    abf_mrad: tuple[float, float] | None = None
    bf_mrad: tuple[float, float] | None = None
    sampling_A: float | None = None
    slice_thickness_A: float = 2.0
    frozen_phonons: int = 8
    phonon_sigma_A: float = 0.08
    phonon_sigma_by_Z: tuple[tuple[int, float], ...] = ()
    seed: int = 0
    lateral_padding_A: float = 8.0
    beam_spread: float = 0.5
    scan_step_A: float | str = "nyquist"
    parametrization: str = "lobato"
    device: str = "auto"

    def __post_init__(self):
        if not self.voltage_kV > 0 or not self.convergence_mrad > 0:
            raise ConfigError("voltage_kV and convergence_mrad must be positive, got "
                              f"{self.voltage_kV} kV and {self.convergence_mrad} mrad")
        if self.source_fwhm_A < 0:
            raise ConfigError(f"source_fwhm_A must be >= 0 Å, got {self.source_fwhm_A}")
        for name in ("haadf_mrad", "adf_mrad", "abf_mrad", "bf_mrad"):
            value = getattr(self, name)
            if value is not None:
                check_range(name, tuple(value), lo=0.0)
                if value[1] <= value[0]:
                    raise ConfigError(f"{name}: the outer angle must exceed the inner one, "
                                      f"got {tuple(value)} mrad")
        if self.sampling_A is not None and not self.sampling_A > 0:
            raise ConfigError(f"sampling_A must be a positive length in Å, got {self.sampling_A}")
        if not self.slice_thickness_A > 0:
            raise ConfigError(f"slice_thickness_A must be positive, got {self.slice_thickness_A}")
        if int(self.frozen_phonons) != self.frozen_phonons or self.frozen_phonons < 0:
            raise ConfigError(f"frozen_phonons must be an integer >= 0, got "
                              f"{self.frozen_phonons}")
        if self.phonon_sigma_A < 0 or any(s < 0 for _, s in self.phonon_sigma_by_Z):
            raise ConfigError("phonon displacements must be >= 0 Å")
        for z, _ in self.phonon_sigma_by_Z:
            if not 1 <= int(z) < len(chemical_symbols):
                raise ConfigError(f"phonon_sigma_by_Z: {z!r} is not an atomic number")
        if self.lateral_padding_A < 0 or self.beam_spread < 0:
            raise ConfigError("lateral_padding_A and beam_spread must be >= 0")
        if isinstance(self.scan_step_A, str):
            if self.scan_step_A != "nyquist":
                raise ConfigError(f"scan_step_A must be a length in Å or 'nyquist', got "
                                  f"{self.scan_step_A!r}")
        elif not self.scan_step_A > 0:
            raise ConfigError(f"scan_step_A must be positive, got {self.scan_step_A}")
        if self.parametrization not in ("lobato", "kirkland"):
            raise ConfigError(f"parametrization must be 'lobato' or 'kirkland', got "
                              f"{self.parametrization!r}")
        if self.device not in ("auto", "cpu", "gpu"):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'gpu', got {self.device!r}")
        if self.sampling_A is not None and self.sampling_A > self.max_sampling_A * (1 + 1e-9):
            raise ConfigError(
                f"sampling_A = {self.sampling_A} Å cannot represent the outer detector angle "
                f"{self.max_angle_mrad:g} mrad at {self.voltage_kV:g} kV (abTEM keeps angles up "
                f"to λ/(3 dx)); use sampling_A <= {self.max_sampling_A:.4f} Å or None")

    # -- optics --------------------------------------------------------------------------------
    @property
    def probe(self) -> Probe:
        """The same optics as an ``optics.Probe`` (for the fast model)."""
        names = {f.name for f in dataclasses.fields(Probe)} - {"corrected"}
        return Probe(**{n: getattr(self, n) for n in names})

    @classmethod
    def from_probe(cls, probe: Probe, **overrides) -> MultisliceParams:
        """Parameters with the optics of ``probe`` (e.g. one drawn by ``optics.draw_probe``)."""
        names = {f.name for f in dataclasses.fields(Probe)} - {"corrected"}
        values = {n: getattr(probe, n) for n in names}
        values.update(overrides)
        return cls(**values)

    @property
    def wavelength_A(self) -> float:
        return electron_wavelength_A(self.voltage_kV)

    def detector_ranges_mrad(self) -> dict[str, tuple[float, float]]:
        """(inner, outer) angles in mrad of every detector, in ``DETECTORS`` order."""
        a = float(self.convergence_mrad)
        return {
            "HAADF": tuple(float(v) for v in self.haadf_mrad),
            "ADF": tuple(float(v) for v in self.adf_mrad),
            "ABF": tuple(float(v) for v in self.abf_mrad) if self.abf_mrad else (a / 2, a),
            "BF": tuple(float(v) for v in self.bf_mrad) if self.bf_mrad else (0.0, a / 2),
        }

    @property
    def max_angle_mrad(self) -> float:
        return max(hi for _, hi in self.detector_ranges_mrad().values())

    @property
    def max_sampling_A(self) -> float:
        """Coarsest grid (Å) whose anti-aliasing aperture still reaches the outer angle."""
        return self.wavelength_A / (3.0 * self.max_angle_mrad * 1e-3)

    @property
    def grid_sampling_A(self) -> float:
        """The wave/potential grid spacing used (Å)."""
        return float(self.sampling_A) if self.sampling_A is not None \
            else 0.98 * self.max_sampling_A

    @property
    def nyquist_step_A(self) -> float:
        """λ / (4α): the largest probe step that samples an ADF image without aliasing (Å)."""
        return self.wavelength_A / (4.0 * self.convergence_mrad * 1e-3)

    @property
    def scan_step(self) -> float:
        """Probe step over a periodic cell (Å)."""
        return self.nyquist_step_A if self.scan_step_A == "nyquist" else float(self.scan_step_A)

    def padding_A(self, thickness_A: float) -> float:
        """Distance (Å) kept between a probe and the edge of the field / its periodic image."""
        return (self.lateral_padding_A
                + self.beam_spread * self.convergence_mrad * 1e-3 * float(thickness_A))

    def sigma_for(self, z: int) -> float:
        return float(dict((int(k), float(v)) for k, v in self.phonon_sigma_by_Z)
                     .get(int(z), self.phonon_sigma_A))

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MultisliceParams:
        data = dict(data)
        if "phonon_sigma_by_Z" in data:
            data["phonon_sigma_by_Z"] = tuple(
                (int(z), float(s)) for z, s in data["phonon_sigma_by_Z"])
        return from_dict(cls, data)


# --------------------------------------------------------------------------------------------
# Oriented periodic cells
# --------------------------------------------------------------------------------------------


def _perpendicular_lattice_vectors(cell: np.ndarray, direction: np.ndarray, max_index: int
                                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Integer vectors n (|n_i| <= max_index) with n·cell perpendicular to ``direction``,
    shortest first, as (n, cartesian)."""
    r = np.arange(-max_index, max_index + 1)
    n = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    n = n[np.any(n != 0, axis=1)]
    cart = n @ cell
    length = np.linalg.norm(cart, axis=1)
    d = direction / np.linalg.norm(direction)
    ok = np.abs(cart @ d) < 1e-6 * length
    n, cart, length = n[ok], cart[ok], length[ok]
    # shortest first; among equals, the fewest negative and smallest indices
    order = np.lexsort((-n[:, 2], -n[:, 1], -n[:, 0], np.abs(n).sum(axis=1),
                        (n < 0).sum(axis=1), length.round(6)))
    return [(n[i], cart[i]) for i in order]


def zone_axis_cell(unit_cell: Atoms | str, zone_axis: Sequence[int] = (0, 0, 1),
                   thickness_A: float | None = None, *, max_index: int = 4) -> Atoms:
    """A rectangular, periodic cell of a crystal viewed along ``zone_axis`` (the beam along +z).

    The lateral vectors are the two shortest mutually perpendicular lattice vectors normal to
    the zone axis [uvw] (a along x, b along y); the cell height is the lattice period along
    [uvw], repeated ``round(thickness_A / period)`` times (at least once). This is the input
    :func:`simulate_multislice` scans over one cell and tiles.

    Parameters
    ----------
    unit_cell : ase.Atoms or the name of a material of ``materials.NAMED_MATERIALS``.
    zone_axis : [uvw], a direction u a + v b + w c of the crystal lattice.
    thickness_A : specimen thickness in Å (None: one period).
    max_index : largest Miller-index component searched for the lateral vectors.

    Returns
    -------
    ase.Atoms with ``cell = diag(lx, ly, lz)`` and ``pbc = True``; ``info`` records the
    material, zone axis, lateral lattice vectors and the period along the beam.

    Layered (2D) cells (``pbc`` False along c) can only be viewed along c and are not
    repeated: ``thickness_A`` must then be None.
    """
    if isinstance(unit_cell, str):
        from .materials import named_material

        name = unit_cell
        unit_cell = named_material(name)
    else:
        name = unit_cell.get_chemical_formula()
    uvw = np.asarray(zone_axis, dtype=int)
    if uvw.shape != (3,) or not np.any(uvw):
        raise InputError(f"zone_axis must be three integers [uvw], not all zero; got {zone_axis}")
    uvw = uvw // math.gcd(*(abs(int(v)) for v in uvw))
    cell = unit_cell.cell.array
    layered = not all(unit_cell.pbc)
    if layered:
        if not (list(unit_cell.pbc) == [True, True, False] and tuple(uvw) == (0, 0, 1)):
            raise InputError("a layered (2D) cell can only be viewed along its stacking axis "
                             "[001]")
        if thickness_A is not None:
            raise InputError("a layered (2D) cell is not repeated along the beam; "
                             "pass thickness_A=None")
    direction = uvw @ cell
    vectors = _perpendicular_lattice_vectors(cell, direction, max_index)
    if not vectors:
        raise InputError(f"no lattice vector normal to {list(uvw)} with indices up to "
                         f"{max_index}; raise max_index")
    na, a = vectors[0]
    nb = b = None
    for n, v in vectors[1:]:
        if abs(v @ a) < 1e-6 * np.linalg.norm(v) * np.linalg.norm(a):
            nb, b = n, v
            break
    if b is None:
        raise InputError(f"{name} has no rectangular cell normal to "
                         f"[{' '.join(map(str, uvw))}] with indices up to {max_index} (two "
                         f"perpendicular lattice vectors may not exist, e.g. orthorhombic [110] "
                         f"with a != b); choose another zone axis or raise max_index")
    if np.dot(np.cross(a, b), direction) < 0:
        nb, b = -nb, -b
    c = direction
    basis = np.array([a, b, c])  # rows: new lattice vectors (Cartesian, original frame)
    transform = np.array([na, nb, uvw])  # integer: new = transform @ old
    n_cells = round(abs(np.linalg.det(transform)))
    # fill the new cell with lattice translates of the unit cell's atoms
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) @ basis
    frac_corners = corners @ np.linalg.inv(cell)
    lo = np.floor(frac_corners.min(axis=0)).astype(int) - 1
    hi = np.ceil(frac_corners.max(axis=0)).astype(int) + 1
    if layered:
        lo[2] = hi[2] = 0
    grid = np.stack(np.meshgrid(*(np.arange(lo[k], hi[k] + 1) for k in range(3)),
                                indexing="ij"), axis=-1).reshape(-1, 3)
    pos = (grid @ cell)[:, None, :] + unit_cell.positions[None, :, :]
    nums = np.broadcast_to(unit_cell.numbers, pos.shape[:2]).ravel()
    pos = pos.reshape(-1, 3)
    frac = pos @ np.linalg.inv(basis)
    frac = np.where(np.abs(frac - np.round(frac)) < 1e-7, np.round(frac), frac)
    axes = (0, 1) if layered else (0, 1, 2)
    inside = np.all((frac[:, axes] >= 0.0) & (frac[:, axes] < 1.0), axis=1)
    frac, nums = frac[inside], nums[inside]
    expected = len(unit_cell) * (n_cells if not layered else round(
        abs(np.linalg.det(transform[:2, :2]))))
    if len(nums) != expected:
        raise InputError(f"could not build the [{' '.join(map(str, uvw))}] cell of {name}: "
                         f"{len(nums)} atoms instead of {expected}")
    lengths = np.linalg.norm(basis, axis=1)
    new_pos = frac * lengths[None, :]
    out = Atoms(numbers=nums, positions=new_pos, cell=np.diag(lengths), pbc=True)
    repeats = 1
    if thickness_A is not None:
        if not thickness_A > 0:
            raise InputError(f"thickness_A must be positive, got {thickness_A}")
        repeats = max(1, round(float(thickness_A) / lengths[2]))
        out = out.repeat((1, 1, repeats))
    out.info.update({"material": name, "zone_axis": [int(v) for v in uvw],
                     "lateral_vectors": [[int(v) for v in na], [int(v) for v in nb]],
                     "period_A": float(lengths[2]), "repeats": int(repeats),
                     "thickness_A": float(out.cell[2, 2])})
    return out


def column_sites(cell: Atoms, merge_radius_A: float = 0.3) -> dict[str, np.ndarray]:
    """Projected atomic columns of a periodic cell (beam along z).

    Returns ``position_A`` (N, 2) as (y, x) in Å inside the cell, ``composition`` (N, 119)
    atoms of each Z per column, and ``label`` (N,) strings such as "Sr" or "OTi" (symbols in
    alphabetical order).
    """
    lx, ly = cell.cell[0, 0], cell.cell[1, 1]
    xy = cell.positions[:, :2] % np.array([lx, ly])
    labels = -np.ones(len(xy), dtype=int)
    centres: list[np.ndarray] = []
    for i, p in enumerate(xy):
        for k, c in enumerate(centres):
            d = p - c
            d -= np.round(d / np.array([lx, ly])) * np.array([lx, ly])
            if np.hypot(*d) < merge_radius_A:
                labels[i] = k
                break
        else:
            labels[i] = len(centres)
            centres.append(p)
    comp = np.zeros((len(centres), 119), dtype=int)
    np.add.at(comp, (labels, cell.numbers), 1)
    names = ["".join(sorted(chemical_symbols[z] for z in np.nonzero(row)[0])) for row in comp]
    pos = np.array([[c[1], c[0]] for c in centres]).reshape(-1, 2)
    return {"position_A": pos, "composition": comp, "label": np.array(names)}


# --------------------------------------------------------------------------------------------
# Fourier tiling of a periodic cell scan
# --------------------------------------------------------------------------------------------


def tile_periodic(cell_scan: np.ndarray, cell_extent_A: tuple[float, float],
                  shape: tuple[int, int], pixel_size_A: float, *,
                  origin_A: tuple[float, float] = (0.0, 0.0), rotation_deg: float = 0.0,
                  source_fwhm_A: float = 0.0, method: str = "exact") -> np.ndarray:
    """Evaluate a periodic, band-limited image from its samples over one cell, on any grid.

    Parameters
    ----------
    cell_scan : (..., ny, nx) samples at (y, x) = (j ly / ny, i lx / nx), [row, col] order.
    cell_extent_A : (ly, lx), the cell period in Å.
    shape : (H, W) of the output.
    pixel_size_A : output pixel size; pixel (r, c) lies at (y, x) = (r dr, c dr) + origin_A in
        the output frame.
    origin_A : (y, x) of pixel (0, 0) in Å.
    rotation_deg : the crystal is rotated by this angle (counter-clockwise in (x, y)) about the
        output origin (0, 0) before sampling.
    source_fwhm_A : Gaussian (incoherent source) blur applied in Fourier space.
    method : ``"exact"`` sums the Fourier series at every pixel of a rotated grid (cost: pixels ×
        coefficients, seconds for a 256² frame of a large cell); ``"spline"`` evaluates the
        series exactly on a periodic grid of at most 0.05 Å (one inverse FFT) and interpolates
        it with a periodic cubic spline (error < 1e-3 of the modulation for a scan sampled at
        the probe's Nyquist step, milliseconds). An unrotated grid is always exact.

    Returns
    -------
    float32 array (..., H, W). The Fourier series of the samples is evaluated exactly (the
    Nyquist bin of an even number of samples is dropped), so the result is exact when the
    samples resolve the image's band limit, as a Nyquist-sampled ADF scan does.
    """
    arr = np.asarray(cell_scan, dtype=np.float64)
    if arr.ndim < 2:
        raise InputError("cell_scan must have at least two dimensions (ny, nx)")
    ny, nx = arr.shape[-2:]
    ly, lx = (float(v) for v in cell_extent_A)
    h, w = (int(v) for v in shape)
    if h < 1 or w < 1 or not pixel_size_A > 0 or not (ly > 0 and lx > 0):
        raise InputError("tile_periodic: need a positive shape, pixel size and cell extent")
    if method not in ("exact", "spline"):
        raise InputError(f"tile_periodic: method must be 'exact' or 'spline', got {method!r}")
    coef = np.fft.fft2(arr) / (ny * nx)
    fy = np.fft.fftfreq(ny, d=ly / ny)
    fx = np.fft.fftfreq(nx, d=lx / nx)
    if ny % 2 == 0:
        coef[..., ny // 2, :] = 0.0
    if nx % 2 == 0:
        coef[..., :, nx // 2] = 0.0
    if source_fwhm_A > 0:
        s = source_fwhm_A / FWHM_PER_SIGMA
        coef = coef * np.exp(-2.0 * math.pi**2 * s * s * (fy[:, None] ** 2 + fx[None, :] ** 2))
    y = origin_A[0] + pixel_size_A * np.arange(h)
    x = origin_A[1] + pixel_size_A * np.arange(w)
    lead = arr.shape[:-2]
    flat = coef.reshape(-1, ny, nx)
    out = np.empty((flat.shape[0], h, w), dtype=np.float32)
    if rotation_deg == 0.0:
        ey = np.exp(2j * math.pi * np.outer(y, fy))  # (H, ny)
        ex = np.exp(2j * math.pi * np.outer(x, fx))  # (W, nx)
        for i, c in enumerate(flat):
            out[i] = (ey @ c @ ex.T).real
        return out.reshape(*lead, h, w)
    # rotated crystal: cell-frame coordinates of every pixel
    t = math.radians(rotation_deg)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    xc = math.cos(t) * xx + math.sin(t) * yy
    yc = -math.sin(t) * xx + math.cos(t) * yy
    if method == "spline":
        from scipy import ndimage

        my, mx = (max(n, 4 * math.ceil(length / 0.2)) for n, length in ((ny, ly), (nx, lx)))
        iy = np.round(np.fft.fftfreq(ny) * ny).astype(int) % my
        ix = np.round(np.fft.fftfreq(nx) * nx).astype(int) % mx
        for i, c in enumerate(flat):
            spectrum = np.zeros((my, mx), complex)
            spectrum[np.ix_(iy, ix)] = c
            fine = np.fft.ifft2(spectrum).real * (my * mx)  # the series on the fine grid
            out[i] = ndimage.map_coordinates(fine, [yc * (my / ly), xc * (mx / lx)], order=3,
                                             mode="grid-wrap")
        return out.reshape(*lead, h, w)
    # exact: a direct Fourier sum over the non-negligible coefficients
    pts = np.stack([yc.ravel(), xc.ravel()], axis=1)
    kyy, kxx = np.meshgrid(fy, fx, indexing="ij")
    for i, c in enumerate(flat):
        keep = np.abs(c) > 1e-9 * max(np.abs(c).max(), 1e-300)
        k = np.stack([kyy[keep], kxx[keep]], axis=1)
        cv = c[keep]
        vals = np.empty(len(pts))
        for s0 in range(0, len(pts), 8192):
            ph = np.exp(2j * math.pi * (pts[s0:s0 + 8192] @ k.T))
            vals[s0:s0 + 8192] = (ph @ cv).real
        out[i] = vals.reshape(h, w)
    return out.reshape(*lead, h, w)


# --------------------------------------------------------------------------------------------
# The simulation
# --------------------------------------------------------------------------------------------


def abtem_available() -> bool:
    """True when abTEM can be imported (the ``multislice`` extra is installed)."""
    try:
        import abtem  # noqa: F401
    except ImportError:
        return False
    return True


def _import_abtem():
    try:
        import abtem
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return abtem


def _gpu_usable() -> bool:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # no CuPy, no driver, no device: CPU
        return False


def _resolve_device(device: str) -> str:
    if device == "cpu":
        return "cpu"
    usable = _gpu_usable()
    if device == "gpu" and not usable:
        raise ConfigError("device='gpu' but no CUDA device is usable through CuPy "
                          "(pip install cupy-cuda12x); use device='auto' or 'cpu'")
    return "gpu" if usable else "cpu"


def _check_atoms(atoms) -> Atoms:
    if not isinstance(atoms, Atoms) and isinstance(getattr(atoms, "atoms", None), Atoms):
        atoms = atoms.atoms  # a specimen.Specimen
    if not isinstance(atoms, Atoms):
        raise InputError(f"atoms must be an ase.Atoms (e.g. build_specimen(...).atoms or "
                         f"zone_axis_cell(...)), got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise InputError("atoms: the specimen holds no atoms")
    cell = atoms.cell.array
    if np.abs(cell - np.diag(np.diag(cell))).max() > 1e-6 or np.any(np.diag(cell) <= 0):
        raise InputError("atoms: the cell must be rectangular, diag(lx, ly, lz) in Å, with the "
                         "beam along z; use zone_axis_cell() for an oriented crystal")
    if not np.all(np.isfinite(atoms.positions)):
        raise InputError("atoms: positions must be finite")
    return atoms


def _slices(thickness_A: float, max_slice_A: float) -> tuple[float, ...]:
    n = max(1, math.ceil(thickness_A / max_slice_A - 1e-9))
    return (thickness_A / n,) * n


def _exit_planes(slices: tuple[float, ...], thicknesses_A) -> tuple[int, ...] | None:
    if thicknesses_A is None:
        return None
    z = np.cumsum(slices)
    planes = []
    for t in np.atleast_1d(np.asarray(thicknesses_A, dtype=float)):
        if not (t > 0 and t <= z[-1] + 1e-6):
            raise InputError(f"thickness_series_A: {t} Å is outside the specimen "
                             f"(0, {z[-1]:.2f}] Å")
        planes.append(int(np.argmin(np.abs(z - t))))
    return tuple(sorted(set(planes)))


def _cache_key(meta: dict, atoms: Atoms) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(meta, sort_keys=True).encode())
    h.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(atoms.cell.array, dtype=np.float64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    return h.hexdigest()


def _wave_grid(extent_A, sampling_A: float) -> tuple[int, int]:
    """FFT-friendly numbers of grid points no coarser than ``sampling_A`` (a prime size such as
    293 makes every FFT several times slower)."""
    return tuple(int(sfft.next_fast_len(math.ceil(float(e) / sampling_A - 1e-9)))
                 for e in extent_A)


def _run_abtem(sim_atoms: Atoms, params: MultisliceParams, grid: tuple[int, int],
               slices: tuple[float, ...], exit_planes, scan_start, scan_end, scan_gpts,
               device: str, num_workers: int | None) -> np.ndarray:
    """Detected intensities (detector, [exit,] nx, ny) in abTEM's [x, y] order."""
    abtem = _import_abtem()
    many = len(slices) * scan_gpts[0] * scan_gpts[1] * max(1, params.frozen_phonons) > 2e5
    settings = {"device": device, "precision": "float32",
                "diagnostics.progress_bar": False,
                "fftw.planning_effort": "FFTW_MEASURE" if many else "FFTW_ESTIMATE"}
    with abtem.config.set(settings):
        if params.frozen_phonons > 0:
            sigmas = {chemical_symbols[z]: params.sigma_for(z)
                      for z in np.unique(sim_atoms.numbers)}
            specimen = abtem.FrozenPhonons(sim_atoms, num_configs=int(params.frozen_phonons),
                                           sigmas=sigmas, directions="xyz",
                                           seed=int(params.seed))
        else:
            specimen = sim_atoms
        potential = abtem.Potential(specimen, gpts=grid,
                                    slice_thickness=slices,
                                    parametrization=params.parametrization,
                                    projection="infinite", exit_planes=exit_planes,
                                    device=device)
        probe = abtem.Probe(
            energy=params.voltage_kV * 1e3, semiangle_cutoff=params.convergence_mrad,
            device=device, C10=params.defocus_A, C30=params.c3_A, C50=params.c5_A,
            C12=params.astigmatism_A, phi12=params.astigmatism_angle_rad,
            C21=params.coma_A, phi21=params.coma_angle_rad,
            C23=params.threefold_A, phi23=params.threefold_angle_rad)
        probe.grid.match(potential)
        scan = abtem.GridScan(start=tuple(scan_start), end=tuple(scan_end),
                              gpts=tuple(int(v) for v in scan_gpts), endpoint=False)
        detectors = [abtem.AnnularDetector(inner=lo, outer=hi)
                     for lo, hi in params.detector_ranges_mrad().values()]
        measurements = probe.scan(potential, scan=scan, detectors=detectors, lazy=True)
        kwargs = {"scheduler": "threads"}
        if num_workers is not None:
            kwargs["num_workers"] = int(num_workers)
        result = measurements.compute(**kwargs)
        arrays = [np.asarray(m.array, dtype=np.float32) for m in result]
    return np.stack(arrays)


@dataclass
class _Layout:
    atoms: Atoms
    periodic: bool
    cell_yx: tuple[float, float]
    slices: tuple[float, ...]
    exit_planes: tuple[int, ...] | None
    thickness: np.ndarray
    padding_A: float
    sim_atoms: Atoms
    start: tuple[float, float]
    end: tuple[float, float]
    scan_gpts: tuple[int, int]
    dr: float
    out_shape: tuple[int, int]
    layout: dict
    grid: tuple[int, int]


def _layout(atoms, params: MultisliceParams, periodic_cell, shape, pixel_size_A,
            thickness_series_A) -> _Layout:
    """Where the probe goes and what abTEM simulates (shared by the run and the work estimate)."""
    if not isinstance(params, MultisliceParams):
        raise ConfigError(f"params must be a MultisliceParams, got {type(params).__name__}")
    atoms = _check_atoms(atoms)
    lx, ly, lz = (float(v) for v in np.diag(atoms.cell.array))
    periodic = bool(atoms.pbc[0] and atoms.pbc[1]) if periodic_cell is None else bool(
        periodic_cell)
    if pixel_size_A is not None and not pixel_size_A > 0:
        raise InputError(f"pixel_size_A must be positive, got {pixel_size_A}")
    if shape is not None:
        shape = (int(shape[0]), int(shape[1]))
        if min(shape) < 1:
            raise InputError(f"shape must be two positive integers, got {shape}")
    slices = _slices(lz, params.slice_thickness_A)
    exit_planes = _exit_planes(slices, thickness_series_A)
    z_exit = np.cumsum(slices)
    thickness = z_exit[list(exit_planes)] if exit_planes is not None else np.array([lz])
    pad = params.padding_A(lz)
    if periodic:
        step = params.scan_step
        gpts = (max(1, math.ceil(lx / step - 1e-9)), max(1, math.ceil(ly / step - 1e-9)))
        repeats = (max(1, math.ceil(2.0 * pad / lx - 1e-9)),
                   max(1, math.ceil(2.0 * pad / ly - 1e-9)))
        sim_atoms = atoms.repeat((repeats[0], repeats[1], 1))
        sim_atoms.pbc = True
        start, end = (0.0, 0.0), (lx, ly)
        dr = float(pixel_size_A) if pixel_size_A is not None else min(lx / gpts[0],
                                                                      ly / gpts[1])
        out_shape = shape or (max(1, round(ly / dr)), max(1, round(lx / dr)))
        layout = {"mode": "periodic", "repeats": list(repeats)}
    else:
        dr = float(pixel_size_A) if pixel_size_A is not None else params.scan_step
        out_shape = shape or (max(1, round(ly / dr)), max(1, round(lx / dr)))
        h, w = out_shape
        sim_atoms = atoms.copy()
        sim_atoms.positions[:, :2] += pad
        fx, fy = max(lx, (w - 1) * dr) + 2 * pad, max(ly, (h - 1) * dr) + 2 * pad
        sim_atoms.set_cell(np.diag([fx, fy, lz]))
        sim_atoms.pbc = True
        gpts = (w, h)
        start, end = (pad, pad), (pad + w * dr, pad + h * dr)
        layout = {"mode": "finite", "field_A": [fy, fx]}
    grid = _wave_grid(np.diag(sim_atoms.cell.array)[:2], params.grid_sampling_A)
    return _Layout(atoms=atoms, periodic=periodic, cell_yx=(ly, lx), slices=slices,
                   exit_planes=exit_planes, thickness=thickness, padding_A=pad,
                   sim_atoms=sim_atoms, start=start, end=end, scan_gpts=gpts, dr=dr,
                   out_shape=out_shape, layout=layout, grid=grid)


def multislice_work(atoms: Atoms, params: MultisliceParams | None = None, *,
                    periodic_cell: bool | None = None, shape: tuple[int, int] | None = None,
                    pixel_size_A: float | None = None) -> dict[str, Any]:
    """What :func:`simulate_multislice` would compute, without running it (no abTEM needed).

    Returns a dict with ``mode`` ("periodic" or "finite"), ``wave_grid`` (points in x, y),
    ``probes`` (scan positions), ``slices``, ``frozen_phonons``, ``padding_A`` and
    ``probe_slices`` (probes × slices × configurations), the unit the cost scales with (times
    the FFT cost of one wave_grid).
    """
    params = params or MultisliceParams()
    lay = _layout(atoms, params, periodic_cell, shape, pixel_size_A, None)
    probes = int(lay.scan_gpts[0] * lay.scan_gpts[1])
    fp = max(1, int(params.frozen_phonons))
    return {"mode": lay.layout["mode"], "wave_grid": list(lay.grid), "probes": probes,
            "slices": len(lay.slices), "frozen_phonons": int(params.frozen_phonons),
            "padding_A": lay.padding_A, "probe_slices": probes * len(lay.slices) * fp}


def simulate_multislice(
    atoms: Atoms,
    params: MultisliceParams | None = None,
    *,
    cache_dir: str | Path | None = None,
    periodic_cell: bool | None = None,
    shape: tuple[int, int] | None = None,
    pixel_size_A: float | None = None,
    thickness_series_A: Sequence[float] | None = None,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """HAADF, ADF, ABF and BF images of ``atoms`` by abTEM multislice with frozen phonons.

    Parameters
    ----------
    atoms : ase.Atoms with a rectangular cell diag(lx, ly, lz) (Å), beam along +z.
        A periodic cell (``zone_axis_cell``) or a finite specimen (``build_specimen()`` or its
        ``.atoms``).
    params : optics, detectors and numerics (default ``MultisliceParams()``).
    cache_dir : folder of the on-disk cache (created if missing); None: no cache.
    periodic_cell : treat ``atoms`` as one laterally periodic cell (scan it once, tile the
        result); None: periodic when ``atoms.pbc`` is True along x and y.
    shape, pixel_size_A : output grid (H, W) and pixel (Å); pixel (r, c) is the probe at
        (y, x) = (r dr, c dr) in the atoms' frame. Defaults: the pixel is the periodic scan
        step (finite specimens: ``params.scan_step``) and the field covers one cell (finite: the
        box, ``round(l / dr)`` pixels).
    thickness_series_A : also record the images at these thicknesses (Å, rounded to the
        nearest slice boundary) in the same run; the images are then (T, H, W) stacks.
    num_workers : threads for the CPU computation (None: all cores).

    Returns
    -------
    dict with
        "HAADF", "ADF", "ABF", "BF" : :class:`emrestore.Image` (float32 (H, W), or (T, H, W)
            with a thickness series), the fraction of the incident beam reaching that detector
            at each probe position; ``metadata`` holds the detector angles, thicknesses, the
            parameters, the cache key and whether it came from the cache;
        "thickness_A" : (T,) exit thicknesses in Å (the full thickness alone without a series);
        "cell_scan" : (4, [T,] ny, nx) raw samples over one cell (periodic cells only), to
            re-render another grid or rotation with :func:`tile_periodic`.

    Raises
    ------
    ImportError
        abTEM is not installed (``pip install emrestore[multislice]``).
    InputError, ConfigError
        Unusable atoms, grid or parameters.
    """
    params = params or MultisliceParams()
    lay = _layout(atoms, params, periodic_cell, shape, pixel_size_A, thickness_series_A)
    atoms, periodic, slices, exit_planes = lay.atoms, lay.periodic, lay.slices, lay.exit_planes
    sim_atoms, start, end, gpts, dr = lay.sim_atoms, lay.start, lay.end, lay.scan_gpts, lay.dr
    out_shape, layout, pad, grid, thickness = (lay.out_shape, lay.layout, lay.padding_A,
                                              lay.grid, lay.thickness)
    ly, lx = lay.cell_yx
    device = _resolve_device(params.device)
    field = np.diag(sim_atoms.cell.array)[:2]

    meta = {
        "format": _CACHE_FORMAT,
        "abtem": _abtem_version(),
        "params": {k: v for k, v in params.to_dict().items() if k not in _NOT_IN_KEY},
        "layout": layout,
        "grid": list(grid),
        "slices": [round(s, 9) for s in slices],
        "exit_planes": list(exit_planes) if exit_planes is not None else None,
        "scan": {"start": [round(v, 9) for v in start], "end": [round(v, 9) for v in end],
                 "gpts": list(gpts)},
    }
    key = _cache_key(meta, atoms)
    path = None
    raw = None
    if cache_dir is not None:
        folder = Path(cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{key}.npz"
        raw = _load_cached(path)
    from_cache = raw is not None
    seconds = 0.0
    if raw is None:
        t0 = time.perf_counter()
        raw = _run_abtem(sim_atoms, params, grid, slices, exit_planes, start, end, gpts,
                         device, num_workers)
        seconds = time.perf_counter() - t0
        if path is not None:
            _store(path, raw, meta)
    raw = np.swapaxes(raw, -1, -2)  # abTEM [x, y] -> [row (y), col (x)]

    if periodic:
        images = tile_periodic(raw, (ly, lx), out_shape, dr, source_fwhm_A=params.source_fwhm_A)
    else:
        images = _blur_finite(raw, dr, params.source_fwhm_A)
    ranges = params.detector_ranges_mrad()
    common = {
        "source": "abTEM multislice",
        "thickness_A": [float(t) for t in thickness],
        "params": params.to_dict(),
        "layout": layout,
        "padding_A": pad,
        "wave_grid": list(grid),
        "grid_sampling_A": [float(f / g) for f, g in zip(field, grid)],
        "n_slices": len(slices),
        "scan_gpts": list(gpts),
        "device": device,
        "cache_key": key,
        "from_cache": from_cache,
        "seconds": seconds,
        "units": "fraction of the incident beam",
    }
    out: dict[str, Any] = {}
    for i, name in enumerate(DETECTORS):
        md = dict(common, detector=name, detector_mrad=list(ranges[name]))
        out[name] = Image(np.ascontiguousarray(images[i], dtype=np.float32), pixel_size_A=dr,
                          modality="stem", metadata=md)
    out["thickness_A"] = np.asarray(thickness, dtype=float)
    if periodic:
        out["cell_scan"] = np.ascontiguousarray(raw, dtype=np.float32)
    return out


def _abtem_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("abtem")
    except metadata.PackageNotFoundError as exc:
        raise ImportError(INSTALL_HINT) from exc


def _blur_finite(raw: np.ndarray, dr: float, fwhm_A: float) -> np.ndarray:
    if fwhm_A <= 0:
        return raw
    from scipy import ndimage

    sigma_px = fwhm_A / FWHM_PER_SIGMA / dr
    sigma = (0,) * (raw.ndim - 2) + (sigma_px, sigma_px)
    return ndimage.gaussian_filter(raw.astype(np.float64), sigma, mode="nearest").astype(
        np.float32)


def _load_cached(path: Path) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return np.array(data["scan"], dtype=np.float32)
    except (OSError, ValueError, KeyError):  # unreadable or truncated entry: recompute
        return None


def _store(path: Path, raw: np.ndarray, meta: dict) -> None:
    from ..io import write_atomically

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, scan=raw.astype(np.float32), meta=np.array(json.dumps(meta)))

    write_atomically(path, write)
