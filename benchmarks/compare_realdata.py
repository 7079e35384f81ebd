"""Do simulated images look like real ones? Noise texture, line noise and histograms, side by side.

    python benchmarks/compare_realdata.py [--realdata ../shared/realdata] [--n 40] [-o realism.png]

For each real HAADF image the simulator draws ``--n`` images of the same material, zone axis and
pixel size from the default training distribution (random dose, detector and scan distortions).
Four statistics of the noise are computed the same way on both, and the script prints where the
real value falls inside the simulated distribution (its percentile): a real image far outside
(0 % or 100 %) means the simulator misses something the microscope does.

- ``rel_noise``: std of the high-pass residual / (mean - 1st percentile) — the shot-noise level;
- ``row_corr``: lag-1 correlation of the residual along the fast-scan rows (fast-scan blur);
- ``line_noise``: std of the residual's row means × sqrt(width) / its pixel std (1 for white
  noise; above 1 for line-to-line jitter, row offsets and flicker);
- ``skew``: skewness of the intensity histogram.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

from emrestore.simulate.sampler import SamplerConfig, aligned_crystal, simulate_pair

# name -> (material, zone axis, lattice-implied pixel size in Å, crop)
CASES = {
    "SrTiO3_HAADF_noisy_512.npz": ("SrTiO3", (0, 0, 1), 0.1525, 256),
    "Si110_HAADF_8bit_512.npz": ("Si", (0, 1, 1), 0.089, 256),
    "perovskite_trilayer_HAADF_1258.npz": ("SrTiO3", (0, 0, 1), 0.38, 256),
    "REBCO_HAADF_raw_128.npz": ("SrTiO3", (0, 0, 1), 0.541, 128),
}


def noise_statistics(image: np.ndarray) -> dict[str, float]:
    """The four statistics above, on a float image."""
    img = np.asarray(image, dtype=np.float64)
    resid = img - ndimage.uniform_filter(img, 3, mode="reflect")
    floor = np.percentile(img, 1)
    level = img.mean() - floor
    r = resid[2:-2, 2:-2]
    row_corr = np.corrcoef(r[:, :-1].ravel(), r[:, 1:].ravel())[0, 1]
    line = r.mean(axis=1).std() * np.sqrt(r.shape[1]) / r.std()
    return {"rel_noise": float(resid.std() / level) if level > 0 else float("nan"),
            "row_corr": float(row_corr), "line_noise": float(line),
            "skew": float(stats.skew(img.ravel()))}


def simulated(material, zone_axis, pixel_size_A, size, n, seed=0):
    config = SamplerConfig(size=(size, size), hr_pixel_size_A=(pixel_size_A, pixel_size_A),
                           super_resolution_label=False)
    config = aligned_crystal(config, material, zone_axis, mistilt_std_deg=0.5)
    # HAADF: bright columns, linear contrast
    config = dataclasses.replace(config, contrast=dataclasses.replace(
        config.contrast, invert_probability=0.0, power_probability=0.0))
    return [simulate_pair(config=config, rng=seed + i)[0] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realdata", default=str(Path(__file__).resolve().parents[2]
                                                  / "shared" / "realdata"))
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("-o", "--output", default="realism.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(CASES), 5, figsize=(15, 3.2 * len(CASES)), squeeze=False)
    for row, (name, (material, zone, pixel, size)) in enumerate(CASES.items()):
        path = Path(args.realdata) / name
        if not path.exists():
            print(f"{name}: not found, skipped")
            continue
        real = np.load(path)["image"].astype(np.float32)[:size, :size]
        sims = simulated(material, zone, pixel, size, args.n)
        real_stats = noise_statistics(real)
        sim_stats = [noise_statistics(s) for s in sims]
        print(f"\n{name} vs {args.n} simulated {material} {list(zone)} at {pixel} Å/px")
        for key, value in real_stats.items():
            values = np.array([s[key] for s in sim_stats])
            pct = stats.percentileofscore(values, value)
            print(f"  {key:<10s} real {value:8.3f}   simulated 5-95 % "
                  f"[{np.percentile(values, 5):8.3f}, {np.percentile(values, 95):8.3f}]   "
                  f"real at {pct:5.1f} %")
        panels = [("real", real)] + [(f"simulated {i}", sims[i]) for i in range(3)]
        for ax, (title, image) in zip(axes[row, :4], panels):
            lo, hi = np.percentile(image, [0.5, 99.5])
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
            ax.set_title(f"{name.split('_')[0]}: {title}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        ax = axes[row, 4]
        for key, marker in (("row_corr", "o"), ("line_noise", "s")):
            values = [s[key] for s in sim_stats]
            ax.scatter([s["rel_noise"] for s in sim_stats], values, s=8, marker=marker,
                       label=f"sim {key}")
            ax.scatter([real_stats["rel_noise"]], [real_stats[key]], s=80, marker=marker,
                       edgecolor="k", facecolor="red", label=f"real {key}")
        ax.set_xscale("log")
        ax.set_xlabel("relative noise")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(args.output, dpi=70)
    print(f"\nfigure: {args.output}")


if __name__ == "__main__":
    main()
