"""The quantitative benchmark protocol: the same localisation and quantification after every
restoration, scored against the truth (Gambini et al. 2023; Lobato et al. 2023; Yan 2024).

Test set
--------
HR-STEM images from the simulator with fixed seeds (:func:`build_scenes`). A *scene* is one
specimen (a named crystal on a zone axis, fixed thickness, fixed pixel size, one probe and one
scan distortion) recorded at every dose of the series: the simulator draws the specimen from its
own random stream, so only the dose and the noise change along the dose axis, as in the paper's
strain-error study. Each image comes with its infinite-dose reference (the simulator's expected
image, in the same detector units) and the true column positions and scattering cross-sections.

- **Dose series**: the materials (default SrTiO3 [001], Si [110], Pt [001]) at 200-10 000 e⁻/Å²,
  HAADF (10-15 % of the beam on the detector), the sampler's detector and scan distortions with
  their default probabilities, scan-jitter innovation σ ≤ 0.3 Å, no drift and no post-processing.
- **Thickness series** (Lobato et al. 2023, Fig. 3): a perfect Pt [001] crystal at 2-40 nm and one
  dose, recorded with pure Poisson noise on a counting detector and no scan distortion, so that
  the Cramér-Rao lower bound is the limit a raw-image fit can reach. The column intensity grows
  linearly with thickness (the detector's share of the beam is scaled from 10-15 % at the dose
  series' 20 nm); a real HAADF signal grows more slowly in thick crystals (channelling).
- **Multislice series** (issue 7, the sim-to-sim gap): the shipped multislice reference cells of
  the ``"test"`` split (:mod:`emrestore.simulate.multislice_set`: abTEM HAADF scans of periodic
  crystals) at a random in-plane rotation and shift, recorded at every dose of the dose series
  through the dose series' contrast, detector and scan chain. Its **twin**
  (``"multislice-twin"``) draws from the same seeds: the same cell, rotation, shift, dose, noise
  and distortions, with the signal rendered by the fast linear model (the simulator's own, with
  the atom-profile ranges of the multislice calibration that the training libraries use)
  through the same probe. Only the image formation differs (channelling and thermal diffuse
  scattering against the linear model), so multislice − twin is the gap between the two
  simulators. Both are scored against the same true columns, chosen from the labels alone (enough
  atoms, and visible beside the neighbours in HAADF: not the O columns of SrTiO3, which a
  detection may find or miss without penalty) and carry no SCS truth: multislice has no
  per-column additive intensity.
  Skipped, with a note in the report, when no reference-cell file is available.

Workflows
---------
A workflow is a name and a function ``image -> image`` (``None`` for the raw image): the classic
filters of :mod:`emrestore.evaluate.baselines`, every shipped network (``emrestore.restore``) and
any user function given as ``module:function`` or ``path/to/file.py:function`` (it receives a
float32 2-D array and must return one of the same shape).

Metrics (per workflow and image, then averaged per dose)
--------------------------------------------------------
- PSNR and SSIM against the infinite-dose image (its own data range);
- columns: :func:`emrestore.atoms.detect.find_candidates` then
  :func:`emrestore.atoms.refine.refine_columns` with their automatic defaults (the converged
  columns), the same for every workflow and for the infinite-dose image; matched one-to-one to
  the true columns within 0.25 × the nearest-neighbour distance: F1, Jaccard, Chamfer distance
  (pm) and the position RMSE (pm, radial);
- strain error along ``a`` and ``b``: for every pair of true columns one lattice translation
  apart (:func:`emrestore.atoms.lattice.lattice_vectors` of the brightest true columns, e.g.
  Sr-Sr, Ti-Ti and O-O in SrTiO3 [001]) whose columns were both found, the distance between the
  found positions; the standard deviation of these distances over the reference (true)
  distance, in % (left out when fewer than a quarter of the pairs were found);
- SCS mean absolute percentage error of the matched columns against the true SCS. A Gaussian fit
  captures a fixed share of a column's intensity (the probe's tails go to the background), so one
  scale factor per scene, measured on the infinite-dose image, is applied to every workflow's SCS;
  the infinite-dose row shows what remains (column-to-column model mismatch);
- the CRLB (pm, radial, RMS over the matched columns): the Poisson limit for a Gaussian column
  with the counts, width and background fitted on the infinite-dose image, at the image's dose.

Truth columns are the crystal's columns: at least a quarter of the atoms of the fullest columns
(displaced defect atoms form small columns of their own) and at least 2 % of the brightest
columns' SCS (the pure-oxygen columns of SrTiO3 [001] carry 4-15 % of a Sr column's, and the
noise-free image shows them), farther than ``border_px`` from the edge.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError

__all__ = [
    "BUILTIN_WORKFLOWS",
    "MULTISLICE_SERIES",
    "BenchmarkConfig",
    "BenchmarkResult",
    "Scene",
    "TestImage",
    "Workflow",
    "aggregate",
    "build_scenes",
    "evaluate_scene",
    "load_user_images",
    "localise",
    "multislice_status",
    "parse_material",
    "resolve_workflows",
    "run_benchmark",
    "sampler_config",
    "score_positions",
    "simulate_scene",
    "truth_columns",
    "tune_gaussian",
]

BUILTIN_WORKFLOWS = ("raw", "gaussian", "median", "wiener", "nlm", "bm3d")
#: zone axis used when a material is named without one
DEFAULT_ZONES = {"Si": (1, 1, 0), "GaAs": (1, 1, 0), "InAs": (1, 1, 0), "Ge": (1, 1, 0)}
REFERENCE = "infinite-dose"
#: the multislice test set and its linear-model twin (same seeds, same truth)
MULTISLICE_SERIES = ("multislice", "multislice-twin")
_MULTISLICE_MODEL = {"multislice": "multislice", "multislice-twin": "linear"}
#: index of each series' stream in the Gaussian tuning seeds (bench.seed, 2, index, k); the twin
#: shares the multislice stream, so its tuning images are the twins of the multislice ones
_TUNING_STREAM = {"dose": 0, "thickness": 1, "multislice": 2, "multislice-twin": 2}
METRICS = ("psnr_db", "ssim", "f1", "jaccard", "chamfer_pm", "rmse_pm", "crlb_pm",
           "strain_a_pct", "strain_b_pct", "scs_mape_pct", "n_truth", "n_found", "n_matched",
           "seconds")


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
def parse_material(text: str) -> tuple[str, tuple[int, int, int]]:
    """``"SrTiO3[001]"``, ``"Si:110"``, ``"Pt 1 1 1"`` or ``"Au"`` → (name, zone axis)."""
    from ..simulate.materials import canonical_name

    s = str(text).strip()
    m = re.fullmatch(r"([^\[\]:\s]+)\s*(?:\[\s*([-\d\s,]+)\]|:\s*([-\d\s,]+)|\s+([-\d\s,]+))?", s)
    if not m:
        raise InputError(f"cannot read the material {text!r}: write it as NAME[uvw], e.g. "
                         "SrTiO3[001] or Si[110]")
    name = canonical_name(m.group(1))
    digits = next((g for g in m.groups()[1:] if g), None)
    if digits is None:
        return name, DEFAULT_ZONES.get(name, (0, 0, 1))
    parts = [p for p in re.split(r"[\s,]+", digits.strip()) if p]
    if len(parts) == 1 and re.fullmatch(r"\d{3}", parts[0]):
        parts = list(parts[0])
    try:
        zone = tuple(int(p) for p in parts)
    except ValueError as exc:
        raise InputError(f"cannot read the zone axis of {text!r}") from exc
    if len(zone) != 3 or not any(zone):
        raise InputError(f"the zone axis of {text!r} must be three integers, not all 0")
    return name, zone  # type: ignore[return-value]


def material_label(name: str, zone: Sequence[int]) -> str:
    return f"{name} [{''.join(str(int(v)) for v in zone)}]"


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything that defines the simulated test set; the defaults are the full benchmark.

    Attributes
    ----------
    materials : named crystals with zone axes (see :func:`parse_material`).
    doses_e_per_A2 : area doses of the dose series, e⁻/Å².
    images_per_dose : scenes per material (each recorded at every dose; one scene holds 150-350
        columns).
    size_px : image side in pixels.
    pixel_size_A : Å per pixel.
    thickness_A : specimen thickness of the dose series, Å.
    thicknesses_A : thickness series, Å (empty: no thickness study).
    thickness_material : crystal of the thickness series.
    thickness_dose_e_per_A2 : dose of the thickness series, e⁻/Å².
    thickness_images : scenes per thickness.
    detector_fraction : share of the beam on the detector at the brightest pixel (HAADF).
    max_jitter_A : largest scan-jitter innovation σ, Å.
    mistilt_std_deg : crystal mistilt spread, degrees.
    border_px : columns closer to the edge are not scored.
    showcase_dose_e_per_A2 : dose of the images shown in the figures (nearest in the series).
    seed : base seed; test, tuning, thickness and multislice scenes draw from separate streams
        of it.
    multislice_images : scenes of the multislice series (and as many of its linear twin), each
        recorded at every dose of the dose series; 0 switches both series off. Each scene draws
        one test cell and one set of atom profiles for its twin, so the gap of a single scene
        swings by a dB or more: 3 scenes (all SrTiO3 [001]) gave stem-hr +1.1 to +1.6 dB, 12
        scenes of 9 cells +0.6 to +0.9 dB (2026-11-22).
    multislice_cells : reference-cell file (``.npz``) of the multislice series; None: the file
        shipped with emrestore (the series are skipped, with a note, while it is absent).
    """

    materials: tuple[str, ...] = ("SrTiO3[001]", "Si[110]", "Pt[001]")
    doses_e_per_A2: tuple[float, ...] = (200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0)
    images_per_dose: int = 1
    size_px: int = 256
    pixel_size_A: float = 0.15
    thickness_A: float = 200.0
    thicknesses_A: tuple[float, ...] = (20.0, 50.0, 100.0, 200.0, 400.0)
    thickness_material: str = "Pt[001]"
    thickness_dose_e_per_A2: float = 1000.0
    thickness_images: int = 2
    detector_fraction: tuple[float, float] = (0.10, 0.15)
    max_jitter_A: float = 0.3
    mistilt_std_deg: float = 0.2
    border_px: int = 6
    showcase_dose_e_per_A2: float = 1000.0
    seed: int = 2025
    multislice_images: int = 12
    multislice_cells: str | None = None

    def __post_init__(self):
        if not self.materials:
            raise ConfigError("materials: give at least one material")
        for m in (*self.materials, self.thickness_material):
            parse_material(m)
        if not self.doses_e_per_A2 or min(self.doses_e_per_A2) <= 0:
            raise ConfigError("doses_e_per_A2: give at least one dose, all > 0 e⁻/Å²")
        if any(t <= 0 for t in self.thicknesses_A) or self.thickness_A <= 0:
            raise ConfigError("thicknesses must be > 0 Å")
        if self.images_per_dose < 1 or self.thickness_images < 1:
            raise ConfigError("images_per_dose and thickness_images must be >= 1")
        if self.size_px < 48:
            raise ConfigError(f"size_px must be at least 48, got {self.size_px}")
        if not self.pixel_size_A > 0:
            raise ConfigError("pixel_size_A must be > 0")
        if not 0 < self.detector_fraction[0] <= self.detector_fraction[1] <= 1:
            raise ConfigError("detector_fraction must be (low, high) within (0, 1]")
        if self.max_jitter_A < 0:
            raise ConfigError("max_jitter_A must be >= 0")
        if self.multislice_images < 0:
            raise ConfigError("multislice_images must be >= 0 (0 switches the multislice "
                              "series off)")

    @classmethod
    def quick(cls, **overrides) -> BenchmarkConfig:
        """A few minutes on two CPU cores: one material, three doses, three thicknesses, one
        multislice scene (and its twin)."""
        base = dict(materials=("SrTiO3[001]",), doses_e_per_A2=(500.0, 2000.0, 10000.0),
                    images_per_dose=1, thicknesses_A=(20.0, 100.0, 400.0), thickness_images=1,
                    multislice_images=1)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------
# simulated test set
# ------------------------------------------------------------------------------------------------
def _no_postprocessing():
    from ..simulate.postprocess import PostprocessParams

    # display export, annotations, crops and affine resampling happen to a saved figure, not to
    # the recorded frame: the benchmark scores the detector and scan chain
    return PostprocessParams(affine_probability=0.0, blur_probability=0.0,
                             display_probability=0.0, crop_probability=0.0,
                             annotation_probability=0.0)


def sampler_config(material: str, zone: Sequence[int], dose_e_per_A2: float, thickness_A: float,
                   bench: BenchmarkConfig, *, ideal: bool = False,
                   multislice_model: str | None = None):
    """The :class:`~emrestore.simulate.sampler.SamplerConfig` of one benchmark image.

    ``ideal``: a perfect crystal (no defects, no support, no added background) recorded with
    pure Poisson noise on a counting detector and no scan distortion (the CRLB setting). The
    simulator scales each image to its brightest pixel, so here the detector's share of the beam
    is scaled by ``thickness_A / bench.thickness_A`` instead: the column intensity grows linearly
    with the number of atoms, as in the simulator's (incoherent, linear) image model.
    Otherwise the sampler's detector and scan distortions with their default probabilities, the
    jitter innovation capped at ``bench.max_jitter_A`` and no drift (a drift moves every column by
    up to several pixels, which a position RMSE against the undrifted truth would read as error).
    Both: a well-tuned aberration-corrected probe (200-300 kV, 20-30 mrad, no residual
    aberrations) and linear HAADF contrast.

    ``multislice_model`` (``"multislice"`` or ``"linear"``, with ``ideal=False``): every frame's
    signal is a ``"test"`` reference cell of ``bench.multislice_cells`` (the packaged file when
    None) rendered by that model, with the cell's own probe and thickness; the material,
    thickness and probe settings above then do not apply, the rest of the chain does. The
    linear twin draws its atom profiles from the calibrated ranges
    (``simulate.profiles.MULTISLICE_CALIBRATED_PROFILES``), as the training libraries do.
    """
    from ..simulate.dose import DoseParams
    from ..simulate.sampler import SamplerConfig, aligned_crystal

    d, t, p = float(dose_e_per_A2), float(thickness_A), float(bench.pixel_size_A)
    fraction = tuple(float(f) for f in bench.detector_fraction)
    if ideal:
        # the sampler scales every image to its brightest pixel; the renderer's intensities grow
        # linearly with the atoms in a column, so the detector's share grows with thickness
        k = t / float(bench.thickness_A)
        fraction = (min(fraction[0] * k, 1.0), min(fraction[1] * k, 1.0))
    config = SamplerConfig(modality="stem", resolution="hr", size=(bench.size_px, bench.size_px),
                           hr_pixel_size_A=(p, p), specimen_thickness_A=(t, t),
                           detector_fraction=fraction,
                           hr_dose=DoseParams(dose_e_per_A2=(d, d)),
                           super_resolution_label=False)
    config = aligned_crystal(config, material, tuple(zone), mistilt_std_deg=bench.mistilt_std_deg)
    probe = dataclasses.replace(config.probe, voltage_kV_choices=(200.0, 300.0),
                                corrected_probability=1.0, residual_probability=0.0,
                                convergence_mrad=(20.0, 30.0), defocus_A=(-10.0, 10.0),
                                c3_um=(-2.0, 2.0), c5_mm=(-1.0, 1.0), source_fwhm_A=(0.3, 0.6))
    stem = config.stem
    contrast = dataclasses.replace(config.contrast, invert_probability=0.0, power_probability=0.0)
    specimen = config.specimen
    if ideal:
        probs = {f.name: 0.0 for f in dataclasses.fields(stem) if f.name.endswith("_probability")}
        probs["counting_probability"] = 1.0
        stem = dataclasses.replace(stem, **probs)
        contrast = dataclasses.replace(contrast, background_probability=0.0,
                                       lowfreq_probability=0.0)
        specimen = dataclasses.replace(specimen, p_support=0.0, p_defects=0.0)
    else:
        lo, hi = stem.jitter_sigma_A
        cap = float(bench.max_jitter_A)
        jitter = (min(lo, cap), min(hi, cap)) if cap > 0 else (0.0, 0.0)
        stem = dataclasses.replace(stem, jitter_sigma_A=jitter, drift_probability=0.0,
                                   jitter_probability=stem.jitter_probability if cap > 0 else 0.0)
    config = dataclasses.replace(config, probe=probe, stem=stem, contrast=contrast,
                                 specimen=specimen, post=_no_postprocessing())
    if multislice_model is not None:
        if ideal:
            raise ConfigError("the multislice series uses the dose series' settings, not ideal")
        config = dataclasses.replace(config, multislice_fraction=1.0, multislice_split="test",
                                     multislice_model=multislice_model,
                                     multislice_cells=bench.multislice_cells)
        if multislice_model == "linear":
            # the twin is the linear model the training data come from: after the calibration
            from ..simulate.profiles import MULTISLICE_CALIBRATED_PROFILES

            config = dataclasses.replace(config, profiles=MULTISLICE_CALIBRATED_PROFILES)
    return config


def _multislice_config(series: str, dose_e_per_A2: float, bench: BenchmarkConfig):
    """The sampler configuration of a multislice-series image (``series`` picks the model)."""
    material, zone = parse_material(bench.materials[0])  # not used: the cell is the specimen
    return sampler_config(material, zone, dose_e_per_A2, bench.thickness_A, bench,
                          multislice_model=_MULTISLICE_MODEL[series])


def multislice_status(bench: BenchmarkConfig) -> str | None:
    """None when the multislice series run; otherwise why not (a note for the report).

    Raises
    ------
    InputError
        ``bench.multislice_cells`` names a file that does not exist, cannot be read or holds no
        ``"test"`` cells (the packaged file missing is a note, not an error).
    """
    from ..simulate.multislice_set import load_reference_cells, packaged_cells_path

    if bench.multislice_images <= 0:
        return "switched off (multislice_images = 0)"
    if bench.multislice_cells is not None:
        path = Path(bench.multislice_cells)
        if not path.is_file():
            raise InputError(f"multislice cells: no file {path} (give the .npz written by "
                             "benchmarks/calibrate_linear_model.py --export-cells, or leave it "
                             "out for the packaged file)")
        load_reference_cells("test", path)  # unreadable or no test cells: InputError
        return None
    path = packaged_cells_path()
    if not path.is_file():
        return (f"skipped: the packaged multislice reference cells ({path.name}) are not "
                "installed; build them with benchmarks/calibrate_linear_model.py --export-cells "
                "or pass a file (--multislice-cells)")
    try:
        load_reference_cells("test", path)
    except InputError as exc:
        return f"skipped: {exc}"
    return None


@dataclass(frozen=True)
class Scene:
    """One specimen recorded at one or more doses (a unit of work)."""

    series: str                      # "dose" | "thickness" | "multislice" | "multislice-twin"
    material: str
    zone: tuple[int, int, int]
    thickness_A: float
    doses_e_per_A2: tuple[float, ...]
    replicate: int
    entropy: tuple[int, ...]
    ideal: bool = False
    showcase_dose_e_per_A2: float | None = None

    @property
    def name(self) -> str:
        if self.series in MULTISLICE_SERIES:  # the cell is drawn by the simulator
            return f"{self.series}-r{self.replicate}"
        zone = "".join(str(v) for v in self.zone)
        return f"{self.series}-{self.material}{zone}-{self.thickness_A / 10:g}nm-r{self.replicate}"


@dataclass
class TestImage:
    """One image to score, with what is known about it.

    ``truth_px``: (N, 2) true column positions (y, x) px; ``truth_scs``: (N,) their SCS in image
    units × Å² (None if unknown); ``reference``: the infinite-dose image (None if unknown);
    ``gain``/``offset``: detector units per electron and offset (None if unknown);
    ``hidden_px``: (M, 2) columns that exist but an image need not show (a detection there is
    neither right nor wrong; None: none).
    """

    __test__ = False  # not a pytest test class

    name: str
    image: np.ndarray
    pixel_size_A: float
    truth_px: np.ndarray
    reference: np.ndarray | None = None
    truth_scs: np.ndarray | None = None
    truth_species: np.ndarray | None = None
    dose_e_per_A2: float = float("nan")
    thickness_A: float = float("nan")
    material: str = ""
    series: str = "user"
    replicate: int = 0
    gain: float | None = None
    offset: float | None = None
    hidden_px: np.ndarray | None = None


def build_scenes(bench: BenchmarkConfig) -> list[Scene]:
    """The fixed-seed scenes of the dose, thickness and multislice series, in a fixed order.

    The multislice scenes (each followed by its twin, drawn from the same seeds) are left out
    when :func:`multislice_status` says why; it raises for a given cell file that is missing.
    """
    scenes = []
    showcase = _nearest(bench.doses_e_per_A2, bench.showcase_dose_e_per_A2)
    for m_index, text in enumerate(bench.materials):
        name, zone = parse_material(text)
        for r in range(bench.images_per_dose):
            scenes.append(Scene("dose", name, zone, float(bench.thickness_A),
                                tuple(float(d) for d in bench.doses_e_per_A2), r,
                                (bench.seed, 0, m_index, r), False,
                                showcase if r == 0 else None))
    name, zone = parse_material(bench.thickness_material)
    for t in bench.thicknesses_A:  # one specimen seed for all thicknesses
        for r in range(bench.thickness_images):
            scenes.append(Scene("thickness", name, zone, float(t),
                                (float(bench.thickness_dose_e_per_A2),), r,
                                (bench.seed, 1, r), True))
    if multislice_status(bench) is None:
        doses = tuple(float(d) for d in bench.doses_e_per_A2)
        for r in range(bench.multislice_images):
            for series in MULTISLICE_SERIES:  # the twin: the same entropy, the linear model
                scenes.append(Scene(series, "reference-cell", (0, 0, 0), float("nan"), doses, r,
                                    (bench.seed, 3, r), False, showcase if r == 0 else None))
    return scenes


def _nearest(values: Sequence[float], target: float) -> float:
    vals = np.asarray(values, dtype=float)
    return float(vals[np.argmin(np.abs(np.log(vals) - math.log(target)))])


def truth_columns(labels: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions (N, 2) px, SCS (N,) image units × Å², species (N,)) of the visible columns."""
    cols = labels["columns"]
    pos = np.asarray(cols["position_px"], dtype=float).reshape(-1, 2)
    if len(pos) == 0:
        return pos, np.zeros(0), np.zeros(0, int)
    count = np.asarray(cols["atom_count"], dtype=float)
    scs = np.asarray(cols["scs"], dtype=float)
    keep = count >= 0.25 * np.percentile(count, 99)
    if np.isfinite(scs).any():
        keep &= np.nan_to_num(scs, nan=0.0) >= 0.02 * np.nanpercentile(scs, 99)
    return pos[keep], scs[keep], np.asarray(cols["species"])[keep]


def simulate_scene(scene: Scene, bench: BenchmarkConfig) -> list[TestImage]:
    """Simulate every dose of a scene (the same specimen, probe and scan geometry)."""
    from ..simulate.sampler import simulate_pair

    multislice = scene.series in MULTISLICE_SERIES
    items = []
    for dose in scene.doses_e_per_A2:
        if multislice:
            config = _multislice_config(scene.series, dose, bench)
        else:
            config = sampler_config(scene.material, scene.zone, dose, scene.thickness_A, bench,
                                    ideal=scene.ideal)
        rng = np.random.default_rng(np.random.SeedSequence(list(scene.entropy)))
        distorted, clean, labels = simulate_pair(config=config, rng=rng)
        name, thickness = f"{scene.name}-{dose:g}", scene.thickness_A
        material = material_label(scene.material, scene.zone) if not multislice else ""
        if multislice:
            # the same columns for the multislice image and its twin; no SCS truth in either
            pos, species, hidden = _visible_truth(labels)
            scs = np.full(len(pos), np.nan)
            cell = labels["params"]["reference_cell"]
            # "SrTiO3[001]+vacancies" -> "SrTiO3 [001]+vacancies", as the other series write it
            material = re.sub(r"\s*\[", " [", str(cell["cell"]), count=1)
            thickness = float(cell["thickness_A"])
            slug = re.sub(r"[^\w+\-\[\]]", "", material)
            name = (f"{scene.series}-{slug}-{thickness / 10:g}nm-r{scene.replicate}"
                    f"-{dose:g}")
        else:
            pos, scs, species = truth_columns(labels)
            hidden = None
        det = labels["params"]["detector"]
        analog = det.get("detector") != "counting"
        items.append(TestImage(
            name=name, image=distorted, reference=clean,
            pixel_size_A=float(labels["pixel_size_A"]), truth_px=pos, truth_scs=scs,
            truth_species=species, dose_e_per_A2=float(dose), thickness_A=thickness,
            material=material, series=scene.series,
            replicate=scene.replicate,
            gain=float(det["adc_gain_adu_per_e"]) if analog else 1.0,
            offset=float(det["adc_offset_adu"]) if analog else 0.0, hidden_px=hidden))
    return items


def _visible_truth(labels: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth positions, species, hidden positions) from the column labels alone: a column is
    truth when it has enough atoms and HAADF shows it beside its neighbours
    (``simulate.labels.visible_columns``: ∝ atom count × Z^1.7, at least 0.2 of the strongest
    column within 2 Å). The others, such as the O columns of SrTiO3, which multislice HAADF does
    not show and a linear twin with γ ≤ 2 does, are hidden: neither right nor wrong."""
    from ..simulate.labels import visible_columns

    cols = labels["columns"]
    pos = np.asarray(cols["position_px"], dtype=float).reshape(-1, 2)
    species = np.asarray(cols["species"])
    if len(pos) == 0:
        return pos, species, pos
    count = np.asarray(cols["atom_count"], dtype=float)
    keep = (count >= 0.25 * np.percentile(count, 99)) & visible_columns(
        pos, species, count, float(labels["pixel_size_A"]))
    return pos[keep], species[keep], pos[~keep]


# ------------------------------------------------------------------------------------------------
# user image sets
# ------------------------------------------------------------------------------------------------
_IMAGE_SUFFIXES = (".npy", ".npz", ".tif", ".tiff", ".dm3", ".dm4", ".emd", ".mrc", ".png")


def _read_positions_csv(path: Path) -> dict[str, np.ndarray]:
    import csv

    with open(path, newline="") as fh:
        rows = list(csv.reader(row for row in fh if not row.lstrip().startswith("#")))
    if not rows:
        raise InputError(f"{path}: empty position file (expected a header with y_px, x_px)")
    header = [h.strip().lower() for h in rows[0]]
    if "y_px" not in header or "x_px" not in header:
        raise InputError(f"{path}: the header must name the columns y_px and x_px "
                         f"(got {', '.join(rows[0])})")
    out: dict[str, list] = {h: [] for h in header}
    for k, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InputError(f"{path}, line {k}: {len(row)} values for {len(header)} columns")
        for h, cell in zip(header, row):
            out[h].append(cell.strip())
    result = {}
    for h, vals in out.items():
        try:
            result[h] = np.array([float(v) for v in vals])
        except ValueError:
            if h in ("y_px", "x_px", "scs"):
                raise InputError(f"{path}: column {h} holds non-numeric values") from None
            result[h] = np.array(vals)
    return result


def load_user_images(folder, *, pixel_size_A: float | None = None) -> list[TestImage]:
    """Read a user image set: every image file with a sidecar CSV of true positions.

    For ``name.tif`` (or ``.npy``, ``.npz``, ``.dm4``, ...):

    - ``name.csv`` (required): header with ``y_px`` and ``x_px`` (pixel centres at integers,
      (row, col) order); optional ``scs`` (true SCS in image units × Å²) and ``species``;
    - ``name.reference.npy`` / ``.tif`` / ... (optional): a noise-free or high-dose reference of the
      same field, in the same units: it enables PSNR, SSIM and the reference row;
    - ``name.json`` (optional): ``dose_e_per_A2``, ``pixel_size_A``, ``gain`` (units per electron)
      and ``offset`` of the detector.

    The pixel size comes from the JSON, then the file's calibration, then ``pixel_size_A``.
    """
    from ..io import read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--images: {folder} is not a folder")
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in _IMAGE_SUFFIXES and ".reference" not in p.name)
    items = []
    for path in files:
        stem = path.with_suffix("")
        csv_path = stem.with_suffix(".csv")
        if not csv_path.exists():
            raise InputError(f"{path.name} has no position file {csv_path.name} "
                             "(columns y_px, x_px)")
        image, file_pixel = read_image(path)
        meta = {}
        json_path = stem.with_suffix(".json")
        if json_path.exists():
            try:
                meta = json.loads(json_path.read_text())
            except json.JSONDecodeError as exc:
                raise InputError(f"{json_path}: not valid JSON ({exc})") from exc
        pixel = meta.get("pixel_size_A") or file_pixel or pixel_size_A
        if pixel is None:
            raise InputError(f"{path.name}: the pixel size is unknown; put it in {json_path.name} "
                             "(pixel_size_A) or pass --pixel-size")
        table = _read_positions_csv(csv_path)
        truth = np.column_stack([table["y_px"], table["x_px"]])
        reference = None
        refs = [p for p in folder.iterdir() if p.name.startswith(stem.name + ".reference.")]
        if refs:
            reference, _ = read_image(refs[0])
            if reference.shape != image.shape:
                raise InputError(f"{refs[0].name}: shape {reference.shape} differs from "
                                 f"{path.name}'s {image.shape}")
        items.append(TestImage(
            name=stem.name, image=image, pixel_size_A=float(pixel), truth_px=truth,
            reference=reference, truth_scs=table.get("scs"),
            truth_species=table.get("species"),
            dose_e_per_A2=float(meta.get("dose_e_per_A2", float("nan"))),
            material=str(meta.get("material", "")), series="user",
            gain=meta.get("gain"), offset=meta.get("offset")))
    if not items:
        raise InputError(f"--images: no image files ({', '.join(_IMAGE_SUFFIXES)}) in {folder}")
    return items


# ------------------------------------------------------------------------------------------------
# workflows
# ------------------------------------------------------------------------------------------------
@dataclass
class Workflow:
    """A named restoration ``function(image, item) -> image`` (``None``: the raw image)."""

    name: str
    function: Callable[[np.ndarray, TestImage], np.ndarray] | None
    description: str = ""

    def apply(self, image: np.ndarray, item: TestImage) -> np.ndarray:
        if self.function is None:
            return image
        out = self.function(np.asarray(image, dtype=np.float32), item)
        return _check_output(out, image.shape, self.name)


def _check_output(out, shape, name) -> np.ndarray:
    try:
        arr = np.asarray(out)
    except Exception as exc:  # any failure to convert is the user function's
        raise InputError(f"workflow {name!r} returned something that is not an array: {exc}") \
            from exc
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"workflow {name!r} must return a numeric array, got dtype {arr.dtype}")
    arr = np.squeeze(arr) if arr.ndim > 2 else arr
    if arr.shape != tuple(shape):
        raise InputError(f"workflow {name!r} returned shape {arr.shape}; it must return an "
                         f"image of the input's shape {tuple(shape)}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"workflow {name!r} returned NaN or infinite values")
    return arr.astype(np.float32, copy=False)


def _load_plugin(spec: str) -> Callable:
    target, _, func_name = spec.rpartition(":")
    if not target or not func_name:
        raise InputError(f"workflow {spec!r}: write a user workflow as module:function or "
                         "path/to/file.py:function")
    if target.endswith(".py"):
        path = Path(target)
        if not path.exists():
            raise InputError(f"workflow {spec!r}: no file {path}")
        mod_name = f"_emrestore_plugin_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(mod_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise InputError(f"workflow {spec!r}: cannot load {path} as Python")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[mod_name]
                raise InputError(f"workflow {spec!r}: importing {path} failed: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise InputError(f"workflow {spec!r}: cannot import module {target!r} ({exc}); "
                             "is it on PYTHONPATH?") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise InputError(f"workflow {spec!r}: {target} has no function {func_name!r}")
    return func


def _shipped_models() -> list[str]:
    try:
        from ..nn.zoo import list_models
    except ImportError:  # the nn extra (torch) is not installed
        return []
    return [card["name"] for card in list_models(task="restore")]


def tune_gaussian(bench: BenchmarkConfig, scenes: Sequence[Scene]) -> dict[str, Any]:
    """Gaussian widths (Å) with the best mean PSNR on a separate tuning set.

    One tuning image per material and dose (for the thickness series: per dose, at the middle
    thickness; for each multislice series: per dose, a cell drawn like the test scenes'), drawn
    from seeds that no test image uses (the twin's from the multislice series' seeds, so its
    tuning images are their twins). Returns ``{"dose": {dose: σ_A}, "thickness": {dose: σ_A},
    "multislice": ..., "multislice-twin": ... (when those series run), "scores": ...}``.
    """
    from ..simulate.sampler import simulate_pair
    from .baselines import tune_gaussian_sigma

    out: dict[str, Any] = {"dose": {}, "thickness": {}, "scores": {}}
    jobs: dict[tuple[str, float], list] = {}
    for scene in scenes:
        for dose in scene.doses_e_per_A2:
            jobs.setdefault((scene.series, dose), [])
            key = (scene.series, scene.material, scene.zone, dose)
            if key not in jobs[(scene.series, dose)]:
                jobs[(scene.series, dose)].append(key)
    middle_t = (float(np.median(bench.thicknesses_A)) if bench.thicknesses_A
                else bench.thickness_A)
    for (series, dose), keys in jobs.items():
        pairs = []
        for k, (_, material, zone, _) in enumerate(keys):
            if series in MULTISLICE_SERIES:
                config = _multislice_config(series, dose, bench)
            else:
                t = middle_t if series == "thickness" else bench.thickness_A
                config = sampler_config(material, zone, dose, t, bench,
                                        ideal=series == "thickness")
            stream = _TUNING_STREAM[series]
            rng = np.random.default_rng(np.random.SeedSequence([bench.seed, 2, stream, k]))
            x, clean, _ = simulate_pair(config=config, rng=rng)
            pairs.append((x, clean))
        sigma_px, scores = tune_gaussian_sigma(pairs)
        out.setdefault(series, {})[float(dose)] = sigma_px * bench.pixel_size_A
        out["scores"][f"{series}@{dose:g}"] = scores
    return out


def _gaussian_sigma_A(tuning: dict, item: TestImage) -> float:
    # each simulated series has its own widths; user images take the dose series'
    table = tuning.get(item.series) or tuning.get("dose") or {}
    if not table:
        raise InputError("the gaussian workflow needs tuned widths (run tune_gaussian first)")
    doses = sorted(table)
    dose = item.dose_e_per_A2
    if not np.isfinite(dose):
        dose = float(np.exp(np.mean(np.log(doses))))
    return float(table[_nearest(doses, dose)])


def resolve_workflows(names: Sequence[str], *, tuning: dict | None = None
                      ) -> tuple[list[Workflow], list[tuple[str, str]]]:
    """Workflows for the given names, and ``(name, reason)`` for those skipped.

    Names: ``raw``, ``gaussian`` (needs ``tuning`` from :func:`tune_gaussian`), ``median``,
    ``wiener``, ``nlm``, ``bm3d`` (skipped when the ``bm3d`` package is missing), a shipped model
    name (skipped when not shipped), or ``module:function`` / ``file.py:function``.

    Raises
    ------
    InputError
        A user workflow that cannot be imported, or a repeated name.
    """
    from . import baselines

    workflows: list[Workflow] = []
    skipped: list[tuple[str, str]] = []
    seen = set()
    shipped = None
    for raw_name in names:
        name = str(raw_name).strip()
        if not name:
            continue
        if name in seen or name == REFERENCE:
            raise InputError(f"workflow {name!r} is given twice (or is the reserved name)")
        seen.add(name)
        if name == "raw":
            workflows.append(Workflow("raw", None, "the recorded image, no restoration"))
        elif name == "gaussian":
            if tuning is None:
                raise InputError("the gaussian workflow needs tuned widths (tuning=...)")
            tun = tuning

            def _gauss(x, item, tun=tun):
                return baselines.gaussian_filter(x, _gaussian_sigma_A(tun, item)
                                                 / item.pixel_size_A)

            workflows.append(Workflow("gaussian", _gauss, "Gaussian filter, σ tuned per dose "
                                      "on a separate tuning set (best PSNR)"))
        elif name == "median":
            workflows.append(Workflow("median", lambda x, item: baselines.median_filter(x, 3),
                                      "3×3 median filter"))
        elif name == "wiener":
            workflows.append(Workflow("wiener", lambda x, item: baselines.wiener_filter(x, 5),
                                      "5×5 local Wiener filter, noise from the image"))
        elif name == "nlm":
            workflows.append(Workflow("nlm", lambda x, item: baselines.nlm_filter(x),
                                      "non-local means, noise from the image"))
        elif name == "bm3d":
            if not baselines.bm3d_available():
                skipped.append(("bm3d", "the optional package 'bm3d' is not installed "
                                "(pip install bm3d)"))
                continue
            workflows.append(Workflow(
                "bm3d", lambda x, item: baselines.bm3d_filter(x, gain=item.gain,
                                                              offset=item.offset),
                "BM3D on the Anscombe-transformed counts, exact unbiased inverse "
                "(detector gain and offset: the calibration when known, else estimated)"))
        elif ":" in name:
            func = _load_plugin(name)

            def _plugin(x, item, func=func):
                return func(x)

            workflows.append(Workflow(name, _plugin, f"user function {name}"))
        else:
            if shipped is None:
                shipped = _shipped_models()
            if name not in shipped:
                skipped.append((name, f"no shipped model named {name!r} (shipped: "
                                f"{', '.join(shipped) or 'none yet'}; built-in workflows: "
                                f"{', '.join(BUILTIN_WORKFLOWS)}; or module:function)"))
                continue

            def _model(x, item, model=name):
                from ..restore import restore

                return restore(x, model=model)

            workflows.append(Workflow(name, _model, f"shipped network {name} (emrestore.restore)"))
    return workflows, skipped


def default_workflow_names(*, bm3d: bool = True) -> list[str]:
    """raw, the classic filters (bm3d optional) and every shipped model."""
    names = [w for w in BUILTIN_WORKFLOWS if bm3d or w != "bm3d"]
    return names + [m for m in _shipped_models() if m not in names]


# ------------------------------------------------------------------------------------------------
# localisation and scoring
# ------------------------------------------------------------------------------------------------
@dataclass
class Localisation:
    positions_px: np.ndarray          # (N, 2) converged columns
    scs_px2: np.ndarray               # (N,) image units × px²
    width_px: np.ndarray              # (N,)
    background: np.ndarray            # (N,) image units
    note: str = ""


def localise(image, pixel_size_A: float | None = None, *, border_px: int = 4,
             split_merged: bool = False) -> Localisation:
    """The one localisation every workflow gets: automatic candidates, joint Gaussian fit.

    :func:`~emrestore.atoms.detect.find_candidates` (local maxima, automatic spacing, width and
    threshold) then :func:`~emrestore.atoms.refine.refine_columns` (automatic noise model, one
    shared width); the converged columns are kept. Elongated candidates are not tested for being
    two columns (``split_merged``): every column of the simulated test set is resolved at its
    sampling, and on noisy images the test costs more than the whole fit. An image in which no
    column can be fitted gives an empty result (and a note) rather than an error.
    """
    from ..atoms.detect import find_candidates
    from ..atoms.refine import refine_columns

    empty = Localisation(np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros(0))
    try:
        # flat smoothed backgrounds give 0/0 in the candidate ranking, and a fit that runs away
        # on a noise peak overflows before refine_columns flags it as not converged: silenced
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"), \
                warnings.catch_warnings():
            # the automatic noise model says when it falls back to least squares: expected here
            warnings.filterwarnings("ignore", message=".*refitting by least squares")
            cand = find_candidates(image, exclude_border_px=int(border_px))
            if len(cand) == 0:
                empty.note = "no candidate columns"
                return empty
            table = refine_columns(image, cand, pixel_size_A=pixel_size_A,
                                   split_merged=split_merged)
    except InputError as exc:
        empty.note = str(exc)
        return empty
    ok = np.asarray(table.converged, bool) & np.isfinite(table.y_px) & np.isfinite(table.x_px)
    return Localisation(np.column_stack([table.y_px, table.x_px])[ok], table.scs_px2[ok],
                        table.width_px[ok], table.background[ok])


def _nn_spacing(points: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    if len(points) < 2:
        return float("nan")
    d, _ = cKDTree(points).query(points, k=2)
    return float(np.median(d[:, 1]))


def _inside(points: np.ndarray, shape, margin: float) -> np.ndarray:
    h, w = shape
    if len(points) == 0:
        return np.zeros(0, bool)
    return np.all((points >= margin) & (points <= np.array([h - 1, w - 1]) - margin), axis=1)


def score_positions(found_px, truth_px, shape, *, border_px: float = 6.0,
                    radius_px: float | None = None, ignore_px=None) -> dict[str, Any]:
    """Detection and localisation scores of found against true positions (both (N, 2) px).

    Only columns farther than ``border_px`` from the edge count. Columns are matched in a band one
    radius wider, so that a found column just inside the border whose true column lies just
    outside is not a false positive, and a true column just inside found just outside is a hit. The
    matching radius defaults to 0.25 × the true nearest-neighbour distance (Yan 2024). A found
    column left unmatched within the radius of an ``ignore_px`` position (a column that exists
    but need not show) is neither a hit nor a false positive, and is not counted as found.

    Returns a dict with ``precision``, ``recall``, ``f1``, ``jaccard``, ``chamfer_px``,
    ``rmse_px`` (radial), ``n_truth``, ``n_found``, ``n_matched``, ``radius_px`` and the matched
    index arrays ``found_index`` / ``truth_index`` (into the inputs).
    """
    from .metrics import chamfer_distance, match_points

    found = np.asarray(found_px, dtype=float).reshape(-1, 2)
    truth = np.asarray(truth_px, dtype=float).reshape(-1, 2)
    if radius_px is None:
        radius_px = 0.25 * _nn_spacing(truth)
    if not np.isfinite(radius_px) or radius_px <= 0:
        raise InputError("need at least two true columns to set the matching radius")
    # match in a band a little wider than the scored region, so that pairs straddling its edge
    # are neither hits nor errors
    t_near = np.flatnonzero(_inside(truth, shape, border_px - radius_px))
    f_near = np.flatnonzero(_inside(found, shape, border_px - radius_px))
    t_in_mask = _inside(truth, shape, border_px)
    f_in_mask = _inside(found, shape, border_px)
    m = match_points(found[f_near], truth[t_near], radius=radius_px)
    fi_all, ti_all = f_near[m.pred_index], t_near[m.truth_index]
    matched_found = np.zeros(len(found), bool)
    matched_found[fi_all] = True
    hit = t_in_mask[ti_all]
    fi, ti = fi_all[hit], ti_all[hit]
    tp = len(fi)
    ignore = (np.zeros((0, 2)) if ignore_px is None
              else np.asarray(ignore_px, dtype=float).reshape(-1, 2))
    spare = np.flatnonzero(f_in_mask & ~matched_found)
    if len(ignore) and len(spare):
        near = np.linalg.norm(found[spare, None] - ignore[None], axis=2).min(axis=1) <= radius_px
        f_in_mask = f_in_mask.copy()
        f_in_mask[spare[near]] = False
    fp = int(np.sum(f_in_mask & ~matched_found))
    fn = int(t_in_mask.sum()) - tp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    jaccard = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    if tp:
        err = found[fi] - truth[ti]
        rmse = float(np.sqrt(np.mean(np.sum(err * err, axis=1))))
    else:
        rmse = float("nan")
    return {"precision": precision, "recall": recall, "f1": f1, "jaccard": jaccard,
            "chamfer_px": chamfer_distance(found[f_in_mask], truth[t_in_mask]), "rmse_px": rmse,
            "n_truth": int(t_in_mask.sum()), "n_found": int(f_in_mask.sum()), "n_matched": tp,
            "radius_px": float(radius_px), "found_index": fi, "truth_index": ti}


def _lattice_pairs(truth_px: np.ndarray, truth_scs: np.ndarray | None = None
                   ) -> dict[str, np.ndarray] | None:
    """Index pairs (i, j) of true columns one lattice translation apart along +a and +b.

    The translations are those of the brightest columns (SCS ≥ half the 99th percentile, e.g.
    the Sr columns of SrTiO3 [001]): the crystal's lattice. Taken over all columns, the nearest
    neighbours of a perovskite are unlike columns half a cell apart, and every such pair would
    involve a faint oxygen column. Returns None when the columns form no 2D lattice.
    """
    from ..atoms.lattice import lattice_distances, lattice_vectors

    basis_pts = truth_px
    if truth_scs is not None and np.isfinite(truth_scs).sum() >= 3:
        top = np.nan_to_num(truth_scs, nan=0.0) >= 0.5 * np.nanpercentile(truth_scs, 99)
        if top.sum() >= 6:
            basis_pts = truth_px[top]
    try:
        a_vec, b_vec = lattice_vectors(basis_pts)
        dist = lattice_distances(truth_px, a_vec, b_vec)
    except InputError:
        return None
    out = {}
    for axis in ("a", "b"):
        j = dist[f"{axis}_index"]
        i = np.flatnonzero(j >= 0)
        out[axis] = np.column_stack([i, j[i]])
    return out


def _strain_errors(found_px, match: dict, truth_px, pairs, *, min_share: float = 0.25
                   ) -> tuple[float, float]:
    """Strain error (%) along a and b: std of found neighbour distances / mean true distance.

    NaN where fewer than ``min_share`` of the true neighbour pairs (or fewer than 3) were both
    found: the few columns a noisy image still yields are its clearest, and their spread would
    flatter the workflow.
    """
    if pairs is None:
        return float("nan"), float("nan")
    where = np.full(len(truth_px), -1)
    where[match["truth_index"]] = match["found_index"]
    out = []
    for axis in ("a", "b"):
        ij = pairs[axis]
        ref = np.hypot(*(truth_px[ij[:, 1]] - truth_px[ij[:, 0]]).T)
        fi, fj = where[ij[:, 0]], where[ij[:, 1]]
        ok = (fi >= 0) & (fj >= 0)
        if ok.sum() < max(3, min_share * ref.size):
            out.append(float("nan"))
            continue
        d = np.hypot(*(found_px[fj[ok]] - found_px[fi[ok]]).T)
        out.append(float(100.0 * np.std(d, ddof=1) / np.mean(ref)))
    return out[0], out[1]


@dataclass
class _Reference:
    """What the infinite-dose fit tells about a scene."""

    item: TestImage
    loc: Localisation
    match: dict
    scs_scale: float                   # true SCS / fitted SCS (median over matched columns)
    counts: np.ndarray                 # (M,) fitted SCS in electrons at the reference dose
    width_px: np.ndarray               # (M,)
    background_counts: np.ndarray      # (M,) electrons per pixel at the reference dose
    dose: float


def _reference_fit(item: TestImage, border_px: float) -> _Reference | None:
    if item.reference is None:
        return None
    loc = localise(item.reference, item.pixel_size_A, border_px=max(1, int(border_px) - 2))
    match = score_positions(loc.positions_px, item.truth_px, item.image.shape,
                            border_px=border_px, ignore_px=item.hidden_px)
    fi, ti = match["found_index"], match["truth_index"]
    scale = float("nan")
    if item.truth_scs is not None and len(fi):
        fitted = loc.scs_px2[fi] * item.pixel_size_A**2
        ratio = item.truth_scs[ti] / fitted
        ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
        if ratio.size:
            scale = float(np.median(ratio))
    gain = item.gain if item.gain is not None else float("nan")
    offset = item.offset if item.offset is not None else 0.0
    return _Reference(item, loc, match, scale, loc.scs_px2[fi] / gain, loc.width_px[fi],
                      np.maximum((loc.background[fi] - offset) / gain, 0.0), item.dose_e_per_A2)


def _crlb_by_truth(ref: _Reference | None, item: TestImage) -> np.ndarray:
    """Per true column: the CRLB (px, one coordinate) at the item's dose, NaN where unknown."""
    from ..atoms.uncertainty import crlb_position

    out = np.full(len(item.truth_px), np.nan)
    if ref is None or not len(ref.counts) or not np.isfinite(item.dose_e_per_A2):
        return out
    factor = item.dose_e_per_A2 / ref.dose
    n = ref.counts * factor
    bg = ref.background_counts * factor
    ok = np.isfinite(n) & (n > 0) & np.isfinite(ref.width_px) & (ref.width_px > 0) & \
        np.isfinite(bg)
    if ok.any():
        out[ref.match["truth_index"][ok]] = crlb_position(n[ok], ref.width_px[ok], bg[ok])
    return out


def _crlb_pm(bounds_px: np.ndarray, match: dict, pixel_size_A: float) -> float:
    """Radial CRLB (pm), RMS over the true columns this match found (comparable with the RMSE)."""
    b = bounds_px[match["truth_index"]] if len(match["truth_index"]) else np.zeros(0)
    b = b[np.isfinite(b)]
    if not b.size:
        return float("nan")
    return float(100.0 * pixel_size_A * np.sqrt(2.0 * np.mean(b * b)))


def _scs_mape(loc: Localisation, match: dict, item: TestImage, scale: float) -> float:
    if item.truth_scs is None or not np.isfinite(scale) or not len(match["found_index"]):
        return float("nan")
    fitted = scale * loc.scs_px2[match["found_index"]] * item.pixel_size_A**2
    true = item.truth_scs[match["truth_index"]]
    ok = np.isfinite(fitted) & np.isfinite(true) & (true > 0)
    if not ok.any():
        return float("nan")
    return float(100.0 * np.mean(np.abs(fitted[ok] - true[ok]) / true[ok]))


def _row(item: TestImage, workflow: str, image, loc: Localisation, match: dict, pairs,
         scale: float, crlb: float, seconds: float, scs_item: TestImage | None = None
         ) -> dict[str, Any]:
    from .metrics import psnr, ssim

    px_pm = 100.0 * item.pixel_size_A
    if item.reference is not None and image is not None:
        p, s = psnr(item.reference, image), ssim(item.reference, image)
    else:
        p = s = float("nan")
    sa, sb = _strain_errors(loc.positions_px, match, item.truth_px, pairs)
    return {
        "series": item.series, "material": item.material, "image": item.name,
        "replicate": item.replicate, "dose_e_per_A2": item.dose_e_per_A2,
        "thickness_nm": item.thickness_A / 10.0, "workflow": workflow,
        "psnr_db": p if np.isfinite(p) else float("nan"), "ssim": s,
        "f1": match["f1"], "jaccard": match["jaccard"],
        "chamfer_pm": match["chamfer_px"] * px_pm, "rmse_pm": match["rmse_px"] * px_pm,
        "crlb_pm": crlb, "strain_a_pct": sa, "strain_b_pct": sb,
        "scs_mape_pct": _scs_mape(loc, match, scs_item or item, scale),
        "n_truth": match["n_truth"], "n_found": match["n_found"],
        "n_matched": match["n_matched"], "seconds": seconds, "note": loc.note,
    }


def evaluate_scene(items: Sequence[TestImage], workflows: Sequence[Workflow], *,
                   border_px: float = 6.0, keep_images: Callable[[TestImage], bool] | None = None,
                   ) -> tuple[list[dict], list[dict]]:
    """Score every workflow on every image of one scene (images sharing one truth).

    The infinite-dose reference of the brightest image is localised once; it gives the SCS scale,
    the CRLB inputs and the ``infinite-dose`` rows. ``keep_images(item)`` selects the images
    whose arrays (raw, restored, reference) and found positions are returned for the figures.

    Returns
    -------
    rows : one dict per (image, workflow), plus the ``infinite-dose`` row per image.
    kept : dicts with ``item``, ``outputs`` {workflow: image}, ``found`` {workflow: (N, 2)}.
    """
    items = list(items)
    if not items:
        return [], []
    doses = np.array([it.dose_e_per_A2 for it in items], dtype=float)
    shared_truth = all(it.truth_px.shape == items[0].truth_px.shape
                       and np.array_equal(it.truth_px, items[0].truth_px) for it in items)
    ref_cache: dict[int, _Reference | None] = {}

    def reference_for(k: int) -> _Reference | None:
        if shared_truth and np.isfinite(doses).all():
            k = int(np.argmax(doses))
        if k not in ref_cache:
            ref_cache[k] = _reference_fit(items[k], border_px)
        return ref_cache[k]

    pairs_cache: dict[int, Any] = {}
    rows: list[dict] = []
    kept: list[dict] = []
    for k, item in enumerate(items):
        key = 0 if shared_truth else k
        if key not in pairs_cache:
            pairs_cache[key] = _lattice_pairs(item.truth_px, item.truth_scs)
        pairs = pairs_cache[key]
        ref = reference_for(k)
        scale = ref.scs_scale if ref is not None else (1.0 if item.truth_scs is not None
                                                        else float("nan"))
        bounds = _crlb_by_truth(ref, item)
        keep = keep_images is not None and keep_images(item)
        outputs, found = {}, {}
        for wf in workflows:
            t0 = time.perf_counter()
            out = wf.apply(item.image, item)
            seconds = time.perf_counter() - t0
            loc = localise(out, item.pixel_size_A, border_px=max(1, int(border_px) - 2))
            match = score_positions(loc.positions_px, item.truth_px, item.image.shape,
                                    border_px=border_px, ignore_px=item.hidden_px)
            rows.append(_row(item, wf.name, out, loc, match, pairs, scale,
                             _crlb_pm(bounds, match, item.pixel_size_A), seconds))
            if keep:
                outputs[wf.name] = out
                found[wf.name] = loc.positions_px
        if ref is not None:
            # the reference fit is in the units of the image it was made on
            row = _row(item, REFERENCE, None, ref.loc, ref.match, pairs, scale,
                       _crlb_pm(bounds, ref.match, item.pixel_size_A), 0.0, scs_item=ref.item)
            rows.append(row)
            if keep:
                found[REFERENCE] = ref.loc.positions_px
        if keep:
            kept.append({"item": item, "outputs": outputs, "found": found})
    return rows, kept


# ------------------------------------------------------------------------------------------------
# running it all
# ------------------------------------------------------------------------------------------------
@dataclass
class BenchmarkResult:
    """Everything the report needs."""

    rows: list[dict]
    showcase: list[dict]
    workflows: list[Workflow]
    skipped: list[tuple[str, str]]
    config: BenchmarkConfig | None
    tuning: dict
    seconds: float
    meta: dict = field(default_factory=dict)


def _scene_job(args) -> tuple[list[dict], list[dict]]:
    scene, bench, names, tuning = args
    workflows, _ = resolve_workflows(names, tuning=tuning)
    items = simulate_scene(scene, bench)

    def keep(item):
        return (scene.showcase_dose_e_per_A2 is not None
                and item.dose_e_per_A2 == scene.showcase_dose_e_per_A2)

    return evaluate_scene(items, workflows, border_px=bench.border_px, keep_images=keep)


def run_benchmark(config: BenchmarkConfig | None = None, workflows: Sequence[str] | None = None,
                  *, images: str | Path | None = None, pixel_size_A: float | None = None,
                  workers: int = 1, progress: bool = True) -> BenchmarkResult:
    """Run the protocol on the simulated test set (or on a user image set).

    Parameters
    ----------
    config : BenchmarkConfig, optional
        The simulated test set (default: the full benchmark). With ``images`` it only supplies
        the Gaussian tuning set and the border.
    workflows : names, optional
        See :func:`resolve_workflows`; default :func:`default_workflow_names`.
    images : folder, optional
        A user image set (:func:`load_user_images`) instead of the simulated one.
    pixel_size_A : float, optional
        Pixel size of user images that do not record one.
    workers : int
        Processes for the simulated scenes (results do not depend on it).
    progress : bool
        Show a progress bar.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    bench = config or BenchmarkConfig()
    names = list(workflows) if workflows is not None else default_workflow_names()
    # a given cell file that is missing fails here, before any work
    multislice_note = multislice_status(bench) if images is None else None
    if images is not None:  # a user image set: the simulated set only supplies the tuning
        bench = dataclasses.replace(bench, multislice_images=0)
    scenes = build_scenes(bench)
    tuning: dict = {}
    if "gaussian" in names:
        tune_scenes = scenes if images is None else [s for s in scenes if s.series == "dose"]
        tuning = tune_gaussian(bench, tune_scenes)
    # resolve once here: import errors surface before any work, skipped names are reported
    resolved, skipped = resolve_workflows(names, tuning=tuning)
    kept_names = [w.name for w in resolved]
    rows: list[dict] = []
    showcase: list[dict] = []
    if images is not None:
        items = load_user_images(images, pixel_size_A=pixel_size_A)
        bar = tqdm(items, desc="benchmark (images)", disable=not progress)
        for k, item in enumerate(bar):
            r, kept = evaluate_scene([item], resolved, border_px=bench.border_px,
                                     keep_images=lambda it, k=k: k == 0)
            rows += r
            showcase += kept
    else:
        jobs = [(scene, bench, kept_names, tuning) for scene in scenes]
        bar = tqdm(total=len(jobs), desc="benchmark (scenes)", disable=not progress)
        if workers > 1 and len(jobs) > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=int(workers)) as pool:
                for r, kept in pool.map(_scene_job, jobs):
                    rows += r
                    showcase += kept
                    bar.update(1)
        else:
            for job in jobs:
                r, kept = _scene_job(job)
                rows += r
                showcase += kept
                bar.update(1)
        bar.close()
    return BenchmarkResult(rows=rows, showcase=showcase, workflows=resolved, skipped=skipped,
                           config=bench, tuning=tuning, seconds=time.perf_counter() - t0,
                           meta={"images": str(images) if images is not None else None,
                                 "workflow_names": names,
                                 "multislice_note": multislice_note})


def aggregate(rows: Sequence[dict], by: Sequence[str] = ("series", "workflow", "dose_e_per_A2",
                                                         "thickness_nm")) -> list[dict]:
    """Mean of every metric over the rows sharing the ``by`` keys.

    A metric that could not be measured on one of the images (NaN: too few columns found) is
    NaN in the mean too, so that a workflow is never averaged over only its easy images. Adds
    ``n_images``. The order of first appearance is kept for the workflows; doses and
    thicknesses are sorted.
    """
    def norm(v):
        return None if isinstance(v, float) and not np.isfinite(v) else v

    groups: dict[tuple, list[dict]] = {}
    order_wf: dict[str, int] = {}
    for r in rows:
        order_wf.setdefault(r["workflow"], len(order_wf))
        key = tuple(norm(r[k]) for k in by)
        groups.setdefault(key, []).append(r)
    out = []
    for key, members in groups.items():
        agg = {k: (float("nan") if v is None else v) for k, v in zip(by, key)}
        agg["material"] = ", ".join(sorted({m["material"] for m in members if m["material"]}))
        agg["n_images"] = len(members)
        for metric in METRICS:
            vals = np.array([m[metric] for m in members], dtype=float)
            agg[metric] = float(vals.mean()) if np.isfinite(vals).all() else float("nan")
        out.append(agg)

    def sort_key(a):
        vals = []
        for k in by:
            v = a[k]
            if k == "workflow":
                vals.append((0, order_wf[v], ""))
            elif isinstance(v, (int, float)):
                vals.append((0, float(v) if np.isfinite(v) else -1.0, ""))
            else:
                vals.append((1, 0.0, str(v)))
        return tuple(vals)

    return sorted(out, key=sort_key)
