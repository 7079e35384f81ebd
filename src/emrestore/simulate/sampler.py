"""One training pair from physics: ``simulate_pair`` -> (distorted, clean, labels).

The chain (seed 001 "Data generation", seed 000 §2.2 for the dose):

1. draw the pixel size, the area dose and the detector's share of the beam;
2. draw the detector/scan distortion first, because the scan jitter decides how large a margin
   the undistorted image needs (the recorded frame samples the scene at displaced positions);
3. HR: draw a specimen in the extended box, atom profiles and a probe (STEM) or a Gaussian
   point spread (TEM, SEM), render the linear image and the column labels;
   LR: render low-resolution objects;
4. contrast and background (inversion, power law, plane/Gaussian/low-frequency background, the
   std/mean constraint, normalisation to a maximum of 1), the TEM camera MTF;
5. expected counts = fractional intensity × dose (e⁻/Å²) × pixel area (Å²);
6. record: jitter, shot noise, detector noise and every artefact, cropped to the output size;
   the clean target is the expected counts in the same detector units (gain and offset);
7. post-processing (affine on both, blur on the distorted only, annotations and crop fill on
   both), with the column positions following the affine.

Where emrestore departs from the papers' ranges, after comparing with real HAADF frames
(``benchmarks/compare_realdata.py``): the specimen thickness is drawn on its own (20-400 Å)
instead of n·dr; a support is added with p = 0.5 instead of 0.95, since FIB lamellae have none;
and the std/mean constraint on the clean image allows up to 0.6 instead of 0.35, because real
SrTiO3, Si [110] and perovskite frames measure 0.40-0.50.

All ranges live in :class:`SamplerConfig` and the frozen parameter classes it nests; a TOML file
maps onto it one to one (:meth:`SamplerConfig.from_toml`). Every drawn value is recorded in
``labels["params"]``; the same seed gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._rng import as_generator, log_uniform, uniform
from ..errors import ConfigError, InputError
from . import stem, tem
from .background import ContrastParams, apply_contrast, draw_contrast, transform_signal
from .config import check_range, from_dict, load_toml, to_dict
from .dose import DoseParams, draw_dose, expected_counts
from .labels import (
    circular_mask,
    column_radius_A,
    default_sigma_px,
    gaussian_mask,
    mean_nearest_neighbour_spacing,
)
from .lowres import LowResParams, render_lowres
from .optics import FWHM_PER_SIGMA, GaussianPSFParams, ProbeParams, draw_gaussian_psf, draw_probe
from .postprocess import (
    PostprocessParams,
    apply_postprocess,
    draw_postprocess,
    transform_positions,
)
from .profiles import AtomProfileParams, draw_atom_profiles
from .render import render_atoms, render_atoms_with_supersampled, render_columns
from .specimen import SpecimenParams, build_specimen

MODALITIES = ("stem", "tem", "sem")
RESOLUTIONS = ("hr", "lr")

_IMAGE_LABELS = ("clean_no_background", "clean_2x", "gaussian_mask", "circular_mask")


@dataclass(frozen=True)
class SamplerConfig:
    """What ``simulate_pair`` draws from; defaults are the papers' ranges.

    Attributes
    ----------
    modality, resolution : "stem" | "tem" | "sem" and "hr" | "lr".
    size : (H, W) of the output images in pixels.
    hr_pixel_size_A : HR pixel size range, Å (seed 001: 0.025-0.9 Å), drawn log-uniformly so that
        fine and coarse sampling are equally represented.
    specimen_thickness_A : thickness of the specimen box along the beam, Å, log-uniform. The
        paper ties it to the field of view (n · dr), which makes a 256-px image at 0.15 Å/px a
        38 Å slab under a support up to 300 Å thick: its lattice drowns in the support, unlike
        real lamellae (2-40 nm). Drawing it independently keeps crystals visible.
    lr_pixel_size_A : LR pixel size range, Å.
    detector_fraction : fraction of the incident beam reaching the detector at the brightest
        pixel (seed 000: HAADF images carry ~10-15 % of the beam).
    hr_dose, lr_dose : area-dose laws in e⁻/Å² (seed 000: 500-10 000; seed 001's exponential law).
    material : force one named material for every HR specimen (demos, benchmarks), else random.
    super_resolution_label : also render the 2× super-resolved clean label (~20 % more time).
    column_merge_radius_A : projected atoms closer than this form one column label.
    gaussian_mask_sigma_A : σ of the Gaussian column mask in Å; None: proportional to the mean
        column spacing (seed 004 eq. 3). The circular mask's radius follows seed 003 Table 2.
    multislice_fraction : share of HR-STEM frames whose signal is a multislice reference cell
        (``multislice_set``, shipped abTEM HAADF scans at a random rotation and shift) instead of
        a linear-model specimen; the contrast, dose and distortion chain is the same.
    multislice_split : which reference cells: ``"train"`` (the training mix) or ``"test"`` (the
        benchmarks' multislice set).
    multislice_model : ``"multislice"``, or ``"linear"``: the same cells, rotations and shifts
        rendered by the fast model with the same probe (the benchmarks' controlled twin).
    multislice_cells : a reference-cell file other than the packaged one.
    """

    modality: str = "stem"
    resolution: str = "hr"
    size: tuple[int, int] = (256, 256)
    hr_pixel_size_A: tuple[float, float] = (0.025, 0.9)
    specimen_thickness_A: tuple[float, float] = (20.0, 400.0)
    lr_pixel_size_A: tuple[float, float] = (1.0, 50.0)
    detector_fraction: tuple[float, float] = (0.02, 0.3)
    hr_dose: DoseParams = field(default_factory=DoseParams)
    lr_dose: DoseParams = field(
        default_factory=lambda: DoseParams(dose_e_per_A2=(0.005, 50.0)))
    material: str | None = None
    super_resolution_label: bool = True
    column_merge_radius_A: float = 0.25
    gaussian_mask_sigma_A: float | None = None
    multislice_fraction: float = 0.0
    multislice_split: str = "train"
    multislice_model: str = "multislice"
    multislice_cells: str | None = None
    specimen: SpecimenParams = field(default_factory=lambda: SpecimenParams(p_support=0.5))
    profiles: AtomProfileParams = field(default_factory=AtomProfileParams)
    probe: ProbeParams = field(default_factory=ProbeParams)
    psf: GaussianPSFParams = field(default_factory=GaussianPSFParams)
    lowres: LowResParams = field(default_factory=LowResParams)
    contrast: ContrastParams = field(
        default_factory=lambda: ContrastParams(ratio_range=(0.01, 0.6)))
    stem: stem.StemDistortionParams = field(default_factory=stem.StemDistortionParams)
    tem: tem.TemDistortionParams = field(default_factory=tem.TemDistortionParams)
    post: PostprocessParams = field(default_factory=PostprocessParams)

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ConfigError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.resolution not in RESOLUTIONS:
            raise ConfigError(f"resolution must be one of {RESOLUTIONS}, got {self.resolution!r}")
        if len(self.size) != 2 or min(self.size) < 16:
            raise ConfigError(f"size must be (H, W) with both >= 16 px, got {self.size!r}")
        check_range("hr_pixel_size_A", self.hr_pixel_size_A, lo=1e-3)
        check_range("lr_pixel_size_A", self.lr_pixel_size_A, lo=1e-3)
        check_range("detector_fraction", self.detector_fraction, lo=1e-6, hi=1.0)
        if self.column_merge_radius_A <= 0:
            raise ConfigError("column_merge_radius_A must be > 0 Å")
        if not 0.0 <= self.multislice_fraction <= 1.0:
            raise ConfigError(f"multislice_fraction must be in [0, 1], got "
                              f"{self.multislice_fraction}")
        if self.multislice_split not in ("train", "test"):
            raise ConfigError(f"multislice_split must be 'train' or 'test', got "
                              f"{self.multislice_split!r}")
        if self.multislice_model not in ("multislice", "linear"):
            raise ConfigError(f"multislice_model must be 'multislice' or 'linear', got "
                              f"{self.multislice_model!r}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplerConfig:
        data = dict(data)
        if "size" in data:
            data["size"] = tuple(data["size"])
        return from_dict(cls, data)

    @classmethod
    def from_toml(cls, path: str | Path) -> SamplerConfig:
        """Read a TOML file whose tables mirror the nested parameter classes one to one."""
        return cls.from_dict(load_toml(path))


def all_distortions_on(config: SamplerConfig) -> SamplerConfig:
    """The same ranges with every detector, scan and post-processing distortion switched on."""
    return dataclasses.replace(config, stem=config.stem.all_on(), tem=config.tem.all_on(),
                               post=config.post.all_on())


def aligned_crystal(config: SamplerConfig, material: str = "SrTiO3",
                    zone_axis: tuple[int, int, int] = (0, 0, 1),
                    mistilt_std_deg: float = 0.2) -> SamplerConfig:
    """``config`` restricted to one named crystal slab on one zone axis (demos, benchmarks).

    No nanoparticle, wedge or shape; defects and the support stay as drawn by ``config``.
    """
    specimen = dataclasses.replace(config.specimen, p_nanoparticle=0.0, p_zone_axis=1.0,
                                   zone_axes=(tuple(zone_axis),), permute_zone_axis=False,
                                   mistilt_std_deg=mistilt_std_deg, p_shape=0.0, p_wedge=0.0)
    return dataclasses.replace(config, material=material, specimen=specimen)


class _Clock:
    """Adds the seconds since the last mark to ``timings[name]`` (no-op without a dict)."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings = timings
        self.last = time.perf_counter()

    def mark(self, name: str) -> None:
        if self.timings is None:
            return
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now


def simulate_pair(
    modality: str | None = None,
    resolution: str | None = None,
    size: tuple[int, int] | None = None,
    rng=None,
    *,
    config: SamplerConfig | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Draw one (distorted, clean) training pair with its labels.

    Parameters
    ----------
    modality : "stem" | "tem" | "sem", overrides ``config.modality``.
    resolution : "hr" | "lr", overrides ``config.resolution``.
    size : (H, W) in pixels, overrides ``config.size``.
    rng : int seed or numpy Generator; the same seed gives identical bytes.
    config : every parameter range (default :class:`SamplerConfig`).
    timings : optional dict that receives the seconds spent per stage.

    Returns
    -------
    distorted : (H, W) float32, the recorded image in detector units (counts, or ADC units).
    clean : (H, W) float32, the undistorted expected image in the same units.
    labels : dict with
        ``clean_no_background`` (H, W): the atomic/object signal alone (no additive background,
        no detector offset), same units;
        ``clean_2x`` (2H, 2W): the same signal on a grid of half the pixel size (HR only when
        ``config.super_resolution_label``; else absent), same units per pixel of the fine grid
        scaled so that integrated intensity is preserved;
        ``gaussian_mask``, ``circular_mask`` (H, W): column masks (seed 003/004);
        ``columns``: dict of per-column arrays ``position_px`` (N, 2) (y, x) (the physical,
        undistorted position), ``position_recorded_px`` (N, 2) (where the column shows in the
        recorded image, after the scan distortion and the detector's fast-scan trail; equal to
        ``position_px`` without either),
        ``position_A``,
        ``species``, ``atom_count``, ``scs`` (integrated intensity, image units × Å²);
        ``mean_spacing_px``, ``pixel_size_A``, ``dose_e_per_A2``, ``detector_fraction``;
        ``params``: JSON-serialisable record of every drawn parameter.
    """
    config = config or SamplerConfig()
    overrides = {k: v for k, v in (("modality", modality), ("resolution", resolution),
                                   ("size", tuple(size) if size is not None else None))
                 if v is not None}
    if overrides:
        config = dataclasses.replace(config, **overrides)
    # Independent streams per stage: changing a distortion range never changes the specimen drawn
    # for the same seed (the gallery relies on it to show one scene under each distortion).
    scene_rng, distortion_rng, noise_rng, post_rng = as_generator(rng).spawn(4)
    clock = _Clock(timings)
    h, w = (int(v) for v in config.size)
    hr = config.resolution == "hr"

    # 1. sampling, dose and detector share of the beam
    pixel_size = log_uniform(scene_rng, config.hr_pixel_size_A if hr else config.lr_pixel_size_A)
    dose = draw_dose(scene_rng, config.hr_dose if hr else config.lr_dose)
    fraction = uniform(scene_rng, config.detector_fraction)
    # The clean image is normalised to a maximum of 1 before the dose is applied, so the largest
    # expected count is known now: the ADC gain can be set as an operator would.
    max_counts = fraction * dose * pixel_size**2

    # 2. the detector/scan distortion decides the render margin
    if config.modality == "tem":
        distortion = tem.draw_tem_distortion(distortion_rng, config.tem, (h, w),
                                             max_expected_counts=max_counts)
        margin = 0
    else:
        distortion = stem.draw_stem_distortion(distortion_rng, config.stem, (h, w), config.modality,
                                               pixel_size_A=pixel_size,
                                               max_expected_counts=max_counts)
        margin = stem.margin_px(distortion)
    ext_shape = (h + 2 * margin, w + 2 * margin)
    clock.mark("draw")

    params: dict[str, Any] = {"modality": config.modality, "resolution": config.resolution,
                              "size": [h, w], "pixel_size_A": pixel_size,
                              "dose_e_per_A2": dose, "detector_fraction": fraction,
                              "margin_px": margin}
    # 3. the undistorted signal
    columns = _empty_columns()
    signal_2x = None
    # drawn only when a mix is configured, so that the frames of every existing seed are kept
    reference = (hr and config.modality == "stem" and config.multislice_fraction > 0
                 and scene_rng.random() < config.multislice_fraction)
    if reference:
        from .multislice_set import load_reference_cells, render_reference_scene

        cells = load_reference_cells(config.multislice_split, config.multislice_cells)
        cell = cells[int(scene_rng.integers(len(cells)))]
        scene = render_reference_scene(
            cell, scene_rng, ext_shape, pixel_size, model=config.multislice_model,
            profile_params=config.profiles,
            window_px=(margin, margin, h, w) if config.super_resolution_label else None,
            merge_radius_A=config.column_merge_radius_A)
        signal, signal_2x, columns, psf = scene.signal, scene.signal_2x, scene.columns, scene.probe
        params.update(reference_cell=scene.info, specimen_kind="reference-cell",
                      psf=psf.to_dict())
        mask_radius_A = _column_radius_A(psf)
        clock.mark("render")
    elif hr:
        thickness = log_uniform(scene_rng, config.specimen_thickness_A)
        box = (ext_shape[0] * pixel_size, ext_shape[1] * pixel_size, thickness)
        specimen = build_specimen(scene_rng, box, config.specimen, config.material,
                                  pixel_size_A=pixel_size)
        clock.mark("specimen")
        numbers, positions = specimen.atoms.numbers, specimen.atoms.positions
        species = np.unique(numbers) if numbers.size else np.array([6])
        profiles = draw_atom_profiles(scene_rng, species, config.profiles)
        psf = (draw_probe(scene_rng, config.probe) if config.modality == "stem"
               else draw_gaussian_psf(scene_rng, config.psf))
        if config.super_resolution_label:
            # one spreading and one set of FFTs for both grids (the 2x covers the output window)
            signal, signal_2x = render_atoms_with_supersampled(
                numbers, positions, profiles, ext_shape, pixel_size, psf,
                window_px=(margin, margin, h, w), supersample=2)
        else:
            signal = render_atoms(numbers, positions, profiles, ext_shape, pixel_size, psf)
        # Column labels come from the specimen alone: the support's atoms (appended after the
        # specimen's) are a background layer, and linking them in would chain every column of
        # the crystal to the amorphous atoms that happen to project close to it.
        n_own = int(specimen.info.get("n_specimen_atoms", len(numbers)))
        direction = specimen.info.get("orientation", {}).get("column_direction")
        columns = render_columns(numbers[:n_own], positions[:n_own], profiles, ext_shape,
                                 pixel_size, merge_radius_A=config.column_merge_radius_A,
                                 column_direction=direction)
        params.update(specimen=specimen.info, specimen_kind=specimen.kind,
                      profiles=profiles.to_dict(), psf=psf.to_dict())
        mask_radius_A = _column_radius_A(psf)
        clock.mark("render")
    else:
        signal, lowres_info = render_lowres(scene_rng, ext_shape, config.lowres)
        params["lowres"] = lowres_info
        mask_radius_A = 0.0
        clock.mark("lowres")

    # 4. contrast, background, normalisation
    contrast = draw_contrast(scene_rng, config.contrast)
    result = apply_contrast(signal, contrast, scene_rng)
    image, no_background = result.image, result.no_background
    params["contrast"] = result.info
    if config.modality == "tem":
        image = tem.apply_mtf(image, *distortion.mtf)
        no_background = tem.apply_mtf(no_background, *distortion.mtf)
    clock.mark("contrast")

    # 5. dose: expected counts per pixel
    counts = expected_counts(image * fraction, dose, pixel_size)

    # 6. record
    if config.modality == "tem":
        distorted = tem.distort_tem(counts, distortion, noise_rng)
        to_units = tem.to_detector_units
    else:
        distorted = stem.distort_stem(counts, distortion, noise_rng)
        to_units = stem.to_detector_units
    clean = to_units(stem.center_crop(counts, (h, w)), distortion)
    # Detector gain without the offset: the offset is part of the background.
    gain = float(to_units(np.ones((1, 1), np.float32), distortion)[0, 0]
                 - to_units(np.zeros((1, 1), np.float32), distortion)[0, 0])
    counts_per_unit = gain * fraction * dose * pixel_size**2  # detector units per final-image unit
    images = {"clean": clean,
              "clean_no_background": stem.center_crop(no_background, (h, w)) * counts_per_unit}
    if signal_2x is not None:
        # A fine pixel covers a quarter of the area, so it holds a quarter of the counts.
        images["clean_2x"] = transform_signal(signal_2x, result.info) * (counts_per_unit / 4.0)
    params["detector"] = distortion.to_dict()
    clock.mark("detector")

    # labels before post-processing, in the output frame
    pos_px = columns["position_px"] - margin
    inside = np.all((pos_px >= -0.5) & (pos_px <= np.array([h, w]) - 0.5), axis=1)
    columns = {k: v[inside] for k, v in columns.items()}
    columns["position_px"] = pos_px[inside]
    # where each column shows in the recorded frame: the scan distortion (jitter, drift) moves it
    # away from its physical position; a detector (find_atoms, its training labels, F1) must be
    # judged against this, the restoration target and strain against position_px
    # (the centroid of the column as recorded, each scan line weighted by how much of the
    # column's probe-blurred image it crosses, then trailed along the fast scan by the
    # detector's memory)
    recorded = columns["position_px"]
    if config.modality != "tem" and len(recorded):
        sigma = _column_sigma_px(psf, pixel_size)
        recorded = stem.distorted_coordinates(recorded, distortion, width_px=sigma)
        recorded[:, 1] += stem.fast_scan_shift_px(distortion.fast_scan, sigma)
    columns["position_recorded_px"] = np.array(recorded, dtype=np.float64).reshape(-1, 2)
    # SCS in detector units × Å²; NaN where the power-law contrast made intensities non-linear.
    columns["scs"] = columns.pop("integrated_intensity") * result.signal_gain * counts_per_unit
    images["gaussian_mask"] = gaussian_mask(columns["position_px"], (h, w),
                                            _gaussian_sigma_px(columns["position_px"],
                                                               config, pixel_size))
    images["circular_mask"] = circular_mask(columns["position_px"], (h, w),
                                            max(mask_radius_A / pixel_size, 0.5))

    # 7. post-processing
    post = draw_postprocess(post_rng, config.post, (h, w))
    distorted, images, affine = apply_postprocess(
        distorted, images, post, label_keys=("gaussian_mask", "circular_mask"))
    params["postprocess"] = post.to_dict()
    if columns["position_px"].size:
        columns["position_px"] = transform_positions(columns["position_px"], affine)
        columns["position_recorded_px"] = transform_positions(columns["position_recorded_px"],
                                                              affine)
    columns["position_A"] = columns["position_px"] * pixel_size
    clock.mark("postprocess")

    labels: dict[str, Any] = {name: images[name] for name in _IMAGE_LABELS if name in images}
    labels.update(
        columns=columns,
        mean_spacing_px=float(mean_nearest_neighbour_spacing(columns["position_px"])),
        pixel_size_A=pixel_size,
        dose_e_per_A2=dose,
        detector_fraction=fraction,
        params=params,
    )
    return distorted.astype(np.float32), images["clean"].astype(np.float32), labels


def _empty_columns() -> dict[str, np.ndarray]:
    return {"position_px": np.zeros((0, 2)), "position_recorded_px": np.zeros((0, 2)),
            "position_A": np.zeros((0, 2)), "species": np.zeros(0, np.int64),
            "atom_count": np.zeros(0, np.int64),
            "integrated_intensity": np.zeros(0)}


def _column_sigma_px(psf, pixel_size_A: float) -> float:
    """σ (px) of a column's image: the probe's (or point spread's) FWHM as a Gaussian σ."""
    return max(float(psf.fwhm_A) / FWHM_PER_SIGMA / pixel_size_A, 0.5)


def _column_radius_A(psf) -> float:
    """Circular-mask radius (seed 003 Table 2): from the probe's diffraction limit and source
    size, or half the FWHM of a Gaussian point spread."""
    if hasattr(psf, "convergence_mrad"):
        return column_radius_A(psf.wavelength_A, psf.convergence_mrad, psf.source_fwhm_A)
    return 0.5 * float(psf.fwhm_A)


def _gaussian_sigma_px(positions_px: np.ndarray, config: SamplerConfig,
                       pixel_size_A: float) -> float:
    """Seed 004: σ proportional to the mean column spacing; seed 003's fixed width (0.2 Å)
    where there are too few columns to define a spacing."""
    if config.gaussian_mask_sigma_A is None and len(positions_px) >= 2:
        return float(default_sigma_px(positions_px))
    return max((config.gaussian_mask_sigma_A or 0.2) / pixel_size_A, 0.3)


def check_size(size) -> tuple[int, int]:
    """Validate a user-given (H, W) image size."""
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise InputError(f"size must be two integers (H, W), got {size!r}") from exc
    if min(h, w) < 16:
        raise InputError(f"size must be at least 16×16 px, got {h}×{w}")
    return h, w
