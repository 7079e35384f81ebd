"""Frozen parameter dataclasses <-> plain dicts / TOML files, one to one.

Every simulation stage keeps its parameter ranges in a frozen dataclass whose defaults are the
ranges from the papers. This module maps such a dataclass (possibly nested) onto a dict and back,
rejecting unknown keys so that a typo in a config file is an error, not a silent default.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


def to_dict(params: Any) -> dict[str, Any]:
    """Nested dict of plain Python values (tuples become lists) for a params dataclass."""

    def plain(value):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(params)


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "") -> T:
    """Build ``cls`` from ``data``; missing keys keep their defaults, unknown keys raise."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a table of parameters, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown parameter(s) {unknown}; "
            f"valid names are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints.get(name)
        path = f"{where}.{name}" if where else name
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, where=path)
        elif isinstance(value, list):
            kwargs[name] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file into a dict, with the file name in any error message."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc


def check_range(name: str, bounds: tuple[float, float], lo: float | None = None,
                hi: float | None = None) -> None:
    """Raise ConfigError unless ``bounds`` is an ordered (lo, hi) pair inside [lo, hi]."""
    if len(bounds) != 2 or bounds[0] > bounds[1]:
        raise ConfigError(f"{name}: expected an ordered (low, high) pair, got {bounds!r}")
    if lo is not None and bounds[0] < lo:
        raise ConfigError(f"{name}: lower bound {bounds[0]} is below the allowed {lo}")
    if hi is not None and bounds[1] > hi:
        raise ConfigError(f"{name}: upper bound {bounds[1]} is above the allowed {hi}")
