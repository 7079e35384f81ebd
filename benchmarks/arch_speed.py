"""CPU cost of the restoration architectures: parameters, weight size, GMACs, receptive field and
seconds for one 512² and one 1024² forward pass (torch.inference_mode, all threads).

    python benchmarks/arch_speed.py                  # the table
    python benchmarks/arch_speed.py --train-step     # + seconds per training step (16 × 128²)
    python benchmarks/arch_speed.py --quality 300 --library lib.h5
                                     # + val PSNR after 300 training steps (batch 8 × 128²) on a
                                     #   simulated library (or toy lattice pairs without one)
    python benchmarks/arch_speed.py --only unet-s2 --sizes 512 1024 2048

Timings are the minimum over ``--runs`` passes after one warm-up pass (other processes on the
machine only ever make a pass slower). GMACs are multiply-accumulates of the convolutions for
a 1024² input, counted with forward hooks: they do not depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from emrestore.nn.blocks import build_model, count_parameters, receptive_field, weight_megabytes

#: name -> (architecture, config). The first rows are the papers' networks.
CANDIDATES: dict[str, tuple[str, dict]] = {
    "dae-seed000": ("dae", {}),
    "unet-seed003": ("unet", {"widths": [32, 64, 128, 256], "blocks": 2}),
    "cgrdn-seed001": ("cgrdn", {}),
    "cgrdn-small": ("cgrdn", {"features": 32, "growth": 16, "n_layers": 4, "n_rdb": 2,
                              "n_grdb": 2}),
    "unet-s2": ("unet", {"widths": [32, 64, 128, 256], "blocks": 2, "space_to_depth": 2,
                         "downsample": "conv", "skip": "add", "activation": "silu"}),
    "unet-s2-res": ("unet", {"widths": [32, 64, 128, 256], "blocks": 1, "residual": True,
                             "space_to_depth": 2, "downsample": "conv", "skip": "add",
                             "activation": "silu"}),
    "unet-s2-wide": ("unet", {"widths": [48, 96, 192, 256], "blocks": 2, "space_to_depth": 2,
                              "downsample": "conv", "skip": "add", "activation": "silu"}),
    "unet-s2-deep": ("unet", {"widths": [32, 64, 128, 192, 256], "blocks": 2,
                              "space_to_depth": 2, "downsample": "conv", "skip": "add",
                              "activation": "silu"}),
}

#: The loss of configs/stem-hr.toml, used for the training-step time and the quality probe.
LOSS = {"l1": 1.0, "mlwt": 0.25, "fourier": 0.01, "mean": 0.1, "std": 0.1}

#: Architectures too slow to time at 1024² in a reasonable time: 1024² is then 4 × the 512² time.
SLOW = {"cgrdn-seed001"}


def gmacs(model: torch.nn.Module, size: int = 1024) -> float:
    """Multiply-accumulates (10^9) of every convolution for one ``size``² image."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, torch.nn.ConvTranspose2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            total += inp[0].numel() * mod.out_channels * k // mod.groups
        else:
            k = mod.kernel_size[0] * mod.kernel_size[1]
            total += out.numel() * (mod.in_channels // mod.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    probe = 256
    with torch.inference_mode():
        model(torch.zeros(1, 1, probe, probe))
    for h in handles:
        h.remove()
    return total * (size / probe) ** 2 / 1e9


def time_forward(model: torch.nn.Module, size: int, runs: int) -> float:
    x = torch.rand(1, 1, size, size)
    with torch.inference_mode():
        model(x)
        best = float("inf")
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t0)
    return best


def time_train_step(model: torch.nn.Module, batch: int = 16, patch: int = 128,
                    runs: int = 3) -> float:
    from emrestore.nn.losses import CompositeLoss

    loss_fn = CompositeLoss(LOSS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 1, patch, patch)
    y = torch.rand(batch, 1, patch, patch)
    model.train()
    best = float("inf")
    for i in range(runs + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss, _ = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if i > 0:
            best = min(best, time.perf_counter() - t0)
    model.eval()
    return best


def quality(arch: str, config: dict, steps: int, *, library: str | None = None, seed: int = 0,
            batch: int = 8, patch: int = 128) -> tuple[float, float, float]:
    """(val PSNR dB, raw PSNR dB, s/step) after ``steps`` training steps.

    Pairs come from an HDF5 library (``write_library`` output; its last 16 images, whole, are
    the validation set) or, without one, from the toy Gaussian-lattice source. Same seed, data,
    loss and schedule for every architecture.
    """
    from torch.utils.data import DataLoader

    from emrestore.nn import data
    from emrestore.nn.losses import CompositeLoss
    from emrestore.nn.train import _ema_update, evaluate, lr_factor, make_adamw

    torch.manual_seed(seed)
    model = build_model(arch, config)
    ema = build_model(arch, config)
    ema.load_state_dict(model.state_dict())
    if library:
        n = len(data.LibraryDataset(library))
        train = data.LibraryDataset(library, patch_size=patch, seed=seed,
                                    indices=list(range(n - 16)))
        held = data.LibraryDataset(library, patch_size=None, seed=seed,
                                   indices=list(range(n - 16, n)))
        val = data.validation_set(n=16, seed=seed, library=held)
        batches = iter(DataLoader(train, batch_size=batch, collate_fn=data.collate,
                                  sampler=data.EpochSampler(len(train), seed=seed)))
    else:
        pairs = data.SyntheticPairs(size=(2 * patch, 2 * patch), mean_counts=(0.2, 200.0))
        stream = data.PairStream(pairs, batch_size=batch, patch_size=patch, crops_per_pair=4,
                                 seed=seed)
        val = data.validation_set(pairs, n=16, seed=seed + 99)
        batches = (stream.batch(i) for i in range(steps))
    loss_fn = CompositeLoss(LOSS)
    opt = make_adamw(model.parameters(), lr=2e-3, weight_decay=1e-4)
    t_train = 0.0
    for step in range(steps):
        b = next(batches)
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = 2e-3 * lr_factor(step, warmup=steps // 10, total=steps, min_ratio=0.05)
        loss, _ = loss_fn(model(b["input"]), b["target"], offset=b["offset"], scale=b["scale"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        _ema_update(ema, model, min(0.995, (1 + step) / (10 + step)))
        t_train += time.perf_counter() - t0
    raw = float(data.psnr_db(val["input"], val["target"]).mean())
    return evaluate(ema, val, device=torch.device("cpu"), batch_size=4), raw, t_train / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="candidate names to run")
    parser.add_argument("--sizes", nargs="*", type=int, default=[512, 1024])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--train-step", action="store_true",
                        help="also time one training step, batch 16 × 128²")
    parser.add_argument("--quality", type=int, default=0, metavar="STEPS",
                        help="also train each candidate STEPS steps, print validation PSNR")
    parser.add_argument("--library", default=None,
                        help="HDF5 library for --quality (default: toy lattice pairs)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    names = args.only or list(CANDIDATES)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs")
    cols = ["name", "params", "MB", "GMAC@1024", "RF px", "mult"]
    cols += [f"s@{s}" for s in args.sizes]
    if args.train_step:
        cols.append("s/step16x128")
    if args.quality:
        cols += [f"PSNR@{args.quality}", "raw", "train s/step"]
    print(" | ".join(f"{c:>13}" for c in cols))
    for name in names:
        arch, config = CANDIDATES[name]
        torch.manual_seed(0)
        model = build_model(arch, config).eval()
        row = [name, f"{count_parameters(model) / 1e6:.3f}M", f"{weight_megabytes(model):.2f}",
               f"{gmacs(model):.1f}", str(receptive_field(model)), str(model.multiple_of)]
        for size in args.sizes:
            if name in SLOW and size > 512:
                t = 4 * time_forward(model, 512, 1) * (size / 1024) ** 2
                row.append(f"~{t:.2f}")
            else:
                row.append(f"{time_forward(model, size, args.runs):.3f}")
        if args.train_step:
            row.append("-" if name in SLOW else f"{time_train_step(model):.2f}")
        if args.quality:
            if name in SLOW:
                row += ["-", "-", "-"]
            else:
                psnr, raw, sec = quality(arch, config, args.quality, library=args.library)
                row += [f"{psnr:.2f}", f"{raw:.2f}", f"{sec:.2f}"]
        print(" | ".join(f"{c:>13}" for c in row), flush=True)


if __name__ == "__main__":
    main()
