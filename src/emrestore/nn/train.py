"""Training a restoration network from a TOML config: ``emrestore train --config FILE``.

:class:`TrainConfig` maps one to one onto the TOML file (tables ``[model]``, ``[loss]``,
``[data]``, ``[optim]``, ``[gan]``; unknown keys are errors). :func:`train_from_config` runs it:

* data streamed from the simulator through DataLoader workers, or read from an HDF5 library
  (``nn.data``), normalised exactly as at inference (``nn.normalise``);
* AdamW, linear warm-up then cosine decay, gradient-norm clipping, an EMA of the weights (the
  EMA weights are validated and exported);
* optional relativistic-average patch-GAN stage (seed 001) from ``gan.start_step``;
* PSNR on a fixed-seed validation set, a CSV log and a tqdm progress bar;
* checkpoints in ``output_dir/checkpoints/{last,best}``: weights as safetensors, optimiser state
  with ``torch.save`` (tensors and numbers only, read back with ``weights_only=True``); a second
  run of the same config resumes from ``last`` and continues the step counter;
* CPU by default (all threads); CUDA with autocast (bf16, or fp16 with a GradScaler) when present.

:func:`export_model` turns a checkpoint into a shipped model: ``weights/<name>.safetensors`` and
the JSON card ``weights/<name>.json`` that ``nn.zoo`` and ``emrestore.restore`` read.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import ConfigError, InputError
from ..simulate.config import from_dict, load_toml, to_dict
from . import data as nndata
from .blocks import build_model, config_from_dict, count_parameters, receptive_field
from .losses import TERMS, CompositeLoss, PatchDiscriminator, RelativisticAverageGAN
from .normalise import DEFAULT_PARAMS, normalisation_card

# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ModelSection:
    """``[model]``: architecture name (``unet``, ``cgrdn``, ``dae``) and its config table.

    init_from : weights that start a new run instead of a random initialisation (continued
        training or fine-tuning on new data): a checkpoint folder written by training (its EMA
        weights) or an exported ``.safetensors`` model. Ignored when the run resumes from its own
        ``last`` checkpoint.
    """

    architecture: str = "unet"
    config: dict = field(default_factory=dict)
    init_from: str = ""


@dataclass(frozen=True)
class DataSection:
    """``[data]``: where the pairs come from and how they are cut.

    source : "simulator" (stream from ``simulate_pair``), "library" (HDF5 file at ``library``)
        or "synthetic" (toy Gaussian lattice, for tests).
    extra_libraries : more HDF5 libraries whose samples all join the training set (e.g. one
        drawn with another sampler mix); validation stays on the last samples of ``library``.
    library_size : with source "library": simulate the library (``write_library``, seed
        ``seed``, ``max(1, workers)`` processes) up to this many pairs before training if the
        file holds fewer (resumable); 0: the file must exist.
    modality, resolution, image_size : what the simulator draws (image_size in px).
    sampler : overrides of ``SamplerConfig`` (simulator) or ``SyntheticPairs`` (synthetic).
    patch_size : training crop, px. crops_per_pair : crops taken from each simulated image.
    augment : random dihedral symmetry (8) per crop.
    workers : DataLoader worker processes (0: draw in the training process).
    validation_size : images in the fixed-seed validation set (for a library: the last
        ``validation_size`` samples, held out of training).
    validation_patch : central crop of validation images, px (0: whole image).
    normalisation : overrides of ``nn.normalise.DEFAULT_PARAMS``.
    """

    source: str = "simulator"
    modality: str = "stem"
    resolution: str = "hr"
    image_size: tuple[int, int] = (256, 256)
    library: str = ""
    extra_libraries: tuple[str, ...] = ()
    library_size: int = 0
    sampler: dict = field(default_factory=dict)
    patch_size: int = 128
    crops_per_pair: int = 4
    augment: bool = True
    workers: int = 0
    validation_size: int = 32
    validation_patch: int = 0
    normalisation: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.source not in ("simulator", "library", "synthetic"):
            raise ConfigError(f"data.source must be 'simulator', 'library' or 'synthetic', "
                              f"got {self.source!r}")
        if self.source == "library" and not self.library:
            raise ConfigError("data.source = 'library' needs data.library = 'path/to/lib.h5'")
        if self.patch_size < 16:
            raise ConfigError(f"data.patch_size must be >= 16 px, got {self.patch_size}")
        unknown = sorted(set(self.normalisation) - set(DEFAULT_PARAMS))
        if unknown:
            raise ConfigError(f"data.normalisation: unknown parameter(s) {unknown}")


@dataclass(frozen=True)
class OptimSection:
    """``[optim]``: AdamW, warm-up + cosine schedule, clipping and EMA.

    lr : peak learning rate. min_lr_ratio : final lr as a fraction of ``lr``.
    warmup_steps : linear warm-up from 0. weight_decay : AdamW decay of conv weights (not biases).
    betas : Adam betas. grad_clip : max global gradient norm (0: off).
    ema_decay : decay of the weight EMA (0: no EMA; warmed up as min(decay, (1+t)/(10+t))).
    """

    lr: float = 1e-3
    min_lr_ratio: float = 0.02
    warmup_steps: int = 500
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999


@dataclass(frozen=True)
class GANSection:
    """``[gan]``: the optional relativistic-average patch-GAN stage (seed 001 eqs 12, 15).

    enabled : train a discriminator and add ``weight × L_adv`` to the generator loss from
    ``start_step``. lr : discriminator learning rate. features : its first-layer width.
    layers : strided layers of the patch discriminator (3: the 70×70 pix2pix one, which needs
    training patches of at least 80 px).
    """

    enabled: bool = False
    weight: float = 1e-3
    start_step: int = 0
    lr: float = 1e-4
    features: int = 64
    layers: int = 3


@dataclass(frozen=True)
class TrainConfig:
    """One training run; a TOML file maps onto it one to one.

    name : model name (card name at export). seed : every random draw (init, data, validation).
    output_dir : run folder (checkpoints, CSV log). steps : optimiser steps in total.
    batch_size : examples per step. val_every, checkpoint_every, log_every : in steps.
    device : "auto" (CUDA if present, else CPU), "cpu", "cuda", "cuda:1", ...
    amp : "auto" (bf16/fp16 autocast on CUDA, off on CPU), "bf16", "fp16" or "off".
    threads : CPU threads for torch (0: all).
    loss : ``{term: weight}`` (names in ``nn.losses.TERMS``); loss_options : per-term kwargs.
    """

    name: str = "model"
    seed: int = 0
    output_dir: str = "runs/model"
    steps: int = 20000
    batch_size: int = 16
    val_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 50
    device: str = "auto"
    amp: str = "auto"
    threads: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    loss: dict = field(default_factory=lambda: {"l1_std": 1.0})
    loss_options: dict = field(default_factory=dict)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    gan: GANSection = field(default_factory=GANSection)

    def __post_init__(self):
        for name in ("steps", "batch_size", "val_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {self.amp!r}")
        unknown = sorted(set(self.loss) - set(TERMS))
        if unknown:
            raise ConfigError(f"[loss]: unknown term(s) {unknown}; valid names are {sorted(TERMS)}")
        config_from_dict(self.model.architecture, self.model.config)  # validates early

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, dict(data))

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> TrainConfig:
        return cls.from_dict(load_toml(path))


def load_config(path_or_dict: str | os.PathLike | dict | TrainConfig) -> TrainConfig:
    """A TrainConfig from a TOML path, a dict or a TrainConfig."""
    if isinstance(path_or_dict, TrainConfig):
        return path_or_dict
    if isinstance(path_or_dict, dict):
        return TrainConfig.from_dict(path_or_dict)
    return TrainConfig.from_toml(path_or_dict)


# ---------------------------------------------------------------------------------------------
# Pieces


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate multiplier at (0-based) ``step``: linear warm-up, then cosine to min_ratio."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch has it (7× faster step on a CPU)."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, **kwargs)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: dict[str, torch.Tensor], *, device: torch.device,
             batch_size: int = 8) -> float:
    """Mean PSNR (dB) of ``model`` on a validation batch dict (see ``nn.data.validation_set``)."""
    model.eval()
    scores = []
    for i in range(0, val["input"].shape[0], batch_size):
        x = val["input"][i:i + batch_size].to(device)
        y = val["target"][i:i + batch_size].to(device)
        scores.append(nndata.psnr_db(model(x).float(), y.float()).cpu())
    return float(torch.cat(scores).mean())


def _pair_fn(cfg: TrainConfig):
    d = cfg.data
    kind = "simulator" if d.source == "library" else d.source
    return nndata.pair_source(kind, modality=d.modality, resolution=d.resolution,
                              size=d.image_size, sampler=d.sampler)


def _load_initial_weights(model: torch.nn.Module, source: str) -> None:
    """Copy weights from a checkpoint folder (its EMA) or an exported .safetensors file."""
    from safetensors.torch import load_file

    path = Path(source)
    if path.is_dir():
        tensors = _sub(read_checkpoint(path)[1], "ema")
    elif path.suffix == ".safetensors" and path.exists():
        tensors = load_file(str(path), device="cpu")
    else:
        raise InputError(f"model.init_from: {source} is neither a checkpoint folder nor a "
                         ".safetensors file")
    try:
        model.load_state_dict(widen_input_layer(tensors, model), strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"model.init_from: {source} does not fit this architecture: {exc}") \
            from exc


def widen_input_layer(tensors: dict[str, torch.Tensor], model: torch.nn.Module
                      ) -> dict[str, torch.Tensor]:
    """Let weights of a network with fewer input channels start one with more (e.g. the U-Net
    with ``input_blurs`` added): the first convolution's kernels for the new channels are zero,
    so the widened network computes exactly what the old one did and learns to use the rest.

    Only the ``stem.`` layer is widened, and only along its input-channel axis; the old channels
    must come first (the U-Net puts the image before its blurred copies).
    """
    own = model.state_dict()
    out = dict(tensors)
    for key, old in tensors.items():
        new = own.get(key)
        if (key.startswith("stem.") and new is not None and new.ndim == old.ndim == 4
                and new.shape[0] == old.shape[0] and new.shape[2:] == old.shape[2:]
                and new.shape[1] > old.shape[1]):
            wide = torch.zeros_like(new)
            wide[:, : old.shape[1]] = old
            out[key] = wide
    return out


def _loader(cfg: TrainConfig, start_step: int) -> tuple[DataLoader, Any]:
    d = cfg.data
    if d.source == "library":
        _ensure_library(cfg)
        lib = nndata.LibraryDataset(d.library, patch_size=d.patch_size, seed=cfg.seed,
                                    augment=d.augment, norm_params=d.normalisation)
        n = len(lib)
        n_val = min(d.validation_size, n - 1)
        if n_val < 1:
            raise InputError(f"{d.library}: too few samples ({n}) to hold out a validation set")
        train = nndata.LibraryDataset(d.library, patch_size=d.patch_size, seed=cfg.seed,
                                      augment=d.augment, norm_params=d.normalisation,
                                      indices=list(range(n - n_val)))
        held = nndata.LibraryDataset(d.library, patch_size=d.patch_size, seed=cfg.seed,
                                     augment=False, norm_params=d.normalisation,
                                     indices=list(range(n - n_val, n)))
        extra = [nndata.LibraryDataset(path, patch_size=d.patch_size, seed=cfg.seed,
                                       augment=d.augment, norm_params=d.normalisation)
                 for path in d.extra_libraries]
        if extra:
            train = nndata.LibraryUnion([train, *extra])
        sampler = nndata.EpochSampler(len(train), seed=cfg.seed,
                                      start=start_step * cfg.batch_size)
        loader = DataLoader(train, batch_size=cfg.batch_size, sampler=sampler,
                            num_workers=d.workers, collate_fn=nndata.collate,
                            persistent_workers=d.workers > 0)
        return loader, held
    stream = nndata.PairStream(_pair_fn(cfg), batch_size=cfg.batch_size,
                               patch_size=d.patch_size, crops_per_pair=d.crops_per_pair,
                               seed=cfg.seed, start=start_step, augment=d.augment,
                               norm_params=d.normalisation)
    loader = DataLoader(stream, batch_size=None, num_workers=d.workers,
                        persistent_workers=d.workers > 0)
    return loader, None


def _ensure_library(cfg: TrainConfig) -> None:
    """Simulate ``data.library`` up to ``data.library_size`` pairs if it holds fewer."""
    d = cfg.data
    path = Path(d.library)
    if d.library_size <= 0:
        if not path.exists():
            raise InputError(f"training library not found: {path}; write it with `emrestore "
                             f"simulate --out {path} --n N ...` or set data.library_size")
        return
    if path.exists():
        import h5py

        with h5py.File(path, "r") as h5:
            if int(h5.attrs.get("n_done", 0)) >= d.library_size:
                return
    from ..simulate.library import write_library

    path.parent.mkdir(parents=True, exist_ok=True)
    sim = _pair_fn(cfg)
    write_library(path, d.library_size, sim.config(), seed=cfg.seed, workers=max(1, d.workers))


def _validation(cfg: TrainConfig, held) -> dict[str, torch.Tensor]:
    d = cfg.data
    patch = d.validation_patch or None
    if held is not None:
        return nndata.validation_set(n=len(held), seed=cfg.seed, patch_size=patch,
                                     library=held, norm_params=d.normalisation)
    return nndata.validation_set(_pair_fn(cfg), n=d.validation_size,
                                 seed=cfg.seed + 1_000_003, patch_size=patch,
                                 norm_params=d.normalisation)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _atomic_dir_write(target: Path, write) -> None:
    """Write a folder through ``write(tmp_dir)`` and swap it in place of ``target``."""
    tmp = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _plain_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}


def save_checkpoint(path: Path, *, model, ema, step: int, cfg: TrainConfig, optimiser,
                    scaler=None, disc=None, opt_d=None, metrics: dict | None = None,
                    command: str = "") -> Path:
    """Write a checkpoint folder: ``weights.safetensors``, ``state.pt``, ``meta.json``."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in _plain_state(model.state_dict()).items()}
    tensors.update({f"ema.{k}": v for k, v in _plain_state(ema.state_dict()).items()})
    if disc is not None:
        tensors.update({f"disc.{k}": v for k, v in _plain_state(disc.state_dict()).items()})
    state = {"step": int(step), "optimiser": optimiser.state_dict(),
             "torch_rng": torch.get_rng_state()}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    if opt_d is not None:
        state["opt_d"] = opt_d.state_dict()
    meta = {"step": int(step), "config": cfg.to_dict(), "metrics": metrics or {},
            "command": command, "saved": _dt.datetime.now(_dt.timezone.utc).isoformat()}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / "weights.safetensors"), metadata={"step": str(step)})
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=_json_default))

    _atomic_dir_write(Path(path), write)
    return Path(path)


def _json_default(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """``(meta, tensors, state)`` of a checkpoint folder, without unpickling anything.

    ``state.pt`` is read with ``torch.load(weights_only=True)``: tensors, numbers and plain
    containers only.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "weights.safetensors").exists() or not (path / "meta.json").exists():
        raise InputError(f"{path} is not a training checkpoint (no weights.safetensors/meta.json)")
    meta = json.loads((path / "meta.json").read_text())
    tensors = load_file(str(path / "weights.safetensors"))
    state = {}
    if (path / "state.pt").exists():
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    return meta, tensors, state


def _sub(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


# ---------------------------------------------------------------------------------------------
# The loop


_LOG_FIELDS = ("step", "lr", "loss", "grad_norm", "adv", "d_loss", "val_psnr_db",
               "val_raw_psnr_db", "examples_per_s", "elapsed_s")


def optimiser_step(loss: torch.Tensor, model: torch.nn.Module, optimiser, scaler,
                   grad_clip: float) -> float:
    """Backward, gradient-norm clipping (``grad_clip`` <= 0: none) and one optimiser step, through
    the GradScaler when fp16 autocast uses one; returns the gradient norm before clipping."""
    optimiser.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimiser)
    else:
        loss.backward()
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    if scaler is not None:
        scaler.step(optimiser)
        scaler.update()
    else:
        optimiser.step()
    return grad_norm


def train_from_config(path_or_dict, *, resume: bool = True, max_steps: int | None = None,
                      device: str | None = None, progress: bool = True) -> Path:
    """Train from a TOML file / dict / TrainConfig and return the last checkpoint folder.

    Parameters
    ----------
    path_or_dict : the run's configuration.
    resume : continue from ``output_dir/checkpoints/last`` if it exists (same architecture).
    max_steps : stop after this many steps in this call (the schedule still spans
        ``config.steps``; a later call resumes), e.g. for time-boxed sessions or smoke tests.
    device : overrides ``config.device``.
    progress : show a tqdm progress bar.
    """
    from tqdm import tqdm

    cfg = load_config(path_or_dict)
    if isinstance(path_or_dict, (str, os.PathLike)):
        command = f"emrestore train --config {path_or_dict}"
    else:
        command = "emrestore.nn.train.train_from_config(<dict>)"
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device or cfg.device)
    if dev.type == "cpu":
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    amp_dtype = _amp_dtype(cfg, dev)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.architecture, cfg.model.config).to(dev)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimiser = make_adamw(_param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                           betas=tuple(cfg.optim.betas))
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    loss_fn = CompositeLoss(cfg.loss, cfg.loss_options)
    disc = opt_d = None
    if cfg.gan.enabled:
        disc = PatchDiscriminator(2 * model.config.in_channels, cfg.gan.features,
                                  cfg.gan.layers).to(dev)
        p = cfg.data.patch_size
        try:
            with torch.no_grad():
                disc.train()(torch.zeros(2, 1, p, p, device=dev),
                             torch.rand(2, 1, p, p, device=dev))
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"the {cfg.gan.layers}-layer patch discriminator does not fit "
                              f"data.patch_size = {p} px; use larger patches or fewer gan.layers"
                              ) from exc
        opt_d = make_adamw(disc.parameters(), lr=cfg.gan.lr, betas=(0.5, 0.999),
                           weight_decay=0.0)

    step, best, previous = 0, -math.inf, {}
    resuming = resume and (ckpt_dir / "last").exists()
    if cfg.model.init_from and not resuming:
        _load_initial_weights(model, cfg.model.init_from)
        ema.load_state_dict(model.state_dict())
    if resuming:
        meta, tensors, state = read_checkpoint(ckpt_dir / "last")
        old = meta["config"]["model"]
        if (old["architecture"] != cfg.model.architecture
                or dataclasses.asdict(config_from_dict(old["architecture"], old["config"]))
                != dataclasses.asdict(model.config)):
            raise ConfigError(f"{ckpt_dir / 'last'} holds a different architecture; use another "
                              "output_dir or resume=False")
        model.load_state_dict(_sub(tensors, "model"))
        ema.load_state_dict(_sub(tensors, "ema"))
        if state.get("optimiser"):
            optimiser.load_state_dict(state["optimiser"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if disc is not None and any(k.startswith("disc.") for k in tensors):
            disc.load_state_dict(_sub(tensors, "disc"))
            if "opt_d" in state:
                opt_d.load_state_dict(state["opt_d"])
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        step = int(meta["step"])
        previous = dict(meta.get("metrics") or {})
        if previous.get("best_val_psnr_db") is not None:
            best = float(previous["best_val_psnr_db"])
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=_json_default))

    end = cfg.steps if max_steps is None else min(cfg.steps, step + max_steps)
    loader, held = _loader(cfg, step)
    val = _validation(cfg, held)
    raw_psnr = float(nndata.psnr_db(val["input"], val["target"]).mean())
    metrics: dict[str, Any] = {**previous, "val_raw_psnr_db": raw_psnr,
                               "best_val_psnr_db": best if best > -math.inf else None}

    log_path = out / "log.csv"
    terms = sorted(loss_fn.weights)
    fields = [*_LOG_FIELDS[:3], *terms, *_LOG_FIELDS[3:]]
    new_log = not log_path.exists()
    log_fh = log_path.open("a", newline="")
    writer = csv.DictWriter(log_fh, fieldnames=fields, extrasaction="ignore")
    if new_log:
        writer.writeheader()

    def lr_at(s: int) -> float:
        return cfg.optim.lr * lr_factor(s, warmup=cfg.optim.warmup_steps, total=cfg.steps,
                                        min_ratio=cfg.optim.min_lr_ratio)

    def checkpoint(name: str) -> Path:
        return save_checkpoint(ckpt_dir / name, model=model, ema=ema, step=step, cfg=cfg,
                               optimiser=optimiser, scaler=scaler, disc=disc, opt_d=opt_d,
                               metrics=metrics, command=command)

    bar = tqdm(total=end, initial=step, disable=not progress, unit="step", desc=cfg.name,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    seen, t_log = 0, time.perf_counter()
    running: dict[str, float] = {}
    n_running = 0
    it = iter(loader)
    try:
        while step < end:
            batch = next(it)
            x = batch["input"].to(dev, non_blocking=True)
            y = batch["target"].to(dev, non_blocking=True)
            offset = batch["offset"].to(dev)
            scale = batch["scale"].to(dev)
            lr = lr_at(step)
            for group in optimiser.param_groups:
                group["lr"] = lr
            model.train()
            with torch.autocast(dev.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                pred = model(x)
            loss, parts = loss_fn(pred.float(), y, offset=offset, scale=scale)
            use_gan = disc is not None and step >= cfg.gan.start_step
            if use_gan:
                with torch.autocast(dev.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    c_real = disc(x, y).float()
                    c_fake = disc(x, pred).float()
                adv = RelativisticAverageGAN.generator_loss(c_real, c_fake)
                loss = loss + cfg.gan.weight * adv
                parts["adv"] = float(adv.detach())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower "
                                         "optim.lr or check the data")
            grad_norm = optimiser_step(loss, model, optimiser, scaler, cfg.optim.grad_clip)
            if use_gan:
                for p in disc.parameters():
                    p.grad = None
                with torch.autocast(dev.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    c_real = disc(x, y).float()
                    c_fake = disc(x, pred.detach()).float()
                d_loss = RelativisticAverageGAN.discriminator_loss(c_real, c_fake)
                d_loss.backward()
                opt_d.step()
                parts["d_loss"] = float(d_loss.detach())
            decay = cfg.optim.ema_decay
            if decay > 0:
                _ema_update(ema, model, min(decay, (1.0 + step) / (10.0 + step)))
            else:
                ema.load_state_dict(model.state_dict())
            step += 1
            seen += x.shape[0]
            for k, v in {"loss": float(loss.detach()), "grad_norm": grad_norm, **parts}.items():
                running[k] = running.get(k, 0.0) + v
            n_running += 1
            bar.update(1)

            row: dict[str, Any] = {}
            if step % cfg.val_every == 0 or step == end:
                psnr = evaluate(ema, val, device=dev)
                metrics["val_psnr_db"] = psnr
                metrics["val_step"] = step
                row.update(val_psnr_db=f"{psnr:.3f}", val_raw_psnr_db=f"{raw_psnr:.3f}")
                bar.set_postfix(loss=f"{running['loss'] / n_running:.4g}", val=f"{psnr:.2f} dB")
                if psnr > best:
                    best = psnr
                    metrics["best_val_psnr_db"] = best
                    metrics["best_step"] = step
                    checkpoint("best")
            if step % cfg.log_every == 0 or row or step == end:
                now = time.perf_counter()
                row.update({k: f"{v / n_running:.6g}" for k, v in running.items()})
                row.update(step=step, lr=f"{lr:.4g}",
                           examples_per_s=f"{seen / max(now - t_log, 1e-9):.3f}",
                           elapsed_s=f"{now - t0:.1f}")
                writer.writerow(row)
                log_fh.flush()
                if not bar.disable and "val_psnr_db" not in row:
                    bar.set_postfix(loss=row["loss"])
                running, n_running, seen, t_log = {}, 0, 0, now
            if step % cfg.checkpoint_every == 0 or step == end:
                checkpoint("last")
    finally:
        bar.close()
        log_fh.close()
        del it
    if not (ckpt_dir / "last").exists():
        checkpoint("last")
    return ckpt_dir / "last"


# ---------------------------------------------------------------------------------------------
# Export to the model zoo


def weights_dir() -> Path:
    """The package folder of shipped models (``emrestore/nn/weights``)."""
    return Path(__file__).resolve().parent / "weights"


def export_model(checkpoint: str | os.PathLike, name: str, *, out_dir: str | os.PathLike | None
                 = None, use_ema: bool = True, metrics: dict | None = None,
                 description: str = "") -> Path:
    """Write ``<name>.safetensors`` and the card ``<name>.json`` from a checkpoint folder.

    Parameters
    ----------
    checkpoint : a folder written by training (``.../checkpoints/last`` or ``best``).
    name : model name, e.g. "stem-hr" (letters, digits, '-', '_').
    out_dir : destination (default: the package's ``nn/weights`` folder).
    use_ema : export the EMA weights (default) rather than the raw ones.
    metrics : extra measured metrics for the card (merged over the checkpoint's).
    description : one line for ``emrestore models``.

    Returns the path of the safetensors file.
    """
    from safetensors.torch import save_file

    if not name or not all(ch.isalnum() or ch in "-_" for ch in name):
        raise InputError(f"model name {name!r}: use letters, digits, '-' and '_' only")
    meta, tensors, _ = read_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(meta["config"])
    model = build_model(cfg.model.architecture, cfg.model.config)
    weights = _sub(tensors, "ema" if use_ema else "model")
    model.load_state_dict(weights)
    model.eval()
    out = Path(out_dir) if out_dir is not None else weights_dir()
    out.mkdir(parents=True, exist_ok=True)
    st_path = out / f"{name}.safetensors"
    tmp = st_path.with_name(st_path.name + ".tmp")
    sd = _plain_state(model.state_dict())
    save_file(sd, str(tmp), metadata={"name": name, "architecture": cfg.model.architecture})
    os.chmod(tmp, 0o644)  # shipped inside the package: readable by every user
    tmp.replace(st_path)
    digest = hashlib.sha256(st_path.read_bytes()).hexdigest()
    from .. import __version__

    card = {
        "name": name,
        "card_version": 1,
        "description": description or (f"{cfg.data.resolution.upper()}-"
                                       f"{cfg.data.modality.upper()} restoration "
                                       f"({cfg.model.architecture})"),
        "architecture": cfg.model.architecture,
        "config": dataclasses.asdict(model.config),
        "parameters": count_parameters(model),
        "size_mb": round(st_path.stat().st_size / 1e6, 3),
        "weights": st_path.name,
        "sha256": digest,
        "modality": cfg.data.modality,
        "resolution": cfg.data.resolution,
        "input": "one image (H, W) in detector units (counts or ADC units); dose-blind",
        "output": "the restored image in the input's units",
        "normalisation": normalisation_card(**cfg.data.normalisation),
        "min_size_px": model.min_size_px,
        "multiple_of": model.multiple_of,
        "receptive_field_px": receptive_field(model),
        "training": {
            "command": meta.get("command", ""),
            "steps": int(meta["step"]),
            "seed": cfg.seed,
            "data": to_dict(cfg.data),
            "loss": dict(cfg.loss),
            "optim": to_dict(cfg.optim),
            "gan": to_dict(cfg.gan),
            "batch_size": cfg.batch_size,
            "config": cfg.to_dict(),
        },
        "metrics": {**meta.get("metrics", {}), **(metrics or {})},
        "date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
        "emrestore_version": __version__,
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
    }
    card_path = out / f"{name}.json"
    tmp = card_path.with_name(card_path.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, default=_json_default) + "\n")
    os.chmod(tmp, 0o644)
    tmp.replace(card_path)
    return st_path
