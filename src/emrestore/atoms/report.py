"""The ``emrestore atoms`` command: image file in, column table (CSV) and an overview figure out.

Pipeline: read the image (:func:`emrestore.io.read_image`), find and refine the columns with
:func:`emrestore.atoms.find.find_atoms` (detection by the atom-finder network or local maxima,
joint refinement on the raw counts, Poisson maximum likelihood only when the image holds raw
counts), write the table atomically, and optionally a
PNG with the columns over the image plus strain maps when a strain function is available
(``strain_from_positions`` in :mod:`emrestore.atoms.lattice` or :mod:`emrestore.atoms.strain`).
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import numpy as np

from ..errors import EmrestoreError, InputError
from ..io import check_pixel_size, read_image, write_atomically
from .refine import ColumnTable

__all__ = ["atoms_command", "plot_columns", "summarise"]


def _strain_function():
    """``strain_from_positions(positions_px, pixel_size_A) -> dict`` if some module provides it."""
    for name in ("lattice", "strain"):
        try:
            mod = importlib.import_module(f"{__package__}.{name}")
        except ImportError:
            continue
        fn = getattr(mod, "strain_from_positions", None)
        if callable(fn):
            return fn
    return None


def _strain_maps(table: ColumnTable):
    """Per-column strain dict for the converged columns, or None (with a warning on failure)."""
    fn = _strain_function()
    if fn is None:
        return None, None
    keep = table.converged & np.isfinite(table.y_px) & np.isfinite(table.x_px)
    if keep.sum() < 9:
        return None, None
    try:
        result = fn(table.positions_px[keep], table.pixel_size_A)
    except (EmrestoreError, ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
        warnings.warn(f"strain map skipped: {exc}", stacklevel=3)
        return None, None
    if not all(k in result for k in ("exx", "eyy", "exy", "rotation")):
        return None, None
    return result, keep


def plot_columns(image, table: ColumnTable, path, *, strain: bool = True, title: str | None = None):
    """Write a PNG: the image with the refined columns, and strain maps when available.

    Converged columns are marked with small red dots, flagged ones with yellow crosses. The strain
    panels colour each column by εxx, εyy, εxy (in %) and the rotation (in degrees), with colour
    limits symmetric about zero at the 98th percentile.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img = np.asarray(image, dtype=float)
    lo, hi = np.percentile(img, [0.5, 99.5])
    maps, keep = _strain_maps(table) if strain else (None, None)
    if maps is None:
        fig = Figure(figsize=(7, 7))
        ax_img = fig.add_subplot(1, 1, 1)
    else:
        fig = Figure(figsize=(14, 7))
        grid = fig.add_gridspec(2, 4)
        ax_img = fig.add_subplot(grid[:, :2])
    FigureCanvasAgg(fig)
    ax_img.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ok = table.converged
    ms = float(np.clip(1500.0 / max(img.shape), 1.5, 6.0))
    ax_img.plot(table.x_px[ok], table.y_px[ok], ".", color="red", ms=ms, mew=0)
    if (~ok).any():
        ax_img.plot(table.x_px[~ok], table.y_px[~ok], "x", color="yellow", ms=ms * 1.5, mew=1)
    # flagged columns may sit outside the image: keep the view on the image
    ax_img.set_xlim(-0.5, img.shape[1] - 0.5)
    ax_img.set_ylim(img.shape[0] - 0.5, -0.5)
    unit = "" if table.pixel_size_A is None else f", {table.pixel_size_A:.4g} Å/px"
    ax_img.set_title(title or f"{int(ok.sum())} columns ({table.noise} fit{unit})", fontsize=10)
    ax_img.set_xticks([])
    ax_img.set_yticks([])
    if maps is not None:
        panels = [("exx", "εxx (%)", 100.0), ("eyy", "εyy (%)", 100.0),
                  ("exy", "εxy (%)", 100.0), ("rotation", "rotation (°)", np.degrees(1.0))]
        y, x = table.y_px[keep], table.x_px[keep]
        for i, (key, label, scale) in enumerate(panels):
            ax = fig.add_subplot(grid[i // 2, 2 + i % 2])
            val = np.asarray(maps[key], dtype=float) * scale
            finite = np.isfinite(val)
            lim = float(np.percentile(np.abs(val[finite]), 98)) if finite.any() else 1.0
            lim = lim if lim > 0 else 1.0
            sc = ax.scatter(x[finite], y[finite], c=val[finite], s=ms * 3, cmap="RdBu_r",
                            vmin=-lim, vmax=lim, linewidths=0)
            ax.set_xlim(-0.5, img.shape[1] - 0.5)
            ax.set_ylim(img.shape[0] - 0.5, -0.5)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=9)
            fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)


def summarise(table: ColumnTable, candidates_info: dict | None = None) -> str:
    """A few lines for people: counts, noise model, width, spacing and precision."""
    from scipy.spatial import cKDTree

    ps = table.pixel_size_A
    ok = table.converged
    lines = [f"columns: {len(table)} refined, {int(ok.sum())} converged, "
             f"{int((~ok).sum())} flagged; noise model: {table.noise}"
             + (f" (residual dispersion {table.info['dispersion']:.2f})"
                if np.isfinite(table.info.get("dispersion", np.nan)) else "")]

    def both(v_px, fmt=".3f"):
        if ps is None:
            return f"{v_px:{fmt}} px"
        return f"{v_px:{fmt}} px = {v_px * ps:{fmt}} Å"

    w = float(np.nanmedian(table.width_px[ok])) if ok.any() else float("nan")
    lines.append(f"column width σ (median): {both(w)}")
    if ok.sum() >= 2:
        pos = table.positions_px[ok]
        d, _ = cKDTree(pos).query(pos, k=2)
        lines.append(f"nearest-neighbour distance (median): {both(float(np.median(d[:, 1])))}")
    if candidates_info and "spacing_px" in candidates_info:
        lines.append(f"autocorrelation spacing: {both(candidates_info['spacing_px'])}")
    if ok.any():
        prec = float(np.nanmedian(np.hypot(table.sigma_y_px[ok], table.sigma_x_px[ok])
                                  / np.sqrt(2)))
        lines.append(f"position precision (median 1-σ per axis): {both(prec, '.4f')}")
    if table.info.get("n_split"):
        lines.append(f"unresolved pairs split by model selection: {table.info['n_split']}")
    return "\n".join(lines)


def atoms_command(
    image_path,
    *,
    pixel_size_A: float | None = None,
    output,
    plot=None,
    method: str = "auto",
    restore: bool = True,
    threshold: float | None = None,
    min_separation_px: float | None = None,
    spacing_px: float | None = None,
    relative_threshold: float | None = None,
    widths: str = "same",
    verbose: bool = True,
) -> ColumnTable:
    """Find, refine and tabulate the atomic columns of one image file.

    Parameters
    ----------
    image_path : path
        Image file (see :func:`emrestore.io.read_image`).
    pixel_size_A : float, optional
        Å per pixel; overrides the file's calibration.
    output : path
        CSV table to write (see :meth:`ColumnTable.to_csv` for the columns).
    plot : path, optional
        PNG overview to write.
    method, restore, threshold, min_separation_px, spacing_px, relative_threshold, widths :
        Passed to :func:`emrestore.atoms.find.find_atoms` ("auto": the atom-finder network when
        one is shipped, else local maxima; ``restore``: detect on the stem-hr restoration when
        that model is shipped; the positions are refined on the raw counts).
    verbose : bool
        Print a short summary.

    Returns
    -------
    ColumnTable

    Raises
    ------
    InputError
        Unreadable image, pixel size ≤ 0, an output that would overwrite the input, or no
        columns found. Nothing is written in these cases.
    """
    src = Path(image_path)
    targets = [Path(output)] + ([Path(plot)] if plot is not None else [])
    for t in targets:
        if t.exists() and src.exists() and t.resolve() == src.resolve():
            raise InputError(f"refusing to write over the input file {src}; choose another output")
        if not (t.parent if str(t.parent) else Path(".")).exists():
            raise InputError(f"output folder does not exist: {t.parent}")
    if plot is not None and Path(plot).resolve() == Path(output).resolve():
        raise InputError("the table and the plot must go to different files")
    image, file_pixel = read_image(src)
    if pixel_size_A is not None:
        pixel = check_pixel_size(pixel_size_A, what="pixel size (--pixel-size)")
    else:
        pixel = file_pixel
    from .find import find_atoms

    table = find_atoms(image, pixel_size=pixel, method=method, restore=restore,
                       threshold=threshold, min_separation_px=min_separation_px,
                       spacing_px=spacing_px, relative_threshold=relative_threshold,
                       widths=widths)
    if len(table) == 0:
        raise InputError(
            f"{src}: no atomic columns found (the image may be flat, or its columns dark on a "
            "bright background: invert TEM bright-field images first)"
        )
    info = dict(table.info.get("detection") or {})
    table.to_csv(output, protect=[src])
    if plot is not None:
        write_atomically(plot, lambda tmp: plot_columns(image, table, tmp), protect=[src])
    if verbose:
        print(f"{src}: {image.shape[0]}×{image.shape[1]} px"
              + ("" if pixel is None else f", {pixel:.5g} Å/px"))
        print(summarise(table, info))
        for note in table.info.get("notes") or []:
            print(f"note: {note}")
        print(f"table written to {output}" + (f", figure to {plot}" if plot else ""))
    return table
