"""Wall time of ``emrestore.restore`` on 512² and 1024² images, and the model's size.

The images are Poisson counts of a synthetic column lattice (the network's speed does not depend
on the content). Each size is restored once to warm up (lazy imports, first-call allocations)
and then ``--runs`` times; the median wall time is printed. The time is end to end: whole-image
normalisation, tiling, the network, blending, denormalisation and the mean correction.

    python benchmarks/restore_speed.py [stem-hr]            # a model from the zoo
    python benchmarks/restore_speed.py --arch unet          # an untrained network from nn's
                                                            # registry, default config
    python benchmarks/restore_speed.py --arch unet --config '{"widths": [16, 32, 64]}'

Options: ``--tile`` (default restore's, 1024; frames up to this size run whole), ``--runs``
(default 3), ``--threads`` (torch threads; default PyTorch's, all cores), ``--device``.

Target (issue 4): stem-hr ≤ 2.5 s for 1024² on this CPU, weights ≤ 20 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np


def lattice(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[:size, :size].astype(np.float32)
    mu = 2.0 + 20.0 * (np.cos(np.pi * r / 8.0) * np.cos(np.pi * c / 8.0)) ** 8
    return rng.poisson(mu).astype(np.float32)


def _affine_normaliser():
    """Only for timing an untrained network where nn.normalise is missing: offset = minimum,
    scale = mean above it (the same cost class as any whole-image normaliser)."""

    def normalise(x):
        offset = float(x.min())
        scale = max(float(x.mean(dtype=np.float64)) - offset, 1e-12)
        x_n = x - np.float32(offset)
        x_n *= np.float32(1.0 / scale)
        return x_n, offset, scale

    def denormalise(y, offset, scale):
        return y * np.float32(scale) + np.float32(offset)

    return normalise, denormalise


def build(args):
    """(model argument for restore, normaliser or None, description, size in MB)."""
    if args.arch is None:
        from emrestore.nn.zoo import load_model, weights_dir

        module, card = load_model(args.model, device=args.device or "cpu")
        path = weights_dir() / f"{args.model}.safetensors"
        if not path.exists():  # a user's card/weights path
            path = Path(args.model).with_suffix(".safetensors")
        size_mb = path.stat().st_size / 1e6
        desc = (f"zoo model {card['name']!r} ({card['architecture']}, "
                f"{card.get('parameters', '?')} parameters, receptive field "
                f"{card['receptive_field_px']} px)")
        return args.model, None, desc, size_mb
    from emrestore.nn.blocks import build_model, receptive_field

    config = json.loads(args.config) if args.config else None
    module = build_model(args.arch, config).eval()
    card = {"multiple_of": module.multiple_of, "min_size_px": module.min_size_px,
            "receptive_field_px": receptive_field(module)}
    try:
        from emrestore.nn.normalise import denormalise, normalise

        normaliser, which = (normalise, denormalise), "nn.normalise"
    except ImportError:
        normaliser, which = _affine_normaliser(), "affine stand-in normaliser"
    size_mb = sum(t.numel() * t.element_size() for t in module.state_dict().values()) / 1e6
    n_params = sum(p.numel() for p in module.parameters())
    desc = (f"untrained {args.arch} ({n_params / 1e6:.2f} M parameters, receptive field "
            f"{card['receptive_field_px']} px, {which})")
    return (module, card), normaliser, desc, size_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="stem-hr", help="zoo model (default stem-hr)")
    parser.add_argument("--arch", default=None, help="time an untrained architecture instead")
    parser.add_argument("--config", default=None, help="JSON config for --arch")
    parser.add_argument("--tile", type=int, default=None, help="default: restore's (1024)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    args = parser.parse_args()

    import torch

    from emrestore.restore import restore

    if args.threads:
        torch.set_num_threads(args.threads)
    from emrestore.errors import InputError

    try:
        model, normaliser, desc, size_mb = build(args)
    except InputError as exc:
        raise SystemExit(f"restore_speed: {exc}\n(time an untrained network with --arch unet)"
                         ) from None
    print(f"{desc}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, device {args.device or 'auto'}, tile {args.tile or 'default'}")
    print(f"model size: {size_mb:.2f} MB")
    for size in args.sizes:
        x = lattice(size)
        kwargs = {"tile": args.tile, "device": args.device, "normaliser": normaliser}
        restore(x, model, **kwargs)  # warm-up
        walls = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            restore(x, model, **kwargs)
            walls.append(time.perf_counter() - t0)
        print(f"{size}²: {statistics.median(walls):.3f} s (median of {args.runs}; "
              f"min {min(walls):.3f}, max {max(walls):.3f})")


if __name__ == "__main__":
    main()
