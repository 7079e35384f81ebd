"""Training the atom-finder network from a TOML config: ``emrestore train --config atoms.toml``.

:class:`AtomTrainConfig` maps one to one onto the TOML file (top-level keys, then the tables
``[model]`` = :class:`emrestore.nn.atomnet.AtomNetConfig`, ``[loss]``, ``[data]``, ``[optim]`` =
:class:`emrestore.nn.train.OptimSection`); ``task = "atoms"`` tells the CLI to come here rather
than to the restoration trainer. :func:`train_atomnet_from_config` runs it:

* **data**: simulated images with their column labels, from HDF5 libraries written by
  ``emrestore simulate`` (``source = "library"``, the CPU route: simulate once, read for many
  epochs), streamed from the simulator (``"simulator"``, for a GPU with DataLoader workers), or a
  toy Gaussian lattice (``"synthetic"``, for tests). The network input is the raw image, the image
  restored by a shipped restoration model, or both (``data.input``); restored library images are
  computed once into a side file in ``output_dir``.
* **labels** (seed 004 eqs 1-4): every visible column becomes a unit-peak Gaussian of
  ``σ = sigma_per_spacing × s`` in an image resampled so that the column spacing ``s`` is
  ``canonical_spacing_px × jitter`` (the jitter stands in for the error of the spacing estimate at
  inference). A column is *visible* when its species scatters at least ``visible_fraction`` as
  strongly (atom count × Z^1.7, Rutherford-like) as the strongest column within 2 Å: oxygen next
  to strontium in a HAADF image is not, nor is an atom displaced out of a thick column, and no
  one can be asked to find them. Pixels near invisible
  columns and padding carry no loss. A share ``wide_fraction`` of the examples is resampled to
  any spacing in ``wide_spacing_px``: only the spacing head learns from those (it serves the coarse
  pass at inference, which sees the image at its native scale).
* **loss**: weighted binary cross-entropy (``"bce"``), a quality focal loss (``"focal"``: the BCE
  scaled by ``|y − p|^γ``, for soft labels) or seed 004's squared error (``"mse"``) on the
  confidence map, plus ``spacing_weight`` × L1 on the log-spacing (seed 004 eq 7).
* AdamW, warm-up + cosine schedule, gradient clipping, weight EMA, checkpoints (resumable), a CSV
  log, and the F1 of column detection on a fixed validation set (matching radius 0.25 × spacing)
  at several confidence thresholds; the best threshold goes into the model card.

:func:`export_atomnet` writes the shipped model: ``weights/<name>.safetensors`` plus a card with
``"task": "atoms"``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .._rng import log_uniform, uniform
from ..errors import ConfigError, InputError
from ..simulate.config import load_toml, to_dict
from ..simulate.labels import (  # visible_columns re-exported: the training labels use it
    detectable_columns,
    group_centroids,
    visible_columns,
)
from . import data as nndata
from . import runs
from .atomnet import (
    AtomNet,
    AtomNetConfig,
    ConfidenceOnly,
    build_atomnet,
    decode_nms,
    from_resampled,
    resample,
    scaled_size,
    to_resampled,
)
from .normalise import DEFAULT_PARAMS, normalisation_card, normalise

INPUTS = ("raw", "restored", "both")
CONFIDENCE_LOSSES = ("bce", "focal", "mse")
KINDS = ("crystal", "nanoparticle", "points", "amorphous")
LABELS = ("visible", "detectable")

# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class AtomLossSection:
    """``[loss]``: the confidence-map loss and the weight of the spacing term (seed 004 eq 7).

    confidence : "bce" (weighted binary cross-entropy on the soft Gaussian labels), "focal"
        (quality focal loss: BCE × |label − prediction|^focal_gamma) or "mse" (seed 004 eq 5).
    pos_weight : extra weight of label mass: each pixel weighs ``1 + pos_weight × label``.
    focal_gamma : exponent of the focal modulation.
    spacing_weight : weight of the L1 loss on the predicted log-spacing.
    """

    confidence: str = "bce"
    pos_weight: float = 4.0
    focal_gamma: float = 2.0
    spacing_weight: float = 0.2

    def __post_init__(self):
        if self.confidence not in CONFIDENCE_LOSSES:
            raise ConfigError(f"loss.confidence must be one of {CONFIDENCE_LOSSES}, got "
                              f"{self.confidence!r}")
        if self.pos_weight < 0 or self.focal_gamma < 0 or self.spacing_weight < 0:
            raise ConfigError("loss.pos_weight, focal_gamma and spacing_weight must be >= 0")


@dataclass(frozen=True)
class AtomDataSection:
    """``[data]``: images, labels and how they are cut.

    source : "library" (HDF5 files of ``emrestore simulate``), "simulator" (stream
        ``simulate_pair``) or "synthetic" (toy Gaussian lattice, tests only).
    library : the main library (its last ``validation_size`` usable images are held out).
    extra_libraries : more libraries whose usable images all join the training set.
    library_size : simulate ``library`` up to this many pairs first if it holds fewer (0: it must
        exist).
    modality, resolution, image_size, sampler : what the simulator draws (also for library_size).
    input : "raw", "restored" or "both" (two channels, raw first).
    restore_model : the restoration model for "restored"/"both" (zoo name or card path).
    patch_size : training crop in resampled pixels. crops_per_image : crops per simulated image
        (streamed sources).
    scale_jitter : the resampled spacing is canonical × a factor log-uniform in
        [1/scale_jitter, scale_jitter].
    wide_fraction, wide_spacing_px : share of examples resampled to any spacing in this range
        (px); only the spacing head learns from those outside the jitter band.
    visible_fraction, visible_radius_A : a column is visible when it scatters (∝ atom count ×
        Z^1.7) at least this fraction as strongly as the strongest column within this radius
        (Å); see :func:`visible_columns`.
    labels : "visible" (every visible column is a target) or "detectable" (the columns the
        noise-free image resolves and shows, :func:`~emrestore.simulate.labels.detectable_columns`:
        a dumbbell the probe merges is one target at its centroid, a column with no peak is
        hidden; the truth of ``benchmarks/detect_quality.py``). The spacing used for resampling
        and for the spacing head stays that of the visible columns.
    min_columns : images with fewer visible columns are skipped.
    min_spacing_A : images whose visible columns are closer than this (median nearest-neighbour
        distance, Å) are skipped: the probe does not resolve them.
    spacing_px : usable range of that spacing in the original image's pixels.
    kinds : specimen kinds used ("crystal", "nanoparticle", "points", "amorphous"). Amorphous
        specimens are left out by default: their "columns" are single atoms a fraction of an
        ångström apart.
    crystalline_support : also use images over a crystalline support. Off by default: the
        support's lattice shows in the image but is not labelled (the labels are the specimen's).
    augment : random dihedral symmetry per crop.
    workers : DataLoader worker processes.
    validation_size : images in the fixed validation set.
    normalisation : overrides of ``nn.normalise.DEFAULT_PARAMS``.
    """

    source: str = "simulator"
    library: str = ""
    extra_libraries: tuple[str, ...] = ()
    library_size: int = 0
    modality: str = "stem"
    resolution: str = "hr"
    image_size: tuple[int, int] = (256, 256)
    sampler: dict = field(default_factory=dict)
    input: str = "raw"
    restore_model: str = "stem-hr"
    patch_size: int = 96
    crops_per_image: int = 4
    scale_jitter: float = 1.4
    wide_fraction: float = 0.3
    wide_spacing_px: tuple[float, float] = (3.0, 48.0)
    visible_fraction: float = 0.2
    visible_radius_A: float = 2.0
    labels: str = "visible"
    min_columns: int = 4
    min_spacing_A: float = 1.2
    spacing_px: tuple[float, float] = (2.5, 96.0)
    kinds: tuple[str, ...] = ("crystal", "nanoparticle", "points")
    crystalline_support: bool = False
    augment: bool = True
    workers: int = 0
    validation_size: int = 48
    normalisation: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.source not in ("library", "simulator", "synthetic"):
            raise ConfigError(f"data.source must be 'library', 'simulator' or 'synthetic', got "
                              f"{self.source!r}")
        if self.source == "library" and not self.library:
            raise ConfigError("data.source = 'library' needs data.library = 'path/to/lib.h5'")
        if self.input not in INPUTS:
            raise ConfigError(f"data.input must be one of {INPUTS}, got {self.input!r}")
        if self.patch_size < 32:
            raise ConfigError(f"data.patch_size must be >= 32 px, got {self.patch_size}")
        if self.scale_jitter < 1.0:
            raise ConfigError(f"data.scale_jitter must be >= 1, got {self.scale_jitter}")
        if not 0.0 <= self.wide_fraction <= 1.0:
            raise ConfigError(f"data.wide_fraction must lie in 0-1, got {self.wide_fraction}")
        if not 0.0 <= self.visible_fraction <= 1.0:
            raise ConfigError(f"data.visible_fraction must lie in 0-1, got "
                              f"{self.visible_fraction}")
        if self.labels not in LABELS:
            raise ConfigError(f"data.labels must be one of {LABELS}, got {self.labels!r}")
        bad = sorted(set(self.kinds) - set(KINDS))
        if bad or not self.kinds:
            raise ConfigError(f"data.kinds: unknown or no specimen kinds {bad}; choose from "
                              f"{KINDS}")
        unknown = sorted(set(self.normalisation) - set(DEFAULT_PARAMS))
        if unknown:
            raise ConfigError(f"data.normalisation: unknown parameter(s) {unknown}")
        if self.validation_size < 1:
            raise ConfigError("data.validation_size must be >= 1")


TRAINABLE = ("all", "spacing")
SPACING_HEAD = ("spacing_conv.", "spacing_mlp.")  # parameter-name prefixes of the spacing head


@dataclass(frozen=True)
class AtomTrainConfig(runs.RunConfig):
    """One atom-finder training run; a TOML file maps onto it one to one.

    task : must be "atoms" (the CLI dispatches on it). name : model name at export.
    seed : every random draw. output_dir : run folder (checkpoints, CSV log, restored images).
    steps : optimiser steps. batch_size : crops per step. val_every, checkpoint_every, log_every :
    in steps. device : "auto", "cpu", "cuda", ... amp : "auto", "bf16", "fp16" or "off".
    threads : CPU threads (0: all). init_from : a checkpoint folder or .safetensors file that
    starts a new run (fine-tuning). thresholds, iou_thresholds : the confidence thresholds and
    NMS overlaps tried at validation; the best pair goes into the model card (seed 004 uses an
    IoU of 0.3, which merges columns closer than about half the spacing). trainable : "all", or
    "spacing": only the spacing head learns (the confidence map stays exactly as in
    ``init_from``) and the best checkpoint is the one with the lowest spacing error.
    """

    task: str = "atoms"
    name: str = "atoms-hr"
    seed: int = 0
    output_dir: str = "runs/atoms-hr"
    steps: int = 4000
    batch_size: int = 16
    val_every: int = 250
    checkpoint_every: int = 250
    log_every: int = 25
    device: str = "auto"
    amp: str = "auto"
    threads: int = 0
    init_from: str = ""
    thresholds: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6)
    iou_thresholds: tuple[float, ...] = (0.3, 0.5)
    trainable: str = "all"
    model: AtomNetConfig = field(default_factory=AtomNetConfig)
    loss: AtomLossSection = field(default_factory=AtomLossSection)
    data: AtomDataSection = field(default_factory=AtomDataSection)
    optim: runs.OptimSection = field(default_factory=lambda: runs.OptimSection(warmup_steps=200))

    def __post_init__(self):
        if self.task != "atoms":
            raise ConfigError(f"task must be 'atoms' for the atom-finder trainer, got "
                              f"{self.task!r}")
        self.check_run()
        if not self.thresholds or not all(0.0 <= t < 1.0 for t in self.thresholds):
            raise ConfigError(f"thresholds must be confidences in [0, 1), got {self.thresholds}")
        if not self.iou_thresholds or not all(0.0 < t < 1.0 for t in self.iou_thresholds):
            raise ConfigError(f"iou_thresholds must lie in (0, 1), got {self.iou_thresholds}")
        if self.trainable not in TRAINABLE:
            raise ConfigError(f"trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        if self.trainable == "spacing" and not self.init_from:
            raise ConfigError('trainable = "spacing" trains the spacing head of an existing '
                              'network: set init_from to its checkpoint or weights')
        want = 2 if self.data.input == "both" else 1
        if self.model.in_channels != want:
            raise ConfigError(f"data.input = {self.data.input!r} gives {want} channel(s), but "
                              f"model.in_channels = {self.model.in_channels}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AtomTrainConfig:
        return super().from_dict({"task": "atoms", **data})


def load_atom_config(path_or_dict) -> AtomTrainConfig:
    """An AtomTrainConfig from a TOML path, a dict or an AtomTrainConfig."""
    return AtomTrainConfig.load(path_or_dict)


def config_task(path_or_dict) -> str:
    """The ``task`` key of a training config ("restore" when absent), for the CLI's dispatch."""
    if isinstance(path_or_dict, AtomTrainConfig):
        return "atoms"
    data = path_or_dict if isinstance(path_or_dict, dict) else load_toml(path_or_dict)
    return str(data.get("task", "restore"))


# ---------------------------------------------------------------------------------------------
# Labels


def scene_visible(scene: dict[str, Any], data: AtomDataSection) -> np.ndarray:
    """:func:`visible_columns` of a scene dict with the config's fraction and radius."""
    return visible_columns(scene["positions"], scene["species"], scene.get("atom_count"),
                           scene.get("pixel_size_A"), fraction=data.visible_fraction,
                           radius_A=data.visible_radius_A)


def scene_targets(scene: dict[str, Any], data: AtomDataSection) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, targets)`` of a scene's training labels: (N, 2) positions in the image's
    pixels and a bool mask of the ones to find (the others are hidden: no loss near them).
    ``data.labels = "detectable"`` needs the scene's noise-free ``clean`` image and its
    ``physical_positions`` (undistorted; ``positions`` may be moved by the scan)."""
    pos = np.asarray(scene["positions"], float).reshape(-1, 2)
    vis = scene_visible(scene, data)
    if data.labels == "visible":
        return pos, vis
    if scene.get("clean") is None:
        raise InputError("data.labels = 'detectable' needs the noise-free image of every scene "
                         "(libraries written by `emrestore simulate` hold it as 'clean')")
    physical = np.asarray(scene.get("physical_positions", pos), float).reshape(-1, 2)
    groups = detectable_columns(scene["clean"], physical, vis, scene.get("pixel_size_A"))
    centroids = group_centroids(pos, groups)
    hidden = pos[groups < 0]  # a kept group's members are its centroid, not hidden
    return (np.concatenate([centroids, hidden]),
            np.concatenate([np.ones(len(centroids), bool), np.zeros(len(hidden), bool)]))


def column_spacing_px(positions) -> float:
    """Median nearest-neighbour distance of the columns (NaN for fewer than two)."""
    from ..simulate.labels import mean_nearest_neighbour_spacing

    return mean_nearest_neighbour_spacing(positions, statistic="median")


def detection_counts(predicted, truth, radius: float, *, ignore=None, shape=None,
                     border_px: float = 0.0) -> tuple[int, int, int]:
    """``(true positives, false positives, false negatives)`` of a one-to-one matching within
    ``radius`` (:func:`emrestore.evaluate.metrics.match_points`).

    An unmatched prediction within ``radius`` of an ``ignore`` point (a column nobody can be
    asked to find) is not counted; with ``shape``, neither are unmatched predictions and truths
    within ``border_px`` of the image edge (half-visible columns).
    """
    from scipy.spatial import cKDTree

    from ..evaluate.metrics import match_points

    pred = np.asarray(predicted, float).reshape(-1, 2)
    true = np.asarray(truth, float).reshape(-1, 2)
    m = match_points(pred, true, radius)
    fp_mask = np.ones(len(pred), bool)
    fp_mask[m.pred_index] = False
    fn_mask = np.ones(len(true), bool)
    fn_mask[m.truth_index] = False
    if ignore is not None and len(ignore) and fp_mask.any():
        d, _ = cKDTree(np.asarray(ignore, float).reshape(-1, 2)).query(pred[fp_mask])
        idx = np.flatnonzero(fp_mask)
        fp_mask[idx[d <= radius]] = False
    if shape is not None and border_px > 0:
        h, w = shape

        def near(p):
            return ((p[:, 0] < border_px - 0.5) | (p[:, 0] > h - 0.5 - border_px)
                    | (p[:, 1] < border_px - 0.5) | (p[:, 1] > w - 0.5 - border_px))

        fp_mask &= ~near(pred)
        fn_mask &= ~near(true)
    return m.n_matched, int(fp_mask.sum()), int(fn_mask.sum())


def make_atom_example(channels: np.ndarray, positions: np.ndarray, visible: np.ndarray,
                      spacing_px: float, rng: np.random.Generator | None, *,
                      data: AtomDataSection, net: AtomNetConfig) -> dict[str, torch.Tensor]:
    """One training crop: resampled input, Gaussian target, loss weights and the spacing target.

    ``channels`` (C, H, W) are already normalised; ``positions`` (N, 2) of every column in
    pixels, ``visible`` says which ones are targets; ``spacing_px`` is their spacing. ``rng=None``
    gives the validation form (canonical spacing, central crop, no augmentation).
    """
    from ..simulate.labels import circular_mask, gaussian_mask

    c, h, w = channels.shape
    canonical = net.canonical_spacing_px
    band = (canonical / data.scale_jitter, canonical * data.scale_jitter)
    conf_on = 1.0
    if rng is None:
        target_s = canonical
    elif rng.random() < data.wide_fraction:
        target_s = log_uniform(rng, data.wide_spacing_px)
        conf_on = float(band[0] <= target_s <= band[1])
    else:
        target_s = canonical * math.exp(uniform(rng, (-math.log(data.scale_jitter),
                                                      math.log(data.scale_jitter))))
    # the resampling inference allows: at most 4x up, 64x down
    factor = float(np.clip(target_s / spacing_px, 1.0 / 64.0, 4.0))
    size = scaled_size((h, w), factor)
    x = resample(torch.from_numpy(np.ascontiguousarray(channels))[None], size)[0].numpy()
    s_res = spacing_px * math.sqrt(size[0] / h * size[1] / w)
    if rng is not None and conf_on and not band[0] <= s_res <= band[1]:
        conf_on = 0.0
    pos = to_resampled(np.asarray(positions, float).reshape(-1, 2), (h, w), size)
    p = data.patch_size
    canvas = np.zeros((c, p, p), np.float32)
    valid = np.zeros((p, p), np.float32)
    offsets = []
    for n in size:
        if n >= p:
            start = (n - p) // 2 if rng is None else int(rng.integers(0, n - p + 1))
            offsets.append((start, 0, p))         # source start, destination start, length
        else:
            dst = (p - n) // 2 if rng is None else int(rng.integers(0, p - n + 1))
            offsets.append((0, dst, n))
    (sy, dy, ly), (sx, dx, lx) = offsets
    canvas[:, dy:dy + ly, dx:dx + lx] = x[:, sy:sy + ly, sx:sx + lx]
    valid[dy:dy + ly, dx:dx + lx] = 1.0
    pos = pos - np.array([sy - dy, sx - dx], float)
    sigma = net.sigma_per_spacing * s_res
    margin = 4.0 * sigma + 1.0
    near = np.all((pos > -margin) & (pos < p - 1 + margin), axis=1)
    target = gaussian_mask(pos[near & visible], (p, p), sigma, combine="max")
    weight = valid
    hidden = pos[near & ~visible]
    if len(hidden):
        weight = weight * (1.0 - circular_mask(hidden, (p, p), max(0.35 * s_res, 1.0)))
    stack = np.concatenate([canvas, target[None], weight[None]])
    if rng is not None and data.augment:
        stack = nndata.dihedral(stack, int(rng.integers(0, 8)))
    stack = np.ascontiguousarray(stack, dtype=np.float32)
    return {
        "input": torch.from_numpy(stack[:c]),
        "target": torch.from_numpy(stack[c:c + 1]),
        "weight": torch.from_numpy(stack[c + 1:c + 2]),
        "log_spacing": torch.tensor([math.log(s_res / canonical)], dtype=torch.float32),
        "conf_on": torch.tensor([conf_on], dtype=torch.float32),
    }


# ---------------------------------------------------------------------------------------------
# Sources of labelled images


@dataclass(frozen=True)
class SyntheticAtoms:
    """Toy labelled images for tests: a lattice of bright (Z = 30) and faint (Z = 8) Gaussian
    columns with Poisson noise. Not a model of any microscope."""

    size: tuple[int, int] = (64, 64)
    spacing_px: tuple[float, float] = (6.0, 12.0)
    peak_counts: tuple[float, float] = (20.0, 200.0)
    faint_fraction: float = 0.2

    def __call__(self, rng: np.random.Generator) -> dict[str, Any]:
        h, w = self.size
        a = uniform(rng, self.spacing_px)
        theta = uniform(rng, (0.0, math.pi / 2))
        v1 = a * np.array([math.sin(theta), math.cos(theta)])
        v2 = a * np.array([math.cos(theta), -math.sin(theta)])
        reach = math.ceil(1.5 * max(h, w) / a) + 2
        ij = np.stack(np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1)),
                      -1).reshape(-1, 2)
        pos = ij @ np.stack([v1, v2]) + np.array([h / 2, w / 2]) + rng.uniform(-a, a, 2)
        pos = pos[np.all((pos >= -0.5) & (pos <= np.array([h, w]) - 0.5), axis=1)]
        species = np.where(rng.random(len(pos)) < self.faint_fraction, 8, 30)
        count = np.where(species == 30, 10, 1)
        amp = np.where(species == 30, 1.0, 0.01)
        sigma = 0.18 * a
        gy = np.exp(-0.5 * ((np.arange(h)[None, :] - pos[:, :1]) / sigma) ** 2)
        gx = np.exp(-0.5 * ((np.arange(w)[None, :] - pos[:, 1:]) / sigma) ** 2)
        clean = (gy * amp[:, None]).T @ gx + 0.1
        image = rng.poisson(clean * log_uniform(rng, self.peak_counts)).astype(np.float32)
        return {"image": image, "positions": pos, "species": species, "atom_count": count,
                "kind": "crystal", "pixel_size_A": None, "clean": clean}


@dataclass(frozen=True)
class SimulatorAtoms:
    """Labelled images from the physics simulator (``simulate_pair``)."""

    modality: str = "stem"
    resolution: str = "hr"
    size: tuple[int, int] = (256, 256)
    sampler: dict = field(default_factory=dict)

    def config(self):
        return nndata.SimulatorPairs(self.modality, self.resolution, tuple(self.size),
                                     dict(self.sampler)).config()

    def __call__(self, rng: np.random.Generator) -> dict[str, Any]:
        from ..simulate.sampler import simulate_pair

        distorted, clean, labels = simulate_pair(config=self.config(), rng=rng)
        cols = labels["columns"]
        support = labels["params"].get("specimen", {}).get("support") or {}
        return {"image": distorted, "positions": np.asarray(recorded_positions(cols), float),
                "clean": clean, "physical_positions": np.asarray(cols["position_px"], float),
                "species": np.asarray(cols["species"]),
                "atom_count": np.asarray(cols["atom_count"]),
                "kind": str(labels["params"].get("specimen_kind", "")),
                "pixel_size_A": float(labels["pixel_size_A"]),
                "crystalline_support": bool(support.get("crystalline", False))}


def recorded_positions(columns: dict[str, Any]) -> np.ndarray:
    """Where the columns show in the recorded image: the detector's target. The scan distortion
    moves them by up to several pixels from their physical ``position_px``; a label there asks the
    network to undo random jitter from one frame, which it cannot learn. Older libraries without
    ``position_recorded_px`` fall back to ``position_px``."""
    return np.asarray(columns.get("position_recorded_px", columns["position_px"]))


def _position_field(h5) -> str:
    return ("position_recorded_px" if "position_recorded_px" in h5["columns"]
            else "position_px")


_KIND_RE = re.compile(r'"specimen_kind":\s*"(\w+)"')
_CRYSTAL_SUPPORT_RE = re.compile(r'"crystalline":\s*true')


def usable_spacing(scene: dict[str, Any], data: AtomDataSection) -> float | None:
    """The visible columns' spacing (px) when a scene is usable for training, else None."""
    if scene.get("kind") not in data.kinds:
        return None
    if scene.get("crystalline_support") and not data.crystalline_support:
        return None
    vis = scene_visible(scene, data)
    if vis.sum() < max(2, data.min_columns):
        return None
    s = column_spacing_px(np.asarray(scene["positions"])[vis])
    if not (np.isfinite(s) and data.spacing_px[0] <= s <= data.spacing_px[1]):
        return None
    pixel = scene.get("pixel_size_A")
    if pixel is not None and s * float(pixel) < data.min_spacing_A:
        return None
    return float(s)


class LibraryIndex:
    """The usable images of one HDF5 library and their column spacings (read once)."""

    def __init__(self, path: str | os.PathLike, data: AtomDataSection):
        import h5py

        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"training library not found: {self.path}; write it with "
                             f"`emrestore simulate --out {self.path} --n N ...`")
        with h5py.File(self.path, "r") as h5:
            if "columns" not in h5 or "column_offsets" not in h5:
                raise InputError(f"{self.path} has no column labels: not a library written by "
                                 "`emrestore simulate`")
            n = int(h5.attrs.get("n_done", h5["distorted"].shape[0]))
            offsets = h5["column_offsets"][: n + 1]
            positions = h5[f"columns/{_position_field(h5)}"][: offsets[-1]]
            species = h5["columns/species"][: offsets[-1]]
            count = h5["columns/atom_count"][: offsets[-1]]
            pixel = h5["scalars/pixel_size_A"][:n]
            params = h5["params"][:n]
            self.shape = tuple(h5["distorted"].shape[1:])
        self.n = n
        indices, spacings = [], []
        for i in range(n):
            text = params[i].decode() if isinstance(params[i], bytes) else str(params[i])
            found = _KIND_RE.search(text)
            lo, hi = offsets[i], offsets[i + 1]
            scene = {"kind": found.group(1) if found else "", "positions": positions[lo:hi],
                     "species": species[lo:hi], "atom_count": count[lo:hi],
                     "pixel_size_A": float(pixel[i]),
                     "crystalline_support": bool(_CRYSTAL_SUPPORT_RE.search(text))}
            s = usable_spacing(scene, data)
            if s is not None:
                indices.append(i)
                spacings.append(s)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.spacings = np.asarray(spacings, dtype=np.float64)
        self.pixel_sizes = pixel


class _LibraryReader:
    """Opens a library (and its restored side file) lazily, per worker process."""

    def __init__(self, path: Path, restored: Path | None, with_clean: bool = False):
        self.path, self.restored, self.with_clean = path, restored, with_clean
        self._h5 = self._r5 = None

    def __getstate__(self):
        return {**self.__dict__, "_h5": None, "_r5": None}

    def scene(self, i: int) -> tuple[np.ndarray, dict[str, Any]]:
        """(channels (raw[, restored]), scene dict with the column labels) of image ``i``."""
        import h5py

        if self._h5 is None:
            self._h5 = h5py.File(self.path, "r")
        h5 = self._h5
        lo, hi = h5["column_offsets"][i], h5["column_offsets"][i + 1]
        chans = [h5["distorted"][i]]
        if self.restored is not None:
            if self._r5 is None:
                self._r5 = h5py.File(self.restored, "r")
            chans.append(self._r5["restored"][i])
        scene = {"positions": h5[f"columns/{_position_field(h5)}"][lo:hi],
                 "species": h5["columns/species"][lo:hi],
                 "atom_count": h5["columns/atom_count"][lo:hi],
                 "pixel_size_A": float(h5["scalars/pixel_size_A"][i])}
        if self.with_clean:  # for data.labels = "detectable"
            scene["clean"] = h5["clean"][i]
            scene["physical_positions"] = h5["columns/position_px"][lo:hi]
        return np.stack(chans), scene


def _channels(chans: np.ndarray, data: AtomDataSection) -> np.ndarray:
    """Select and normalise the network's input channels from (raw[, restored])."""
    if data.input == "raw":
        chans = chans[:1]
    elif data.input == "restored":
        chans = chans[1:2]
    return normalise(np.asarray(chans, np.float32), **data.normalisation)[0].astype(np.float32)


class AtomLibraryDataset(Dataset):
    """Map-style: virtual index ``j`` -> usable image ``j mod N`` with a crop and scale drawn
    from ``SeedSequence(seed, spawn_key=(j,))`` (use with :class:`nn.data.EpochSampler`)."""

    def __init__(self, index: LibraryIndex, positions: np.ndarray, cfg: AtomTrainConfig,
                 restored: Path | None):
        self.index = index
        self.items = np.asarray(positions, dtype=np.int64)  # positions in index.indices
        if self.items.size == 0:
            raise InputError(f"{index.path}: no usable training images (check data.kinds, "
                             "data.min_spacing_A and data.spacing_px)")
        self.cfg = cfg
        self.reader = _LibraryReader(index.path, restored, cfg.data.labels == "detectable")

    def __len__(self) -> int:
        return int(self.items.size)

    def example(self, k: int, rng) -> dict[str, torch.Tensor]:
        chans, scene = self.reader.scene(int(self.index.indices[k]))
        pos, vis = scene_targets(scene, self.cfg.data)
        return make_atom_example(_channels(chans, self.cfg.data), pos, vis,
                                 float(self.index.spacings[k]), rng, data=self.cfg.data,
                                 net=self.cfg.model)

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        k = int(self.items[int(j) % self.items.size])
        return self.example(k, nndata.sample_rng(self.cfg.seed, int(j)))


class AtomStream(nndata.BatchStream):
    """Endless deterministic batches from a scene source (simulator or synthetic); batch ``b``
    comes from ``SeedSequence(seed, spawn_key=(b,))`` whatever the number of workers."""

    def __init__(self, source, cfg: AtomTrainConfig, start: int = 0, restore_fn=None):
        super().__init__()
        self.source, self.cfg, self.start, self.restore_fn = source, cfg, start, restore_fn

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        rng = nndata.sample_rng(cfg.seed, index)
        examples: list[dict[str, torch.Tensor]] = []
        tries = 0
        while len(examples) < cfg.batch_size:
            tries += 1
            if tries > 50 * cfg.batch_size:
                raise InputError("the data source yields no usable images (check data.kinds, "
                                 "data.min_spacing_A, data.spacing_px and the sampler)")
            scene_rng, crop_rng = rng.spawn(2)
            scene = self.source(scene_rng)
            s = usable_spacing(scene, cfg.data)
            if s is None:
                continue
            chans = scene_channels(scene, self.restore_fn)
            pos, vis = scene_targets(scene, cfg.data)
            x = _channels(chans, cfg.data)
            for _ in range(cfg.data.crops_per_image):
                if len(examples) == cfg.batch_size:
                    break
                examples.append(make_atom_example(x, pos, vis, s,
                                                  crop_rng, data=cfg.data, net=cfg.model))
        return nndata.collate(examples)


def scene_channels(scene: dict[str, Any], restore_fn=None) -> np.ndarray:
    """(raw[, restored]) channels of a scene."""
    image = np.asarray(scene["image"], np.float32)
    if restore_fn is None:
        return image[None]
    return np.stack([image, np.asarray(restore_fn(image), np.float32)])


class RestoreFn:
    """Picklable ``image -> restored image`` with a shipped restoration model (CPU)."""

    def __init__(self, model: str):
        self.model = model

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from ..restore import restore

        return restore(image, model=self.model, device="cpu")


def _check_restore_model(name: str) -> None:
    from .zoo import load_model

    try:
        load_model(name, device="cpu", task="restore")
    except InputError as exc:
        raise ConfigError(f"data.input needs the restoration model {name!r}: {exc}") from exc


def ensure_restored(index: LibraryIndex, model: str, out: Path, *, progress: bool = True) -> Path:
    """Restore the usable images of a library once into ``out`` (HDF5 ``restored`` (N, H, W) and
    a ``done`` mask; resumable)."""
    import h5py
    from tqdm import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    fn = RestoreFn(model)
    n, (h, w) = index.n, index.shape
    with h5py.File(out, "a") as r5, h5py.File(index.path, "r") as h5:
        if "restored" not in r5:
            r5.create_dataset("restored", (n, h, w), dtype="f4", chunks=(1, h, w),
                              compression="lzf")
            r5.create_dataset("done", data=np.zeros(n, bool))
            r5.attrs.update(library=str(index.path), model=model)
        elif r5.attrs.get("model") != model or r5["restored"].shape[0] < n:
            raise InputError(f"{out} holds images restored otherwise; delete it to redo them")
        done = r5["done"][:]
        todo = [int(i) for i in index.indices if not done[i]]
        for i in tqdm(todo, disable=not progress, desc=f"restore {index.path.name}", unit="img"):
            r5["restored"][i] = fn(h5["distorted"][i])
            r5["done"][i] = True
    return out


# ---------------------------------------------------------------------------------------------
# Validation


def _validation_items(cfg: AtomTrainConfig, held: list[tuple], source=None, restore_fn=None
                      ) -> list[dict[str, Any]]:
    """Fixed validation images: (channels, visible, hidden positions, spacing)."""
    items = []
    if held:
        for reader, i, s in held:
            chans, scene = reader.scene(i)
            pos, vis = scene_targets(scene, cfg.data)
            items.append({"x": _channels(chans, cfg.data), "truth": pos[vis],
                          "hidden": pos[~vis], "spacing": s})
        return items
    k = 0
    while len(items) < cfg.data.validation_size:
        if k > 50 * cfg.data.validation_size:
            raise InputError("the data source yields no usable validation images")
        scene = source(nndata.sample_rng(cfg.seed + 1_000_003, k))
        k += 1
        s = usable_spacing(scene, cfg.data)
        if s is None:
            continue
        pos, vis = scene_targets(scene, cfg.data)
        items.append({"x": _channels(scene_channels(scene, restore_fn), cfg.data),
                      "truth": pos[vis], "hidden": pos[~vis], "spacing": s})
    return items


@torch.no_grad()
def evaluate_atoms(model: AtomNet, items: list[dict[str, Any]], *, device,
                   thresholds=(0.3,), iou_thresholds=(0.3,), coarse_px: int = 384
                   ) -> dict[str, float]:
    """Validation scores of an atom finder.

    ``val_f1``: column-detection F1 (counts pooled over the images, matching radius 0.25 ×
    spacing, invisible columns and the border band ignored) at the best pair of ``thresholds`` and
    NMS ``iou_thresholds`` (``val_threshold``, ``val_iou_threshold``), with
    every image resampled to the canonical spacing from its true spacing and the boxes sized by
    the spacing head. ``val_spacing_log_err``: mean |log(predicted / true spacing)| of the
    spacing head on a central crop at the image's native scale (the coarse pass of inference).
    """
    model.eval()
    canonical = model.config.canonical_spacing_px
    grid = [(t, u) for t in thresholds for u in iou_thresholds]
    counts = np.zeros((len(grid), 3))
    log_err = []
    for item in items:
        x = item["x"]
        h, w = x.shape[-2:]
        full = torch.from_numpy(x)[None].to(device)
        side = min(coarse_px, h, w)
        r0, c0 = (h - side) // 2, (w - side) // 2
        _, log_native = model(full[..., r0:r0 + side, c0:c0 + side])
        log_err.append(abs(float(log_native[0]) + math.log(canonical / item["spacing"])))
        size = scaled_size((h, w), canonical / item["spacing"])
        logits, log_s = model(resample(full, size))
        conf = torch.sigmoid(logits[0, 0]).float().cpu()
        s_pred = canonical * math.exp(float(log_s[0]))
        box = float(np.clip(s_pred, 0.5 * canonical, 2.0 * canonical))
        for t_i, (t, u) in enumerate(grid):
            pos, _ = decode_nms(conf, box, threshold=t, iou_threshold=u)
            pos = from_resampled(pos, (h, w), size) if len(pos) else pos
            counts[t_i] += detection_counts(pos, item["truth"], 0.25 * item["spacing"],
                                            ignore=item["hidden"], shape=(h, w),
                                            border_px=0.25 * item["spacing"])
    tp, fp, fn = counts.T
    f1 = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    best = int(np.argmax(f1))
    out = {"val_f1": float(f1[best]), "val_threshold": float(grid[best][0]),
           "val_iou_threshold": float(grid[best][1]),
           "val_spacing_log_err": float(np.mean(log_err)) if log_err else float("nan")}
    for (t, u), v in zip(grid, f1):
        out[f"val_f1@{t:g}/{u:g}"] = float(v)
    return out


# ---------------------------------------------------------------------------------------------
# Loss


def atom_loss(logits: torch.Tensor, log_spacing: torch.Tensor, batch: dict[str, torch.Tensor],
              loss: AtomLossSection) -> tuple[torch.Tensor, dict[str, float]]:
    """Confidence-map loss (mean over weighted pixels) + spacing_weight × L1 on log-spacing."""
    y = batch["target"]
    wgt = batch["weight"] * batch["conf_on"].view(-1, 1, 1, 1)
    logits = logits.float()
    if loss.confidence == "mse":
        per = (torch.sigmoid(logits) - y) ** 2
    else:
        per = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        per = per * (1.0 + loss.pos_weight * y)
        if loss.confidence == "focal":
            per = per * (y - torch.sigmoid(logits)).abs().pow(loss.focal_gamma)
    conf = (per * wgt).sum() / wgt.sum().clamp(min=1.0)
    spacing = (log_spacing.float() - batch["log_spacing"].view(-1)).abs().mean()
    total = conf + loss.spacing_weight * spacing
    return total, {"conf_loss": float(conf.detach()), "spacing_loss": float(spacing.detach())}


# ---------------------------------------------------------------------------------------------
# The loop


_LOG_FIELDS = ("step", "lr", "loss", "conf_loss", "spacing_loss", "grad_norm", "val_f1",
               "val_threshold", "val_iou_threshold", "val_spacing_log_err", "examples_per_s",
               "elapsed_s")


def _source(cfg: AtomTrainConfig):
    d = cfg.data
    if d.source == "synthetic":
        return SyntheticAtoms(size=tuple(d.image_size), **dict(d.sampler))
    return SimulatorAtoms(d.modality, d.resolution, tuple(d.image_size), dict(d.sampler))


def _ensure_library(cfg: AtomTrainConfig) -> None:
    """Simulate ``data.library`` up to ``data.library_size`` pairs if it holds fewer."""
    d = cfg.data
    if d.library_size > 0:
        runs.ensure_library(d.library, d.library_size, lambda: _source(cfg).config(),
                            seed=cfg.seed, workers=d.workers)


def _data(cfg: AtomTrainConfig, start_step: int, progress: bool):
    """(training DataLoader, validation items)."""
    d = cfg.data
    need_restored = d.input != "raw"
    if need_restored:
        _check_restore_model(d.restore_model)
    if d.source != "library":
        restore_fn = RestoreFn(d.restore_model) if need_restored else None
        source = _source(cfg)
        stream = AtomStream(source, cfg, start=start_step, restore_fn=restore_fn)
        loader = DataLoader(stream, batch_size=None, num_workers=d.workers,
                            persistent_workers=d.workers > 0)
        return loader, _validation_items(cfg, [], source, restore_fn)
    _ensure_library(cfg)
    parts, held = [], []
    for n_lib, path in enumerate([d.library, *d.extra_libraries]):
        index = LibraryIndex(path, d)
        restored = None
        if need_restored:
            restored = ensure_restored(index, d.restore_model, Path(cfg.output_dir) / "restored"
                                       / f"{Path(path).stem}.{Path(d.restore_model).stem}.h5",
                                       progress=progress)
        order = np.arange(index.indices.size)
        if n_lib == 0:
            n_val = min(d.validation_size, order.size - 1)
            if n_val < 1:
                raise InputError(f"{path}: too few usable images ({order.size}) to hold out a "
                                 "validation set")
            reader = _LibraryReader(index.path, restored, cfg.data.labels == "detectable")
            held = [(reader, int(index.indices[k]), float(index.spacings[k]))
                    for k in order[order.size - n_val:]]
            order = order[: order.size - n_val]
        parts.append(AtomLibraryDataset(index, order, cfg, restored))
    # LibraryUnion, not ConcatDataset: EpochSampler's indices run past len() after epoch 1
    train = parts[0] if len(parts) == 1 else nndata.LibraryUnion(parts)
    sampler = nndata.EpochSampler(len(train), seed=cfg.seed, start=start_step * cfg.batch_size)
    loader = DataLoader(train, batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=d.workers, collate_fn=nndata.collate,
                        persistent_workers=d.workers > 0)
    return loader, _validation_items(cfg, held)


def _load_initial_weights(model: AtomNet, source: str) -> None:
    """Copy weights from a checkpoint folder (its EMA) or an exported .safetensors file."""
    runs.load_initial_weights(model, source, key="init_from", what="network")


def train_atomnet_from_config(path_or_dict, *, resume: bool = True, max_steps: int | None = None,
                              progress: bool = True, device: str | None = None) -> Path:
    """Train the atom finder from a TOML file / dict / AtomTrainConfig; return the last
    checkpoint folder (``output_dir/checkpoints/last``; ``best`` holds the best validation F1).

    Parameters
    ----------
    path_or_dict : the run's configuration (``task = "atoms"``).
    resume : continue from ``output_dir/checkpoints/last`` when it exists (same network).
    max_steps : stop after this many steps in this call (the schedule still spans
        ``config.steps``; a later call resumes).
    progress : show progress bars.
    device : overrides ``config.device``.
    """
    cfg = load_atom_config(path_or_dict)
    run = runs.Run(cfg, device=device, command=runs.run_command(
        path_or_dict, "emrestore.nn.atomnet_train.train_atomnet_from_config"))
    dev = run.device
    model = build_atomnet(cfg.model).to(dev)
    if cfg.trainable == "spacing":  # the rest is frozen before AdamW sees the parameters
        for pname, p in model.named_parameters():
            p.requires_grad_(pname.startswith(SPACING_HEAD))
    run.attach(model)

    def same_network(saved: dict) -> bool:
        return saved.get("task") == "atoms" and dataclasses.asdict(
            build_atomnet(saved.get("model", {})).config) == dataclasses.asdict(model.config)

    spacing_only = cfg.trainable == "spacing"
    best_key = "best_neg_val_spacing_log_err" if spacing_only else "best_val_f1"
    run.start(resume=resume, max_steps=max_steps, best_key=best_key, what="network",
              same_network=same_network, init_from=cfg.init_from,
              load_initial=_load_initial_weights)
    loader, val = _data(cfg, run.step, progress)
    with run.training(loader, _LOG_FIELDS, progress=progress) as batches:
        for batch in batches:
            batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
            run.set_lr()
            model.train()
            with run.autocast():
                logits, log_s = model(batch["input"])
            loss, parts = atom_loss(logits, log_s, batch, cfg.loss)
            grad_norm = run.optimise(loss)
            run.advance(batch["input"].shape[0], loss, grad_norm, parts)

            row: dict[str, Any] = {}
            if run.validation_due():
                scores = evaluate_atoms(run.ema, val, device=dev, thresholds=cfg.thresholds,
                                        iou_thresholds=cfg.iou_thresholds)
                run.metrics.update(scores, val_step=run.step)
                row.update(val_f1=f"{scores['val_f1']:.4f}",
                           val_threshold=f"{scores['val_threshold']:g}",
                           val_iou_threshold=f"{scores['val_iou_threshold']:g}",
                           val_spacing_log_err=f"{scores['val_spacing_log_err']:.4f}")
                run.show(f1=f"{scores['val_f1']:.3f}")
                rank = -scores["val_spacing_log_err"] if spacing_only else scores["val_f1"]
                run.keep_best(rank, best_threshold=scores["val_threshold"],
                              best_iou_threshold=scores["val_iou_threshold"])
            run.end_step(row)
    return run.ckpt_dir / "last"


# ---------------------------------------------------------------------------------------------
# Export


def export_atomnet(checkpoint: str | os.PathLike, name: str = "atoms-hr", *,
                   out_dir: str | os.PathLike | None = None, use_ema: bool = True,
                   metrics: dict | None = None, description: str = "",
                   threshold: float | None = None, iou_threshold: float | None = None) -> Path:
    """Write ``<name>.safetensors`` and the card ``<name>.json`` (``"task": "atoms"``).

    Parameters
    ----------
    checkpoint : a folder written by training (``.../checkpoints/best`` or ``last``).
    name : model name (letters, digits, '-', '_'); ``find_atoms`` looks for "atoms-hr".
    out_dir : destination (default: the package's ``nn/weights`` folder).
    use_ema : export the EMA weights (default).
    metrics : extra measured metrics for the card (e.g. the detect_quality benchmark's).
    description : one line for ``emrestore models``.
    threshold, iou_threshold : the default confidence threshold and NMS overlap stored in the
        card; default the best pair of the checkpoint's validation (else 0.3 and 0.3).

    Returns the path of the safetensors file.
    """
    runs.check_model_name(name)
    meta, tensors, _ = runs.read_checkpoint(checkpoint)
    if meta["config"].get("task") != "atoms":
        raise InputError(f"{checkpoint} is not an atom-finder checkpoint (task "
                         f"{meta['config'].get('task', 'restore')!r}); use "
                         "emrestore.nn.train.export_model for restoration networks")
    cfg = AtomTrainConfig.from_dict(meta["config"])
    model = build_atomnet(cfg.model)
    model.load_state_dict(runs.checkpoint_weights(tensors, use_ema))
    model.eval()
    st_path, digest = runs.write_weights(
        model, name, out_dir, {"name": name, "architecture": "atomnet", "task": "atoms"})
    found = meta.get("metrics", {})
    if threshold is None:
        threshold = float(found.get("best_threshold") or found.get("val_threshold") or 0.3)
    if iou_threshold is None:
        iou_threshold = float(found.get("best_iou_threshold") or 0.3)
    d = cfg.data
    card = {
        "name": name,
        "card_version": 1,
        "task": "atoms",
        "description": description or (f"{d.resolution.upper()}-{d.modality.upper()} atom "
                                       f"finder (AtomID-style U-Net, {d.input} input)"),
        "architecture": "atomnet",
        **runs.card_weights(model, st_path, digest),
        "modality": d.modality,
        "resolution": d.resolution,
        "input": d.input,
        "restore_model": d.restore_model if d.input != "raw" else None,
        "output": "confidence map (0-1) and column spacing; decoded to column positions",
        "decode": {"method": "nms", "threshold": float(threshold),
                   "iou_threshold": float(iou_threshold)},
        "visible_fraction": d.visible_fraction,
        "labels": d.labels,
        "normalisation": normalisation_card(**d.normalisation),
        **runs.card_geometry(model, ConfidenceOnly(model)),
        "training": runs.card_training(meta, cfg, to_dict(cfg.loss)),
        "metrics": {**found, **(metrics or {})},
        **runs.card_provenance(),
    }
    runs.write_card(card, st_path)
    return st_path


def atomnet_from_checkpoint(checkpoint: str | os.PathLike, *, use_ema: bool = True,
                            device: str | torch.device = "cpu") -> tuple[AtomNet, dict[str, Any]]:
    """``(network in eval mode, card-like dict)`` from a training checkpoint folder, before
    export (benchmarks, comparisons of runs). Only safetensors and JSON are read."""
    meta, tensors, _ = runs.read_checkpoint(checkpoint)
    if meta["config"].get("task") != "atoms":
        raise InputError(f"{checkpoint} is not an atom-finder checkpoint")
    cfg = AtomTrainConfig.from_dict(meta["config"])
    model = build_atomnet(cfg.model)
    model.load_state_dict(runs.checkpoint_weights(tensors, use_ema))
    found = meta.get("metrics", {})
    card = {"name": str(checkpoint), "task": "atoms", "input": cfg.data.input,
            "restore_model": cfg.data.restore_model if cfg.data.input != "raw" else None,
            "decode": {"method": "nms", "threshold": float(found.get("best_threshold") or 0.3),
                       "iou_threshold": float(found.get("best_iou_threshold") or 0.3)},
            "normalisation": normalisation_card(**cfg.data.normalisation),
            "metrics": found, "training": {"steps": int(meta["step"])}}
    return model.eval().requires_grad_(False).to(device), card
