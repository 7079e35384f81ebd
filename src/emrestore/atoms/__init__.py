"""Atomic-column quantification: candidates, joint refinement, uncertainties, lattice, counting.

Typical use::

    from emrestore.atoms import find_candidates, refine_columns, crlb_position

    candidates = find_candidates(image)                      # (N, 2) (y, x) px
    table = refine_columns(image, candidates, pixel_size_A=0.1)
    table.to_csv("atoms.csv")

The lattice, strain and atom-counting tools live in :mod:`emrestore.atoms.lattice`,
:mod:`emrestore.atoms.strain` and :mod:`emrestore.atoms.counting`; their public names are also
reachable from this package (imported on first use).
"""

from __future__ import annotations

import importlib

from .detect import (
    estimate_column_sigma,
    estimate_lattice_spacing,
    estimate_noise_std,
    find_candidates,
)
from .refine import ColumnTable, looks_like_counts, refine_columns, render_columns
from .uncertainty import crlb_columns, crlb_position

__all__ = [
    "ColumnTable",
    "crlb_columns",
    "crlb_position",
    "estimate_column_sigma",
    "estimate_lattice_spacing",
    "estimate_noise_std",
    "find_candidates",
    "looks_like_counts",
    "refine_columns",
    "render_columns",
]

_LAZY_MODULES = ("lattice", "strain", "counting")


def __getattr__(name: str):
    # names of the lattice / strain / counting modules, imported only when asked for
    for mod_name in _LAZY_MODULES:
        try:
            mod = importlib.import_module(f"{__name__}.{mod_name}")
        except ImportError:
            continue
        if name in getattr(mod, "__all__", ()):
            return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
