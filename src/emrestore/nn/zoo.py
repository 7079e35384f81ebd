"""Shipped models: safetensors weights plus a JSON card, loaded without unpickling anything.

A model ``NAME`` is two files in ``emrestore/nn/weights``: ``NAME.safetensors`` (tensors only)
and ``NAME.json`` (the card written by ``nn.train.export_model``: architecture and config,
normalisation, ``min_size_px``, ``receptive_field_px``, ``multiple_of``, training command, data
config, seed, metrics, date). :func:`load_model` also accepts the path of a card or weights file
of a user-trained model.

Cards carry a ``task``: ``"restore"`` (restoration networks; the default for cards without the
key) or ``"atoms"`` (atom-finder networks, :mod:`emrestore.nn.atomnet`, exported by
``nn.atomnet_train.export_atomnet``). :func:`list_models` lists both; :func:`load_model` builds the
network the card's task names and, given ``task``, refuses a model made for another task.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .blocks import build_model

_REQUIRED = ("name", "architecture", "config", "normalisation", "min_size_px",
             "receptive_field_px", "multiple_of")
TASKS = ("restore", "atoms")


def card_task(card: dict[str, Any]) -> str:
    """The task a card's model does: "restore" (default for cards without the key) or "atoms"."""
    return str(card.get("task", "restore"))


def weights_dir() -> Path:
    """The package folder holding the shipped models."""
    return Path(__file__).resolve().parent / "weights"


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"model card {path} cannot be read: {exc}") from exc
    missing = [k for k in _REQUIRED if k not in card]
    if missing:
        raise InputError(f"model card {path} lacks the field(s) {missing}")
    return card


def list_models(folder: str | os.PathLike | None = None, *,
                task: str | None = None) -> list[dict[str, Any]]:
    """Cards of the models whose card and weights are both present, sorted by name; only those
    of one ``task`` ("restore" or "atoms") when given."""
    folder = Path(folder) if folder is not None else weights_dir()
    cards = []
    for path in sorted(folder.glob("*.json")):
        weights = path.with_suffix(".safetensors")
        if weights.exists():
            card = _read_card(path)
            card.setdefault("weights", weights.name)
            if task is None or card_task(card) == task:
                cards.append(card)
    return cards


def _locate(name: str | os.PathLike) -> tuple[Path, Path]:
    """(card, weights) paths for a shipped model name or a user path to either file."""
    text = os.fspath(name)
    path = Path(text)
    if path.suffix in (".json", ".safetensors") and path.exists():
        return path.with_suffix(".json"), path.with_suffix(".safetensors")
    card = weights_dir() / f"{text}.json"
    if not card.exists():
        known = [c["name"] for c in list_models()]
        raise InputError(f"no model named {text!r}; shipped models: {known or 'none yet'} "
                         "(or give the path of a .json card / .safetensors file)")
    return card, card.with_suffix(".safetensors")


def load_model(name: str | os.PathLike = "stem-hr", device: str | torch.device = "cpu", *,
               verify: bool = True, task: str | None = "restore"
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(network in eval mode, card)`` for a shipped model name or a card/weights path.

    Only JSON and safetensors are read (no pickle). With ``verify`` the weights' SHA-256 is
    checked against the card. ``task`` ("restore", "atoms" or None for either) refuses a model
    trained for another job, e.g. an atom finder given to ``restore``.
    """
    from safetensors.torch import load_file

    card_path, weights_path = _locate(name)
    if not card_path.exists() or not weights_path.exists():
        raise InputError(f"model {name!s}: need both {card_path.name} and {weights_path.name}")
    card = _read_card(card_path)
    kind = card_task(card)
    if kind not in TASKS:
        raise InputError(f"model card {card_path} names an unknown task {kind!r}; "
                         f"expected one of {TASKS}")
    if task is not None and kind != task:
        what = {"restore": "a restoration model", "atoms": "an atom-finder model"}
        raise InputError(f"model {card['name']!r} is {what[kind]} (task {kind!r}), not "
                         f"{what.get(task, task)}; `emrestore models` lists the models by task")
    if verify and card.get("sha256"):
        digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
        if digest != card["sha256"]:
            raise InputError(f"{weights_path} does not match its card (SHA-256 differs): the "
                             "file is damaged or belongs to another model")
    if kind == "atoms":
        from .atomnet import build_atomnet

        model = build_atomnet(card["config"])
    else:
        model = build_model(card["architecture"], card["config"])
    state = load_file(str(weights_path), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{weights_path} does not fit the architecture in its card: {exc}") \
            from exc
    model.eval().requires_grad_(False)
    return model.to(device), card


def format_card(card: dict[str, Any]) -> str:
    """A few human-readable lines about a model (for ``emrestore models``)."""
    m = card.get("metrics", {})
    t = card.get("training", {})
    lines = [
        f"{card['name']} [{card_task(card)}]: {card.get('description', '')}".rstrip(": "),
        f"  architecture {card['architecture']}, {card.get('parameters', '?')} parameters, "
        f"{card.get('size_mb', '?')} MB, receptive field {card['receptive_field_px']} px, "
        f"min size {card['min_size_px']} px",
        f"  data {card.get('modality', '?')}-{card.get('resolution', '?')}, "
        f"{t.get('steps', '?')} steps, seed {t.get('seed', '?')}, trained {card.get('date', '?')}",
    ]
    if m:
        shown = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in m.items())
        lines.append(f"  metrics: {shown}")
    if t.get("command"):
        lines.append(f"  command: {t['command']}")
    return "\n".join(lines)
