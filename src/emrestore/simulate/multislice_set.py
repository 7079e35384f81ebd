"""Multislice reference cells: abTEM HAADF scans of periodic crystals, shipped with the package.

A Nyquist-sampled ADF scan of one periodic cell determines the whole image of the crystal at any
pixel size, shift and in-plane rotation (:func:`multislice.tile_periodic`). The scans are a few
kilobytes each, so the package ships them (``simulate/data/multislice_cells.npz``), and the
multislice test set and the training mix need neither abTEM nor its run time.

Each :class:`ReferenceCell` holds the HAADF samples over one cell at one exit thickness (fraction
of the incident beam, before the incoherent source blur), the cell's atoms up to that thickness
and the optics it was computed with. :func:`render_reference_scene` turns one into a frame for
``sampler.simulate_pair``: a random in-plane rotation and shift, rendered either from the
multislice scan (``model="multislice"``) or, for a controlled comparison, by the fast linear
model from the same atoms with the same probe (``model="linear"``). Everything after the signal
(contrast and background stage, dose, detector and scan distortions) is the sampler's chain, so
the only difference between the two renderings is the physics of image formation.

Cells carry a ``split``: the benchmarks' multislice test set draws from ``"test"`` cells (the
calibration specimens of ``benchmarks/calibrate_linear_model.py``), the training mix from
``"train"`` cells (other materials and thicknesses), so a network is never scored on a crystal
whose multislice image it was trained on.

Rebuild the file (needs abTEM; 46 + 14 min of multislice on 2 CPU cores, minutes on a GPU)::

    python benchmarks/calibrate_linear_model.py --workers 2 -o runs/calibration \\
        --cache runs/ms-cache --export-cells
    python benchmarks/calibrate_linear_model.py --cases train --phonons 2 --workers 2 \\
        -o runs/calibration-train --cache runs/ms-cache --export-cells
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from .multislice import MultisliceParams, tile_periodic

__all__ = [
    "ReferenceCell",
    "ReferenceScene",
    "load_reference_cells",
    "reference_cells_from_scan",
    "render_reference_scene",
    "save_reference_cells",
]

SPLITS = ("train", "test")
MODELS = ("multislice", "linear")
_PACKAGED = "multislice_cells.npz"


@dataclass(frozen=True)
class ReferenceCell:
    """One periodic crystal at one exit thickness, as multislice saw it.

    Attributes
    ----------
    name : e.g. ``"SrTiO3[001]"``; ``material``, ``zone_axis`` as in ``zone_axis_cell``.
    thickness_A : exit thickness (Å).
    cell_extent_A : (ly, lx), the lateral period (Å).
    haadf : (ny, nx) float32 samples at (y, x) = (j ly/ny, i lx/nx), fraction of the incident
        beam on the HAADF annulus, before the source blur.
    numbers, positions_A : the cell's atoms up to ``thickness_A`` (Z, and (n, 3) x, y, z in Å).
    params : :class:`MultisliceParams` as a dict (optics, detector angles, phonons).
    split : ``"test"`` or ``"train"``.
    """

    name: str
    material: str
    zone_axis: tuple[int, int, int]
    thickness_A: float
    cell_extent_A: tuple[float, float]
    haadf: np.ndarray
    numbers: np.ndarray
    positions_A: np.ndarray
    params: dict[str, Any]
    split: str

    @property
    def multislice_params(self) -> MultisliceParams:
        return MultisliceParams.from_dict(self.params)

    @property
    def label(self) -> str:
        return f"{self.name} {self.thickness_A / 10:.1f} nm"


@dataclass
class ReferenceScene:
    """A reference cell rendered on a field: what ``simulate_pair`` needs in place of a specimen.

    ``signal`` (H, W) and ``signal_2x`` (2h, 2w) or None are in the units of the chosen model
    (multislice: fraction of the beam; linear: ``render_atoms`` units); the sampler normalises
    them. ``columns`` is a ``render_columns``-style dict in the field's pixel frame;
    ``integrated_intensity`` is NaN for multislice (no additive per-column intensity exists).
    """

    signal: np.ndarray
    signal_2x: np.ndarray | None
    columns: dict[str, np.ndarray]
    probe: Any
    info: dict[str, Any]


def reference_cells_from_scan(name: str, material: str, zone_axis, atoms, cell_scan_haadf,
                              thickness_A, params: MultisliceParams, split: str
                              ) -> list[ReferenceCell]:
    """Reference cells from one ``simulate_multislice`` run of a periodic cell.

    ``atoms``: the simulated periodic cell (ase.Atoms); ``cell_scan_haadf``: its HAADF cell scan,
    ([T,] ny, nx) (``out["cell_scan"][0]``); ``thickness_A``: the (T,) exit thicknesses.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    scans = np.asarray(cell_scan_haadf, dtype=np.float32)
    thick = np.atleast_1d(np.asarray(thickness_A, dtype=float))
    if scans.ndim == 2:
        scans = scans[None]
    if scans.shape[0] != thick.size:
        raise InputError(f"{scans.shape[0]} scans for {thick.size} thicknesses")
    lx, ly = float(atoms.cell[0, 0]), float(atoms.cell[1, 1])
    z = atoms.positions[:, 2] - atoms.positions[:, 2].min()
    cells = []
    for scan, t in zip(scans, thick):
        keep = z < t + 1e-3
        cells.append(ReferenceCell(
            name=name, material=material, zone_axis=tuple(int(v) for v in zone_axis),
            thickness_A=float(t), cell_extent_A=(ly, lx), haadf=scan,
            numbers=np.asarray(atoms.numbers[keep], dtype=np.int64),
            positions_A=np.asarray(atoms.positions[keep], dtype=np.float64),
            params=params.to_dict(), split=split))
    return cells


def save_reference_cells(cells: list[ReferenceCell], path: str | Path, *, merge: bool = True
                         ) -> Path:
    """Write cells to ``path`` (npz, no pickle), atomically; ``merge`` keeps the cells already
    in the file that are not replaced (same name, thickness and split)."""
    from ..io import write_atomically

    path = Path(path)
    existing = _read(path) if merge and path.exists() else []
    keys = {(c.name, round(c.thickness_A, 3), c.split) for c in cells}
    everything = [c for c in existing if (c.name, round(c.thickness_A, 3), c.split) not in keys]
    everything += list(cells)
    arrays: dict[str, np.ndarray] = {}
    index = []
    for i, c in enumerate(everything):
        arrays[f"haadf_{i}"] = np.asarray(c.haadf, np.float32)
        arrays[f"numbers_{i}"] = np.asarray(c.numbers, np.int16)
        arrays[f"positions_{i}"] = np.asarray(c.positions_A, np.float32)
        index.append({"name": c.name, "material": c.material, "zone_axis": list(c.zone_axis),
                      "thickness_A": c.thickness_A, "cell_extent_A": list(c.cell_extent_A),
                      "params": c.params, "split": c.split})
    arrays["index"] = np.array(json.dumps(index))

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    write_atomically(path, write)
    _read_cached.cache_clear()
    return path


def _read(path: Path) -> list[ReferenceCell]:
    try:
        with np.load(path, allow_pickle=False) as data:
            index = json.loads(str(data["index"]))
            return [ReferenceCell(
                name=e["name"], material=e["material"], zone_axis=tuple(e["zone_axis"]),
                thickness_A=float(e["thickness_A"]), cell_extent_A=tuple(e["cell_extent_A"]),
                haadf=np.array(data[f"haadf_{i}"], np.float32),
                numbers=np.array(data[f"numbers_{i}"], np.int64),
                positions_A=np.array(data[f"positions_{i}"], np.float64),
                params=e["params"], split=e["split"]) for i, e in enumerate(index)]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: not a readable multislice reference-cell file ({exc})") from exc


@lru_cache(maxsize=4)
def _read_cached(path: str) -> tuple[ReferenceCell, ...]:
    return tuple(_read(Path(path)))


def packaged_cells_path() -> Path:
    return Path(str(resources.files("emrestore.simulate") / "data" / _PACKAGED))


def load_reference_cells(split: str | None = None, path: str | Path | None = None
                         ) -> list[ReferenceCell]:
    """The reference cells shipped with emrestore (or in ``path``), optionally of one split."""
    p = Path(path) if path is not None else packaged_cells_path()
    if not p.exists():
        raise InputError(f"no multislice reference cells at {p}; build them with "
                         "benchmarks/calibrate_linear_model.py --export-cells")
    cells = list(_read_cached(str(p)))
    if split is not None:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
        cells = [c for c in cells if c.split == split]
        if not cells:
            raise InputError(f"{p} holds no {split!r} cells")
    return cells


# --------------------------------------------------------------------------------------------
# Rendering a cell on a field
# --------------------------------------------------------------------------------------------


def _to_cell_frame(y, x, rotation_rad: float):
    """Output-frame (y, x) in Å -> cell-frame (y, x), the map ``tile_periodic`` samples with."""
    c, s = math.cos(rotation_rad), math.sin(rotation_rad)
    return -s * x + c * y, c * x + s * y


def _from_cell_frame(yc, xc, rotation_rad: float):
    c, s = math.cos(rotation_rad), math.sin(rotation_rad)
    return s * xc + c * yc, c * xc - s * yc


def _tiled_atoms(cell: ReferenceCell, shape, pixel_size_A: float, origin_A, rotation_rad: float,
                 margin_A: float) -> tuple[np.ndarray, np.ndarray]:
    """The cell's atoms repeated over the field, in the field's frame ((n, 3) x, y, z in Å with
    pixel (0, 0) at the origin), within ``margin_A`` of it."""
    h, w = shape
    ly, lx = cell.cell_extent_A
    corners_y = origin_A[0] + np.array([-margin_A, -margin_A, h * pixel_size_A + margin_A,
                                        h * pixel_size_A + margin_A])
    corners_x = origin_A[1] + np.array([-margin_A, w * pixel_size_A + margin_A, -margin_A,
                                        w * pixel_size_A + margin_A])
    yc, xc = _to_cell_frame(corners_y, corners_x, rotation_rad)
    my = np.arange(math.floor(yc.min() / ly) - 1, math.ceil(yc.max() / ly) + 1)
    mx = np.arange(math.floor(xc.min() / lx) - 1, math.ceil(xc.max() / lx) + 1)
    gy, gx = np.meshgrid(my * ly, mx * lx, indexing="ij")
    base = cell.positions_A
    ay = (base[None, :, 1] + gy.reshape(-1, 1)).ravel()
    ax = (base[None, :, 0] + gx.reshape(-1, 1)).ravel()
    az = np.tile(base[:, 2], gy.size)
    numbers = np.tile(cell.numbers, gy.size)
    oy, ox = _from_cell_frame(ay, ax, rotation_rad)
    oy, ox = oy - origin_A[0], ox - origin_A[1]
    inside = ((oy > -margin_A) & (oy < h * pixel_size_A + margin_A)
              & (ox > -margin_A) & (ox < w * pixel_size_A + margin_A))
    return numbers[inside], np.column_stack([ox[inside], oy[inside], az[inside]])


def render_reference_scene(cell: ReferenceCell, rng: np.random.Generator, shape,
                           pixel_size_A: float, *, model: str = "multislice",
                           profile_params=None,
                           window_px: tuple[int, int, int, int] | None = None,
                           merge_radius_A: float = 0.25) -> ReferenceScene:
    """Render ``cell`` on a (H, W) field at ``pixel_size_A``, at a random rotation and shift.

    ``model="multislice"`` evaluates the cell scan (with the cell's source blur); ``"linear"``
    renders the same atoms with the fast model (``render_atoms``) through the same probe, with
    atom profiles drawn from ``profile_params`` (``AtomProfileParams``) — the controlled twin
    that isolates the physics of image formation: for the same ``rng`` state both models give the
    same rotation, shift and column labels, and consume the same number of draws.
    ``window_px = (top, left, h, w)`` also renders that window at half the pixel size (the
    sampler's super-resolution label). Column labels come from the atoms
    (``render_columns``); their ``integrated_intensity`` is NaN for multislice.
    """
    from .render import render_atoms, render_atoms_with_supersampled

    if model not in MODELS:
        raise ConfigError(f"model must be one of {MODELS}, got {model!r}")
    h, w = (int(v) for v in shape)
    params = cell.multislice_params
    rotation = float(rng.uniform(0.0, 360.0))
    ly, lx = cell.cell_extent_A
    origin = (float(rng.uniform(0.0, ly)), float(rng.uniform(0.0, lx)))
    profile_seed = int(rng.integers(0, 2**63 - 1))  # drawn by both models: the twin stays aligned
    t = math.radians(rotation)
    probe = params.probe
    profiles = None
    if model == "linear":
        from .profiles import AtomProfileParams, draw_atom_profiles

        profiles = draw_atom_profiles(np.random.default_rng(profile_seed), np.unique(cell.numbers),
                                      profile_params or AtomProfileParams())
    numbers, positions = _tiled_atoms(cell, (h, w), pixel_size_A, origin, t, margin_A=4.0)
    signal_2x = None
    if model == "multislice":
        signal = tile_periodic(cell.haadf, cell.cell_extent_A, (h, w), pixel_size_A,
                               origin_A=origin, rotation_deg=rotation,
                               source_fwhm_A=params.source_fwhm_A, method="spline")
        if window_px is not None:
            top, left, wh, ww = window_px
            fine = pixel_size_A / 2
            # fine pixel 0 sits a quarter of a coarse pixel before the window (render.py)
            # (tile_periodic rotates about output coordinates, so the shift is not rotated)
            fine_origin = (origin[0] + (top - 0.25) * pixel_size_A,
                           origin[1] + (left - 0.25) * pixel_size_A)
            signal_2x = tile_periodic(cell.haadf, cell.cell_extent_A, (2 * wh, 2 * ww), fine,
                                      origin_A=fine_origin, rotation_deg=rotation,
                                      source_fwhm_A=params.source_fwhm_A, method="spline")
        signal = np.maximum(signal, 0.0)
        if signal_2x is not None:
            signal_2x = np.maximum(signal_2x, 0.0)
    else:
        if window_px is not None:
            signal, signal_2x = render_atoms_with_supersampled(
                numbers, positions, profiles, (h, w), pixel_size_A, probe, window_px=window_px,
                supersample=2)
        else:
            signal = render_atoms(numbers, positions, profiles, (h, w), pixel_size_A, probe)
    columns = _columns(numbers, positions, (h, w), pixel_size_A, merge_radius_A, profiles)
    if model == "multislice":
        columns["integrated_intensity"] = np.full(len(columns["species"]), np.nan)
    info = {"cell": cell.name, "material": cell.material, "zone_axis": list(cell.zone_axis),
            "thickness_A": cell.thickness_A, "split": cell.split, "model": model,
            "rotation_deg": rotation, "origin_A": list(origin)}
    return ReferenceScene(signal=np.asarray(signal, np.float32),
                          signal_2x=None if signal_2x is None else np.asarray(signal_2x,
                                                                              np.float32),
                          columns=columns, probe=probe, info=info)


def _columns(numbers, positions, shape, pixel_size_A, merge_radius_A, profiles):
    from .profiles import AtomProfileParams, draw_atom_profiles
    from .render import render_columns

    if profiles is None:  # positions and counts need a profile only for the weights
        profiles = draw_atom_profiles(np.random.default_rng(0), np.unique(numbers),
                                      AtomProfileParams())
    return render_columns(numbers, positions, profiles, shape, pixel_size_A,
                          merge_radius_A=merge_radius_A)
