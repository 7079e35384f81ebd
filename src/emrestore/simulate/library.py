"""A TEMImageNet-like training library on disk: distorted inputs, every label and the parameters.

Layout of the HDF5 file (one row per sample, rows written in order, resumable):

``/distorted``            (N, H, W) float32, the recorded image in detector units
``/clean``                (N, H, W) float32, the undistorted target in the same units
``/labels/<name>``        (N, H, W) or (N, 2H, 2W) float32 image labels (masks, no-background, 2x)
``/scalars/<name>``       (N,) float64 per-sample numbers (dose, pixel size, spacing, ...)
``/columns/<field>``      concatenated per-column arrays of every sample; the columns of sample i
                          are rows ``column_offsets[i]:column_offsets[i+1]``
``/column_offsets``       (N + 1,) int64
``/params``               (N,) JSON strings: every drawn parameter of the sample

Sample ``i`` is drawn from ``SeedSequence(seed, spawn_key=(i,))`` so a resumed or parallel run
writes exactly the bytes a single uninterrupted run would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from ..errors import InputError
from ._malloc import retain_freed_memory
from .sampler import SamplerConfig, simulate_pair

_FORMAT_VERSION = 1
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` in a library made with ``seed`` (independent streams)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def _draw(task: tuple[int, int, SamplerConfig]) -> tuple[int, np.ndarray, np.ndarray, dict]:
    seed, index, config = task
    distorted, clean, labels = simulate_pair(config=config, rng=sample_rng(seed, index))
    return index, distorted, clean, labels


def _json_default(value: Any):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in the parameter record")


def _identity(config: SamplerConfig, seed: int) -> dict[str, str]:
    return {
        "format_version": str(_FORMAT_VERSION),
        "seed": str(seed),
        "config": json.dumps(config.to_dict(), sort_keys=True, default=_json_default),
    }


def _create(h5: h5py.File, shape: tuple[int, int], labels: dict) -> None:
    h, w = shape
    chunk = (1, h, w)
    h5.create_dataset("distorted", (0, h, w), maxshape=(None, h, w), dtype="f4", chunks=chunk,
                      compression="lzf")
    h5.create_dataset("clean", (0, h, w), maxshape=(None, h, w), dtype="f4", chunks=chunk,
                      compression="lzf")
    grp = h5.create_group("labels")
    for name, value in labels.items():
        if isinstance(value, np.ndarray) and value.ndim == 2:
            lh, lw = value.shape
            grp.create_dataset(name, (0, lh, lw), maxshape=(None, lh, lw), dtype="f4",
                               chunks=(1, lh, lw), compression="lzf")
    sc = h5.create_group("scalars")
    for name, value in labels.items():
        if isinstance(value, (int, float, np.integer, np.floating)):
            sc.create_dataset(name, (0,), maxshape=(None,), dtype="f8")
    cols = h5.create_group("columns")
    for name, value in labels["columns"].items():
        arr = np.asarray(value)
        cols.create_dataset(name, (0, *arr.shape[1:]), maxshape=(None, *arr.shape[1:]),
                            dtype=arr.dtype if arr.dtype.kind in "iu" else "f8")
    h5.create_dataset("column_offsets", data=np.zeros(1, dtype=np.int64), maxshape=(None,))
    h5.create_dataset("params", (0,), maxshape=(None,), dtype=h5py.string_dtype())


def _append(ds: h5py.Dataset, value) -> None:
    value = np.asarray(value)
    n = ds.shape[0]
    ds.resize(n + (1 if value.ndim == ds.ndim - 1 else value.shape[0]), axis=0)
    if value.ndim == ds.ndim - 1:
        ds[n] = value
    else:
        ds[n:] = value


def _write_sample(h5: h5py.File, distorted, clean, labels: dict) -> None:
    _append(h5["distorted"], distorted)
    _append(h5["clean"], clean)
    for name, ds in h5["labels"].items():
        _append(ds, labels[name])
    for name, ds in h5["scalars"].items():
        _append(ds, float(labels[name]))
    n_cols = 0
    for name, ds in h5["columns"].items():
        arr = np.asarray(labels["columns"][name])
        n_cols = arr.shape[0]
        _append(ds, arr.reshape(n_cols, *ds.shape[1:]))
    offsets = h5["column_offsets"]
    _append(offsets, offsets[-1] + n_cols)
    _append(h5["params"], json.dumps(labels["params"], sort_keys=True, default=_json_default))


def write_library(
    path: str | os.PathLike,
    n: int,
    config: SamplerConfig | None = None,
    *,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write (or resume) a library of ``n`` simulated pairs to an HDF5 file.

    Parameters
    ----------
    path
        Output ``.h5`` file. If it exists and was made with the same config and seed, the run
        resumes after the last complete sample; a file made differently is refused, not overwritten.
    n
        Total number of samples the file should hold when done.
    config
        What to simulate (modality, resolution, size and every parameter range).
    seed
        Library seed; sample ``i`` uses ``SeedSequence(seed, spawn_key=(i,))``.
    workers
        Processes drawing samples in parallel; the file content does not depend on it.
    """
    config = config or SamplerConfig()
    path = Path(path)
    if n < 1:
        raise InputError(f"number of samples must be >= 1, got {n}")
    identity = _identity(config, seed)
    mode = "r+" if path.exists() else "w-"
    if mode == "r+":
        with h5py.File(path, "r") as h5:
            found = {k: h5.attrs.get(k) for k in identity}
        if found != identity:
            raise InputError(
                f"{path} exists but was written with a different configuration or seed; "
                "choose another output name (it will not be overwritten)"
            )
    with h5py.File(path, mode) as h5:
        done = int(h5.attrs.get("n_done", 0))
        todo = list(range(done, n))
        bar = tqdm(total=n, initial=done, disable=not progress, unit="pair", desc=path.name)
        for index, distorted, clean, labels in _generate(seed, todo, config, workers):
            if "distorted" not in h5:
                _create(h5, distorted.shape, labels)
                h5.attrs.update(identity)
            _write_sample(h5, distorted, clean, labels)
            h5.attrs["n_done"] = index + 1
            h5.flush()
            bar.update(1)
        bar.close()
    return path


def _generate(seed: int, indices: list[int], config: SamplerConfig,
              workers: int) -> Iterator[tuple[int, np.ndarray, np.ndarray, dict]]:
    tasks = [(seed, i, config) for i in indices]
    if workers <= 1:
        yield from map(_draw, tasks)
        return
    # One BLAS thread per worker (the workers are the parallelism), inherited through the
    # environment because numpy reads it on import; freed memory kept in each worker's heap.
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update(dict.fromkeys(_THREAD_VARS, "1"))
    try:
        with get_context("spawn").Pool(workers, initializer=retain_freed_memory) as pool:
            yield from pool.imap(_draw, tasks, chunksize=4)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def read_sample(path: str | os.PathLike, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sample ``index`` as ``(distorted, clean, labels)``, the layout simulate_pair returns."""
    with h5py.File(path, "r") as h5:
        n_done = int(h5.attrs.get("n_done", 0))
        if not 0 <= index < n_done:
            raise InputError(f"{path}: sample {index} out of range (file holds {n_done})")
        labels: dict[str, Any] = {name: ds[index] for name, ds in h5["labels"].items()}
        labels.update({name: float(ds[index]) for name, ds in h5["scalars"].items()})
        lo, hi = h5["column_offsets"][index], h5["column_offsets"][index + 1]
        labels["columns"] = {name: ds[lo:hi] for name, ds in h5["columns"].items()}
        labels["params"] = json.loads(h5["params"][index])
        return h5["distorted"][index], h5["clean"][index], labels
