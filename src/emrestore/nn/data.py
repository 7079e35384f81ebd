"""Training data: (distorted, clean) pairs -> normalised, cropped, augmented torch batches.

Sources of pairs (each a picklable callable ``pair_fn(rng) -> (distorted, clean[, ...])``):

* :class:`SimulatorPairs` — ``emrestore.simulate.sampler.simulate_pair`` with a SamplerConfig;
* :class:`SyntheticPairs` — a toy lattice of Gaussian columns with Poisson noise, for tests and
  architecture comparisons only (it is not a model of any microscope);
* an HDF5 library written by ``emrestore.simulate.library.write_library`` (:class:`LibraryDataset`).

Two datasets:

* :class:`PairStream` — an ``IterableDataset`` that yields whole batches; batch ``b`` is drawn
  from ``SeedSequence(seed, spawn_key=(b,))``, and DataLoader worker ``w`` of ``W`` makes batches
  ``start + w, start + w + W, ...``. The DataLoader returns them in order, so the stream is the
  same bytes for any number of workers, and resuming at step ``s`` continues it exactly.
* :class:`LibraryDataset` — map-style over a library on disk, for fast multi-epoch training;
  with :class:`EpochSampler` index ``e·N + i`` means sample ``i`` in epoch ``e`` (its crop and
  augmentation are seeded by that index), again independent of the number of workers.

Every example is normalised with the statistics of its whole distorted image (``nn.normalise``,
the same call as at inference), then cropped; the clean target is normalised with the same
offset and scale. An example is a dict of float32 tensors ``input``, ``target`` (1, P, P) and
``offset``, ``scale`` (1, 1, 1); batches add a leading N axis.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info

from .._rng import log_uniform, uniform
from ..errors import ConfigError, InputError
from .normalise import DEFAULT_PARAMS, normalise

PairFn = Callable[[np.random.Generator], tuple]


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """Independent generator number ``index`` of a stream with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(int(index),)))


# ---------------------------------------------------------------------------------------------
# Pair sources


@dataclass(frozen=True)
class SimulatorPairs:
    """``pair_fn`` drawing from the physics simulator (``simulate.sampler.simulate_pair``).

    ``sampler`` is a plain dict mapped onto ``SamplerConfig`` (so the callable pickles cheaply
    into DataLoader workers); ``modality``, ``resolution`` and ``size`` override it.
    """

    modality: str = "stem"
    resolution: str = "hr"
    size: tuple[int, int] = (256, 256)
    sampler: dict = dataclasses.field(default_factory=dict)

    def config(self):
        from ..simulate.sampler import SamplerConfig

        data = {**self.sampler, "modality": self.modality, "resolution": self.resolution,
                "size": tuple(self.size)}
        data.setdefault("super_resolution_label", False)
        return SamplerConfig.from_dict(data)

    def __call__(self, rng: np.random.Generator):
        from ..simulate.sampler import simulate_pair

        distorted, clean, _ = simulate_pair(config=self.config(), rng=rng)
        return distorted, clean


@dataclass(frozen=True)
class SyntheticPairs:
    """Toy pairs: a distorted lattice of Gaussian columns, Poisson noise, optional analog gain.

    Attributes
    ----------
    size : (H, W) in pixels.
    mean_counts : range of the mean clean intensity, counts per pixel (drawn log-uniformly).
    spacing_px : range of the lattice spacing, px. sigma_frac : column σ as a fraction of it.
    background : range of the additive background as a fraction of the mean column peak.
    analog_probability : chance of an analog detector (gain 5-50, offset 0-2000, read noise).
    """

    size: tuple[int, int] = (128, 128)
    mean_counts: tuple[float, float] = (0.05, 1000.0)
    spacing_px: tuple[float, float] = (6.0, 20.0)
    sigma_frac: tuple[float, float] = (0.1, 0.25)
    background: tuple[float, float] = (0.0, 0.3)
    analog_probability: float = 0.0

    def __call__(self, rng: np.random.Generator):
        h, w = self.size
        a = uniform(rng, self.spacing_px)
        b = a * uniform(rng, (0.7, 1.3))
        gamma = uniform(rng, (np.pi / 3, 2 * np.pi / 3))
        theta = uniform(rng, (0.0, np.pi))
        v1 = a * np.array([np.sin(theta), np.cos(theta)])
        v2 = b * np.array([np.sin(theta + gamma), np.cos(theta + gamma)])
        reach = int(np.ceil(2 * max(h, w) / min(a, b) / abs(np.sin(gamma)))) + 2
        ij = np.stack(np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1)),
                      -1).reshape(-1, 2)
        pos = ij @ np.stack([v1, v2]) + np.array([h / 2, w / 2]) + rng.uniform(-a, a, 2)
        pos += rng.normal(0.0, 0.03 * a, pos.shape)
        sigma = uniform(rng, self.sigma_frac) * min(a, b)
        keep = ((pos[:, 0] > -4 * sigma) & (pos[:, 0] < h + 4 * sigma)
                & (pos[:, 1] > -4 * sigma) & (pos[:, 1] < w + 4 * sigma))
        pos = pos[keep]
        amp = rng.uniform(0.3, 1.0, len(pos)) * (rng.random(len(pos)) > 0.05)
        gy = np.exp(-0.5 * ((np.arange(h)[None, :] - pos[:, :1]) / sigma) ** 2)
        gx = np.exp(-0.5 * ((np.arange(w)[None, :] - pos[:, 1:]) / sigma) ** 2)
        img = (gy * amp[:, None]).T @ gx
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        ramp = 1.0 + 0.3 * rng.uniform(-1, 1) * yy + 0.3 * rng.uniform(-1, 1) * xx
        img = img + uniform(rng, self.background) * ramp
        img = np.clip(img, 0.0, None)
        clean = img * (log_uniform(rng, self.mean_counts) / max(img.mean(), 1e-12))
        noisy = rng.poisson(clean).astype(np.float64)
        if rng.random() < self.analog_probability:
            gain, offset = uniform(rng, (5.0, 50.0)), uniform(rng, (0.0, 2000.0))
            noisy = gain * noisy + offset + rng.normal(0.0, 0.5 * gain, noisy.shape)
            clean = gain * clean + offset
        return noisy.astype(np.float32), clean.astype(np.float32)


def pair_source(kind: str, *, modality: str = "stem", resolution: str = "hr",
                size: tuple[int, int] = (256, 256), sampler: dict | None = None) -> PairFn:
    """The ``pair_fn`` for ``kind`` = "simulator" or "synthetic"."""
    if kind == "simulator":
        return SimulatorPairs(modality, resolution, tuple(size), dict(sampler or {}))
    if kind == "synthetic":
        return SyntheticPairs(size=tuple(size), **dict(sampler or {}))
    raise ConfigError(f"unknown pair source {kind!r}; use 'simulator', 'synthetic' or 'library'")


# ---------------------------------------------------------------------------------------------
# One example


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """The k-th (0-7) of the 8 symmetries of the square, on the last two axes."""
    out = np.rot90(a, k % 4, axes=(-2, -1))
    if k >= 4:
        out = np.flip(out, axis=-1)
    return out


def make_example(distorted: np.ndarray, clean: np.ndarray, rng: np.random.Generator | None,
                 patch_size: int | None, *, augment: bool = True,
                 norm_params: dict | None = None, stats=None) -> dict[str, torch.Tensor]:
    """Normalise a pair with the distorted image's statistics, crop and augment it.

    ``rng=None`` takes the central crop without augmentation (validation). ``stats`` passes
    precomputed ``(offset, scale)`` of the whole distorted image.
    """
    distorted = np.asarray(distorted, dtype=np.float32)
    clean = np.asarray(clean, dtype=np.float32)
    if distorted.shape != clean.shape or distorted.ndim != 2:
        raise InputError(f"expected two (H, W) images of one shape, got {distorted.shape} and "
                         f"{clean.shape}")
    params = {**DEFAULT_PARAMS, **(norm_params or {})}
    if stats is None:
        _, offset, scale = normalise(distorted, **params)
    else:
        offset, scale = stats
    offset, scale = float(np.squeeze(offset)), float(np.squeeze(scale))
    h, w = distorted.shape
    p = patch_size or min(h, w)
    if p > min(h, w):
        raise InputError(f"patch size {p} px is larger than the training images {h}×{w} px")
    if rng is None:
        r0, c0, k = (h - p) // 2, (w - p) // 2, 0
    else:
        r0, c0 = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        k = int(rng.integers(0, 8)) if augment else 0
    stack = np.stack([distorted[r0:r0 + p, c0:c0 + p], clean[r0:r0 + p, c0:c0 + p]])
    stack = (stack.astype(np.float64) - offset) / scale
    stack = np.ascontiguousarray(dihedral(stack, k), dtype=np.float32)
    return {
        "input": torch.from_numpy(stack[0:1]),
        "target": torch.from_numpy(stack[1:2]),
        "offset": torch.tensor([[[offset]]], dtype=torch.float32),
        "scale": torch.tensor([[[scale]]], dtype=torch.float32),
    }


def collate(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack examples into a batch (N leading)."""
    return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}


# ---------------------------------------------------------------------------------------------
# Streaming from a pair source


class BatchStream(IterableDataset):
    """Endless stream of whole batches: batch ``b`` is ``self.batch(b)``, a pure function of
    ``b``, and DataLoader worker ``k`` of ``n`` yields ``b = start + k, start + k + n, ...``, so
    the sequence does not depend on the number of workers."""

    start: int = 0

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        index = self.start + worker
        while True:
            yield self.batch(index)
            index += n_workers


class PairStream(BatchStream):
    """Endless, deterministic stream of batches drawn from ``pair_fn`` (see module docstring).

    Parameters
    ----------
    pair_fn : picklable ``pair_fn(rng) -> (distorted, clean, ...)``.
    batch_size : examples per batch.
    patch_size : crop size in px (None: the whole image).
    crops_per_pair : crops taken from each drawn pair (amortises a slow simulator).
    seed : stream seed. start : index of the first batch (resume at step ``start``).
    augment : random dihedral symmetry per crop.
    norm_params : overrides of ``nn.normalise.DEFAULT_PARAMS``.
    """

    def __init__(self, pair_fn: PairFn, *, batch_size: int, patch_size: int | None = 128,
                 crops_per_pair: int = 1, seed: int = 0, start: int = 0, augment: bool = True,
                 norm_params: dict | None = None):
        super().__init__()
        if batch_size < 1 or crops_per_pair < 1:
            raise ConfigError("batch_size and crops_per_pair must be >= 1")
        self.pair_fn = pair_fn
        self.batch_size = batch_size
        self.patch_size = patch_size
        self.crops_per_pair = crops_per_pair
        self.seed = seed
        self.start = start
        self.augment = augment
        self.norm_params = dict(norm_params or {})

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        """Batch number ``index`` of the stream (pure function of seed and index)."""
        rng = sample_rng(self.seed, index)
        examples = []
        n_pairs = math.ceil(self.batch_size / self.crops_per_pair)
        for pair_seed in rng.spawn(n_pairs):
            pair_rng, crop_rng = pair_seed.spawn(2)
            distorted, clean = self.pair_fn(pair_rng)[:2]
            _, offset, scale = normalise(np.asarray(distorted, np.float32), **self.norm_params)
            for _ in range(self.crops_per_pair):
                if len(examples) == self.batch_size:
                    break
                examples.append(make_example(distorted, clean, crop_rng, self.patch_size,
                                             augment=self.augment, norm_params=self.norm_params,
                                             stats=(offset, scale)))
        return collate(examples)


# ---------------------------------------------------------------------------------------------
# A library on disk


class LibraryDataset(Dataset):
    """Map-style dataset over an HDF5 library (``write_library`` output).

    ``dataset[j]`` is sample ``j % N`` with a crop and a dihedral symmetry drawn from
    ``SeedSequence(seed, spawn_key=(j,))``, so that with :class:`EpochSampler` every epoch sees new
    crops of the same images. ``indices`` restricts it to a subset of the samples (e.g. to hold
    some out for validation). The file is opened lazily in each worker (h5py handles must not
    cross a fork).
    """

    def __init__(self, path: str | Path, *, patch_size: int | None = 128, seed: int = 0,
                 augment: bool = True, norm_params: dict | None = None,
                 indices: list[int] | None = None):
        import h5py

        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"training library not found: {self.path}")
        with h5py.File(self.path, "r") as h5:
            if "distorted" not in h5 or "clean" not in h5:
                raise InputError(f"{self.path} has no 'distorted' and 'clean' datasets: not a "
                                 "library written by `emrestore simulate`")
            n = int(h5.attrs.get("n_done", h5["distorted"].shape[0]))
        self.indices = list(range(n)) if indices is None else [int(i) for i in indices]
        if not self.indices:
            raise InputError(f"{self.path} holds no samples")
        self.patch_size = patch_size
        self.seed = seed
        self.augment = augment
        self.norm_params = dict(norm_params or {})
        self._h5 = None
        self._stats: dict[int, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def _file(self):
        if self._h5 is None:
            import h5py

            self._h5 = h5py.File(self.path, "r")
        return self._h5

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_h5"] = None
        return state

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Distorted and clean images of library sample ``i``."""
        h5 = self._file()
        return h5["distorted"][i], h5["clean"][i]

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        i = self.indices[int(j) % len(self.indices)]
        distorted, clean = self.read(i)
        if i not in self._stats:
            _, offset, scale = normalise(distorted, **self.norm_params)
            self._stats[i] = (float(np.squeeze(offset)), float(np.squeeze(scale)))
        return make_example(distorted, clean, sample_rng(self.seed, j), self.patch_size,
                            augment=self.augment, norm_params=self.norm_params,
                            stats=self._stats[i])


class LibraryUnion(Dataset):
    """Several library datasets as one, indexed by :class:`EpochSampler`'s virtual indices.

    Any dataset whose ``__getitem__`` takes virtual indices ``e·N_k + r_k`` (a fresh crop per
    epoch) fits: :class:`LibraryDataset` and the atom finder's library dataset.

    Virtual index ``j = e·N + r`` (epoch ``e``, ``N`` samples in all) goes to the library holding
    ``r`` as that library's virtual index ``e·N_k + r_k``, so each epoch still draws new crops
    (``torch.utils.data.ConcatDataset`` would need ``j < N`` and repeat the crops).
    """

    def __init__(self, libraries: list[Dataset]):
        if not libraries:
            raise InputError("LibraryUnion needs at least one library")
        self.libraries = list(libraries)
        self.ends = np.cumsum([len(lib) for lib in self.libraries])

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        epoch, r = divmod(int(j), len(self))
        k = int(np.searchsorted(self.ends, r, side="right"))
        local = r - (int(self.ends[k - 1]) if k else 0)
        lib = self.libraries[k]
        return lib[epoch * len(lib) + local]


class EpochSampler(Sampler):
    """Endless virtual indices ``e·N + perm_e[i]`` (a fresh permutation per epoch ``e``).

    ``start`` skips that many indices (resume at ``step × batch_size``).
    """

    def __init__(self, n: int, *, seed: int = 0, start: int = 0):
        self.n, self.seed, self.start = int(n), int(seed), int(start)

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.n)
        while True:
            perm = sample_rng(self.seed + 7919, epoch).permutation(self.n)
            for i in perm[offset:]:
                yield epoch * self.n + int(i)
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # an endless sampler; DataLoader only needs this for len(loader)
        return 2 ** 62


# ---------------------------------------------------------------------------------------------
# Validation


def validation_set(pair_fn: PairFn | None = None, *, n: int, seed: int,
                   patch_size: int | None = None, library: LibraryDataset | None = None,
                   norm_params: dict | None = None) -> dict[str, torch.Tensor]:
    """A fixed validation batch: ``n`` pairs drawn with ``seed`` (or ``n`` samples of a library),
    normalised like training examples, central crop of ``patch_size`` (None: whole image)."""
    examples = []
    for i in range(n):
        if library is not None:
            distorted, clean = library.read(library.indices[i % len(library.indices)])
        else:
            distorted, clean = pair_fn(sample_rng(seed, i))[:2]
        examples.append(make_example(distorted, clean, None, patch_size, augment=False,
                                     norm_params=norm_params))
    return collate(examples)


def psnr_db(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB with the target's range (max - min) as the peak (seed 001 eq 1).

    Invariant to the affine normalisation, so normalised and physical units give the same value.
    """
    flat_t = target.flatten(1).double()
    rng_ = (flat_t.max(dim=1).values - flat_t.min(dim=1).values).clamp(min=1e-12)
    mse = ((pred.flatten(1).double() - flat_t) ** 2).mean(dim=1).clamp(min=1e-20)
    return 10.0 * torch.log10(rng_ ** 2 / mse)


def describe(obj: Any) -> dict[str, Any]:
    """Plain-data description of a pair source (for the model card)."""
    if dataclasses.is_dataclass(obj):
        return {"source": type(obj).__name__, **dataclasses.asdict(obj)}
    return {"source": repr(obj)}
