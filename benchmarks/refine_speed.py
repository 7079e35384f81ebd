"""Speed and precision of atomic-column refinement on a synthetic lattice.

A 512² image with about 1 300 Gaussian columns (σ = 2.5 px, ≈ 785 counts per column, Poisson noise
on a constant background) is refined with ``emrestore.atoms.refine_columns``; the script prints
the wall time (end to end: candidates + refinement, and refinement alone), the position RMSE
against the truth and against the Cramér-Rao lower bound, and the SCS bias.

If Atomap is importable (it is never a dependency of emrestore) its 2D-Gaussian refinement runs
on the same image from the same candidates in the same process, and the speed ratio and its
RMSE/CRLB are printed as well.

    python benchmarks/refine_speed.py [--repeats 3] [--counts 785] [--background 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from emrestore.atoms import crlb_position, find_candidates, refine_columns, render_columns
from emrestore.evaluate.metrics import match_points


def make_lattice(size, spacing, sigma, counts, background, seed):
    rng = np.random.default_rng(seed)
    margin = 6.0
    ys = np.arange(margin, size - margin, spacing)
    xs = np.arange(margin, size - margin, spacing)
    truth = np.array([(y, x) for y in ys for x in xs], dtype=float)
    truth += rng.uniform(-0.5, 0.5, truth.shape)  # random sub-pixel phases
    mu = render_columns((size, size), truth, counts, sigma, background)
    return truth, rng.poisson(mu).astype(np.float32)


def timed(fn, repeats):
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return out, walls, cpus


def precision(positions, truth, spacing, crlb):
    m = match_points(positions, truth, radius=spacing / 3)
    rmse_axis = m.rmse / np.sqrt(2)
    return m, rmse_axis, rmse_axis / crlb


def run_atomap(image, candidates, truth, spacing, crlb, repeats):
    try:
        import atomap.api as am
    except ImportError:
        print("atomap: not installed (pip install atomap to compare; never a dependency)")
        return None

    def refine():
        sub = am.Sublattice(candidates[:, ::-1].copy(), image=image.astype(np.float64))
        sub.find_nearest_neighbors()
        sub.refine_atom_positions_using_2d_gaussian(show_progressbar=False)
        return np.column_stack([sub.y_position, sub.x_position])

    pos, walls, cpus = timed(refine, repeats)
    m, rmse_axis, ratio = precision(pos, truth, spacing, crlb)
    from importlib.metadata import version

    print(f"atomap {version('atomap')} 2D-Gaussian refinement: wall "
          f"{min(walls):.2f} s (median {statistics.median(walls):.2f} s), CPU {min(cpus):.2f} s; "
          f"matched {m.n_matched}/{len(truth)}; RMSE/axis {rmse_axis:.4f} px = "
          f"{ratio:.3f} × CRLB")
    return min(walls), ratio


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--spacing", type=float, default=14.2, help="lattice spacing, px")
    p.add_argument("--sigma", type=float, default=2.5, help="column width σ, px")
    p.add_argument("--counts", type=float, default=785.0, help="integrated counts per column")
    p.add_argument("--background", type=float, default=2.0, help="background, counts per px")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-atomap", action="store_true", help="skip the Atomap comparison")
    a = p.parse_args(argv)

    truth, image = make_lattice(a.size, a.spacing, a.sigma, a.counts, a.background, a.seed)
    crlb = crlb_position(a.counts, a.sigma, a.background)
    print(f"image {a.size}² px, {len(truth)} columns, σ = {a.sigma} px, {a.counts:g} counts per "
          f"column, background {a.background:g} counts/px; CPUs available: "
          f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}")
    print(f"CRLB (Poisson, per axis): {crlb:.4f} px   (σ/√N = {a.sigma / np.sqrt(a.counts):.4f})")

    # warm-up: imports, FFT plans, first-call overheads
    refine_columns(image, find_candidates(image))

    def end_to_end():
        return refine_columns(image, find_candidates(image))

    table, walls, cpus = timed(end_to_end, a.repeats)
    candidates = find_candidates(image)
    _, walls_r, cpus_r = timed(lambda: refine_columns(image, candidates), a.repeats)
    m, rmse_axis, ratio = precision(table.positions_px, truth, a.spacing, crlb)
    scs_bias = float(np.mean(table.scs_px2[m.pred_index]) / a.counts - 1)
    print(f"emrestore end to end (candidates + refinement): wall {min(walls):.2f} s "
          f"(median {statistics.median(walls):.2f} s, all {[round(w, 2) for w in walls]}), "
          f"CPU {min(cpus):.2f} s")
    print(f"emrestore refinement only: wall {min(walls_r):.2f} s "
          f"(median {statistics.median(walls_r):.2f} s), CPU {min(cpus_r):.2f} s; "
          f"noise model {table.noise}, {int(table.converged.sum())} converged")
    print(f"emrestore precision: matched {m.n_matched}/{len(truth)} "
          f"(precision {m.precision:.3f}, recall {m.recall:.3f}); RMSE/axis {rmse_axis:.4f} px = "
          f"{ratio:.3f} × CRLB; bias ({m.bias[0]:+.4f}, {m.bias[1]:+.4f}) px; SCS bias "
          f"{100 * scs_bias:+.2f} %; predicted 1-σ (median) "
          f"{np.median(table.sigma_y_px) / crlb:.3f} × CRLB")
    print(f"target: ≤ 2 s wall end to end -> {'met' if min(walls) <= 2.0 else 'NOT met'}")

    if not a.no_atomap:
        res = run_atomap(image, candidates, truth, a.spacing, crlb, max(1, min(a.repeats, 2)))
        if res is not None:
            t_atomap, ratio_atomap = res
            print(f"speed ratio (Atomap 2D-Gaussian / emrestore refinement): "
                  f"{t_atomap / min(walls_r):.1f}×; precision ratio (Atomap / emrestore RMSE): "
                  f"{ratio_atomap / ratio:.2f}")


if __name__ == "__main__":
    main()
