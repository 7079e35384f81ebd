"""emrestore: simulate, restore and quantify low-dose electron microscopy images.

The public API, loaded on first use so that ``import emrestore`` stays light:

- ``simulate_pair``: one (distorted, clean, labels) training pair from physics;
- ``load`` / ``save``: microscope files <-> :class:`Image` (array + pixel size in Å);
- ``restore``: dose-blind, unit-preserving restoration with a shipped network;
- ``find_candidates``, ``refine_columns``, ``crlb_position``: atomic columns and their precision.
"""

from __future__ import annotations

from importlib import import_module

from .errors import ConfigError, EmrestoreError, InputError

__version__ = "0.1.0"

_LAZY = {
    "simulate_pair": ("emrestore.simulate.sampler", "simulate_pair"),
    "SamplerConfig": ("emrestore.simulate.sampler", "SamplerConfig"),
    "Image": ("emrestore.image", "Image"),
    "load": ("emrestore.io", "load_image"),
    "save": ("emrestore.io", "save_image"),
    "restore": ("emrestore.restore", "restore"),
    "find_candidates": ("emrestore.atoms.detect", "find_candidates"),
    "refine_columns": ("emrestore.atoms.refine", "refine_columns"),
    "crlb_position": ("emrestore.atoms.uncertainty", "crlb_position"),
    "find_atoms": ("emrestore.atoms.find", "find_atoms"),
}

__all__ = ["ConfigError", "EmrestoreError", "InputError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'emrestore' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
