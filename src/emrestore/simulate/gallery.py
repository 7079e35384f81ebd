"""One figure with every distortion of the simulator shown on its own (seed 001, Figs 12 and 14).

Each panel is ``simulate_pair`` on the same seed with every distortion switched off except the
one named; because the sampler draws the scene, the distortion, the noise and the
post-processing from independent streams, every panel shows the same specimen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from pathlib import Path

import numpy as np

from ..io import write_atomically
from .dose import DoseParams
from .postprocess import PostprocessParams
from .sampler import SamplerConfig, aligned_crystal, simulate_pair
from .stem import StemDistortionParams
from .tem import TemDistortionParams


def _only(params, **settings):
    """``params`` with every ``*_probability`` at 0, then ``settings`` applied."""
    off = {f.name: 0.0 for f in fields(params) if f.name.endswith("_probability")}
    off.update(settings)
    return dataclasses.replace(params, **off)


def _stem_panels() -> list[tuple[str, StemDistortionParams]]:
    base = StemDistortionParams()
    counting = {"counting_probability": 1.0}
    analog = {"counting_probability": 0.0}
    jitter = {"jitter_probability": 1.0, "jitter_sigma_A": (0.25, 0.25), "jitter_phi": (0.6, 0.6)}
    return [
        ("Poisson (counting)", _only(base, **counting)),
        ("Poisson + PMT, ADC", _only(base, **analog)),
        ("X jitter", _only(base, **counting, **jitter, jitter_kind_probabilities=(1, 0, 0))),
        ("Y jitter", _only(base, **counting, **jitter, jitter_kind_probabilities=(0, 1, 0))),
        ("XY jitter", _only(base, **counting, **jitter, jitter_kind_probabilities=(0, 0, 1))),
        ("line jitter", _only(base, **counting, line_jitter_probability=1.0,
                              line_jitter_amplitude_A=(0.3, 0.3))),
        ("slow drift", _only(base, **counting, drift_probability=1.0,
                             drift_px_per_line=(0.05, 0.05))),
        ("fast-scan PSF", _only(base, **analog, fast_scan_probability=1.0,
                                fast_scan_alpha=(0.6, 0.6), fast_scan_decay_px=(1.5, 1.5))),
        ("row lines", _only(base, **counting, row_line_probability=1.0, row_line_count=(8, 8))),
        ("black pixels", _only(base, **counting, black_pixel_probability=1.0,
                               black_pixel_fraction=(2e-3, 2e-3))),
        ("zingers", _only(base, **counting, zinger_probability=1.0,
                          zinger_fraction=(1e-3, 1e-3))),
        ("upper clip", _only(base, **counting, upper_clip_probability=1.0,
                             upper_clip_fraction=(0.3, 0.3))),
        ("everything", base.all_on()),
    ]


def _tem_panels() -> list[tuple[str, TemDistortionParams]]:
    base = TemDistortionParams()
    analog = {"counting_probability": 0.0}
    return [
        ("shot noise (counting)", _only(base, counting_probability=1.0)),
        ("fixed pattern", _only(base, **analog, fpn_probability=1.0, fpn_sigma=(0.05, 0.05))),
        ("dark current + hot px", _only(base, **analog, dark_probability=1.0,
                                        dark_mean_e=(2.0, 2.0), hot_pixel_fraction=(1e-3, 1e-3))),
        ("read noise", _only(base, **analog, read_probability=1.0, read_noise_e=(1.0, 1.0))),
        ("flicker (1/f)", _only(base, **analog, flicker_probability=1.0,
                                flicker_sigma_e=(0.5, 0.5))),
        ("reset (rows)", _only(base, **analog, reset_probability=1.0, reset_sigma_e=(0.5, 0.5))),
        ("black clusters", _only(base, counting_probability=1.0, black_pixel_probability=1.0,
                                 black_pixel_points=(20, 20))),
        ("zinger clusters", _only(base, counting_probability=1.0, zinger_probability=1.0,
                                  zinger_points=(10, 10))),
        ("everything", base.all_on()),
    ]


def _post_panels() -> list[tuple[str, PostprocessParams]]:
    base = PostprocessParams()
    return [
        ("affine", _only(base, affine_probability=1.0, rotation_deg=(10.0, 10.0))),
        ("blur (input only)", _only(base, blur_probability=1.0, blur_sigma_px=(1.0, 1.0))),
        ("8-bit display", _only(base, display_probability=1.0)),
        ("crop fill", _only(base, crop_probability=1.0)),
        ("annotations", _only(base, annotation_probability=1.0, annotation_count=(4, 4))),
    ]


def gallery_config(modality: str = "stem", size: tuple[int, int] = (192, 192),
                   dose_e_per_A2: float = 20000.0, pixel_size_A: float = 0.12,
                   material: str | None = "SrTiO3") -> SamplerConfig:
    """The quiet base configuration of the gallery: one crystal on a zone axis, one dose, one
    pixel size, shot noise only (a counting detector), no post-processing."""
    base = SamplerConfig(modality=modality, size=size,
                         hr_pixel_size_A=(pixel_size_A, pixel_size_A),
                         hr_dose=DoseParams(dose_e_per_A2=(dose_e_per_A2, dose_e_per_A2)),
                         super_resolution_label=False)
    if material is not None:
        base = aligned_crystal(base, material)
    return dataclasses.replace(
        base,
        contrast=dataclasses.replace(base.contrast, invert_probability=0.0,
                                     power_probability=0.0),
        stem=_only(base.stem, counting_probability=1.0),
        tem=_only(base.tem, counting_probability=1.0),
        post=_only(base.post))


def gallery_panels(seed: int = 3, size: tuple[int, int] = (192, 192)
                   ) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """The gallery's images as rows of (title, image), without drawing them."""
    stem_base = gallery_config("stem", size)
    tem_base = gallery_config("tem", size)
    _, clean, _ = simulate_pair(config=stem_base, rng=seed)
    rows = []
    stem_row = [("clean (expected counts)", clean)]
    for title, params in _stem_panels():
        distorted, _, _ = simulate_pair(config=dataclasses.replace(stem_base, stem=params),
                                        rng=seed)
        stem_row.append((title, distorted))
    rows.append(("S(T)EM", stem_row))
    _, tem_clean, _ = simulate_pair(config=tem_base, rng=seed)
    tem_row = [("clean ⊗ camera MTF", tem_clean)]
    for title, params in _tem_panels():
        distorted, _, _ = simulate_pair(config=dataclasses.replace(tem_base, tem=params),
                                        rng=seed)
        tem_row.append((title, distorted))
    rows.append(("TEM", tem_row))
    post_row = []
    for title, params in _post_panels():
        distorted, target, _ = simulate_pair(
            config=dataclasses.replace(stem_base, post=params,
                                       stem=_stem_panels()[0][1]), rng=seed)
        post_row.append((title + ": input", distorted))
        post_row.append((title + ": target", target))
    rows.append(("post-processing", post_row))
    random_row = []
    for i, (modality, resolution) in enumerate(
            [("stem", "hr"), ("stem", "hr"), ("tem", "hr"), ("sem", "hr"),
             ("stem", "lr"), ("tem", "lr"), ("sem", "lr")]):
        distorted, _, labels = simulate_pair(modality, resolution, size, rng=seed + 100 + i)
        kind = labels["params"].get("specimen_kind", "low-res objects")
        random_row.append((f"random {modality.upper()}-{resolution.upper()}: {kind}", distorted))
    rows.append(("random draws", random_row))
    return rows


def draw_gallery(path: str | Path, seed: int = 3, size: tuple[int, int] = (192, 192),
                 columns: int = 7) -> Path:
    """Write the gallery PNG to ``path`` (atomically) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = gallery_panels(seed, size)
    n_lines = sum(-(-len(panels) // columns) for _, panels in rows)
    fig, axes = plt.subplots(n_lines, columns, figsize=(2.2 * columns, 2.4 * n_lines),
                             squeeze=False)
    line = 0
    for row_title, panels in rows:
        for i, (title, image) in enumerate(panels):
            ax = axes[line + i // columns, i % columns]
            lo, hi = np.percentile(image, [0.5, 99.5])
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
            ax.set_title(f"{row_title}\n{title}" if i == 0 else title, fontsize=7)
        used = len(panels)
        n = -(-used // columns) * columns
        for i in range(used, n):
            axes[line + i // columns, i % columns].set_visible(False)
        line += -(-used // columns)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"emrestore simulator: each distortion on its own (seed {seed})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
