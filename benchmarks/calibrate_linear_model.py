"""Calibrate the fast (linear) simulator against abTEM multislice, specimen by specimen.

    python benchmarks/calibrate_linear_model.py --tiny                   # smoke run, ~2 min
    python benchmarks/calibrate_linear_model.py --plan                   # work and time estimate
    python benchmarks/calibrate_linear_model.py -o calibration --cache ~/.cache/emrestore/ms
    python benchmarks/calibrate_linear_model.py -o calibration --cache ~/.cache/emrestore/ms \\
        --sampler-config calibrated.toml --label after                  # the "after" figures

Each specimen (a named crystal on a zone axis, 2-40 nm thick, one with a defect) is simulated
twice on the same pixel grid with the same probe (200 kV, 25 mrad, 0.5 Å source):

* multislice: ``emrestore.simulate.multislice`` (abTEM, frozen phonons), HAADF 70-200 mrad;
* linear model: ``render.render_atoms`` with ``--draws`` atom-profile sets drawn from the
  sampler's ``AtomProfileParams`` (``--sampler-config``, default ``SamplerConfig()``), and the
  sampler's contrast/background stage for the background statistics.

Measured on both, with ``emrestore.atoms.refine.refine_columns`` at the known column positions
(joint Gaussian fit, one width per column, constant local background):

* Z-contrast: integrated column intensity (SCS) of every column class relative to the brightest,
  and the exponent γ that the ratios imply for I ∝ Σ_atoms Z^γ (the sampler draws γ in
  ``profiles.gamma_range``);
* column widths σ (Å) per class, and the ``profiles.radius_scale_A`` that would give the
  multislice width (σ² = a + b s² fitted over the linear draws, then inverted);
* background: the 1st percentile of the image over its maximum (multislice: thermal diffuse and
  channelling tails; linear: profile tails only, then after the sampler's background stage) and
  std/mean (the sampler constrains it to ``contrast.ratio_range``);
* intensity against thickness (thickness series): per-class SCS and mean intensity, normalised
  to the thinnest exit plane, with the exponent p of I ∝ t^p (the linear model has p = 1).

For each statistic the script prints where the multislice value falls inside the linear-model
distribution (its percentile; 0 % or 100 % = outside) and suggests ranges that would contain the
multislice values. Outputs in ``-o``: ``calibration_<label>.json`` (every number),
``gallery_<label>.png``, ``zcontrast_<label>.png``, ``widths_<label>.png``,
``background_<label>.png``, ``thickness_<label>.png``. Multislice runs are cached (``--cache``),
so an interrupted run resumes and the "after" run reuses them.

Needs the optional extra: ``pip install emrestore[multislice]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emrestore.atoms.refine import refine_columns
from emrestore.io import write_atomically
from emrestore.simulate.background import apply_contrast, draw_contrast
from emrestore.simulate.multislice import (
    DETECTORS,
    MultisliceParams,
    column_sites,
    multislice_work,
    simulate_multislice,
    zone_axis_cell,
)
from emrestore.simulate.multislice_set import (
    packaged_cells_path,
    reference_cells_from_scan,
    save_reference_cells,
)
from emrestore.simulate.profiles import draw_atom_profiles
from emrestore.simulate.render import render_atoms
from emrestore.simulate.sampler import SamplerConfig

# --------------------------------------------------------------------------------------------
# Specimens
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One specimen: a named crystal on a zone axis, optionally a supercell with a defect."""

    name: str
    material: str
    zone_axis: tuple[int, int, int]
    thickness_A: float
    series_A: tuple[float, ...] | None = None  # exit thicknesses recorded in the same run
    supercell: tuple[int, int] = (1, 1)
    defect: str | None = None  # "half-vacant-column": half the atoms of one column removed


FULL = (
    Case("SrTiO3[001]", "SrTiO3", (0, 0, 1), 400.0, (20.0, 50.0, 100.0, 200.0, 400.0)),
    Case("SrTiO3[110]", "SrTiO3", (1, 1, 0), 100.0),
    Case("Si[110]", "Si", (1, 1, 0), 100.0, (20.0, 50.0, 100.0)),
    Case("GaAs[110]", "GaAs", (1, 1, 0), 60.0),
    Case("Pt[001]", "Pt", (0, 0, 1), 50.0),
    Case("TiO2[001]", "TiO2-rutile", (0, 0, 1), 100.0),
    Case("MoS2[001]", "MoS2-bulk", (0, 0, 1), 50.0),
    Case("SrTiO3[001]+vacancies", "SrTiO3", (0, 0, 1), 60.0, supercell=(2, 2),
         defect="half-vacant-column"),
)

TINY = (
    Case("SrTiO3[001]", "SrTiO3", (0, 0, 1), 4 * 3.905, (2 * 3.905, 4 * 3.905)),
    Case("Si[110]", "Si", (1, 1, 0), 2 * 3.840),
    Case("SrTiO3[001]+vacancies", "SrTiO3", (0, 0, 1), 4 * 3.905, supercell=(2, 2),
         defect="half-vacant-column"),
)

#: Training cells for the multislice mix (``--cases train``): other materials, zone axes and
#: thicknesses than FULL, so that the multislice test set (FULL) holds crystals no network saw.
TRAIN = (
    Case("Au[001]", "Au", (0, 0, 1), 80.0, (20.0, 40.0, 80.0)),
    Case("InAs[110]", "InAs", (1, 1, 0), 80.0, (30.0, 80.0)),
    Case("GaAs[001]", "GaAs", (0, 0, 1), 60.0, (30.0, 60.0)),
    Case("Si[001]", "Si", (0, 0, 1), 100.0, (40.0, 100.0)),
    Case("PbTe[001]", "PbTe", (0, 0, 1), 50.0),
    Case("MgO[001]", "MgO", (0, 0, 1), 100.0, (30.0, 100.0)),
    Case("CeO2[110]", "CeO2", (1, 1, 0), 40.0),
    Case("SiC-3C[110]", "SiC-3C", (1, 1, 0), 60.0),
)

#: Probe shared by both models: a typical aberration-corrected 200 kV probe.
OPTICS = {"voltage_kV": 200.0, "convergence_mrad": 25.0, "source_fwhm_A": 0.5}

#: Seconds per (probe position x slice x frozen phonon) per million wave-grid points on one core,
#: measured with abTEM 1.0.11 on this project's 2-core box: the full calibration's multislice took
#: 2 753 s with --workers 2 (0.015 s per probe-slice-Mpoint on two cores); used only by --plan.
SECONDS_PER_MPOINT = 0.031


def build_cell(case: Case, seed: int = 0):
    """The periodic cell of ``case`` and the (y, x) position in Å of its defective column."""
    cell = zone_axis_cell(case.material, case.zone_axis, case.thickness_A)
    info = dict(cell.info)
    if case.supercell != (1, 1):
        cell = cell.repeat((case.supercell[0], case.supercell[1], 1))
        cell.info.update(info)
    defect_at = None
    if case.defect == "half-vacant-column":
        sites = column_sites(cell)
        # the heaviest single-species column nearest the cell centre
        centre = np.array([cell.cell[1, 1], cell.cell[0, 0]]) / 2
        heavy = [i for i, lab in enumerate(sites["label"])
                 if sites["composition"][i].nonzero()[0].size == 1]
        zmax = max(sites["composition"][i].nonzero()[0][0] for i in heavy)
        pick = min((i for i in heavy if sites["composition"][i].nonzero()[0][0] == zmax),
                   key=lambda i: np.hypot(*(sites["position_A"][i] - centre)))
        target = sites["position_A"][pick]
        xy = cell.positions[:, [1, 0]]
        members = np.nonzero(np.hypot(*(xy - target).T) < 0.3)[0]
        rng = np.random.default_rng(seed)
        remove = rng.choice(members, size=len(members) // 2, replace=False)
        del cell[sorted(remove.tolist())]
        defect_at = target
    return cell, defect_at


def ms_params(args) -> MultisliceParams:
    if args.tiny:
        return MultisliceParams(**OPTICS, frozen_phonons=args.phonons or 1, seed=args.seed,
                                lateral_padding_A=2.0, beam_spread=0.0, scan_step_A=0.3,
                                device=args.device)
    # A 0.3 Å step instead of λ/4α = 0.25 Å: the 0.5 Å source leaves < 1 % of the column
    # contrast above the 1.67 Å⁻¹ that it samples (see docs/simulation.md), for 30 % fewer probes.
    return MultisliceParams(**OPTICS, frozen_phonons=args.phonons or 4, seed=args.seed,
                            scan_step_A=args.scan_step or 0.3, device=args.device)


def field_shape(cell, pixel_A: float, min_field_A: float) -> tuple[int, int]:
    """Whole number of cells covering at least ``min_field_A`` in each direction."""
    lx, ly = cell.cell[0, 0], cell.cell[1, 1]
    nx, ny = math.ceil(min_field_A / lx), math.ceil(min_field_A / ly)
    return round(ny * ly / pixel_A), round(nx * lx / pixel_A)


def tiled_sites(cell, shape, pixel_A: float, margin_A: float, defect_at=None):
    """Column sites of the periodic cell over the field, away from the edges."""
    sites = column_sites(cell)
    lx, ly = cell.cell[0, 0], cell.cell[1, 1]
    h, w = shape
    pos, labels, comps = [], [], []
    for iy in range(-1, math.ceil(h * pixel_A / ly) + 1):
        for ix in range(-1, math.ceil(w * pixel_A / lx) + 1):
            p = sites["position_A"] + np.array([iy * ly, ix * lx])
            pos.append(p)
            lab = sites["label"].astype(object)
            if defect_at is not None:
                d = np.hypot(*(sites["position_A"] - defect_at).T)
                lab = np.where(d < 0.3, lab + "*", lab)
            labels.append(lab)
            comps.append(sites["composition"])
    pos, labels, comps = np.concatenate(pos), np.concatenate(labels), np.concatenate(comps)
    ok = ((pos[:, 0] >= margin_A) & (pos[:, 0] <= (h - 1) * pixel_A - margin_A)
          & (pos[:, 1] >= margin_A) & (pos[:, 1] <= (w - 1) * pixel_A - margin_A))
    return pos[ok] / pixel_A, labels[ok].astype(str), comps[ok]


def tiled_atoms(cell, shape, pixel_A: float):
    """Atoms of the periodic cell repeated over the field plus one cell all round."""
    lx, ly = cell.cell[0, 0], cell.cell[1, 1]
    h, w = shape
    nx, ny = math.ceil(w * pixel_A / lx) + 2, math.ceil(h * pixel_A / ly) + 2
    big = cell.repeat((nx, ny, 1))
    pos = big.positions - np.array([lx, ly, 0.0])
    return big.numbers, pos


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def measure(image: np.ndarray, sites_px, labels, pixel_A: float) -> dict:
    """Per-class SCS and width from a Gaussian fit at the known columns, plus background."""
    img = np.asarray(image, dtype=np.float64)
    table = refine_columns(img, sites_px, widths="different", noise="gaussian",
                           pixel_size_A=pixel_A, split_merged=False)
    fitted = table.positions_px
    scs = np.full(len(sites_px), np.nan)
    width = np.full(len(sites_px), np.nan)
    if len(fitted):
        d = np.hypot(*(fitted[None, :, :] - sites_px[:, None, :]).transpose(2, 0, 1))
        nearest = d.argmin(axis=1)
        close = d[np.arange(len(sites_px)), nearest] < 0.5 / pixel_A
        scs[close] = table.scs_px2[nearest[close]] * pixel_A**2
        width[close] = table.width_px[nearest[close]] * pixel_A
    out: dict = {"classes": {}}
    for lab in sorted(set(labels)):
        sel = labels == lab
        out["classes"][lab] = {"scs": float(np.nanmedian(scs[sel])) if np.any(
            np.isfinite(scs[sel])) else float("nan"),
            "width_A": float(np.nanmedian(width[sel])) if np.any(
            np.isfinite(width[sel])) else float("nan"),
            "n": int(sel.sum())}
    peak = float(img.max())
    out["floor"] = float(np.percentile(img, 1) / peak) if peak > 0 else float("nan")
    out["std_over_mean"] = float(img.std() / img.mean()) if img.mean() > 0 else float("nan")
    out["mean"] = float(img.mean())
    return out


def ratios(classes: dict) -> dict[str, float]:
    # a class the fit lost (an O column beside saturated Sr columns at 40 nm) must not turn every
    # ratio into NaN: normalise by the brightest class that was measured
    perfect = [v["scs"] for k, v in classes.items()
               if not k.endswith("*") and np.isfinite(v["scs"])]
    ref = max(perfect) if perfect else float("nan")
    return {k: v["scs"] / ref for k, v in classes.items()}


def implied_gamma(classes: dict, compositions: dict[str, np.ndarray]) -> float:
    """γ minimising the squared log-ratio error of Σ n_Z Z^γ between the perfect classes."""
    labs = [k for k in classes if not k.endswith("*") and np.isfinite(classes[k]["scs"])]
    comp = np.array([compositions[k] for k in labs], dtype=float)
    if len({tuple(np.round(c / c.sum(), 6)) for c in comp}) < 2:
        return float("nan")  # one kind of column: no Z-contrast to measure
    logs = np.log([classes[k]["scs"] for k in labs])
    z = np.arange(comp.shape[1], dtype=float)
    z[0] = 1.0
    grid = np.linspace(0.0, 5.0, 5001)  # thin multislice perovskites reach γ ≈ 3
    pred = np.log(comp @ (z[None, :] ** grid[:, None]).T).T  # (G, classes)
    err = (pred - pred.mean(axis=1, keepdims=True)) - (logs - logs.mean())
    return float(grid[np.argmin((err**2).sum(axis=1))])


def percentile_of(value: float, sample) -> float:
    sample = np.asarray([s for s in sample if np.isfinite(s)])
    if not np.isfinite(value) or sample.size == 0:
        return float("nan")
    return float(100.0 * (np.sum(sample < value) + 0.5 * np.sum(sample == value)) / sample.size)


def implied_radius_scale(scales, widths, target: float) -> float:
    """Invert σ² = a + b s², fitted over the linear draws, at the multislice width."""
    s, w = np.asarray(scales), np.asarray(widths)
    ok = np.isfinite(w)
    if ok.sum() < 3 or not np.isfinite(target):
        return float("nan")
    b, a = np.polyfit(s[ok] ** 2, w[ok] ** 2, 1)
    if b <= 0:
        return float("nan")
    return float(math.sqrt(max(target**2 - a, 0.0) / b))


# --------------------------------------------------------------------------------------------
# One specimen
# --------------------------------------------------------------------------------------------


def run_case(case: Case, args, params: MultisliceParams, config: SamplerConfig,
             pixel_A: float, min_field_A: float) -> dict:
    cell, defect_at = build_cell(case, args.seed)
    shape = field_shape(cell, pixel_A, min_field_A)
    margin = 1.2
    sites_px, labels, comps = tiled_sites(cell, shape, pixel_A, margin, defect_at)
    comp_by_class = {lab: comps[labels == lab][0] for lab in set(labels)}
    t0 = time.perf_counter()
    # the cell holds a whole number of repeats along the beam, so its height can fall just short
    # of the nominal thickness: the last exit plane is the exit surface
    series = (None if case.series_A is None
              else tuple(min(t, float(cell.cell[2, 2])) for t in case.series_A))
    ms = simulate_multislice(cell, params, cache_dir=args.cache, shape=shape,
                             pixel_size_A=pixel_A, thickness_series_A=series,
                             num_workers=args.workers)
    seconds = time.perf_counter() - t0
    haadf = ms["HAADF"].array
    thick = ms["thickness_A"]
    stack = haadf if haadf.ndim == 3 else haadf[None]
    total = float(cell.cell[2, 2])
    ms_meas = [measure(frame, sites_px, labels, pixel_A) for frame in stack]
    final = ms_meas[-1]
    final["ratios"] = ratios(final["classes"])
    final["gamma"] = implied_gamma(final["classes"], comp_by_class)

    # linear model: draws of the atom profiles, same atoms, same probe, same grid
    numbers, positions = tiled_atoms(cell, shape, pixel_A)
    probe = params.probe
    rng = np.random.default_rng(args.seed + 1000)
    contrast = dataclasses.replace(config.contrast, invert_probability=0.0)
    draws = []
    images = []
    for _ in range(args.draws):
        prof = draw_atom_profiles(rng, np.unique(numbers), config.profiles)
        lin = render_atoms(numbers, positions, prof, shape, pixel_A, probe)
        m = measure(lin, sites_px, labels, pixel_A)
        m["ratios"] = ratios(m["classes"])
        m["gamma_drawn"] = prof.gamma
        m["gamma"] = implied_gamma(m["classes"], comp_by_class)
        m["radius_scale_A"] = prof.radius_scale_A
        after = apply_contrast(lin, draw_contrast(rng, contrast), rng).image
        m["floor_after_contrast"] = float(np.percentile(after, 1) / after.max())
        m["std_over_mean_after_contrast"] = float(after.std() / after.mean())
        draws.append(m)
        images.append(lin)
    gam = np.array([d["gamma_drawn"] for d in draws])
    median_draw = int(np.argmin(np.abs(gam - np.median(gam))))

    classes = sorted(final["classes"])
    result: dict = {
        "case": dataclasses.asdict(case),
        "cell_A": [float(cell.cell[1, 1]), float(cell.cell[0, 0]), total],
        "n_atoms": len(cell),
        "shape": list(shape),
        "pixel_size_A": pixel_A,
        "multislice_seconds": seconds,
        "from_cache": bool(ms["HAADF"].metadata["from_cache"]),
        "multislice": {"thickness_A": thick.tolist(), "per_thickness": ms_meas},
        "linear": {"draws": draws, "median_draw": median_draw},
        "comparison": {},
    }
    cmp = result["comparison"]
    bright = max((c for c in classes if not c.endswith("*")),
                 key=lambda c: final["classes"][c]["scs"])
    for c in classes:
        ms_r = final["ratios"][c]
        lin_r = [d["ratios"][c] for d in draws]
        ms_w = final["classes"][c]["width_A"]
        lin_w = [d["classes"][c]["width_A"] for d in draws]
        cmp[c] = {"ratio_ms": ms_r, "ratio_linear_median": float(np.nanmedian(lin_r)),
                  "ratio_percentile": percentile_of(ms_r, lin_r),
                  "width_ms_A": ms_w, "width_linear_median_A": float(np.nanmedian(lin_w)),
                  "width_percentile": percentile_of(ms_w, lin_w),
                  "radius_scale_implied_A": implied_radius_scale(
                      [d["radius_scale_A"] for d in draws], lin_w, ms_w)}
    cmp["brightest_class"] = bright
    cmp["gamma_ms"] = final["gamma"]
    cmp["gamma_ms_per_thickness"] = [implied_gamma(m["classes"], comp_by_class)
                                     for m in ms_meas]
    cmp["floor_ms"] = final["floor"]
    cmp["floor_percentile_raw"] = percentile_of(final["floor"], [d["floor"] for d in draws])
    cmp["floor_percentile_after_contrast"] = percentile_of(
        final["floor"], [d["floor_after_contrast"] for d in draws])
    cmp["std_over_mean_ms"] = final["std_over_mean"]
    cmp["std_over_mean_percentile_raw"] = percentile_of(
        final["std_over_mean"], [d["std_over_mean"] for d in draws])
    cmp["std_over_mean_percentile_after_contrast"] = percentile_of(
        final["std_over_mean"], [d["std_over_mean_after_contrast"] for d in draws])
    if defect_at is not None:
        base = next(c for c in classes if c.endswith("*"))[:-1]
        cmp["defect"] = {"column": base, "ratio_ms": final["classes"][base + "*"]["scs"]
                         / final["classes"][base]["scs"],
                         "ratio_linear": [d["classes"][base + "*"]["scs"]
                                          / d["classes"][base]["scs"] for d in draws]}
    if len(thick) > 1:
        t = np.asarray(thick)
        curves = {c: [m["classes"][c]["scs"] / ms_meas[0]["classes"][c]["scs"]
                      for m in ms_meas] for c in classes}
        curves["mean"] = [m["mean"] / ms_meas[0]["mean"] for m in ms_meas]
        # the linear model on the same atoms cut to each thickness (median draw)
        prof = draw_atom_profiles(np.random.default_rng(args.seed + 1000), np.unique(numbers),
                                  config.profiles)
        lin_mean = []
        for tk in t:
            keep = positions[:, 2] < tk - 1e-3  # atoms on the exit plane lie beyond it
            lin_mean.append(float(render_atoms(numbers[keep], positions[keep], prof, shape,
                                               pixel_A, probe).mean()))
        exps = {c: float(np.polyfit(np.log(t), np.log(np.maximum(v, 1e-12)), 1)[0])
                for c, v in curves.items()}
        cmp["thickness"] = {"thickness_A": t.tolist(), "ms_relative": curves,
                            "linear_mean_relative": (np.array(lin_mean) / lin_mean[0]).tolist(),
                            "exponent_ms": exps}
    result["_images"] = {"ms": stack[-1], "linear": images[median_draw],
                         "sites_px": sites_px, "labels": labels}
    return result


# --------------------------------------------------------------------------------------------
# Summary, suggestions, figures
# --------------------------------------------------------------------------------------------


def suggestions(results: list[dict], config: SamplerConfig) -> dict:
    gammas = [r["comparison"]["gamma_ms"] for r in results
              if np.isfinite(r["comparison"]["gamma_ms"])]
    scales = [r["comparison"][r["comparison"]["brightest_class"]]["radius_scale_implied_A"]
              for r in results]
    scales = [s for s in scales if np.isfinite(s)]
    floors = [r["comparison"]["floor_ms"] for r in results]
    ratios_sm = [r["comparison"]["std_over_mean_ms"] for r in results]
    exps = [r["comparison"]["thickness"]["exponent_ms"]["mean"] for r in results
            if "thickness" in r["comparison"]]
    out = {"current": {"profiles.gamma_range": list(config.profiles.gamma_range),
                       "profiles.radius_scale_A": list(config.profiles.radius_scale_A),
                       "contrast.background_height_fraction":
                           list(config.contrast.background_height_fraction),
                       "contrast.ratio_range": list(config.contrast.ratio_range)}}
    if gammas:
        lo, hi = min(gammas) - 0.1, max(gammas) + 0.1
        out["profiles.gamma_range"] = [round(max(lo, 0.0), 2), round(hi, 2)]
    if scales:
        out["profiles.radius_scale_A"] = [round(0.9 * min(scales), 3),
                                          round(1.1 * max(scales), 3)]
    out["multislice_floor_over_max"] = [round(min(floors), 4), round(max(floors), 4)]
    out["multislice_std_over_mean"] = [round(min(ratios_sm), 3), round(max(ratios_sm), 3)]
    if exps:
        out["multislice_thickness_exponent"] = [round(min(exps), 3), round(max(exps), 3)]
    out["note"] = ("ranges that contain every multislice value (γ ± 0.1, radius scale ± 10 %); "
                   "a floor is a constant background the linear model lacks, and a thickness "
                   "exponent < 1 is a saturation it lacks: see docs/simulation.md")
    return out


def figures(results: list[dict], sugg: dict, config: SamplerConfig, out: Path, label: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    def save(fig, name):
        path = out / f"{name}_{label}.png"
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)
        return path.name

    names = []
    n = len(results)
    # gallery: multislice | linear (median draw) | normalised difference
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for row, r in zip(axes, results):
        a, b = r["_images"]["ms"], r["_images"]["linear"]
        an, bn = a / a.max(), b / b.max()
        for ax, img, title in zip(row, (an, bn, an - bn),
                                  ("multislice HAADF", "linear model", "difference")):
            im = ax.imshow(img, cmap="gray" if title != "difference" else "RdBu_r",
                           vmin=None if title != "difference" else -0.5,
                           vmax=None if title != "difference" else 0.5)
            ax.set_title(f"{r['case']['name']}: {title}", fontsize=8)
            ax.axis("off")
        fig.colorbar(im, ax=row[2], fraction=0.046)
    fig.tight_layout()
    names.append(save(fig, "gallery"))

    # Z-contrast: implied gamma per specimen against the sampler's range
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    lo, hi = config.profiles.gamma_range
    ax1.axhspan(lo, hi, color="0.85", label=f"sampler γ range [{lo}, {hi}]")
    for i, r in enumerate(results):
        g = r["comparison"]["gamma_ms_per_thickness"]
        t = r["multislice"]["thickness_A"]
        ax1.scatter([i] * len(g), g, c=np.log(t), cmap="viridis", s=30)
    ax1.set_xticks(range(n), [r["case"]["name"] for r in results], rotation=45, ha="right",
                   fontsize=7)
    ax1.set_ylabel("implied γ")
    ax1.set_title("I ∝ Σ Z^γ fitted to the multislice columns (dark: thin, yellow: thick)",
                  fontsize=8)
    ax1.legend(fontsize=7)
    k = 0
    ticks = []
    for r in results:
        for c, v in r["comparison"].items():
            if not isinstance(v, dict) or "ratio_ms" not in v or c == "defect":
                continue
            lin = [d["ratios"][c] for d in r["linear"]["draws"]]
            ax2.boxplot([lin], positions=[k], widths=0.6, showfliers=False)
            ax2.plot(k, v["ratio_ms"], "r*", ms=9)
            ticks.append(f"{r['case']['name']} {c}")
            k += 1
    ax2.set_xticks(range(k), ticks, rotation=60, ha="right", fontsize=6)
    ax2.set_ylabel("SCS / brightest column")
    ax2.set_title("box: linear-model draws, ★: multislice", fontsize=8)
    fig.tight_layout()
    names.append(save(fig, "zcontrast"))

    # widths
    fig, ax = plt.subplots(figsize=(11, 4))
    k = 0
    ticks = []
    for r in results:
        for c, v in r["comparison"].items():
            if not isinstance(v, dict) or "width_ms_A" not in v:
                continue
            lin = [d["classes"][c]["width_A"] for d in r["linear"]["draws"]]
            ax.boxplot([[x for x in lin if np.isfinite(x)]], positions=[k], widths=0.6,
                       showfliers=False)
            ax.plot(k, v["width_ms_A"], "r*", ms=9)
            ticks.append(f"{r['case']['name']} {c}")
            k += 1
    ax.set_xticks(range(k), ticks, rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("column width σ (Å)")
    ax.set_title("box: linear-model draws, ★: multislice", fontsize=8)
    fig.tight_layout()
    names.append(save(fig, "widths"))

    # background
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(results):
        d = r["linear"]["draws"]
        ax1.boxplot([[x["floor"] for x in d]], positions=[i - 0.2], widths=0.3,
                    showfliers=False)
        ax1.boxplot([[x["floor_after_contrast"] for x in d]], positions=[i + 0.2], widths=0.3,
                    showfliers=False, patch_artist=True, boxprops={"facecolor": "0.85"})
        ax1.plot(i, r["comparison"]["floor_ms"], "r*", ms=9)
        ax2.boxplot([[x["std_over_mean"] for x in d]], positions=[i - 0.2], widths=0.3,
                    showfliers=False)
        ax2.boxplot([[x["std_over_mean_after_contrast"] for x in d]], positions=[i + 0.2],
                    widths=0.3, showfliers=False, patch_artist=True,
                    boxprops={"facecolor": "0.85"})
        ax2.plot(i, r["comparison"]["std_over_mean_ms"], "r*", ms=9)
    for ax in (ax1, ax2):
        ax.set_xticks(range(n), [r["case"]["name"] for r in results], rotation=45, ha="right",
                      fontsize=7)
    ax1.set_ylabel("1st percentile / max")
    ax2.set_ylabel("std / mean")
    for ax in (ax1, ax2):
        ax.set_title("white: linear raw, grey: after the background stage, ★: multislice",
                     fontsize=8)
    fig.tight_layout()
    names.append(save(fig, "background"))

    # thickness
    series = [r for r in results if "thickness" in r["comparison"]]
    if series:
        fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 4), squeeze=False)
        for ax, r in zip(axes[0], series):
            th = r["comparison"]["thickness"]
            t = np.array(th["thickness_A"]) / 10.0
            for c, v in th["ms_relative"].items():
                ax.loglog(t, v, "o-", label=f"multislice {c} (p={th['exponent_ms'][c]:.2f})")
            ax.loglog(t, th["linear_mean_relative"], "k--", label="linear model (p=1)")
            ax.set_xlabel("thickness (nm)")
            # plain thickness ticks: the default log labels (2×10⁰, 3×10⁰, ...) overlap
            ax.set_xticks(t, [f"{v:g}" for v in t], minor=False)
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_ylabel("intensity / thinnest")
            ax.set_title(r["case"]["name"])
            ax.legend(fontsize=7)
        fig.tight_layout()
        names.append(save(fig, "thickness"))
    return names


def markdown_table(results: list[dict], config: SamplerConfig, draws: int) -> str:
    """Every measured number per specimen and column class, as markdown (docs/simulation.md)."""
    def f(v, fmt):
        return "–" if v is None or not np.isfinite(v) else format(v, fmt)

    lines = [
        f"Linear model: {draws} draws of the sampler's "
        f"profiles (γ {tuple(config.profiles.gamma_range)}, radius scale "
        f"{tuple(config.profiles.radius_scale_A)} Å); pct = percentile of the multislice value "
        "among the linear draws (0 or 100: outside).", "",
        "| specimen | t (nm) | γ multislice | column | SCS / brightest: multislice (linear "
        "median, pct) | σ (Å): multislice (linear median, pct) | implied r_m scale (Å) |",
        "|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["comparison"]
        first = True
        for k, v in c.items():
            if not (isinstance(v, dict) and "ratio_ms" in v) or k == "defect":
                continue
            head = (f"| {r['case']['name']} | {r['cell_A'][2] / 10:.1f} | "
                    f"{f(c['gamma_ms'], '.2f')} " if first else "| | | ")
            first = False
            lines.append(
                head + f"| {k} | {f(v['ratio_ms'], '.3f')} ({f(v['ratio_linear_median'], '.3f')}, "
                f"{f(v['ratio_percentile'], '.0f')}) | {f(v['width_ms_A'], '.3f')} "
                f"({f(v['width_linear_median_A'], '.3f')}, {f(v['width_percentile'], '.0f')}) | "
                f"{f(v['radius_scale_implied_A'], '.3f')} |")
    lines += ["", "| specimen | floor / max: multislice (pct after background stage) | "
              "std / mean: multislice (pct after background stage) | I ∝ t^p (multislice) | "
              "defect column / perfect |", "|---|---|---|---|---|"]
    for r in results:
        c = r["comparison"]
        p = ", ".join(f"{k} {f(v, '.2f')}" for k, v in
                      c.get("thickness", {}).get("exponent_ms", {}).items()) or "–"
        d = c.get("defect")
        defect = (f"{f(d['ratio_ms'], '.3f')} (linear median "
                  f"{f(float(np.median(d['ratio_linear'])), '.3f')})" if d else "–")
        lines.append(f"| {r['case']['name']} | {f(c['floor_ms'], '.3f')} "
                     f"({f(c['floor_percentile_after_contrast'], '.0f')}) | "
                     f"{f(c['std_over_mean_ms'], '.2f')} "
                     f"({f(c['std_over_mean_percentile_after_contrast'], '.0f')}) | {p} | "
                     f"{defect} |")
    return "\n".join(lines) + "\n"


def export_cells(cases, args, params: MultisliceParams, split: str) -> None:
    """Run (or read from the cache) each case's multislice and store its HAADF cell scans at
    every exit thickness as reference cells (``emrestore.simulate.multislice_set``)."""
    cells = []
    for case in cases:
        cell, _ = build_cell(case, args.seed)
        series = (None if case.series_A is None
                  else tuple(min(t, float(cell.cell[2, 2])) for t in case.series_A))
        t0 = time.perf_counter()
        ms = simulate_multislice(cell, params, cache_dir=args.cache, thickness_series_A=series,
                                 num_workers=args.workers)
        haadf = ms["cell_scan"][DETECTORS.index("HAADF")]
        cells += reference_cells_from_scan(case.name, case.material, case.zone_axis, cell, haadf,
                                           ms["thickness_A"], params, split)
        print(f"{case.name}: {len(ms['thickness_A'])} exit planes, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        if not args.export_cells:
            continue
        # saved after every case, so an interrupted run keeps what it computed
        save_reference_cells(cells, args.export_cells)
    if args.export_cells:
        print(f"{len(cells)} {split} cells -> {args.export_cells}")


def plan(cases, params: MultisliceParams) -> float:
    """Print the multislice work per specimen and an estimate of its CPU time."""
    total = 0.0
    print(f"{'specimen':24s} {'grid':>11s} {'probes':>7s} {'slices':>6s} {'phonons':>7s} "
          f"{'est. h (1 core)':>15s}")
    for case in cases:
        cell, _ = build_cell(case)
        w = multislice_work(cell, params)
        gx, gy = w["wave_grid"]
        sec = w["probe_slices"] * gx * gy / 1e6 * SECONDS_PER_MPOINT
        total += sec
        print(f"{case.name:24s} {gx:5d}x{gy:<5d} {w['probes']:7d} {w['slices']:6d} "
              f"{w['frozen_phonons']:7d} {sec / 3600:15.2f}")
    print(f"total: {total / 3600:.1f} h on one core (about half with --workers 2 on two cores; "
          f"a GPU minutes)")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="3 thin specimens, 1 phonon, coarse: a smoke run of ~2 minutes")
    parser.add_argument("--plan", action="store_true", help="print the work and exit")
    parser.add_argument("--cases", default="full", choices=("full", "tiny", "train"),
                        help="full: the calibration specimens (also the multislice test set); "
                             "train: the training-mix cells (multislice only, no comparison)")
    parser.add_argument("--export-cells", nargs="?", const=str(packaged_cells_path()),
                        default=None, metavar="NPZ",
                        help="store the HAADF cell scans as reference cells (split 'test' for "
                             "full, 'train' for train) in NPZ (default: the packaged file)")
    parser.add_argument("-o", "--out", default="calibration", help="output folder")
    parser.add_argument("--cache", default=None,
                        help="multislice cache folder (default: <out>/multislice-cache)")
    parser.add_argument("--sampler-config", default=None,
                        help="TOML of SamplerConfig whose ranges the linear model draws from")
    parser.add_argument("--label", default="before", help="suffix of the output files")
    parser.add_argument("--draws", type=int, default=None,
                        help="linear-model profile draws per specimen (default 64; tiny 12)")
    parser.add_argument("--phonons", type=int, default=None,
                        help="frozen-phonon configurations (default 4; tiny 1)")
    parser.add_argument("--scan-step", type=float, default=None,
                        help="probe step over a cell in Å (default 0.3)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    parser.add_argument("--workers", type=int, default=None, help="CPU threads for abTEM")
    parser.add_argument("--only", default=None, help="comma-separated specimen names")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.tiny:
        args.cases = "tiny"
    cases = {"full": FULL, "tiny": TINY, "train": TRAIN}[args.cases]
    if args.only:
        wanted = {s.strip() for s in args.only.split(",")}
        cases = tuple(c for c in cases if c.name in wanted)
    args.draws = args.draws or (12 if args.tiny else 64)
    params = ms_params(args)
    pixel_A = 0.1
    min_field_A = 10.0 if args.tiny else 20.0
    if args.plan:
        plan(cases, params)
        return
    config = (SamplerConfig.from_toml(args.sampler_config) if args.sampler_config
              else SamplerConfig())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.cache = args.cache or str(out / "multislice-cache")

    if args.cases == "train":
        export_cells(cases, args, params, "train")
        return
    results = []
    t_start = time.perf_counter()
    for case in cases:
        t0 = time.perf_counter()
        r = run_case(case, args, params, config, pixel_A, min_field_A)
        results.append(r)
        c = r["comparison"]
        print(f"\n== {case.name}: {r['n_atoms']} atoms, thickness {r['cell_A'][2] / 10:.1f} nm, "
              f"multislice {r['multislice_seconds']:.0f} s"
              f"{' (cache)' if r['from_cache'] else ''}, total {time.perf_counter() - t0:.0f} s")
        print(f"   implied γ: multislice {c['gamma_ms']:.2f} "
              f"(sampler {config.profiles.gamma_range})")
        for k, v in c.items():
            if isinstance(v, dict) and "ratio_ms" in v and k != "defect":
                print(f"   {k:6s} SCS/brightest {v['ratio_ms']:.3f} (linear median "
                      f"{v['ratio_linear_median']:.3f}, pct {v['ratio_percentile']:.0f}) | "
                      f"σ {v['width_ms_A']:.3f} Å (linear {v['width_linear_median_A']:.3f}, "
                      f"pct {v['width_percentile']:.0f}, implied r_m scale "
                      f"{v['radius_scale_implied_A']:.3f} Å)")
        print(f"   floor/max {c['floor_ms']:.4f} (pct raw {c['floor_percentile_raw']:.0f}, "
              f"after background stage {c['floor_percentile_after_contrast']:.0f}); std/mean "
              f"{c['std_over_mean_ms']:.3f} "
              f"(pct {c['std_over_mean_percentile_after_contrast']:.0f})")
        if "defect" in c:
            d = c["defect"]
            print(f"   defect column / perfect {d['column']}: multislice {d['ratio_ms']:.3f}, "
                  f"linear median {np.median(d['ratio_linear']):.3f}")
        if "thickness" in c:
            print("   I ∝ t^p: p = " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                c["thickness"]["exponent_ms"].items()))
    sugg = suggestions(results, config)
    names = figures(results, sugg, config, out, args.label)
    payload = {
        "label": args.label,
        "tiny": bool(args.tiny),
        "multislice_params": params.to_dict(),
        "sampler_config": args.sampler_config,
        "draws": args.draws,
        "pixel_size_A": pixel_A,
        "seconds": time.perf_counter() - t_start,
        "suggested": sugg,
        "figures": names,
        "specimens": [{k: v for k, v in r.items() if k != "_images"} for r in results],
    }
    path = out / f"calibration_{args.label}.json"
    write_atomically(path, lambda tmp: Path(tmp).write_text(
        json.dumps(payload, indent=1, default=float)))
    table = out / f"calibration_{args.label}.md"
    write_atomically(table, lambda tmp: Path(tmp).write_text(
        markdown_table(results, config, args.draws)))
    if args.export_cells and args.cases == "full":
        export_cells(cases, args, params, "test")
    print(f"\nsuggested ranges: {json.dumps(sugg, indent=1)}")
    print(f"wrote {path} and {', '.join(names)} in {out} "
          f"({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
