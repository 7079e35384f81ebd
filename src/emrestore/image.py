"""``Image``: an image or a stack of frames together with what is known about it.

An :class:`Image` couples the pixel values (kept in the file's own units: counts stay counts)
with the pixel size in Å, the imaging modality and free-form metadata from the file. Functions
that take arrays also take an :class:`Image` and, when they return an image, return one of the
same kind, so that the calibration travels with the data through ``load → restore → save``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["MODALITIES", "Image"]

#: Modalities that emrestore knows; ``None`` means unknown.
MODALITIES = ("stem", "tem", "sem")


@dataclass
class Image:
    """Pixel values plus calibration.

    Parameters
    ----------
    array : ndarray, shape (rows, cols) or (frames, rows, cols)
        The values, in the units of the source (no rescaling).
    pixel_size_A : float or None
        Size of one pixel in Å (the same along rows and columns), ``None`` when unknown.
    modality : {"stem", "tem", "sem"} or None
        How the image was recorded, when known.
    metadata : dict
        Anything else worth keeping (source file, detector, what was done to the data).

    Examples
    --------
    >>> im = Image(np.zeros((64, 64), np.float32), pixel_size_A=0.2, modality="stem")
    >>> im.shape, im.is_stack
    ((64, 64), False)
    """

    array: np.ndarray
    pixel_size_A: float | None = None
    modality: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim not in (2, 3):
            raise InputError(
                f"an Image holds a 2-D image (rows, cols) or a stack (frames, rows, cols); "
                f"got shape {self.array.shape}"
            )
        if self.pixel_size_A is not None:
            value = float(self.pixel_size_A)
            if not np.isfinite(value) or value <= 0:
                raise InputError(f"pixel_size_A must be a positive number of Å, got {value!r}")
            self.pixel_size_A = value
        if self.modality is not None:
            modality = str(self.modality).lower()
            if modality not in MODALITIES:
                raise InputError(
                    f"modality must be one of {MODALITIES} or None, got {self.modality!r}")
            self.modality = modality
        self.metadata = dict(self.metadata)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def is_stack(self) -> bool:
        """True for a (frames, rows, cols) stack."""
        return self.array.ndim == 3

    @property
    def n_frames(self) -> int:
        return int(self.array.shape[0]) if self.is_stack else 1

    @property
    def field_of_view_A(self) -> tuple[float, float] | None:
        """(height, width) of one frame in Å, or ``None`` without a pixel size."""
        if self.pixel_size_A is None:
            return None
        rows, cols = self.array.shape[-2:]
        return rows * self.pixel_size_A, cols * self.pixel_size_A

    def replace(self, **changes) -> Image:
        """A copy with some fields changed (``metadata`` is copied, not shared)."""
        changes.setdefault("metadata", dict(self.metadata))
        return dataclasses.replace(self, **changes)

    def __array__(self, dtype=None, copy=None):
        if dtype is None:
            return self.array if not copy else self.array.copy()
        return self.array.astype(dtype, copy=bool(copy))
