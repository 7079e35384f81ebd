"""Named crystal structures used as specimens: one periodic unit cell per name, built with ASE.

The list covers the materials of the source papers' training sets (graphene, graphite, GaAs, InAs,
MoS2, SrTiO3, Si; Pt, NiO, SrTiO3, DyScO3, Si, graphene, MoS2, rutile TiO2, LiCoO2; Pt/Au/PtFe
nanoparticles; tellurium) plus a few cheap, common extras (other fcc/bcc metals, rock-salt,
fluorite and wurtzite compounds, other transition-metal dichalcogenide monolayers, h-BN).

Every cell is returned as an ``ase.Atoms`` in Å. Two-dimensional materials (monolayers, bilayers)
are periodic along a and b only (``pbc = (True, True, False)``); their c vector is the nominal
layer-stack repeat, used for bookkeeping only: the specimen builder never repeats a cell along a
non-periodic axis. Lattice parameters are room-temperature literature values rounded to about
0.005 Å; the DyScO3 and LiCoO2 internal coordinates are approximate, which is ample for images.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase import Atoms
from ase.build import bulk, mx2
from ase.spacegroup import crystal

from ..errors import InputError

__all__ = ["MATERIAL_ALIASES", "NAMED_MATERIALS", "is_layered", "named_material"]


def _monolayer(formula: str, a: float, thickness: float, repeat_c: float) -> Atoms:
    """A 2H transition-metal dichalcogenide monolayer, periodic in a and b only."""
    atoms = mx2(formula=formula, kind="2H", a=a, thickness=thickness)
    cell = atoms.cell.array.copy()
    cell[2] = (0.0, 0.0, repeat_c)
    atoms.set_cell(cell)
    atoms.positions[:, 2] += repeat_c / 2.0
    atoms.pbc = (True, True, False)
    return atoms


def _honeycomb(symbols: str, a: float, repeat_c: float) -> Atoms:
    """Graphene-like honeycomb monolayer (graphene: 'CC', hexagonal boron nitride: 'BN')."""
    cell = np.array([[a, 0.0, 0.0], [-a / 2.0, a * np.sqrt(3.0) / 2.0, 0.0], [0.0, 0.0, repeat_c]])
    frac = np.array([[0.0, 0.0, 0.5], [1.0 / 3.0, 2.0 / 3.0, 0.5]])
    return Atoms(symbols, scaled_positions=frac, cell=cell, pbc=(True, True, False))


def _layered(atoms: Atoms) -> Atoms:
    """Mark a bulk cell's c axis as non-periodic: the cell content is the finite layer stack."""
    atoms.pbc = (True, True, False)
    return atoms


def _dysco3() -> Atoms:
    """Orthorhombic DyScO3 (GdFeO3-type perovskite) in the Pbnm setting: a < b < c ~ 2 a_p.

    ASE knows space group 62 only in its standard Pnma setting, so the structure is built there
    (Pnma axes = Pbnm (b, c, a)) and the axes are then permuted back to Pbnm, so that zone axes
    quoted in the literature (e.g. DyScO3 [110]) mean the same here.
    Approximate Pbnm coordinates: Dy 4c (0.983, 0.060, 1/4), Sc 4b (1/2, 0, 0),
    O1 4c (0.113, 0.453, 1/4), O2 8d (0.696, 0.304, 0.055).
    """
    a, b, c = 5.440, 5.713, 7.887
    pbnm = [(0.983, 0.060, 0.25), (0.5, 0.0, 0.0), (0.113, 0.453, 0.25), (0.696, 0.304, 0.055)]
    pnma = [(y, z, x) for (x, y, z) in pbnm]
    atoms = crystal(["Dy", "Sc", "O", "O"], basis=pnma, spacegroup=62,
                    cellpar=[b, c, a, 90, 90, 90])
    # Pnma (a', b', c') = Pbnm (b, c, a): Pbnm x = z', y = x', z = y'.
    frac = atoms.get_scaled_positions()[:, [2, 0, 1]]
    return Atoms(atoms.numbers, scaled_positions=frac, cell=np.diag([a, b, c]), pbc=True)


def _builders() -> dict[str, Callable[[], Atoms]]:
    hex_angles = [90, 90, 120]
    return {
        # --- training-set materials of the source papers -----------------------------------
        "SrTiO3": lambda: crystal(["Sr", "Ti", "O"], basis=[(0, 0, 0), (0.5, 0.5, 0.5),
                                                           (0, 0.5, 0.5)],
                                  spacegroup=221, cellpar=[3.905, 3.905, 3.905, 90, 90, 90]),
        "Si": lambda: bulk("Si", "diamond", a=5.431, cubic=True),
        "GaAs": lambda: bulk("GaAs", "zincblende", a=5.653, cubic=True),
        "InAs": lambda: bulk("InAs", "zincblende", a=6.058, cubic=True),
        "MoS2-1L": lambda: _monolayer("MoS2", a=3.160, thickness=3.172, repeat_c=6.15),
        "MoS2-2L": lambda: _layered(crystal(["Mo", "S"], basis=[(1 / 3, 2 / 3, 0.25),
                                                               (1 / 3, 2 / 3, 0.621)],
                                            spacegroup=194,
                                            cellpar=[3.160, 3.160, 12.295, *hex_angles])),
        "MoS2-bulk": lambda: crystal(["Mo", "S"], basis=[(1 / 3, 2 / 3, 0.25),
                                                         (1 / 3, 2 / 3, 0.621)],
                                     spacegroup=194, cellpar=[3.160, 3.160, 12.295, *hex_angles]),
        "graphene": lambda: _honeycomb("CC", a=2.46, repeat_c=3.35),
        "graphite": lambda: crystal(["C", "C"], basis=[(0, 0, 0.25), (1 / 3, 2 / 3, 0.25)],
                                    spacegroup=194, cellpar=[2.464, 2.464, 6.711, *hex_angles]),
        "Pt": lambda: bulk("Pt", "fcc", a=3.924, cubic=True),
        "Au": lambda: bulk("Au", "fcc", a=4.078, cubic=True),
        "NiO": lambda: bulk("NiO", "rocksalt", a=4.177, cubic=True),
        "TiO2-rutile": lambda: crystal(["Ti", "O"], basis=[(0, 0, 0), (0.3048, 0.3048, 0)],
                                       spacegroup=136, cellpar=[4.594, 4.594, 2.959, 90, 90, 90]),
        "DyScO3": _dysco3,
        "LiCoO2": lambda: crystal(["Co", "Li", "O"], basis=[(0, 0, 0), (0, 0, 0.5),
                                                           (0, 0, 0.2396)],
                                  spacegroup=166, cellpar=[2.816, 2.816, 14.05, *hex_angles]),
        "PbTe": lambda: bulk("PbTe", "rocksalt", a=6.462, cubic=True),
        "Te": lambda: crystal(["Te"], basis=[(0.2636, 0, 1 / 3)], spacegroup=152,
                              cellpar=[4.457, 4.457, 5.929, *hex_angles]),
        "PtFe": lambda: crystal(["Pt", "Fe"], basis=[(0, 0, 0), (0.5, 0.5, 0.5)],
                                spacegroup=123, cellpar=[2.722, 2.722, 3.713, 90, 90, 90]),
        # --- cheap extras ----------------------------------------------------------------------
        "Ag": lambda: bulk("Ag", "fcc", a=4.086, cubic=True),
        "Cu": lambda: bulk("Cu", "fcc", a=3.615, cubic=True),
        "Pd": lambda: bulk("Pd", "fcc", a=3.891, cubic=True),
        "Al": lambda: bulk("Al", "fcc", a=4.050, cubic=True),
        "Fe": lambda: bulk("Fe", "bcc", a=2.867, cubic=True),
        "W": lambda: bulk("W", "bcc", a=3.165, cubic=True),
        "MgO": lambda: bulk("MgO", "rocksalt", a=4.212, cubic=True),
        "CeO2": lambda: bulk("CeO2", "fluorite", a=5.411, cubic=True),
        "SiC-3C": lambda: bulk("SiC", "zincblende", a=4.360, cubic=True),
        "ZnO": lambda: bulk("ZnO", "wurtzite", a=3.250, c=5.207, u=0.382),
        "GaN": lambda: bulk("GaN", "wurtzite", a=3.189, c=5.185, u=0.377),
        "hBN": lambda: _honeycomb("BN", a=2.504, repeat_c=3.33),
        "WS2-1L": lambda: _monolayer("WS2", a=3.153, thickness=3.14, repeat_c=6.16),
        "MoSe2-1L": lambda: _monolayer("MoSe2", a=3.288, thickness=3.34, repeat_c=6.46),
        "WSe2-1L": lambda: _monolayer("WSe2", a=3.282, thickness=3.36, repeat_c=6.49),
    }


_BUILDERS = _builders()

#: Canonical names accepted by :func:`named_material` (lookup is case-insensitive).
NAMED_MATERIALS: tuple[str, ...] = tuple(_BUILDERS)

#: Extra spellings mapped onto canonical names (keys lower case).
MATERIAL_ALIASES: dict[str, str] = {
    "mos2": "MoS2-1L", "mos2-monolayer": "MoS2-1L", "mos2-bilayer": "MoS2-2L",
    "tio2": "TiO2-rutile", "rutile": "TiO2-rutile",
    "tellurium": "Te", "tellurene": "Te", "fept": "PtFe",
    "ws2": "WS2-1L", "mose2": "MoSe2-1L", "wse2": "WSe2-1L",
    "sic": "SiC-3C", "h-bn": "hBN", "bn": "hBN", "c": "graphite",
}

_LOOKUP: dict[str, str] = {name.lower(): name for name in NAMED_MATERIALS} | MATERIAL_ALIASES
_CACHE: dict[str, Atoms] = {}


def canonical_name(name: str) -> str:
    """The canonical spelling of a material name; InputError listing valid names if unknown."""
    if not isinstance(name, str):
        raise InputError(f"material name must be a string, got {name!r}")
    key = name.strip().lower().replace("_", "-").replace(" ", "")
    if key not in _LOOKUP:
        raise InputError(
            f"unknown material {name!r}; valid names are: {', '.join(NAMED_MATERIALS)}"
        )
    return _LOOKUP[key]


def named_material(name: str) -> Atoms:
    """Periodic unit cell (``ase.Atoms``, Å) of a named material; a fresh copy on every call.

    Lookup is case-insensitive and accepts a few aliases ("TiO2", "tellurene", "MoS2", ...).
    ``atoms.info`` holds ``{"source": "named", "material": <canonical name>}``.
    """
    canon = canonical_name(name)
    if canon not in _CACHE:
        atoms = _BUILDERS[canon]()
        atoms.info.clear()
        atoms.info.update({"source": "named", "material": canon})
        _CACHE[canon] = atoms
    return _CACHE[canon].copy()


def is_layered(atoms: Atoms) -> bool:
    """True for a cell that is not periodic along at least one axis (2D materials)."""
    return not bool(np.all(atoms.pbc))
