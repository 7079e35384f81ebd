"""Restoration networks: architectures, losses, data, training and the shipped model zoo.

* ``blocks``  — shared modules, padding to the size multiple, the architecture registry;
* ``unet``, ``cgrdn``, ``dae`` — the three architectures (seeds 003, 001, 000);
* ``normalise`` — the one intensity normalisation used by training and inference;
* ``losses``  — seed 001/000/003 loss terms, Poisson/Anscombe terms, the patch GAN;
* ``data``    — pair sources, streaming and library datasets, validation set;
* ``train``   — ``TrainConfig``, ``train_from_config``, ``export_model``;
* ``runs``    — the run scaffolding both trainers share (config checks, device, EMA, AdamW,
  checkpoints and resume, CSV log, schedule, export helpers);
* ``zoo``     — ``list_models``, ``load_model`` (safetensors + JSON only).
"""

from .blocks import architectures, build_model, pad_to_multiple, receptive_field, unpad
from .normalise import denormalise, normalise
from .zoo import list_models, load_model

__all__ = [
    "architectures",
    "build_model",
    "denormalise",
    "list_models",
    "load_model",
    "normalise",
    "pad_to_multiple",
    "receptive_field",
    "unpad",
]
