"""The scaffolding of a training run, shared by the restoration trainer (``nn.train``) and the
atom-finder trainer (``nn.atomnet_train``); what the networks learn stays in those modules.

* :class:`RunConfig`: what both TOML configs have in common: the checks of the run fields
  (``steps``, ``batch_size``, ``val_every``, ``checkpoint_every``, ``log_every``, ``amp``) and
  ``to_dict`` / ``from_dict`` / ``from_toml`` / ``load``. :class:`OptimSection` is their
  ``[optim]`` table.
* :class:`Run`: one run from set-up to its last checkpoint: device, CPU threads, seed, weight
  EMA, AdamW, GradScaler; a fresh start (from ``init_from`` weights when given) or a resume
  from ``output_dir/checkpoints/last``; the learning-rate schedule, autocast, the optimiser step
  and EMA update; the CSV log ``output_dir/log.csv``, the tqdm bar, the validation, log and
  checkpoint schedule and the ``best`` checkpoint.
* checkpoint folders (:func:`save_checkpoint`, :func:`read_checkpoint`): weights as
  safetensors, optimiser state with ``torch.save`` (tensors and numbers only, read back with
  ``weights_only=True``), ``meta.json``;
* the parts of an exported model that both exporters write: :func:`write_weights`,
  :func:`write_card` and the card's common entries.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..simulate.config import from_dict, load_toml, to_dict
from .blocks import count_parameters, receptive_field

# ---------------------------------------------------------------------------------------------
# Configuration

RUN_COUNTS = ("steps", "batch_size", "val_every", "checkpoint_every", "log_every")
AMP_MODES = ("auto", "bf16", "fp16", "off")


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


class RunConfig:
    """Base of the frozen dataclass of one training run (no fields of its own).

    The dataclass has the fields ``name``, ``seed``, ``output_dir``, ``steps``, ``batch_size``,
    ``val_every``, ``checkpoint_every``, ``log_every``, ``device``, ``amp``, ``threads`` and
    ``optim`` (an :class:`OptimSection`); its ``__post_init__`` calls :meth:`check_run`.
    """

    def check_run(self) -> None:
        """ConfigError unless the step counts are >= 1 and ``amp`` is a known mode."""
        for name in RUN_COUNTS:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {self.amp!r}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return from_dict(cls, dict(data))

    @classmethod
    def from_toml(cls, path: str | os.PathLike):
        return cls.from_dict(load_toml(path))

    @classmethod
    def load(cls, source):
        """The config from a TOML path, a dict or a config of this class."""
        if isinstance(source, cls):
            return source
        if isinstance(source, dict):
            return cls.from_dict(source)
        return cls.from_toml(source)


# ---------------------------------------------------------------------------------------------
# Device, schedule, optimiser


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


def amp_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``cfg.amp`` on ``device`` (None: no autocast)."""
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


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weights (ndim > 1), none on biases and norms."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


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


def plain_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as detached, contiguous CPU copies (what safetensors writes)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}


def json_default(value):
    """``json.dumps`` default for numpy scalars, tuples and sets."""
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def save_checkpoint(path: Path, *, model, ema, step: int, cfg: RunConfig, optimiser,
                    scaler=None, disc=None, opt_d=None, metrics: dict | None = None,
                    command: str = "") -> Path:
    """Write a checkpoint folder: ``weights.safetensors``, ``state.pt``, ``meta.json``."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in plain_state(model.state_dict()).items()}
    tensors.update({f"ema.{k}": v for k, v in plain_state(ema.state_dict()).items()})
    if disc is not None:
        tensors.update({f"disc.{k}": v for k, v in plain_state(disc.state_dict()).items()})
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
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=json_default))

    _atomic_dir_write(Path(path), write)
    return Path(path)


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


def sub_tensors(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix.`` (e.g. "ema", "model", "disc"), with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_initial_weights(model: torch.nn.Module, source: str, *, key: str = "init_from",
                         what: str = "network", adapt=None) -> None:
    """Copy weights into ``model`` from a checkpoint folder (its EMA) or an exported
    .safetensors file (fine-tuning, continued training).

    key : the config key named in errors. what : "network" or "architecture", for the error.
    adapt : ``adapt(tensors, model) -> tensors`` applied before loading (e.g. widening the
    input layer); loading is strict.
    """
    from safetensors.torch import load_file

    path = Path(source)
    if path.is_dir():
        tensors = sub_tensors(read_checkpoint(path)[1], "ema")
    elif path.suffix == ".safetensors" and path.exists():
        tensors = load_file(str(path), device="cpu")
    else:
        raise InputError(f"{key}: {source} is neither a checkpoint folder nor a "
                         ".safetensors file")
    try:
        if adapt is not None:
            tensors = adapt(tensors, model)
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{key}: {source} does not fit this {what}: {exc}") from exc


def ensure_library(path: str | os.PathLike, size: int, simulator_config: Callable[[], Any], *,
                   seed: int, workers: int) -> None:
    """Simulate the HDF5 training library at ``path`` up to ``size`` pairs if it holds fewer
    (``write_library`` resumes a partial file); ``simulator_config()`` gives the simulator's
    config, ``max(1, workers)`` processes draw."""
    path = Path(path)
    if path.exists():
        import h5py

        with h5py.File(path, "r") as h5:
            if int(h5.attrs.get("n_done", 0)) >= size:
                return
    from ..simulate.library import write_library

    path.parent.mkdir(parents=True, exist_ok=True)
    write_library(path, size, simulator_config(), seed=seed, workers=max(1, workers))


# ---------------------------------------------------------------------------------------------
# One run


def run_command(path_or_dict, function: str) -> str:
    """The command recorded in checkpoints: the CLI line for a TOML path, else ``function``."""
    if isinstance(path_or_dict, (str, os.PathLike)):
        return f"emrestore train --config {path_or_dict}"
    return f"{function}(<dict>)"


class Run:
    """The scaffolding of one training run; the trainer keeps the forward pass, the loss and the
    validation score. In order::

        run = Run(cfg, command=..., device=device)  # out dir, device, threads, amp, seed
        run.attach(model)                            # EMA copy, AdamW, GradScaler
        run.start(resume=..., ...)                   # init_from or resume; config.json
        with run.training(loader, fields, progress=...) as batches:
            for batch in batches:                    # until step == end
                lr = run.set_lr()
                with run.autocast(): ...
                grad_norm = run.optimise(loss)
                run.advance(n, loss, grad_norm, parts)   # EMA, step += 1, running means
                row = {}
                if run.validation_due(): ...; run.show(...); run.keep_best(score)
                run.end_step(row)                    # CSV row and ``last`` when due

    Attributes: cfg, command, out (``output_dir``), ckpt_dir (``out/checkpoints``), device,
    amp_dtype, model, ema, optimiser, scaler, disc and opt_d (an optional discriminator and its
    optimiser, checkpointed with the rest), step, end (the step this call stops at), best (best
    validation score so far), metrics (stored in every checkpoint), lr (of the current step).
    """

    def __init__(self, cfg: RunConfig, *, command: str, device: str | None = None):
        self.cfg = cfg
        self.command = command
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(device or cfg.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        self.amp_dtype = amp_dtype(cfg, self.device)
        torch.manual_seed(cfg.seed)
        self.model = self.ema = self.optimiser = self.scaler = None
        self.disc = self.opt_d = None
        self.step, self.end, self.best, self.lr = 0, 0, -math.inf, 0.0
        self.best_key = ""
        self.previous: dict[str, Any] = {}
        self.metrics: dict[str, Any] = {}

    # -- set-up

    def attach(self, model: torch.nn.Module) -> None:
        """Train ``model`` (already on ``device``): its EMA copy, AdamW and, for fp16 autocast,
        a GradScaler."""
        optim = self.cfg.optim
        self.model = model
        self.ema = copy.deepcopy(model).requires_grad_(False)
        self.optimiser = make_adamw(param_groups(model, optim.weight_decay), lr=optim.lr,
                                    betas=tuple(optim.betas))
        self.scaler = (torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16
                       else None)

    def start(self, *, resume: bool, max_steps: int | None, best_key: str, what: str,
              same_network: Callable[[dict], bool], init_from: str = "",
              load_initial: Callable[[torch.nn.Module, str], None] | None = None) -> None:
        """Resume from ``checkpoints/last`` (when ``resume`` and it exists), else start from
        ``init_from`` weights (``load_initial(model, init_from)``) when given; write
        ``config.json``; fix the step this call ends at (``max_steps`` more at the most).

        best_key : the metric that ranks checkpoints (e.g. "best_val_psnr_db"); its stored
        value is the score a resumed run must beat. same_network : ``same_network(config of
        the checkpoint)`` is False when ``last`` holds another network (an error naming
        ``what``, e.g. "architecture").
        """
        last = self.ckpt_dir / "last"
        self.best_key = best_key
        resuming = resume and last.exists()
        if init_from and not resuming:
            (load_initial or load_initial_weights)(self.model, init_from)
            self.ema.load_state_dict(self.model.state_dict())
        if resuming:
            self._resume(last, what, same_network)
        (self.out / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2,
                                                         default=json_default))
        self.end = (self.cfg.steps if max_steps is None
                    else min(self.cfg.steps, self.step + max_steps))

    def _resume(self, last: Path, what: str, same_network: Callable[[dict], bool]) -> None:
        meta, tensors, state = read_checkpoint(last)
        if not same_network(meta["config"]):
            raise ConfigError(f"{last} holds a different {what}; use another output_dir or "
                              "resume=False")
        self.model.load_state_dict(sub_tensors(tensors, "model"))
        self.ema.load_state_dict(sub_tensors(tensors, "ema"))
        if state.get("optimiser"):
            self.optimiser.load_state_dict(state["optimiser"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.disc is not None and any(k.startswith("disc.") for k in tensors):
            self.disc.load_state_dict(sub_tensors(tensors, "disc"))
            if "opt_d" in state:
                self.opt_d.load_state_dict(state["opt_d"])
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        self.step = int(meta["step"])
        self.previous = dict(meta.get("metrics") or {})
        if self.previous.get(self.best_key) is not None:
            self.best = float(self.previous[self.best_key])

    @contextlib.contextmanager
    def training(self, loader, log_fields, *, progress: bool = True,
                 metrics: dict[str, Any] | None = None) -> Iterator[Iterator[Any]]:
        """Open the CSV log (``log_fields`` columns, header on a new file) and the progress bar,
        and yield the batches of ``loader`` until ``step`` reaches ``end``. However the loop
        ends, the log, the bar and the loader's iterator are closed; when it ends normally and
        the run has no ``last`` checkpoint yet, one is written.

        metrics : entries of the checkpoints' metrics beside the resumed ones.
        """
        from tqdm import tqdm

        self.metrics = {**self.previous, **(metrics or {}),
                        self.best_key: self.best if self.best > -math.inf else None}
        log_path = self.out / "log.csv"
        new_log = not log_path.exists()
        self._log_fh = log_path.open("a", newline="")
        self._writer = csv.DictWriter(self._log_fh, fieldnames=list(log_fields),
                                      extrasaction="ignore")
        if new_log:
            self._writer.writeheader()
        self.bar = tqdm(total=self.end, initial=self.step, disable=not progress, unit="step",
                        desc=self.cfg.name, dynamic_ncols=True)
        self._t0 = time.perf_counter()
        self._seen, self._t_log = 0, time.perf_counter()
        self._running: dict[str, float] = {}
        self._n_running = 0
        batches = self._batches(iter(loader))
        try:
            yield batches
        finally:
            self.bar.close()
            self._log_fh.close()
            batches.close()  # drops the loader's iterator (and its worker processes)
        if not (self.ckpt_dir / "last").exists():
            self.checkpoint("last")

    def _batches(self, it) -> Iterator[Any]:
        while self.step < self.end:
            yield next(it)

    # -- one step

    def set_lr(self) -> float:
        """Set and return the scheduled learning rate of the current step."""
        optim = self.cfg.optim
        self.lr = optim.lr * lr_factor(self.step, warmup=optim.warmup_steps,
                                       total=self.cfg.steps, min_ratio=optim.min_lr_ratio)
        for group in self.optimiser.param_groups:
            group["lr"] = self.lr
        return self.lr

    def autocast(self):
        """Autocast to the run's amp dtype (a no-op context without amp)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def optimise(self, loss: torch.Tensor) -> float:
        """One optimiser step of the model on ``loss`` (FloatingPointError if it is not
        finite); returns the gradient norm before clipping."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss.detach())} at step {self.step}; "
                                     "lower optim.lr or check the data")
        return optimiser_step(loss, self.model, self.optimiser, self.scaler,
                              self.cfg.optim.grad_clip)

    def advance(self, n_examples: int, loss: torch.Tensor, grad_norm: float,
                parts: dict[str, float]) -> None:
        """Close the step: update the EMA, count the step and the examples, and add loss,
        gradient norm and ``parts`` to the running means of the next log row."""
        decay = self.cfg.optim.ema_decay
        if decay > 0:
            ema_update(self.ema, self.model, min(decay, (1.0 + self.step) / (10.0 + self.step)))
        else:
            self.ema.load_state_dict(self.model.state_dict())
        self.step += 1
        self._seen += n_examples
        for k, v in {"loss": float(loss.detach()), "grad_norm": grad_norm, **parts}.items():
            self._running[k] = self._running.get(k, 0.0) + v
        self._n_running += 1
        self.bar.update(1)

    def validation_due(self) -> bool:
        return self.step % self.cfg.val_every == 0 or self.step == self.end

    def show(self, **scores: str) -> None:
        """Show the running loss and validation ``scores`` on the progress bar."""
        self.bar.set_postfix(loss=f"{self._running['loss'] / self._n_running:.4g}", **scores)

    def keep_best(self, score: float, **extra) -> None:
        """A better validation ``score`` than ever: store it (as ``best_key``, with
        ``best_step`` and ``extra``) in the metrics and write the ``best`` checkpoint."""
        if score > self.best:
            self.best = score
            self.metrics.update({self.best_key: score, "best_step": self.step, **extra})
            self.checkpoint("best")

    def end_step(self, row: dict[str, Any]) -> None:
        """Write the log row when due (every ``log_every`` steps, after a validation, i.e. a
        non-empty ``row``, and at the end) with the running means, lr and throughput; write
        ``last`` every ``checkpoint_every`` steps and at the end."""
        cfg = self.cfg
        validated = bool(row)
        if self.step % cfg.log_every == 0 or row or self.step == self.end:
            now = time.perf_counter()
            row.update({k: f"{v / self._n_running:.6g}" for k, v in self._running.items()})
            row.update(step=self.step, lr=f"{self.lr:.4g}",
                       examples_per_s=f"{self._seen / max(now - self._t_log, 1e-9):.3f}",
                       elapsed_s=f"{now - self._t0:.1f}")
            self._writer.writerow(row)
            self._log_fh.flush()
            if not self.bar.disable and not validated:
                self.bar.set_postfix(loss=row["loss"])
            self._running, self._n_running, self._seen, self._t_log = {}, 0, 0, now
        if self.step % cfg.checkpoint_every == 0 or self.step == self.end:
            self.checkpoint("last")

    def checkpoint(self, name: str) -> Path:
        """Write ``checkpoints/<name>`` (model, EMA, optimiser, scaler, discriminator, metrics)."""
        return save_checkpoint(self.ckpt_dir / name, model=self.model, ema=self.ema,
                               step=self.step, cfg=self.cfg, optimiser=self.optimiser,
                               scaler=self.scaler, disc=self.disc, opt_d=self.opt_d,
                               metrics=self.metrics, command=self.command)


# ---------------------------------------------------------------------------------------------
# Export


def weights_dir() -> Path:
    """The package folder of shipped models (``emrestore/nn/weights``)."""
    return Path(__file__).resolve().parent / "weights"


def check_model_name(name: str) -> None:
    if not name or not all(ch.isalnum() or ch in "-_" for ch in name):
        raise InputError(f"model name {name!r}: use letters, digits, '-' and '_' only")


def checkpoint_weights(tensors: dict[str, torch.Tensor], use_ema: bool
                       ) -> dict[str, torch.Tensor]:
    """The EMA (``use_ema``) or raw model weights of a checkpoint's tensors."""
    return sub_tensors(tensors, "ema" if use_ema else "model")


def write_weights(model: torch.nn.Module, name: str, out_dir: str | os.PathLike | None,
                  metadata: dict[str, str]) -> tuple[Path, str]:
    """Write ``<out_dir>/<name>.safetensors`` (default folder :func:`weights_dir`), readable by
    every user (it ships inside the package); returns its path and SHA-256."""
    from safetensors.torch import save_file

    out = Path(out_dir) if out_dir is not None else weights_dir()
    out.mkdir(parents=True, exist_ok=True)
    st_path = out / f"{name}.safetensors"
    tmp = st_path.with_name(st_path.name + ".tmp")
    save_file(plain_state(model.state_dict()), str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)
    tmp.replace(st_path)
    return st_path, hashlib.sha256(st_path.read_bytes()).hexdigest()


def card_weights(model: torch.nn.Module, st_path: Path, digest: str) -> dict[str, Any]:
    """The card entries that describe the network and its weights file."""
    return {"config": dataclasses.asdict(model.config),
            "parameters": count_parameters(model),
            "size_mb": round(st_path.stat().st_size / 1e6, 3),
            "weights": st_path.name,
            "sha256": digest}


def card_geometry(model: torch.nn.Module, field_of: torch.nn.Module | None = None
                  ) -> dict[str, Any]:
    """Input-size rules and the receptive field (of ``field_of``, default the model)."""
    return {"min_size_px": model.min_size_px,
            "multiple_of": model.multiple_of,
            "receptive_field_px": receptive_field(field_of if field_of is not None else model)}


def card_training(meta: dict, cfg: RunConfig, loss: dict, **sections: dict) -> dict[str, Any]:
    """The card's ``training`` entry: command, steps, seed, the ``data``, ``loss`` and ``optim``
    tables, further ``sections``, batch size and the whole config."""
    return {"command": meta.get("command", ""),
            "steps": int(meta["step"]),
            "seed": cfg.seed,
            "data": to_dict(cfg.data),
            "loss": loss,
            "optim": to_dict(cfg.optim),
            **sections,
            "batch_size": cfg.batch_size,
            "config": cfg.to_dict()}


def card_provenance() -> dict[str, Any]:
    """Date and versions closing a card."""
    from .. import __version__

    return {"date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
            "emrestore_version": __version__,
            "torch_version": torch.__version__,
            "python": sys.version.split()[0]}


def write_card(card: dict[str, Any], st_path: Path) -> Path:
    """Write the card beside its weights (``<name>.json``), readable by every user."""
    card_path = st_path.with_suffix(".json")
    tmp = card_path.with_name(card_path.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, default=json_default) + "\n")
    os.chmod(tmp, 0o644)
    tmp.replace(card_path)
    return card_path
