"""Random specimens for the data generator: crystals, amorphous solids, points, nanoparticles.

This follows the "Specimen generation" section of Lobato et al. (seed 001) in three steps:

1. **Atoms.** A specimen type is drawn: a crystal (a named material or a random crystal with up to
   16 species, a random space group 1-230, lattice lengths 3.1-25 Å, angles 45-120° and random
   asymmetric-unit sites, redrawn until the minimum interatomic distance with periodic images
   lies in 0.95-7 Å), a faceted nanoparticle (a crystal cut by low-index facet planes), an
   amorphous solid (one Z, random positions with a minimum distance of 0.95-1.6 Å up to a mass
   density of 2-7 g/cm³) or individual points (minimum separation 1-20 pixels).
2. **Orientation, shape, defects.** A crystal is turned to one of the first eight low-index zone
   axes with a Gaussian mistilt (std 5°) with probability 0.75, otherwise to a uniformly random
   orientation, then rotated about the beam by a uniform angle, and the supercell covering the
   extended box is generated and cropped. A wedge (p = 0.75; top, bottom or both surfaces;
   5-45°), one shape (p = 0.5: polygon rod, convex polyhedron or planar cut; the inside kept or
   removed with p = 0.5) and defects (p = 0.8: vacancies, displacements, substitutions, missing
   columns) follow.
3. **Support.** With p = 0.95 a crystalline or amorphous support 1-30 nm thick is added below the
   specimen (at larger z, downstream along the beam).

Coordinates are Cartesian Å: x along image columns, y along image rows, z along the beam. The
box is passed and returned as ``(ly, lx, lz)``. Every atom of a returned :class:`Specimen` lies in
``[0, lx] × [0, ly] × [0, lz]``; ``lz`` of the returned box grows beyond the requested one when
the support (or a nanoparticle) needs the room: the renderer projects along z, so only x and y
are fixed by the image.

Atom-count cap: a (0.9 Å/px × 256 px)³ box of a dense crystal would hold millions of atoms. In
projection only the sum along a column matters, so the thickness of slabs (crystal, amorphous,
support) is reduced until the specimen holds at most ``params.max_atoms`` atoms (50 000 by
default; the support gets at least ``support_atom_share`` of it). Every reduction is recorded in
``info`` (``thickness_requested_A``, ``thickness_A``, ``thickness_capped``).

Amorphous solids are not grown by dart throwing per specimen (several µs per atom with a k-d
tree): random-sequential-addition cubes of unit minimum distance are built once per process from
a fixed seed (four packings, ~0.8 s in all) and each specimen is assembled from randomly rotated,
shifted, symmetry-transformed and thinned blocks of them, all blocks in one vectorised pass
(~0.1-0.2 µs per atom; see ``_amorphous_positions``). Space-group operations are read from ASE's
data file once per process, all 230 groups in one pass (~10 ms), and cached.

All randomness comes from the ``numpy.random.Generator`` passed in: the same seed gives the same
atoms bit for bit.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, covalent_radii
from ase.geometry import cellpar_to_cell, minkowski_reduce
from ase.spacegroup import Spacegroup
from scipy.spatial import ConvexHull, HalfspaceIntersection, QhullError, cKDTree

from .._rng import as_generator, chance, integer, uniform
from ..errors import ConfigError, InputError
from .config import check_range
from .materials import NAMED_MATERIALS, canonical_name, is_layered, named_material

__all__ = [
    "ZONE_AXES",
    "Specimen",
    "SpecimenParams",
    "add_support",
    "amorphous",
    "apply_defects",
    "apply_shape",
    "apply_wedge",
    "build_specimen",
    "draw_orientation",
    "individual_points",
    "min_periodic_distance",
    "nanoparticle",
    "orient_and_fill",
    "random_crystal",
    "random_rotation",
    "zone_axis_rotation",
]

#: The first eight low-index zone axes [uvw] (directions u a + v b + w c of the crystal lattice).
ZONE_AXES: tuple[tuple[int, int, int], ...] = (
    (0, 0, 1), (0, 1, 1), (1, 1, 1), (0, 1, 2), (1, 1, 2), (1, 2, 2), (0, 1, 3), (1, 1, 3),
)

#: g/cm³ per (atoms/Å³ × atomic mass in u): 1 u = 1.66054e-24 g, 1 Å³ = 1e-24 cm³.
_G_CM3_PER_U_A3 = 1.66053906660

#: Random sequential addition of hard spheres of diameter d jams at a packing fraction of about
#: 0.38, i.e. 0.726 / d³ points per Å³; the densest amorphous tile holds about 0.55 / d³.
_RSA_PRACTICAL_DENSITY = 0.55

_MAX_BOX_A = 4096.0

_KINDS = ("crystal", "amorphous", "points")


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecimenParams:
    """Ranges and probabilities of the specimen generator; defaults follow seed 001.

    Ranges are ``(low, high)`` pairs drawn uniformly unless stated otherwise; probabilities are
    per specimen. Values the paper leaves open (the mix of specimen types, the number of points,
    defect categories, support composition, caps) are marked "ours".
    """

    # --- specimen type (ours: the paper gives no weights) ---------------------------------------
    p_crystal: float = 0.6
    p_amorphous: float = 0.2
    p_points: float = 0.2
    #: Given a crystalline specimen: probability of a faceted nanoparticle instead of a slab.
    p_nanoparticle: float = 0.15
    #: Given a crystal: probability of a named material instead of a random crystal.
    p_named_material: float = 0.3
    named_materials: tuple[str, ...] = NAMED_MATERIALS

    # --- random crystals (paper) -----------------------------------------------------------------
    max_species: int = 16
    z_range: tuple[int, int] = (1, 103)
    space_group_range: tuple[int, int] = (1, 230)
    lattice_length_A: tuple[float, float] = (3.1, 25.0)
    lattice_angle_deg: tuple[float, float] = (45.0, 120.0)
    min_distance_A: tuple[float, float] = (0.95, 7.0)
    #: Asymmetric-unit sites per crystal (ours); at least one per species.
    max_asym_sites: int = 24
    #: Atoms per unit cell (ours): keeps high-symmetry groups with 192 operations manageable.
    max_cell_atoms: int = 256
    #: Random positions tried per site before the cell counts as full.
    site_tries: int = 12
    max_crystal_attempts: int = 1000

    # --- amorphous solids (paper) -----------------------------------------------------------------
    amorphous_min_distance_A: tuple[float, float] = (0.95, 1.6)
    amorphous_density_g_cm3: tuple[float, float] = (2.0, 7.0)

    # --- individual points -----------------------------------------------------------------------
    #: Number of points (ours: the paper says "a given range of positive integers").
    n_points: tuple[int, int] = (1, 1000)
    #: Minimum separation in pixels (paper): multiplied by the pixel size.
    points_min_distance_px: tuple[float, float] = (1.0, 20.0)
    #: Distinct Z among the points (ours).
    points_species: tuple[int, int] = (1, 3)
    #: Pixel count used to infer the pixel size when build_specimen is not given one.
    nominal_pixels: int = 256

    # --- orientation (paper) ---------------------------------------------------------------------
    p_zone_axis: float = 0.75
    zone_axes: tuple[tuple[int, int, int], ...] = ZONE_AXES
    #: Permute the indices of the drawn zone axis ([001] -> [100], [010] ...) for non-cubic cells.
    permute_zone_axis: bool = True
    #: Mistilt std in degrees. 5° (paper) visibly smears columns in thick crystals.
    mistilt_std_deg: float = 5.0

    # --- wedge (paper) ---------------------------------------------------------------------------
    p_wedge: float = 0.75
    #: Probabilities of a wedge on the top, the bottom or both surfaces.
    wedge_surface_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    wedge_angle_deg: tuple[float, float] = (5.0, 45.0)

    # --- shapes (paper) --------------------------------------------------------------------------
    p_shape: float = 0.5
    #: Probabilities of a polygon rod, a convex polyhedron and a planar cut.
    shape_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    rod_vertices: tuple[int, int] = (3, 15)
    polyhedron_vertices: tuple[int, int] = (4, 20)
    #: Shape radius as a fraction of the largest box length.
    shape_radius_frac: tuple[float, float] = (0.01, 0.5)
    #: Probability that a shape keeps the atoms inside it (otherwise it removes them).
    p_shape_keep: float = 0.5

    # --- faceted nanoparticles (ours) ---------------------------------------------------------
    nanoparticle_materials: tuple[str, ...] = ("Pt", "Au", "Ag", "Pd", "Cu", "PtFe", "CeO2",
                                               "Si", "GaAs", "MgO", "NiO", "SrTiO3")
    #: Particle radius as a fraction of min(lx, ly).
    nanoparticle_radius_frac: tuple[float, float] = (0.1, 0.45)
    facet_families: tuple[tuple[int, int, int], ...] = ((1, 0, 0), (1, 1, 0), (1, 1, 1))
    #: Facet-plane distance per family, in units of the radius (same order as facet_families).
    facet_distance_frac: tuple[tuple[float, float], ...] = ((0.8, 1.3), (0.9, 1.5), (0.75, 1.2))

    # --- defects (paper: p = 0.8, n_sel in [0, round(0.25 N)], displacement p = 0.5) ----------
    p_defects: float = 0.8
    defect_fraction_max: float = 0.25
    #: Fate of each selected atom: displaced, removed (vacancy) or substituted (ours beyond 0.5).
    defect_probs: tuple[float, float, float] = (0.5, 0.3, 0.2)
    #: Displacement std in units of the covalent radius (paper: 1, the atomic radius).
    displacement_std_scale: float = 1.0
    #: Substitution by another species of the specimen (else a random Z from z_range).
    p_substitute_own_species: float = 0.5
    #: Probability of removing whole projected columns, given defects (ours).
    p_missing_columns: float = 0.3
    missing_columns: tuple[int, int] = (1, 4)
    #: Atoms whose projected (x, y) lie within this radius of the chosen one form its column.
    column_radius_A: float = 0.3

    # --- support (paper: p = 0.95, crystal / amorphous 0.5 each, 1-30 nm) -----------------------
    p_support: float = 0.95
    p_support_crystal: float = 0.5
    support_thickness_A: tuple[float, float] = (10.0, 300.0)
    #: Gap between the lowest specimen atom and the support surface (ours).
    support_gap_A: tuple[float, float] = (1.0, 3.0)
    #: Supports are usually light: with this probability Z comes from support_light_z (ours).
    p_support_light: float = 0.8
    support_light_z: tuple[int, ...] = (5, 6, 7, 8, 13, 14)
    support_species: tuple[int, int] = (1, 3)
    #: Named crystals used for a crystalline support when a named material is drawn.
    support_named_materials: tuple[str, ...] = ("Si", "graphite", "SiC-3C", "MgO", "Al")

    # --- caps (ours) ----------------------------------------------------------------------------
    max_atoms: int = 50_000
    #: Share of max_atoms kept for the support when one is drawn.
    support_atom_share: float = 0.3
    #: Thinnest slab the thickness cap may produce.
    min_slab_thickness_A: float = 4.0

    def __post_init__(self) -> None:
        def prob(name: str) -> None:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ConfigError(f"{name}: expected a probability in [0, 1], got {value!r}")

        def probs(name: str, n: int) -> None:
            value = getattr(self, name)
            if len(value) != n or any(not 0.0 <= v <= 1.0 for v in value) \
                    or abs(sum(value) - 1.0) > 1e-6:
                raise ConfigError(f"{name}: expected {n} probabilities summing to 1, got {value!r}")

        def positive(name: str, integer_: bool = False) -> None:
            value = getattr(self, name)
            if integer_ and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)):
                raise ConfigError(f"{name}: expected an integer, got {value!r}")
            if not value > 0:
                raise ConfigError(f"{name}: expected a positive value, got {value!r}")

        for name in ("p_crystal", "p_amorphous", "p_points", "p_nanoparticle", "p_named_material",
                     "p_zone_axis", "p_wedge", "p_shape", "p_shape_keep", "p_defects",
                     "defect_fraction_max", "p_substitute_own_species", "p_missing_columns",
                     "p_support", "p_support_crystal", "p_support_light", "support_atom_share"):
            prob(name)
        if abs(self.p_crystal + self.p_amorphous + self.p_points - 1.0) > 1e-6:
            raise ConfigError("p_crystal + p_amorphous + p_points must sum to 1, got "
                              f"{self.p_crystal + self.p_amorphous + self.p_points}")
        probs("wedge_surface_probs", 3)
        probs("shape_probs", 3)
        probs("defect_probs", 3)
        for name in ("max_species", "max_asym_sites", "max_cell_atoms", "site_tries",
                     "max_crystal_attempts", "nominal_pixels", "max_atoms"):
            positive(name, integer_=True)
        for name in ("mistilt_std_deg", "displacement_std_scale", "column_radius_A",
                     "min_slab_thickness_A"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name}: expected a finite value >= 0, got {value!r}")
        check_range("z_range", self.z_range, 1, 118)
        check_range("space_group_range", self.space_group_range, 1, 230)
        check_range("lattice_length_A", self.lattice_length_A, 0.5, 1000.0)
        check_range("lattice_angle_deg", self.lattice_angle_deg, 10.0, 170.0)
        check_range("min_distance_A", self.min_distance_A, 0.1)
        check_range("amorphous_min_distance_A", self.amorphous_min_distance_A, 0.1)
        check_range("amorphous_density_g_cm3", self.amorphous_density_g_cm3, 1e-3)
        check_range("n_points", self.n_points, 1)
        check_range("points_min_distance_px", self.points_min_distance_px, 0.0)
        check_range("points_species", self.points_species, 1)
        check_range("wedge_angle_deg", self.wedge_angle_deg, 0.0, 89.0)
        check_range("rod_vertices", self.rod_vertices, 3)
        check_range("polyhedron_vertices", self.polyhedron_vertices, 4)
        check_range("shape_radius_frac", self.shape_radius_frac, 0.0)
        check_range("nanoparticle_radius_frac", self.nanoparticle_radius_frac, 1e-3, 0.5)
        check_range("missing_columns", self.missing_columns, 0)
        check_range("support_thickness_A", self.support_thickness_A, 0.0)
        check_range("support_gap_A", self.support_gap_A, 0.0)
        check_range("support_species", self.support_species, 1)
        if len(self.facet_families) != len(self.facet_distance_frac) or not self.facet_families:
            raise ConfigError("facet_families and facet_distance_frac must be non-empty and of "
                              "equal length")
        for i, bounds in enumerate(self.facet_distance_frac):
            check_range(f"facet_distance_frac[{i}]", bounds, 1e-3)
        for name in ("zone_axes", "facet_families"):
            for uvw in getattr(self, name):
                if len(uvw) != 3 or not any(uvw) or any(int(v) != v for v in uvw):
                    raise ConfigError(f"{name}: {uvw!r} is not a non-zero integer triple")
        for name in ("named_materials", "nanoparticle_materials", "support_named_materials"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"{name}: must list at least one material")
            for material in values:
                try:
                    canonical_name(material)
                except InputError as exc:
                    raise ConfigError(f"{name}: {exc}") from exc
        for z in self.support_light_z:
            if not 1 <= int(z) <= 118:
                raise ConfigError(f"support_light_z: {z!r} is not an atomic number")
        if not self.support_light_z:
            raise ConfigError("support_light_z: must list at least one atomic number")


DEFAULT_PARAMS = SpecimenParams()


@dataclass
class Specimen:
    """Atoms of one specimen in its box.

    ``atoms``: Cartesian Å (x along image columns, y along image rows, z along the beam), every
    atom inside ``[0, lx] × [0, ly] × [0, lz]``; the renderer uses only ``atoms.numbers`` and
    ``atoms.positions``. ``box_A = (ly, lx, lz)``. ``kind`` is ``"crystal"``, ``"nanoparticle"``,
    ``"amorphous"`` or ``"points"``. ``info`` is a JSON-serialisable record of every drawn
    parameter.
    """

    atoms: Atoms
    box_A: tuple[float, float, float]
    kind: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return len(self.atoms)


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Plain Python containers/scalars for numpy values (recursively)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def _check_box(box_A: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in box_A)
    except (TypeError, ValueError) as exc:
        raise InputError(f"box_A must be three lengths (ly, lx, lz) in Å, got {box_A!r}") from exc
    if len(values) != 3:
        raise InputError(f"box_A must be three lengths (ly, lx, lz) in Å, got {box_A!r}")
    for name, v in zip(("ly", "lx", "lz"), values):
        if not math.isfinite(v) or v <= 0:
            raise InputError(f"box_A: {name} must be a positive finite length in Å, got {v!r}")
        if v > _MAX_BOX_A:
            raise InputError(f"box_A: {name} = {v} Å exceeds the supported {_MAX_BOX_A} Å")
    return values  # type: ignore[return-value]


def _empty_atoms(lx: float, ly: float, lz: float) -> Atoms:
    return Atoms(numbers=np.zeros(0, int), positions=np.zeros((0, 3)),
                 cell=np.diag([lx, ly, lz]), pbc=False)


def _make_atoms(numbers: np.ndarray, positions: np.ndarray, lx: float, ly: float,
                lz: float) -> Atoms:
    return Atoms(numbers=np.asarray(numbers, dtype=int),
                 positions=np.asarray(positions, dtype=float).reshape(-1, 3),
                 cell=np.diag([lx, ly, lz]), pbc=False)


def _box_of(atoms: Atoms, box_A: Sequence[float] | None) -> tuple[float, float, float]:
    if box_A is not None:
        return _check_box(box_A)
    lx, ly, lz = np.diag(atoms.cell.array)
    return float(ly), float(lx), float(lz)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _random_unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    norm[norm == 0] = 1.0
    return v / norm


def _mass(z: np.ndarray | int) -> np.ndarray:
    return atomic_masses[np.asarray(z, dtype=int)]


def _capped_thickness(number_density: float, lx: float, ly: float, lz: float, cap: float,
                      min_thickness: float) -> tuple[float, bool]:
    """Slab thickness that keeps number_density × lx × ly × t below cap (not below min_t)."""
    if number_density * lx * ly * lz <= cap:
        return lz, False
    return float(min(lz, max(min_thickness, cap / (number_density * lx * ly)))), True


# ----------------------------------------------------------------------------------------------
# Random crystals
# ----------------------------------------------------------------------------------------------

_TRY_BATCHES = ((0, 2), (2, 6), (6, 1_000_000))
_OFFSETS_27 = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=float)


@functools.cache
def _symops(sg: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotation matrices (M, 3, 3) and translations (M, 3) of a space group, centring included."""
    table = _all_spacegroups()
    spg = table[int(sg)] if int(sg) in table else Spacegroup(int(sg))
    ops = spg.get_symop()
    rots = np.array([r for r, _ in ops], dtype=float)
    trans = np.array([t for _, t in ops], dtype=float)
    return rots, trans


@functools.cache
def _all_spacegroups() -> dict[int, Spacegroup]:
    """All 230 space groups (setting 1) from one pass over ASE's data file (~30 ms).

    ``Spacegroup(n)`` scans the file from its start for every group (~3 ms each, 0.8 s for all);
    reading the groups in increasing order from one open file visits each line once. This uses
    ASE's internal reader; should that change, the result is empty and ``_symops`` falls back
    to ``Spacegroup(n)``.
    """
    try:
        from ase.spacegroup import spacegroup as sgmod

        out = {}
        with open(sgmod.get_datafile(), encoding="utf-8") as f:
            for no in range(1, 231):
                ns = sgmod._read_f(no, 1, f)
                spg = Spacegroup.__new__(Spacegroup)
                for name in ("_no", "_symbol", "_setting", "_centrosymmetric",
                             "_scaled_primitive_cell", "_reciprocal_cell", "_subtrans",
                             "_rotations", "_translations"):
                    setattr(spg, name, getattr(ns, name))
                if spg.no != no:
                    return {}
                out[no] = spg
                if no < 230:
                    sgmod._skip_to_blank(f, no, 1)  # the blank line after the entry
        return out
    except Exception:  # an ASE version with another reader: per-group reads
        return {}


def _lattice_system(sg: int) -> str:
    for last, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"),
                       (142, "tetragonal"), (167, "trigonal"), (194, "hexagonal")):
        if sg <= last:
            return name
    return "cubic"


def _draw_cellpar(rng: np.random.Generator, sg: int, p: SpecimenParams) -> list[float] | None:
    """Lattice parameters obeying the lattice system of ``sg``; None for an invalid cell."""
    a, b, c = rng.uniform(*p.lattice_length_A, size=3)
    alpha = beta = gamma = 90.0
    system = _lattice_system(sg)
    if system == "triclinic":
        alpha, beta, gamma = rng.uniform(*p.lattice_angle_deg, size=3)
    elif system == "monoclinic":  # unique axis b (standard setting)
        beta = float(rng.uniform(*p.lattice_angle_deg))
    elif system == "tetragonal":
        b = a
    elif system in ("trigonal", "hexagonal"):  # hexagonal axes, also for R groups (setting 1)
        b, gamma = a, 120.0
    elif system == "cubic":
        b = c = a
    ca, cb, cg = np.cos(np.radians([alpha, beta, gamma]))
    volume_factor = 1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg
    if volume_factor < 0.05:  # (nearly) impossible triple of angles
        return None
    return [float(a), float(b), float(c), float(alpha), float(beta), float(gamma)]


class _PeriodicDistance:
    """Minimum-image vectors in a (Minkowski-reduced) lattice; exact for distances that matter."""

    def __init__(self, cell: np.ndarray) -> None:
        self.cell = np.asarray(cell, float)
        self.inv_cell = np.linalg.inv(self.cell)
        self.rcell, _ = minkowski_reduce(self.cell)
        self.inv_rcell = np.linalg.inv(self.rcell)
        self.offsets = _OFFSETS_27 @ self.rcell
        self.offsets_t2 = 2.0 * self.offsets.T
        self.offsets_sq = np.einsum("kj,kj->k", self.offsets, self.offsets)
        self.shortest = float(np.linalg.norm(self.rcell[0]))

    def _wrapped(self, d_cart: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = d_cart @ self.inv_rcell
        f -= np.round(f)
        v = f @ self.rcell
        d2 = v @ self.offsets_t2
        d2 += self.offsets_sq
        d2 += np.einsum("...j,...j->...", v, v)[..., None]
        return v, d2

    def distances(self, d_cart: np.ndarray) -> np.ndarray:
        """Lengths of the shortest periodic images of Cartesian difference vectors (..., 3)."""
        _, d2 = self._wrapped(d_cart)
        return np.sqrt(np.maximum(d2.min(axis=-1), 0.0))

    def vectors(self, d_cart: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shortest periodic images of Cartesian difference vectors (..., 3) and their lengths."""
        v, d2 = self._wrapped(d_cart)
        k = np.argmin(d2, axis=-1)
        vec = v + self.offsets[k]
        return vec, np.sqrt(np.maximum(d2.min(axis=-1), 0.0))


def _snap_candidates(x_frac: np.ndarray, rots: np.ndarray, trans: np.ndarray,
                     pdist: _PeriodicDistance, d_min: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Move random points (T, 3) onto the special positions they are close to.

    Symmetry images of a point closer than ``d_min`` are merged by averaging them; a few
    iterations converge on the fixed point of the site-symmetry group. Returns the moved points,
    whether each converged, the smallest distance from each point to a distinct image of itself
    (by symmetry, the smallest distance within its orbit) and the number of images coinciding
    with it (the order of its site-symmetry group: orbit size = M / that number).
    """
    cell = pdist.cell
    x = np.array(x_frac, float)
    n, m = len(x), len(rots)
    rot_flat = rots.transpose(2, 0, 1).reshape(3, 3 * m)  # images = x @ rot_flat (+ trans)
    converged = np.zeros(n, bool)
    dist2 = np.zeros((n, m))
    todo = np.arange(n)
    d_min2, tiny2 = d_min * d_min, 1e-8
    for _ in range(5):
        xt = x[todo]
        images = (xt @ rot_flat).reshape(len(xt), m, 3) + trans
        v, d2 = pdist._wrapped((images - xt[:, None, :]) @ cell)
        d2min = d2.min(axis=-1)
        dist2[todo] = d2min
        close = d2min < d_min2
        conv = np.all(~close | (d2min < tiny2), axis=1)
        converged[todo] = conv
        if conv.all():
            break
        # move each unconverged point to the mean of its close images (itself included)
        t_idx, m_idx = np.nonzero(close & ~conv[:, None])
        vec = v[t_idx, m_idx] + pdist.offsets[np.argmin(d2[t_idx, m_idx], axis=-1)]
        counts = np.bincount(t_idx, minlength=len(xt))
        move = np.stack([np.bincount(t_idx, vec[:, c], minlength=len(xt)) for c in range(3)],
                        axis=1) / np.maximum(counts, 1)[:, None]
        x[todo[~conv]] += move[~conv] @ pdist.inv_cell
        todo = todo[~conv]
    same = dist2 < tiny2
    self_min = np.sqrt(np.where(same, np.inf, dist2).min(axis=1))
    return np.mod(x, 1.0), converged, self_min, same.sum(axis=1)


def _orbit(x: np.ndarray, rots: np.ndarray, trans: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Distinct symmetry images (fractional, in [0, 1)) of one point."""
    images = np.mod(np.einsum("mij,j->mi", rots, x) + trans, 1.0)
    diff = images[:, None, :] - images[None, :, :]
    diff -= np.round(diff)
    coinc = np.linalg.norm(diff @ cell, axis=2) < 1e-3
    keep = ~np.any(np.tril(coinc, -1), axis=1)
    return images[keep]


def random_crystal(rng: np.random.Generator, params: SpecimenParams = DEFAULT_PARAMS, *,
                   species: Sequence[int] | None = None,
                   space_group: int | None = None) -> Atoms:
    """A random periodic crystal (seed 001): random species, space group, lattice and sites.

    Up to ``max_species`` distinct Z (or ``species`` if given) occupy random asymmetric-unit
    sites; the lattice obeys the space group's lattice system. Sites are placed one by one: a
    random point is snapped onto a special position when its symmetry images nearly coincide,
    and accepted when its orbit stays at least a drawn target distance from every atom placed so
    far (periodic images included). The crystal is redrawn until the minimum interatomic distance
    lies in ``min_distance_A`` (0.95-7 Å). Returns the conventional unit cell with
    ``atoms.info`` describing it (space group, cell parameters, species, asymmetric sites,
    minimum distance).
    """
    p = params
    z_pool = np.arange(p.z_range[0], p.z_range[1] + 1)
    d_lo, d_hi = p.min_distance_A
    for attempt in range(p.max_crystal_attempts):
        sg = int(space_group) if space_group is not None else integer(rng, p.space_group_range)
        cellpar = _draw_cellpar(rng, sg, p)
        if cellpar is None:
            continue
        cell = cellpar_to_cell(cellpar)
        pdist = _PeriodicDistance(cell)
        if pdist.shortest < d_lo:
            continue
        d_target = uniform(rng, (d_lo, min(d_hi, pdist.shortest)))
        if species is None:
            n_species = integer(rng, (1, min(p.max_species, len(z_pool))))
            zs = rng.choice(z_pool, size=n_species, replace=False)
        else:
            zs = np.array(list(species), dtype=int)
            n_species = len(zs)
        n_sites = integer(rng, (n_species, max(n_species, p.max_asym_sites)))
        site_z = np.concatenate([zs, rng.choice(zs, size=n_sites - n_species)])
        rots, trans = _symops(sg)

        placed: list[np.ndarray] = []
        placed_z: list[np.ndarray] = []
        placed_cart = np.zeros((0, 3))
        sites: list[list[float]] = []
        d_real = pdist.shortest
        n_ops = len(rots)
        for z in site_z:
            # candidate positions are tested in small batches; the first acceptable one wins
            trial = rng.random((p.site_tries, 3))
            found = None
            for lo_t, hi_t in _TRY_BATCHES:
                if lo_t >= p.site_tries:
                    break
                x, conv, self_min, n_stab = _snap_candidates(
                    trial[lo_t:min(hi_t, p.site_tries)], rots, trans, pdist, d_target)
                ok = conv & (self_min >= d_target)
                ok &= placed_cart.shape[0] + n_ops // np.maximum(n_stab, 1) <= p.max_cell_atoms
                other_min = np.full(len(x), np.inf)
                if placed_cart.shape[0] and ok.any():
                    # By symmetry, orbit-to-placed distances equal point-to-placed distances.
                    d = pdist.distances(placed_cart[None, :, :] - (x[ok] @ cell)[:, None, :])
                    other_min[ok] = d.min(axis=1)
                    ok &= other_min >= d_target
                if ok.any():
                    found = int(np.argmax(ok))
                    break
            if found is None:  # no room left for another site
                break
            t = found
            orbit = _orbit(x[t], rots, trans, cell)
            placed.append(orbit)
            placed_z.append(np.full(len(orbit), z))
            placed_cart = np.vstack([placed_cart, orbit @ cell])
            sites.append([int(z), *(float(v) for v in x[t])])
            d_real = min(d_real, float(self_min[t]), float(other_min[t]))
        if not placed or not (d_lo <= d_real <= d_hi):
            continue
        frac = np.vstack(placed)
        numbers = np.concatenate(placed_z)
        atoms = Atoms(numbers=numbers, scaled_positions=frac, cell=cell, pbc=True)
        atoms.info.update({
            "source": "random",
            "space_group": sg,
            "lattice_system": _lattice_system(sg),
            "cellpar": [float(v) for v in cellpar],
            "species": sorted({int(s[0]) for s in sites}),
            "asym_sites_Z_frac": sites,
            "n_cell_atoms": len(atoms),
            "min_distance_A": float(d_real),
            "target_min_distance_A": float(d_target),
            "attempts": attempt + 1,
        })
        return atoms
    raise RuntimeError(  # pragma: no cover - needs absurd parameter ranges
        f"no random crystal met the minimum-distance range {p.min_distance_A} Å in "
        f"{p.max_crystal_attempts} attempts; widen lattice_length_A or min_distance_A"
    )


def min_periodic_distance(atoms: Atoms) -> float:
    """Smallest interatomic distance of a periodic cell, periodic images included."""
    pdist = _PeriodicDistance(atoms.cell.array)
    pos = atoms.positions
    n = len(pos)
    best = pdist.shortest
    if n > 1:
        i, j = np.triu_indices(n, 1)
        _, d = pdist.vectors(pos[j] - pos[i])
        best = min(best, float(d.min()))
    return best


# ----------------------------------------------------------------------------------------------
# Amorphous solids and points: random sequential addition with a k-d tree
# ----------------------------------------------------------------------------------------------


def _sequential_keep(n: int, pairs: np.ndarray, n_fixed: int) -> np.ndarray:
    """Which of n points survive sequential addition in index order given conflicting pairs.

    Point j is kept iff no kept point i < j conflicts with it (points < n_fixed are kept and
    free of mutual conflicts). Solved by rounds of vectorised rules rather than a Python loop.
    """
    kept, dropped = 1, 2
    state = np.zeros(n, np.int8)
    state[:n_fixed] = kept
    if pairs.size == 0:
        state[:] = kept
        return state == kept
    i = np.minimum(pairs[:, 0], pairs[:, 1])
    j = np.maximum(pairs[:, 0], pairs[:, 1])
    has_lower = np.bincount(j, minlength=n) > 0
    undecided_free = (~has_lower) & (np.arange(n) >= n_fixed)
    state[undecided_free] = kept
    while True:
        live = state[j] == 0
        if not live.any():
            break
        i, j = i[live], j[live]
        si = state[i]
        kill = np.bincount(j[si == kept], minlength=n) > 0
        state[kill & (state == 0)] = dropped
        blockers = np.bincount(j[state[i] != dropped], minlength=n)
        state[(state == 0) & (blockers == 0) & (np.arange(n) >= n_fixed)] = kept
    state[state == 0] = kept  # nodes without remaining pairs (cannot happen, kept for safety)
    return state == kept


def _random_sequential_addition(rng: np.random.Generator, size: Sequence[float], n_target: int,
                                d_min: float, *, periodic: bool = False,
                                max_attempts_factor: float = 30.0,
                                min_acceptance: float = 0.005) -> np.ndarray:
    """Up to ``n_target`` uniform random points in [0, size) with pairwise distances >= d_min.

    Candidates are drawn in batches and resolved exactly as if added one at a time (random
    sequential addition): each batch is checked against one k-d tree per earlier batch, then
    within itself in index order. Stops early when a batch finds almost no room left.
    ``periodic`` wraps distances at the box faces.
    """
    size = np.asarray(size, float)
    box = size if periodic else None
    volume = float(np.prod(size))
    if n_target <= 0 or volume <= 0:
        return np.zeros((0, 3))
    v_excl = 4.0 / 3.0 * math.pi * d_min**3
    batch_cap = max(256, int(0.35 * volume / v_excl))  # keeps in-batch conflict chains short
    chunks: list[np.ndarray] = []
    trees: list[cKDTree] = []
    n, acceptance, attempts = 0, 1.0, 0
    while n < n_target:
        need = n_target - n
        batch = int(min(batch_cap, max(64, need / acceptance * 1.1)))
        cand = rng.random((batch, 3)) * size
        attempts += batch
        alive = np.ones(batch, bool)
        for tree in trees:
            idx = np.flatnonzero(alive)
            if not idx.size:
                break
            dist, _ = tree.query(cand[idx], k=1, distance_upper_bound=d_min)
            alive[idx[dist < d_min]] = False
        cand = cand[alive]
        new = cand
        if len(cand) > 1:
            pairs = cKDTree(cand, boxsize=box, balanced_tree=False,
                            compact_nodes=False).query_pairs(d_min, output_type="ndarray")
            new = cand[_sequential_keep(len(cand), pairs, 0)]
        new = new[:need]
        if len(new):
            chunks.append(new)
            n += len(new)
            trees.append(cKDTree(new, boxsize=box, balanced_tree=False, compact_nodes=False))
            if len(trees) > 4:
                merged = np.vstack(chunks)
                chunks = [merged]
                trees = [cKDTree(merged, boxsize=box, balanced_tree=False, compact_nodes=False)]
        acceptance = max(len(new) / batch, 1e-3)
        if len(new) < min_acceptance * batch or attempts > max_attempts_factor * n_target:
            break
    return np.vstack(chunks) if chunks else np.zeros((0, 3))


#: Reduced packings c = n d³ of the amorphous tiles (random sequential addition jams at ~0.73).
_TILE_PACKINGS = (0.15, 0.3, 0.45, 0.6)
_TILE_POINTS = 12_000
_TILE_SEED = 75_313


_TILE_SUBDIV = 6  # sub-cubes per tile edge, to skip the parts of a block outside the box


@functools.cache
def _amorphous_tile(level: int) -> tuple[np.ndarray, np.ndarray, float]:
    """A periodic random-sequential-addition cube of unit minimum distance (cached per process).

    Built once from a fixed seed, so specimens stay reproducible across processes. Returns the
    points sorted by sub-cube (``_TILE_SUBDIV``³ of them), the start index of each sub-cube's
    points (length ``_TILE_SUBDIV``³ + 1) and the cube side, in units of the minimum distance.
    The densest level stops a little short of its nominal packing (RSA slows near jamming).
    """
    side = (_TILE_POINTS / _TILE_PACKINGS[level]) ** (1.0 / 3.0)
    rng = np.random.default_rng([_TILE_SEED, level])
    pts = _random_sequential_addition(rng, (side, side, side), _TILE_POINTS, 1.0, periodic=True,
                                      max_attempts_factor=300.0, min_acceptance=0.002)
    pts = np.mod(pts, side)
    g = _TILE_SUBDIV
    q = np.minimum((pts * (g / side)).astype(int), g - 1)
    cube_id = (q[:, 0] * g + q[:, 1]) * g + q[:, 2]
    order = np.argsort(cube_id, kind="stable")
    starts = np.searchsorted(cube_id[order], np.arange(g**3 + 1))
    pts = pts[order]
    pts.setflags(write=False)
    starts.setflags(write=False)
    return pts, starts, side


def _in_box(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """lo <= points <= hi in every coordinate, for (N, 3) points (per-column comparisons: numpy
    reductions along a length-3 axis are slow)."""
    ok = points[:, 0] >= lo[0]
    for c in range(3):
        if c:
            ok &= points[:, c] >= lo[c]
        ok &= points[:, c] <= hi[c]
    return ok


@functools.cache
def _amorphous_tile_permuted(level: int) -> np.ndarray:
    """The tile's points with their axes permuted: block p (p = 0..5, the order of
    ``itertools.permutations(range(3))``) holds ``tile[:, perm_p]``; shape (6 N, 3)."""
    tile = _amorphous_tile(level)[0]
    perms = np.array(list(itertools.permutations(range(3))))
    out = np.ascontiguousarray(tile[:, perms].transpose(1, 0, 2)).reshape(-1, 3)
    out.setflags(write=False)
    return out


def _cube_symmetries() -> tuple[np.ndarray, np.ndarray]:
    """The 48 symmetries of a cube as (axis permutation, axis signs); symmetry i has the
    permutation ``i // 8`` of ``itertools.permutations(range(3))``."""
    perms, signs = [], []
    for perm in itertools.permutations(range(3)):
        for sign in itertools.product((1, -1), repeat=3):
            perms.append(perm)
            signs.append(sign)
    return np.array(perms), np.array(signs)


_CUBE_PERMS, _CUBE_SIGNS = _cube_symmetries()


def _amorphous_positions(rng: np.random.Generator, size: Sequence[float], number_density: float,
                         d_min: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Random positions with minimum distance d_min at (up to) a number density, fast.

    Space is cut into cubic blocks on a randomly rotated and shifted grid. Each block is filled
    with a cached periodic random-sequential-addition tile (scaled to d_min) under its own random
    cube symmetry and periodic shift, so neighbouring blocks differ and nothing repeats
    periodically. Only the tile's sub-cubes that reach the box are generated. Atoms are thinned
    at random to the requested density, and the few pairs closer than d_min across block faces
    are resolved by dropping one atom of each (in random order); the seam planes are tilted, so
    their slight density dip is smeared out in projection.
    """
    size = np.asarray(size, float)
    c_req = number_density * d_min**3
    level = next((i for i, c in enumerate(_TILE_PACKINGS) if c >= c_req),
                 len(_TILE_PACKINGS) - 1)
    tile, starts, side = _amorphous_tile(level)
    g = _TILE_SUBDIV
    c_tile = len(tile) / side**3
    keep_frac = min(1.0, c_req / c_tile)
    block = side * d_min
    sub = block / g
    rotation = random_rotation(rng)
    a_mat = rotation * block  # columns: rotated block-lattice vectors
    shift = a_mat @ rng.random(3)
    corners = np.array(list(itertools.product((0.0, block), repeat=3))) @ rotation.T
    blocks = _covering_indices(a_mat, shift, np.zeros(3), size, corners, np.ones(3, bool))
    nb = len(blocks)
    info = {"tile_packing": c_tile, "block_A": block, "n_blocks": nb, "thinning_keep": keep_frac}
    if nb == 0:
        info["n_seam_dropped"] = 0
        return np.zeros((0, 3)), info
    op = rng.integers(0, len(_CUBE_PERMS), size=nb)
    perm, sign = _CUBE_PERMS[op], _CUBE_SIGNS[op]  # (nb, 3)
    k_shift = rng.integers(0, g, size=(nb, 3))  # periodic shift in whole sub-cubes
    # sub-cube q of the tile lands, in block b, at local sub-cube
    #   r_i = (q + k)_perm_i            if sign_i > 0
    #   r_i = g - 1 - (q + k)_perm_i    otherwise        ((q + k) taken mod g)
    q_all = np.array(list(itertools.product(range(g), repeat=3)))  # (g³, 3), id order
    qk = np.mod(q_all[None, :, :] + k_shift[:, None, :], g)  # (nb, g³, 3)
    qk_perm = np.take_along_axis(qk, np.broadcast_to(perm[:, None, :], qk.shape), axis=2)
    r = np.where(sign[:, None, :] > 0, qk_perm, g - 1 - qk_perm)
    centre_local = (r + 0.5) * sub + (blocks * block)[:, None, :]
    centre = centre_local @ rotation.T + shift
    half = 0.5 * sub * np.abs(rotation).sum(axis=1)
    hit = np.all((centre + half >= 0.0) & (centre - half <= size), axis=2)  # (nb, g³)
    to_world = rotation.T * d_min
    # every (block, sub-cube) that reaches the box, and the tile points of those sub-cubes
    hb, hq = np.nonzero(hit)
    counts = starts[hq + 1] - starts[hq]
    total = int(counts.sum())
    if total == 0:
        info["n_seam_dropped"] = 0
        return np.zeros((0, 3)), info
    point = np.repeat(starts[hq] - np.cumsum(counts) + counts, counts) + np.arange(total)
    blk = np.repeat(hb, counts)
    if keep_frac < 1.0:  # thin first: fewer atoms to transform
        thin = rng.random(total) < keep_frac
        point, blk = point[thin], blk[thin]
    # cube symmetry P and periodic shift per block: local = (P (tile + shift)) mod side, with
    # (P v)_i = sign_i v_perm_i
    # (row gathers with take(axis=0) are ~10x faster than element-wise fancy indexing here)
    local = _amorphous_tile_permuted(level).take((op[blk] // 8) * len(tile) + point, axis=0)
    block_shift = np.take_along_axis(k_shift * (side / g), perm, axis=1) * sign  # P shift
    local *= sign.astype(float).take(blk, axis=0)
    local += block_shift.take(blk, axis=0)
    local -= side * np.floor(local * (1.0 / side))
    world = local @ to_world
    world += ((blocks * block) @ rotation.T + shift).take(blk, axis=0)
    inside = _in_box(world, np.zeros(3), size)
    if not inside.any():
        info["n_seam_dropped"] = 0
        return np.zeros((0, 3)), info
    pos = np.compress(inside, world, axis=0)
    local = np.compress(inside, local, axis=0) * d_min
    blk = blk[inside]
    seam = ~_in_box(local, np.full(3, d_min), np.full(3, block - d_min))
    idx = np.flatnonzero(seam)
    n_dropped = 0
    if idx.size > 1:
        idx = idx[rng.permutation(idx.size)]
        pairs = cKDTree(pos[idx], balanced_tree=False, compact_nodes=False).query_pairs(
            d_min, output_type="ndarray")
        if len(pairs):
            pairs = pairs[blk[idx[pairs[:, 0]]] != blk[idx[pairs[:, 1]]]]
            drop = idx[~_sequential_keep(idx.size, pairs, 0)]
            n_dropped = int(drop.size)
            mask = np.ones(len(pos), bool)
            mask[drop] = False
            pos = pos[mask]
    info["n_seam_dropped"] = n_dropped
    return pos, info


def amorphous(rng: np.random.Generator, box_A: Sequence[float],
              params: SpecimenParams = DEFAULT_PARAMS, *, z: int | None = None,
              density_g_cm3: float | None = None, min_distance_A: float | None = None,
              max_atoms: int | None = None) -> tuple[Atoms, dict[str, Any]]:
    """Amorphous solid of one element filling the box (seed 001).

    Random positions with a minimum distance d (0.95-1.6 Å) at the mass density (2-7 g/cm³), or
    as dense as random sequential addition allows (about 0.55 / d³ atoms/Å³; recorded as
    ``room_limited``). The positions come from :func:`_amorphous_positions` (blocks of a cached
    periodic random-sequential-addition tile, randomly transformed, thinned and stitched), which
    costs well under a microsecond per atom where direct dart throwing costs several. The
    thickness is reduced when the atom count would exceed ``max_atoms``.
    """
    ly, lx, lz = _check_box(box_A)
    p = params
    z = integer(rng, p.z_range) if z is None else int(z)
    rho = uniform(rng, p.amorphous_density_g_cm3) if density_g_cm3 is None else density_g_cm3
    d = uniform(rng, p.amorphous_min_distance_A) if min_distance_A is None else min_distance_A
    cap = p.max_atoms if max_atoms is None else max_atoms
    mass = float(_mass(z))
    n_wanted = rho / (_G_CM3_PER_U_A3 * mass)
    n_plan = min(n_wanted, _RSA_PRACTICAL_DENSITY / d**3)
    t, capped = _capped_thickness(n_plan, lx, ly, lz, cap, p.min_slab_thickness_A)
    pos, tinfo = _amorphous_positions(rng, (lx, ly, t), n_wanted, d)
    n_target = round(n_wanted * lx * ly * t)
    if len(pos) > cap:
        pos = pos[np.sort(rng.choice(len(pos), size=cap, replace=False))]
    volume = lx * ly * t
    info = {
        "z": z,
        "density_requested_g_cm3": rho,
        "density_g_cm3": len(pos) * mass * _G_CM3_PER_U_A3 / volume,
        "min_distance_A": d,
        "thickness_requested_A": lz,
        "thickness_A": t,
        "thickness_capped": capped,
        "n_atoms": len(pos),
        "room_limited": bool(n_wanted * d**3 > tinfo["tile_packing"]),
        "n_target": n_target,
        "method": "blocks of a cached periodic RSA tile",
        **tinfo,
    }
    return _make_atoms(np.full(len(pos), z), pos, lx, ly, t), info


def individual_points(rng: np.random.Generator, box_A: Sequence[float],
                      params: SpecimenParams = DEFAULT_PARAMS, *,
                      pixel_size_A: float | None = None) -> tuple[Atoms, dict[str, Any]]:
    """Random points in the box with a minimum separation of [1, 20] pixels (seed 001).

    Used for low-resolution images. The pixel size defaults to max(lx, ly) / nominal_pixels.
    The points carry one to three random atomic numbers.
    """
    ly, lx, lz = _check_box(box_A)
    p = params
    dr = max(lx, ly) / p.nominal_pixels if pixel_size_A is None else float(pixel_size_A)
    if not (math.isfinite(dr) and dr > 0):
        raise InputError(f"pixel_size_A must be a positive length in Å, got {pixel_size_A!r}")
    n = integer(rng, p.n_points)
    sep = uniform(rng, p.points_min_distance_px) * dr
    n_species = integer(rng, p.points_species)
    z_pool = np.arange(p.z_range[0], p.z_range[1] + 1)
    zs = rng.choice(z_pool, size=min(n_species, len(z_pool)), replace=False)
    pos = _random_sequential_addition(rng, (lx, ly, lz), n, sep)
    numbers = rng.choice(zs, size=len(pos))
    info = {"n_points_requested": n, "n_points": len(pos), "min_distance_A": sep,
            "min_distance_px": sep / dr, "pixel_size_A": dr, "species": sorted(zs.tolist())}
    return _make_atoms(numbers, pos, lx, ly, lz), info


# ----------------------------------------------------------------------------------------------
# Orientation and filling of the box
# ----------------------------------------------------------------------------------------------


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = np.asarray(axis, float)
    axis = axis / np.linalg.norm(axis)
    x, y, z = axis
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rotation_to_z(v: np.ndarray) -> np.ndarray:
    """Rotation taking the direction v onto +z."""
    v = np.asarray(v, float) / np.linalg.norm(v)
    c = float(v[2])
    axis = np.cross(v, (0.0, 0.0, 1.0))
    s = float(np.linalg.norm(axis))
    if s < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    return _axis_angle(axis / s, math.atan2(s, c))


def zone_axis_rotation(cell: np.ndarray, uvw: Sequence[int], tilt_deg: float = 0.0,
                       tilt_azimuth_deg: float = 0.0, inplane_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix R (positions r -> R r) that puts the lattice direction [uvw] along +z.

    Then tilts by ``tilt_deg`` about the in-plane axis at ``tilt_azimuth_deg`` (the mistilt) and
    rotates by ``inplane_deg`` about z. ``cell`` has lattice vectors as rows (ASE convention).
    """
    direction = np.asarray(uvw, float) @ np.asarray(cell, float)
    r = _rotation_to_z(direction)
    if tilt_deg:
        az = math.radians(tilt_azimuth_deg)
        r = _axis_angle(np.array([math.cos(az), math.sin(az), 0.0]), math.radians(tilt_deg)) @ r
    return _rot_z(math.radians(inplane_deg)) @ r


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly distributed 3D rotation (normalised Gaussian quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def draw_orientation(rng: np.random.Generator, unit_cell: Atoms,
                     params: SpecimenParams = DEFAULT_PARAMS, *,
                     zone_axis: Sequence[int] | None = None,
                     mistilt_deg: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Draw a crystal orientation: a zone axis with mistilt (p = 0.75) or a random one.

    ``zone_axis`` forces that zone axis; ``mistilt_deg`` forces the tilt magnitude (sign and
    azimuth stay random). A layered (2D) cell is viewed along its non-periodic axis when a zone
    axis is drawn. Returns the rotation matrix and a record of the draws.
    """
    p = params
    cell = unit_cell.cell.array
    if zone_axis is not None or chance(rng, p.p_zone_axis):
        if zone_axis is not None:
            uvw = tuple(int(v) for v in zone_axis)
        elif is_layered(unit_cell):
            uvw = tuple(int(not b) for b in unit_cell.pbc)
        else:
            uvw = tuple(int(v) for v in p.zone_axes[int(rng.integers(len(p.zone_axes)))])
            if p.permute_zone_axis:
                uvw = tuple(uvw[k] for k in rng.permutation(3))
        tilt = float(rng.normal(0.0, p.mistilt_std_deg)) if mistilt_deg is None else mistilt_deg
        azimuth = uniform(rng, (0.0, 360.0))
        inplane = uniform(rng, (0.0, 360.0))
        r = zone_axis_rotation(cell, uvw, tilt, azimuth, inplane)
        info = {"mode": "zone_axis", "zone_axis": list(uvw), "mistilt_deg": tilt,
                "mistilt_azimuth_deg": azimuth, "inplane_rotation_deg": inplane}
        # the zone axis in the lab frame: atomic columns run along it (tilted by the mistilt)
        axis = np.asarray(uvw, float) @ np.asarray(cell, float)
        info["column_direction"] = (r @ (axis / np.linalg.norm(axis))).tolist()
    else:
        r = random_rotation(rng)
        inplane = uniform(rng, (0.0, 360.0))
        r = _rot_z(math.radians(inplane)) @ r
        info = {"mode": "random", "inplane_rotation_deg": inplane}
    info["rotation"] = r.tolist()
    return r, info


def _covering_indices(a_mat: np.ndarray, shift: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                      basis: np.ndarray, periodic: np.ndarray) -> np.ndarray:
    """Integer lattice indices n whose points a_mat n + shift + basis can fall inside [lo, hi].

    ``basis`` (B, 3) are offsets from each lattice point (a rotated unit-cell content, or a
    block's corners). Indices are enumerated exactly: for each pair of outer indices the range
    of the inner index follows from six linear inequalities. Non-periodic axes keep n = 0.
    """
    lo_n = lo - shift - basis.max(axis=0)
    hi_n = hi - shift - basis.min(axis=0)
    corners = np.array(list(itertools.product(*zip(lo_n, hi_n))))
    n_corners = np.linalg.solve(a_mat, corners.T).T  # lattice coordinates of region corners
    n_min = np.floor(n_corners.min(axis=0)).astype(int)
    n_max = np.ceil(n_corners.max(axis=0)).astype(int)
    n_min[~periodic] = 0
    n_max[~periodic] = 0
    spans = np.where(periodic, n_max - n_min, -1)
    k = int(np.argmax(spans))  # inner axis: the periodic one with the longest range
    i, j = (ax for ax in range(3) if ax != k)
    ni, nj = np.meshgrid(np.arange(n_min[i], n_max[i] + 1), np.arange(n_min[j], n_max[j] + 1),
                         indexing="ij")
    ni, nj = ni.ravel(), nj.ravel()
    rest = np.outer(ni, a_mat[:, i]) + np.outer(nj, a_mat[:, j])  # (G, 3)
    ak = a_mat[:, k]
    lower = np.full(len(ni), -np.inf)
    upper = np.full(len(ni), np.inf)
    for r in range(3):
        if abs(ak[r]) > 1e-12:
            b1 = (lo_n[r] - rest[:, r]) / ak[r]
            b2 = (hi_n[r] - rest[:, r]) / ak[r]
            lower = np.maximum(lower, np.minimum(b1, b2))
            upper = np.minimum(upper, np.maximum(b1, b2))
        else:
            inside = (rest[:, r] >= lo_n[r]) & (rest[:, r] <= hi_n[r])
            upper = np.where(inside, upper, -np.inf)
    if not periodic[k]:  # no periodic axis at all
        lower, upper = np.maximum(lower, 0), np.minimum(upper, 0)
    start = np.ceil(lower - 1e-9)
    stop = np.floor(upper + 1e-9)
    ok = np.isfinite(start) & np.isfinite(stop) & (stop >= start)
    start, stop = start[ok].astype(np.int64), stop[ok].astype(np.int64)
    ni, nj = ni[ok], nj[ok]
    counts = stop - start + 1
    total = int(counts.sum())
    n = np.zeros((total, 3))
    if total == 0:
        return n
    owner = np.repeat(np.arange(len(counts)), counts)
    within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    n[:, i] = ni[owner]
    n[:, j] = nj[owner]
    n[:, k] = start[owner] + within
    return n


def _fill_region(unit_cell: Atoms, rotation: np.ndarray, shift: np.ndarray, lo: np.ndarray,
                 hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All atoms of the rotated, shifted crystal inside the axis-aligned region [lo, hi].

    Positions are R (n·cell + basis) + shift for integer n along periodic axes (n = 0 along
    non-periodic ones); only lattice points whose basis can reach the region are generated.
    """
    a_mat = rotation @ unit_cell.cell.array.T  # columns: rotated lattice vectors
    basis = unit_cell.positions @ rotation.T  # rotated basis offsets (B, 3)
    n = _covering_indices(a_mat, shift, lo, hi, basis, np.asarray(unit_cell.pbc, bool))
    if len(n) == 0:
        return np.zeros(0, int), np.zeros((0, 3))
    lattice = n @ a_mat.T + shift
    pos = (lattice[:, None, :] + basis[None, :, :]).reshape(-1, 3)
    nums = np.tile(unit_cell.numbers, len(n))
    inside = _in_box(pos, lo, hi)
    return nums[inside], np.compress(inside, pos, axis=0)


def orient_and_fill(rng: np.random.Generator, unit_cell: Atoms, box_A: Sequence[float],
                    params: SpecimenParams = DEFAULT_PARAMS, *,
                    rotation: np.ndarray | None = None,
                    zone_axis: Sequence[int] | None = None,
                    mistilt_deg: float | None = None) -> tuple[Atoms, dict[str, Any]]:
    """Orient a unit cell and fill the box ``(ly, lx, lz)`` with it, cropped to the box.

    The orientation is ``rotation`` if given, else drawn by :func:`draw_orientation`. The lattice
    origin is shifted randomly; a layered (2D) material is centred in z. Returns the atoms
    (non-periodic, cell = box) and a record of the orientation.
    """
    ly, lx, lz = _check_box(box_A)
    if rotation is None:
        rotation, info = draw_orientation(rng, unit_cell, params, zone_axis=zone_axis,
                                          mistilt_deg=mistilt_deg)
    else:
        rotation = np.asarray(rotation, float)
        info = {"mode": "given", "rotation": rotation.tolist()}
    box = np.array([lx, ly, lz])
    a_mat = rotation @ unit_cell.cell.array.T
    periodic = np.asarray(unit_cell.pbc, bool)
    u = rng.random(3) * periodic
    shift = a_mat @ u
    if not periodic.all():  # centre the finite layer stack in z
        centre = (unit_cell.positions @ rotation.T).mean(axis=0)
        shift = shift + np.array([0.0, 0.0, lz / 2.0 - centre[2] - shift[2]])
    numbers, pos = _fill_region(unit_cell, rotation, shift, np.zeros(3), box)
    info["origin_shift_frac"] = u.tolist()
    info["n_atoms"] = len(numbers)
    return _make_atoms(numbers, pos, lx, ly, lz), info


# ----------------------------------------------------------------------------------------------
# Wedges and shapes
# ----------------------------------------------------------------------------------------------


def apply_wedge(rng: np.random.Generator, atoms: Atoms, box_A: Sequence[float] | None = None,
                params: SpecimenParams = DEFAULT_PARAMS, *,
                surface: str | None = None) -> tuple[Atoms, dict[str, Any]]:
    """Cut a wedge into the top (z small), bottom (z large) or both surfaces.

    The surface planes descend at the drawn angle (5-45°) along a random in-plane direction,
    starting at a random line across the box; atoms beyond them are removed.
    """
    ly, lx, _ = _box_of(atoms, box_A)
    p = params
    surfaces = ("top", "bottom", "both")
    if surface is None:
        surface = surfaces[int(rng.choice(3, p=np.asarray(p.wedge_surface_probs)))]
    elif surface not in surfaces:
        raise InputError(f"wedge surface must be one of {surfaces}, got {surface!r}")
    angle = uniform(rng, p.wedge_angle_deg)
    direction = uniform(rng, (0.0, 360.0))
    u = np.array([math.cos(math.radians(direction)), math.sin(math.radians(direction))])
    corners = np.array([[0, 0], [lx, 0], [0, ly], [lx, ly]]) @ u
    start = uniform(rng, (float(corners.min()), float(corners.max())))
    info = {"surface": surface, "angle_deg": angle, "direction_deg": direction,
            "start_offset_A": start}
    if len(atoms) == 0:
        info["n_removed"] = 0
        return atoms, info
    pos = atoms.positions
    depth = np.tan(math.radians(angle)) * np.maximum(pos[:, :2] @ u - start, 0.0)
    z0, z1 = pos[:, 2].min(), pos[:, 2].max()
    keep = np.ones(len(atoms), bool)
    if surface in ("top", "both"):
        keep &= pos[:, 2] >= z0 + depth
    if surface in ("bottom", "both"):
        keep &= pos[:, 2] <= z1 - depth
    info["n_removed"] = int((~keep).sum())
    return atoms[keep], info


def _inside_rod(pos: np.ndarray, centre: np.ndarray, axis: np.ndarray,
                vertices_2d: np.ndarray) -> np.ndarray:
    e1 = np.cross(axis, (1.0, 0.0, 0.0) if abs(axis[0]) < 0.9 else (0.0, 1.0, 0.0))
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    d = pos - centre
    uv = np.stack([d @ e1, d @ e2], axis=1)
    edges = np.roll(vertices_2d, -1, axis=0) - vertices_2d  # counter-clockwise polygon
    rel = uv[:, None, :] - vertices_2d[None, :, :]
    cross = edges[None, :, 0] * rel[:, :, 1] - edges[None, :, 1] * rel[:, :, 0]
    return np.all(cross >= 0, axis=1)


def apply_shape(rng: np.random.Generator, atoms: Atoms, box_A: Sequence[float] | None = None,
                params: SpecimenParams = DEFAULT_PARAMS, *,
                shape: str | None = None) -> tuple[Atoms, dict[str, Any]]:
    """Apply one random shape (seed 001): polygon rod, convex polyhedron or planar cut.

    Rod: a prism with a 3-15-vertex convex cross-section and random axis. Polyhedron: convex
    hull of 4-20 random points on a sphere. Both have a radius of 0.01-0.5 × the largest box
    length and a random centre in the box; the atoms inside are kept or removed with p = 0.5.
    Planar cut: atoms on one side of a random plane parallel to z are removed.
    """
    ly, lx, lz = _box_of(atoms, box_A)
    p = params
    shapes = ("rod", "polyhedron", "plane")
    if shape is None:
        shape = shapes[int(rng.choice(3, p=np.asarray(p.shape_probs)))]
    elif shape not in shapes:
        raise InputError(f"shape must be one of {shapes}, got {shape!r}")
    box = np.array([lx, ly, lz])
    keep_inside = chance(rng, p.p_shape_keep)
    centre = rng.random(3) * box
    pos = atoms.positions
    info: dict[str, Any] = {"shape": shape, "keep_inside": keep_inside, "centre_xyz_A": centre}
    if shape == "plane":
        phi = uniform(rng, (0.0, 360.0))
        normal = np.array([math.cos(math.radians(phi)), math.sin(math.radians(phi)), 0.0])
        inside = (pos - centre) @ normal <= 0.0
        info["normal_azimuth_deg"] = phi
    else:
        radius = uniform(rng, p.shape_radius_frac) * float(box.max())
        info["radius_A"] = radius
        if shape == "rod":
            n_v = integer(rng, p.rod_vertices)
            axis = _random_unit_vectors(rng, 1)[0]
            angles = np.sort(rng.random(n_v) * 2 * math.pi)
            verts = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
            inside = _inside_rod(pos, centre, axis, verts)
            info.update({"n_vertices": n_v, "axis": axis, "vertex_angles_rad": angles})
        else:
            n_v = integer(rng, p.polyhedron_vertices)
            for _ in range(10):
                verts = centre + radius * _random_unit_vectors(rng, n_v)
                try:
                    hull = ConvexHull(verts)
                    break
                except QhullError:  # pragma: no cover - coplanar draw, measure zero
                    continue
            else:  # pragma: no cover
                raise RuntimeError("could not draw a non-degenerate polyhedron")
            eq = hull.equations
            inside = np.all(pos @ eq[:, :3].T + eq[:, 3] <= 1e-9, axis=1)
            info.update({"n_vertices": n_v, "vertices_A": verts})
    keep = inside if keep_inside else ~inside
    info["n_removed"] = int((~keep).sum())
    return atoms[keep], info


# ----------------------------------------------------------------------------------------------
# Faceted nanoparticles
# ----------------------------------------------------------------------------------------------


def _family_normals(hkl: Sequence[int], cell: np.ndarray) -> np.ndarray:
    """Unit normals (Cartesian) of all planes {hkl}: signed permutations of the Miller indices."""
    variants = set()
    for perm in itertools.permutations(hkl):
        for signs in itertools.product((1, -1), repeat=3):
            variants.add(tuple(int(s * v) for s, v in zip(signs, perm)))
    variants.discard((0, 0, 0))
    g = np.array(sorted(variants), float) @ np.linalg.inv(cell).T
    return _unit(g)


def nanoparticle(rng: np.random.Generator, box_A: Sequence[float],
                 params: SpecimenParams = DEFAULT_PARAMS, *, material: str | None = None,
                 unit_cell: Atoms | None = None,
                 max_atoms: int | None = None) -> tuple[Atoms, dict[str, Any]]:
    """A faceted crystalline particle bounded by low-index planes ({100}, {110}, {111}).

    The crystal is a named material (``material``, or from ``nanoparticle_materials`` with
    probability ``p_named_material``) or a random crystal; it is oriented like a slab (zone axis
    with mistilt, or random). Each facet family gets its own random plane distance, which gives
    cubes, octahedra, cuboctahedra and their truncations (generic for any lattice: the normals
    come from the reciprocal lattice). The particle sits with its lowest atom at z = 0 (ready
    for a support below it), centred at a random (x, y) that keeps most of it in the box.
    """
    ly, lx, lz = _check_box(box_A)
    p = params
    cap = p.max_atoms if max_atoms is None else max_atoms
    if unit_cell is None:
        if material is None and chance(rng, p.p_named_material):
            material = p.nanoparticle_materials[int(rng.integers(len(p.nanoparticle_materials)))]
        unit_cell = named_material(material) if material is not None else random_crystal(rng, p)
    if is_layered(unit_cell):
        raise InputError(f"a nanoparticle needs a 3D crystal; {unit_cell.info.get('material')} "
                         "is a layered (2D) material")
    rotation, oinfo = draw_orientation(rng, unit_cell, p)
    radius = uniform(rng, p.nanoparticle_radius_frac) * min(lx, ly)
    normals, distances, families = [], [], []
    for hkl, bounds in zip(p.facet_families, p.facet_distance_frac):
        nrm = _family_normals(hkl, unit_cell.cell.array) @ rotation.T
        dist = uniform(rng, bounds)
        normals.append(nrm)
        distances.append(np.full(len(nrm), dist))
        families.append({"hkl": list(hkl), "distance_frac": dist, "n_planes": len(nrm)})
    normals_arr = np.vstack(normals)
    dist_frac = np.concatenate(distances)
    halfspaces = np.hstack([normals_arr, -dist_frac[:, None]])  # n·x - d <= 0, unit radius
    verts = HalfspaceIntersection(halfspaces, np.zeros(3)).intersections
    unit_volume = ConvexHull(verts).volume
    density = len(unit_cell) / abs(np.linalg.det(unit_cell.cell.array))
    radius_cap = (cap / (density * unit_volume)) ** (1 / 3)
    capped = radius > radius_cap
    radius = min(radius, radius_cap)
    verts = verts * radius
    lo_v, hi_v = verts.min(axis=0), verts.max(axis=0)
    half_xy = (hi_v - lo_v)[:2] / 2
    centre = np.zeros(3)
    for ax, length in enumerate((lx, ly)):
        lo_c, hi_c = min(half_xy[ax], length / 2), max(length - half_xy[ax], length / 2)
        centre[ax] = uniform(rng, (lo_c, hi_c))
    centre[2] = -lo_v[2]
    shift = centre + rotation @ unit_cell.cell.array.T @ rng.random(3)
    lo = centre + lo_v - 1e-6
    hi = centre + hi_v + 1e-6
    numbers, pos = _fill_region(unit_cell, rotation, shift, lo, hi)
    inside = np.all((pos - centre) @ normals_arr.T <= radius * dist_frac + 1e-9, axis=1)
    numbers, pos = numbers[inside], pos[inside]
    if len(pos):
        pos[:, 2] -= pos[:, 2].min()
    in_box = (pos[:, 0] >= 0) & (pos[:, 0] <= lx) & (pos[:, 1] >= 0) & (pos[:, 1] <= ly)
    numbers, pos = numbers[in_box], pos[in_box]
    height = float(pos[:, 2].max()) if len(pos) else 0.0
    info = {
        "crystal": dict(unit_cell.info),
        "orientation": oinfo,
        "radius_A": radius,
        "radius_capped": bool(capped),
        "centre_xy_A": centre[:2],
        "facets": families,
        "n_atoms": len(pos),
        "height_A": height,
    }
    return _make_atoms(numbers, pos, lx, ly, max(lz, height)), info


# ----------------------------------------------------------------------------------------------
# Defects
# ----------------------------------------------------------------------------------------------


def apply_defects(rng: np.random.Generator, atoms: Atoms, params: SpecimenParams = DEFAULT_PARAMS,
                  *, species: Sequence[int] | None = None,
                  column_direction=None) -> tuple[Atoms, dict[str, Any]]:
    """Point defects (seed 001) plus missing columns.

    n_sel in [0, round(0.25 N)] atoms are selected; each is displaced (Gaussian, std =
    ``displacement_std_scale`` × covalent radius), removed (vacancy) or given another atomic
    number (another species of the specimen or a random Z) with ``defect_probs``. With
    probability ``p_missing_columns`` whole projected columns are removed: all atoms within
    ``column_radius_A`` of the line through a randomly chosen atom along ``column_direction``
    (x, y, z; the zone axis after the mistilt, ``orient_and_fill``'s info; default the beam, z).
    A mistilted column drifts sideways through a thick slab (1° over 200 Å: 3.5 Å), so a
    cylinder along z took 2 atoms of it (the median over a training library) and left the
    column standing. The (y, x) where each removed column projected (the mean of its atoms) is
    recorded.
    """
    p = params
    n = len(atoms)
    numbers = atoms.numbers.copy()
    pos = atoms.positions.copy()
    own = np.unique(numbers) if species is None else np.unique(np.asarray(species, int))
    n_max = round(p.defect_fraction_max * n)
    n_sel = integer(rng, (0, n_max)) if n_max > 0 else 0
    sel = rng.choice(n, size=n_sel, replace=False) if n_sel else np.zeros(0, int)
    fate = rng.choice(3, size=n_sel, p=np.asarray(p.defect_probs))
    disp = sel[fate == 0]
    vac = sel[fate == 1]
    sub = sel[fate == 2]
    std = p.displacement_std_scale * covalent_radii[numbers[disp]]
    pos[disp] += rng.normal(size=(len(disp), 3)) * std[:, None]
    if len(sub):
        use_own = (rng.random(len(sub)) < p.p_substitute_own_species) & (len(own) > 1)
        new_z = rng.integers(p.z_range[0], p.z_range[1] + 1, size=len(sub))
        # another species of the specimen: pick among the ones different from the current Z
        pick = rng.integers(0, max(len(own) - 1, 1), size=len(sub))
        if len(own) > 1:
            cur = np.searchsorted(own, numbers[sub])
            other = own[(cur + 1 + pick) % len(own)]
            new_z = np.where(use_own, other, new_z)
        numbers[sub] = new_z
    keep = np.ones(n, bool)
    keep[vac] = False
    info: dict[str, Any] = {
        "n_selected": n_sel,
        "n_displaced": len(disp),
        "n_vacancies": len(vac),
        "n_substituted": len(sub),
        "displacement_std_scale": p.displacement_std_scale,
        "missing_columns": [],
    }
    if chance(rng, p.p_missing_columns) and keep.any():
        # where each atom's column line crosses z = 0: one point per column, tilted or not
        line_xy = pos[:, :2]
        if column_direction is not None:
            d = np.asarray(column_direction, float)
            if d.shape == (3,) and abs(d[2]) > 0.5 * np.linalg.norm(d):
                line_xy = pos[:, :2] - np.outer(pos[:, 2], d[:2] / d[2])
        n_col = integer(rng, p.missing_columns)
        for _ in range(n_col):
            alive = np.flatnonzero(keep)
            if not alive.size:
                break
            seed_atom = alive[int(rng.integers(alive.size))]
            column = (np.sum((line_xy - line_xy[seed_atom]) ** 2, axis=1)
                      <= p.column_radius_A**2) & keep
            xy = pos[column, :2].mean(axis=0)
            keep &= ~column
            info["missing_columns"].append({"yx_A": [float(xy[1]), float(xy[0])],
                                            "n_atoms": int(column.sum())})
        info["column_radius_A"] = p.column_radius_A
    out = Atoms(numbers=numbers[keep], positions=pos[keep], cell=atoms.cell.copy(), pbc=False)
    return out, info


# ----------------------------------------------------------------------------------------------
# Support
# ----------------------------------------------------------------------------------------------


def _draw_crystal(rng: np.random.Generator, p: SpecimenParams, lx: float, ly: float, lz: float,
                  cap: float, *, names: Sequence[str], species: Sequence[int] | None = None,
                  material: str | None = None) -> tuple[Atoms, float, bool]:
    """A named or random unit cell and the (capped) slab thickness it can fill."""
    if material is None and chance(rng, p.p_named_material):
        material = names[int(rng.integers(len(names)))]
    for _ in range(50):
        cell = named_material(material) if material is not None else \
            random_crystal(rng, p, species=species)
        if is_layered(cell):
            return cell, lz, False
        density = len(cell) / abs(np.linalg.det(cell.cell.array))
        t, capped = _capped_thickness(density, lx, ly, lz, cap, p.min_slab_thickness_A)
        if material is not None or density * lx * ly * t <= 1.2 * cap:
            return cell, t, capped
    return cell, t, capped  # a dense random crystal in a huge box: accept a little over the cap


def add_support(rng: np.random.Generator, atoms: Atoms, box_A: Sequence[float],
                params: SpecimenParams = DEFAULT_PARAMS, *,
                max_atoms: int | None = None) -> tuple[Atoms, tuple[float, float, float],
                                                       dict[str, Any]]:
    """Add a crystalline or amorphous support 1-30 nm thick below the specimen (larger z).

    The support is generated like a specimen (random or named crystal with a drawn orientation,
    or an amorphous solid) without shapes, wedges or defects; its atoms favour light elements
    (``support_light_z``) with probability ``p_support_light``. Its thickness is reduced if it
    would exceed ``max_atoms``. Returns the combined atoms, the box (lz grown to fit) and a
    record.
    """
    ly, lx, lz = _check_box(box_A)
    p = params
    cap = max(0, p.max_atoms - len(atoms)) if max_atoms is None else max(0, max_atoms)
    t_req = uniform(rng, p.support_thickness_A)
    crystalline = chance(rng, p.p_support_crystal)
    light = chance(rng, p.p_support_light)
    gap = uniform(rng, p.support_gap_A)
    z0 = float(atoms.positions[:, 2].max()) + gap if len(atoms) else 0.0
    info: dict[str, Any] = {"crystalline": crystalline, "light_elements": light, "gap_A": gap,
                            "z_start_A": z0, "thickness_requested_A": t_req}
    if cap <= 0:  # the specimen already used the whole atom budget
        info.update({"skipped": "atom cap reached", "thickness_A": 0.0, "n_atoms": 0,
                     "thickness_capped": True})
        return atoms, (ly, lx, lz), info
    if crystalline:
        species = None
        if light:
            n_sp = min(integer(rng, p.support_species), len(p.support_light_z))
            species = rng.choice(np.asarray(p.support_light_z), size=n_sp, replace=False)
        cell, t, capped = _draw_crystal(rng, p, lx, ly, t_req, cap,
                                        names=p.support_named_materials, species=species)
        slab, oinfo = orient_and_fill(rng, cell, (ly, lx, t), p)
        info.update({"crystal": dict(cell.info), "orientation": oinfo, "thickness_A": t,
                     "thickness_capped": capped})
    else:
        z = int(rng.choice(np.asarray(p.support_light_z))) if light else None
        slab, ainfo = amorphous(rng, (ly, lx, t_req), p, z=z, max_atoms=cap)
        info.update({"amorphous": ainfo, "thickness_A": ainfo["thickness_A"],
                     "thickness_capped": ainfo["thickness_capped"]})
    pos = slab.positions
    pos[:, 2] += z0
    info["n_atoms"] = len(slab)
    new_lz = max(lz, z0 + float(info["thickness_A"]))
    out = _make_atoms(np.concatenate([atoms.numbers, slab.numbers]),
                      np.vstack([atoms.positions, pos]), lx, ly, new_lz)
    return out, (ly, lx, new_lz), info


# ----------------------------------------------------------------------------------------------
# Top level
# ----------------------------------------------------------------------------------------------


def build_specimen(rng: np.random.Generator | int | None, box_A: Sequence[float],
                   params: SpecimenParams = DEFAULT_PARAMS, material: str | None = None, *,
                   pixel_size_A: float | None = None) -> Specimen:
    """Draw one random specimen filling the extended box ``box_A = (ly, lx, lz)`` in Å.

    ``material`` forces a named crystal (case-insensitive; see ``NAMED_MATERIALS``).
    ``pixel_size_A`` sets the scale of the point-specimen separation (default max(lx, ly) /
    ``params.nominal_pixels``). See the module docstring for the steps and the atom cap.
    """
    rng = as_generator(rng)
    if not isinstance(params, SpecimenParams):
        raise ConfigError(f"params must be a SpecimenParams, got {type(params).__name__}")
    ly, lx, lz = _check_box(box_A)
    canon = canonical_name(material) if material is not None else None
    if pixel_size_A is not None and not (math.isfinite(pixel_size_A) and pixel_size_A > 0):
        raise InputError(f"pixel_size_A must be a positive length in Å, got {pixel_size_A!r}")
    p = params
    info: dict[str, Any] = {"box_A_requested": [ly, lx, lz]}
    with_support = chance(rng, p.p_support)
    cap = int(p.max_atoms * (1 - p.support_atom_share)) if with_support else p.max_atoms

    if canon is not None:
        kind = "crystal"
    else:
        kind = _KINDS[int(rng.choice(3, p=[p.p_crystal, p.p_amorphous, p.p_points]))]
    if kind == "crystal" and chance(rng, p.p_nanoparticle):
        kind = "nanoparticle"
    if kind == "nanoparticle" and canon is not None and is_layered(named_material(canon)):
        kind = "crystal"

    if kind == "crystal":
        cell, t, capped = _draw_crystal(rng, p, lx, ly, lz, cap, names=p.named_materials,
                                        material=canon)
        atoms, oinfo = orient_and_fill(rng, cell, (ly, lx, t), p)
        info["crystal"] = dict(cell.info)
        info["orientation"] = oinfo
        info.update({"thickness_A": t, "thickness_capped": capped})
    elif kind == "nanoparticle":
        atoms, info["nanoparticle"] = nanoparticle(rng, (ly, lx, lz), p, material=canon,
                                                   max_atoms=cap)
    elif kind == "amorphous":
        atoms, info["amorphous"] = amorphous(rng, (ly, lx, lz), p, max_atoms=cap)
    else:
        atoms, info["points"] = individual_points(rng, (ly, lx, lz), p,
                                                  pixel_size_A=pixel_size_A)
    if kind in ("amorphous", "points"):
        info["orientation"] = {"mode": "isotropic (not rotated)"}

    if kind != "nanoparticle":  # a particle is already shaped by its facets
        if chance(rng, p.p_wedge):
            atoms, info["wedge"] = apply_wedge(rng, atoms, (ly, lx, lz), p)
        if chance(rng, p.p_shape):
            atoms, info["shape"] = apply_shape(rng, atoms, (ly, lx, lz), p)
    if chance(rng, p.p_defects):
        atoms, info["defects"] = apply_defects(
            rng, atoms, p, column_direction=info.get("orientation", {}).get("column_direction"))

    # keep every atom in the box: drop atoms displaced out of the (x, y) window, clip z
    pos = atoms.positions
    in_xy = (pos[:, 0] >= 0) & (pos[:, 0] <= lx) & (pos[:, 1] >= 0) & (pos[:, 1] <= ly)
    numbers, pos = atoms.numbers[in_xy], pos[in_xy]
    pos[:, 2] = np.maximum(pos[:, 2], 0.0)
    info["n_dropped_outside"] = int((~in_xy).sum())
    z_top = float(pos[:, 2].max()) if len(pos) else 0.0
    box_lz = max(lz, z_top)
    atoms = _make_atoms(numbers, pos, lx, ly, box_lz)
    info["n_specimen_atoms"] = len(atoms)

    if with_support:
        atoms, (ly, lx, box_lz), info["support"] = add_support(
            rng, atoms, (ly, lx, box_lz), p, max_atoms=p.max_atoms - len(atoms))
    info["n_atoms"] = len(atoms)
    info["kind"] = kind
    return Specimen(atoms=atoms, box_A=(ly, lx, box_lz), kind=kind, info=_jsonable(info))
