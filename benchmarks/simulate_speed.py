"""HR-STEM 256² training pairs per second with every distortion on (run by hand).

    python benchmarks/simulate_speed.py [--n 200] [--workers 2] [--size 256] [--warmup 20]
                                        [--no-2x]

Prints pairs/s for one process and for a pool of ``--workers`` processes (what a DataLoader or
``emrestore simulate --workers`` gets), the median and 95th percentile of each pipeline stage
so that a slow stage is visible, and the cost of the first pairs of a fresh process.
Target (issue 2): >= 30 pairs/s on the 2-core development machine.

Every process is set up the way a long-running data-generation worker should be:

* single-threaded BLAS/OpenMP (set here, before numpy is imported, and inherited by the spawned
  workers): with one worker per core a threaded BLAS only oversubscribes the cores, and on a
  busy machine a 2-thread matrix product can stall for milliseconds waiting for the other core;
* ``_malloc.retain_freed_memory()`` in the main process and in each worker's initializer (the
  simulator's 0.25-1 MB arrays otherwise pay fresh page faults on every allocation);
* ``--warmup`` pairs per process before timing (per-process caches: FFT plans, ASE space groups,
  Butterworth tables, probe grids, amorphous tiles). The first pairs of a fresh process are
  timed separately and printed, so the warm-up cost is visible.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402
from multiprocessing import get_context  # noqa: E402

import numpy as np  # noqa: E402

from emrestore.simulate._malloc import retain_freed_memory  # noqa: E402
from emrestore.simulate.library import sample_rng  # noqa: E402
from emrestore.simulate.sampler import (  # noqa: E402
    SamplerConfig,
    all_distortions_on,
    simulate_pair,
)


def _one(args):
    index, config = args
    t0, c0 = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    simulate_pair(config=config, rng=sample_rng(1234, index), timings=timings)
    timings["cpu"] = time.process_time() - c0
    return time.perf_counter() - t0, timings


def _init_worker(config, warmup: int) -> None:
    retain_freed_memory()
    for i in range(warmup):  # every worker warms its own caches before the timed run
        _one((20_000 + i, config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="pairs per measurement")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=20,
                        help="untimed pairs per process before measuring (default 20)")
    parser.add_argument("--no-2x", action="store_true",
                        help="without the 2x super-resolved clean label")
    args = parser.parse_args()

    config = all_distortions_on(SamplerConfig(modality="stem", resolution="hr",
                                              size=(args.size, args.size)))
    if args.no_2x:
        config = dataclasses.replace(config, super_resolution_label=False)
    retain_freed_memory()
    first = [_one((10_000 + i, config))[0] for i in range(max(args.warmup, 3))]

    t0 = time.perf_counter()
    results = [_one((i, config)) for i in range(args.n)]
    serial = args.n / (time.perf_counter() - t0)
    per_pair = np.array([r[0] for r in results])
    serial_cpu = np.mean([timings.pop("cpu") for _, timings in results])
    stages: dict[str, list[float]] = {}
    for _, timings in results:
        for name, seconds in timings.items():
            stages.setdefault(name, []).append(seconds)

    with get_context("spawn").Pool(args.workers, initializer=_init_worker,
                                   initargs=(config, args.warmup)) as pool:
        pool.map(_one, [(10_000 + i, config) for i in range(args.workers)], chunksize=1)
        t0 = time.perf_counter()
        par = pool.map(_one, [(i, config) for i in range(args.n)], chunksize=4)
        parallel = args.n / (time.perf_counter() - t0)
    par_cpu = np.mean([r[1]["cpu"] for r in par])

    label = "" if config.super_resolution_label else ", no 2x label"
    print(f"HR-STEM {args.size}² pairs, every distortion on{label}, n={args.n}, "
          f"warm-up {args.warmup} pairs/process")
    print(f"  1 process : {serial:6.1f} pairs/s  (mean {1e3 * per_pair.mean():.1f} ms, "
          f"median {1e3 * np.median(per_pair):.1f} ms, p95 {1e3 * np.percentile(per_pair, 95):.1f}"
          f" ms, max {1e3 * per_pair.max():.0f} ms; CPU {1e3 * serial_cpu:.1f} ms/pair)")
    print(f"  {args.workers} processes: {parallel:6.1f} pairs/s  "
          f"(target >= 30; ratio to 1 process {parallel / serial:.2f}x)")
    # On a shared machine the wall-clock figures include other processes' load; the CPU time
    # each worker spent per pair tells what the same workers give on otherwise idle cores.
    print(f"  CPU per pair in the pool: {1e3 * par_cpu:.1f} ms -> {args.workers / par_cpu:.1f} "
          f"pairs/s if {args.workers} cores were free (load average now "
          f"{os.getloadavg()[0]:.1f})")
    print(f"  fresh process: first pair {1e3 * first[0]:.0f} ms, first {len(first)} pairs "
          f"mean {1e3 * np.mean(first):.1f} ms")
    print("  ms per stage        median     p95    mean")
    for name, values in stages.items():
        v = 1e3 * np.asarray(values)
        print(f"    {name:<14s} {np.median(v):8.2f} {np.percentile(v, 95):7.2f} {v.mean():7.2f}")


if __name__ == "__main__":
    main()
