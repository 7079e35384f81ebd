"""One way to turn a seed into a ``numpy.random.Generator``: no global random state anywhere."""

from __future__ import annotations

import numpy as np


def as_generator(seed=None) -> np.random.Generator:
    """Return a Generator for an int seed, a SeedSequence, a Generator (returned as is) or None.

    ``None`` gives fresh OS entropy; every function in emrestore that draws random numbers takes
    its randomness through this helper so that the same seed gives the same bytes.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, (int, np.integer, np.random.SeedSequence)):
        return np.random.default_rng(seed)
    raise TypeError(
        f"expected an int seed, a SeedSequence or a numpy Generator, got {type(seed)!r}")


def chance(rng: np.random.Generator, probability: float) -> bool:
    """True with the given probability (one Bernoulli draw)."""
    return bool(rng.random() < probability)


def uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """One draw from U(lo, hi); ``bounds`` is a ``(lo, hi)`` tuple as the param classes store."""
    lo, hi = bounds
    return float(lo + (hi - lo) * rng.random())


def log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """One draw whose logarithm is uniform between log(lo) and log(hi); lo must be > 0."""
    lo, hi = bounds
    return float(np.exp(uniform(rng, (np.log(lo), np.log(hi)))))


def integer(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    """One integer drawn uniformly from the closed range [lo, hi]."""
    lo, hi = bounds
    return int(rng.integers(lo, hi + 1))
