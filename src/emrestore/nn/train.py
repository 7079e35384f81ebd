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

The run scaffolding (set-up, resume, schedule, EMA, log, checkpoints) is :class:`nn.runs.Run`,
shared with the atom-finder trainer.

:func:`export_model` turns a checkpoint into a shipped model: ``weights/<name>.safetensors`` and
the JSON card ``weights/<name>.json`` that ``nn.zoo`` and ``emrestore.restore`` read.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..errors import ConfigError, InputError
from ..simulate.config import to_dict
from . import data as nndata
from . import runs
from .blocks import build_model, config_from_dict
from .losses import TERMS, CompositeLoss, PatchDiscriminator, RelativisticAverageGAN
from .normalise import DEFAULT_PARAMS, normalisation_card

# the run pieces that moved to nn.runs stay importable from here
from .runs import (  # noqa: F401
    OptimSection,
    lr_factor,
    make_adamw,
    optimiser_step,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
    weights_dir,
)
from .runs import ema_update as _ema_update  # noqa: F401

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
class TrainConfig(runs.RunConfig):
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
        self.check_run()
        unknown = sorted(set(self.loss) - set(TERMS))
        if unknown:
            raise ConfigError(f"[loss]: unknown term(s) {unknown}; valid names are {sorted(TERMS)}")
        config_from_dict(self.model.architecture, self.model.config)  # validates early


def load_config(path_or_dict: str | os.PathLike | dict | TrainConfig) -> TrainConfig:
    """A TrainConfig from a TOML path, a dict or a TrainConfig."""
    return TrainConfig.load(path_or_dict)


# ---------------------------------------------------------------------------------------------
# Pieces


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
    """Copy weights from a checkpoint folder (its EMA) or an exported .safetensors file, the
    input layer widened (:func:`widen_input_layer`) where this network takes more channels."""
    runs.load_initial_weights(model, source, key="model.init_from", what="architecture",
                              adapt=widen_input_layer)


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
    runs.ensure_library(path, d.library_size, lambda: _pair_fn(cfg).config(), seed=cfg.seed,
                        workers=d.workers)


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
# The loop


_LOG_FIELDS = ("step", "lr", "loss", "grad_norm", "adv", "d_loss", "val_psnr_db",
               "val_raw_psnr_db", "examples_per_s", "elapsed_s")


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
    cfg = load_config(path_or_dict)
    run = runs.Run(cfg, device=device, command=runs.run_command(
        path_or_dict, "emrestore.nn.train.train_from_config"))
    dev = run.device
    model = build_model(cfg.model.architecture, cfg.model.config).to(dev)
    run.attach(model)
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
        run.disc, run.opt_d = disc, opt_d

    def same_network(saved: dict) -> bool:
        old = saved["model"]
        return (old["architecture"] == cfg.model.architecture
                and dataclasses.asdict(config_from_dict(old["architecture"], old["config"]))
                == dataclasses.asdict(model.config))

    run.start(resume=resume, max_steps=max_steps, best_key="best_val_psnr_db",
              what="architecture", same_network=same_network, init_from=cfg.model.init_from,
              load_initial=_load_initial_weights)
    loader, held = _loader(cfg, run.step)
    val = _validation(cfg, held)
    raw_psnr = float(nndata.psnr_db(val["input"], val["target"]).mean())
    fields = [*_LOG_FIELDS[:3], *sorted(loss_fn.weights), *_LOG_FIELDS[3:]]
    with run.training(loader, fields, progress=progress,
                      metrics={"val_raw_psnr_db": raw_psnr}) as batches:
        for batch in batches:
            x = batch["input"].to(dev, non_blocking=True)
            y = batch["target"].to(dev, non_blocking=True)
            offset = batch["offset"].to(dev)
            scale = batch["scale"].to(dev)
            run.set_lr()
            model.train()
            with run.autocast():
                pred = model(x)
            loss, parts = loss_fn(pred.float(), y, offset=offset, scale=scale)
            use_gan = disc is not None and run.step >= cfg.gan.start_step
            if use_gan:
                with run.autocast():
                    c_real = disc(x, y).float()
                    c_fake = disc(x, pred).float()
                adv = RelativisticAverageGAN.generator_loss(c_real, c_fake)
                loss = loss + cfg.gan.weight * adv
                parts["adv"] = float(adv.detach())
            grad_norm = run.optimise(loss)
            if use_gan:
                for p in disc.parameters():
                    p.grad = None
                with run.autocast():
                    c_real = disc(x, y).float()
                    c_fake = disc(x, pred.detach()).float()
                d_loss = RelativisticAverageGAN.discriminator_loss(c_real, c_fake)
                d_loss.backward()
                opt_d.step()
                parts["d_loss"] = float(d_loss.detach())
            run.advance(x.shape[0], loss, grad_norm, parts)

            row: dict[str, Any] = {}
            if run.validation_due():
                psnr = evaluate(run.ema, val, device=dev)
                run.metrics.update(val_psnr_db=psnr, val_step=run.step)
                row.update(val_psnr_db=f"{psnr:.3f}", val_raw_psnr_db=f"{raw_psnr:.3f}")
                run.show(val=f"{psnr:.2f} dB")
                run.keep_best(psnr)
            run.end_step(row)
    return run.ckpt_dir / "last"


# ---------------------------------------------------------------------------------------------
# Export to the model zoo


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
    runs.check_model_name(name)
    meta, tensors, _ = read_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(meta["config"])
    model = build_model(cfg.model.architecture, cfg.model.config)
    model.load_state_dict(runs.checkpoint_weights(tensors, use_ema))
    model.eval()
    st_path, digest = runs.write_weights(model, name, out_dir,
                                         {"name": name, "architecture": cfg.model.architecture})
    card = {
        "name": name,
        "card_version": 1,
        "description": description or (f"{cfg.data.resolution.upper()}-"
                                       f"{cfg.data.modality.upper()} restoration "
                                       f"({cfg.model.architecture})"),
        "architecture": cfg.model.architecture,
        **runs.card_weights(model, st_path, digest),
        "modality": cfg.data.modality,
        "resolution": cfg.data.resolution,
        "input": "one image (H, W) in detector units (counts or ADC units); dose-blind",
        "output": "the restored image in the input's units",
        "normalisation": normalisation_card(**cfg.data.normalisation),
        **runs.card_geometry(model),
        "training": runs.card_training(meta, cfg, dict(cfg.loss), gan=to_dict(cfg.gan)),
        "metrics": {**meta.get("metrics", {}), **(metrics or {})},
        **runs.card_provenance(),
    }
    runs.write_card(card, st_path)
    return st_path
