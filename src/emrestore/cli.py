"""The ``emrestore`` command: one subcommand per job, each a thin shell over the Python API."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import EmrestoreError


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emrestore",
        description="Simulate, restore and quantify low-dose electron microscopy images.",
    )
    parser.add_argument("--version", action="version", version=f"emrestore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser(
        "simulate", help="write a library of simulated training pairs, or the distortion gallery")
    sim.add_argument("--n", type=int, default=None, help="number of pairs in the library")
    sim.add_argument("--modality", choices=("stem", "tem", "sem"), default=None)
    sim.add_argument("--resolution", choices=("hr", "lr"), default=None)
    sim.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                     help="image size in pixels (default 256 256)")
    sim.add_argument("--config", default=None,
                     help="TOML file of sampler parameters (tables mirror SamplerConfig)")
    sim.add_argument("--seed", type=int, default=0, help="library seed (default 0)")
    sim.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    sim.add_argument("--out", default=None, help="output HDF5 library (resumes if it exists)")
    sim.add_argument("--gallery", default=None, metavar="PNG",
                     help="draw every distortion on its own into this PNG")
    sim.set_defaults(handler=_run_simulate)

    demo = sub.add_parser("demo", help="the main job on an embedded default: simulate a "
                          "low-dose image, find and quantify its columns, write a report")
    demo.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(handler=_run_demo)

    rest = sub.add_parser("restore", help="restore a low-dose image with a trained network")
    rest.add_argument("input", help="input image (dm3, dm4, emd, ser, mrc, tif, png, npy, npz)")
    rest.add_argument("-o", "--output", required=True, help="output file (.tif, .npy or .npz)")
    rest.add_argument("--model", default="stem-hr", help="model name (see `emrestore models`)")
    rest.add_argument("--pixel-size", type=float, default=None,
                      help="pixel size in Å (overrides the file's calibration)")
    rest.add_argument("--tile", type=int, default=None, help="tile size in pixels")
    rest.add_argument("--no-preview", action="store_true", help="do not write a PNG preview")
    rest.set_defaults(handler=_run_restore)

    models = sub.add_parser("models", help="list the shipped models and their cards")
    models.set_defaults(handler=_run_models)

    train = sub.add_parser("train", help="train a restoration network from a TOML config")
    train.add_argument("--config", required=True,
                       help="training config (e.g. configs/stem-hr.toml)")
    train.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    train.add_argument("--no-resume", action="store_true", help="start over, ignore checkpoints")
    train.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto)")
    train.set_defaults(handler=_run_train)

    atoms = sub.add_parser("atoms", help="find, refine and quantify atomic columns in an image")
    atoms.add_argument("image", help="input image file (npy, npz, tif, png, ...)")
    atoms.add_argument("--pixel-size", type=float, default=None,
                       help="pixel size in Å (overrides the file's calibration)")
    atoms.add_argument("-o", "--output", required=True, help="output CSV table of columns")
    atoms.add_argument("--plot", default=None, help="optional PNG overlay of columns and strain")
    atoms.add_argument("--method", choices=("auto", "network", "peaks"), default="auto",
                       help="column detection: the atom-finder network, local maxima, or auto "
                            "(network when a model is shipped)")
    atoms.add_argument("--no-restore", action="store_true",
                       help="detect on the raw image (default: on the stem-hr restoration)")
    atoms.add_argument("--threshold", type=float, default=None,
                       help="detection threshold (network confidence 0-1, or peak height)")
    atoms.add_argument("--min-separation", type=float, default=None,
                       help="minimum distance between two columns, px")
    atoms.add_argument("--spacing", type=float, default=None,
                       help="known column spacing (nearest-neighbour distance), px: the network "
                            "uses it instead of its own estimate (coarse survey frames, where "
                            "that estimate is weakest)")
    atoms.add_argument("--relative-threshold", type=float, default=None,
                       help="network: drop columns less confident than this fraction of the "
                            "image's median column confidence (default the model card's, 0.5 "
                            "for atoms-hr; 0 keeps weak sublattices)")
    atoms.set_defaults(handler=_run_atoms)

    from .evaluate.report import add_benchmark_parser

    add_benchmark_parser(sub)
    return parser


def _run_simulate(args: argparse.Namespace) -> None:
    from .errors import InputError

    if args.gallery is None and args.out is None:
        raise InputError("nothing to do: give --out LIB.h5 (with --n) and/or --gallery PNG")
    if args.gallery is not None:
        from .simulate.gallery import draw_gallery

        print(f"gallery written to {draw_gallery(args.gallery)}")
    if args.out is not None:
        import dataclasses

        from .simulate.library import write_library
        from .simulate.sampler import SamplerConfig, check_size

        if args.n is None:
            raise InputError("--out needs --n, the number of pairs to simulate")
        config = SamplerConfig.from_toml(args.config) if args.config else SamplerConfig()
        overrides = {k: v for k, v in (("modality", args.modality),
                                       ("resolution", args.resolution)) if v is not None}
        if args.size is not None:
            overrides["size"] = check_size(args.size)
        config = dataclasses.replace(config, **overrides)
        path = write_library(args.out, args.n, config, seed=args.seed, workers=args.workers)
        print(f"library written to {path}")


def _run_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, seed=args.seed)


def _run_restore(args: argparse.Namespace) -> None:
    from .restore import restore_command

    written = restore_command(args.input, args.output, model=args.model,
                              pixel_size_A=args.pixel_size, tile=args.tile,
                              preview=not args.no_preview, progress=True)
    for path in written if isinstance(written, (list, tuple)) else [written]:
        print(f"wrote {path}")


def _run_models(args: argparse.Namespace) -> None:
    from .nn.zoo import format_card, list_models

    cards = list_models()
    if not cards:
        print("no shipped models (train one: emrestore train --config configs/stem-hr.toml)")
    for card in cards:
        print(format_card(card))


def _run_train(args: argparse.Namespace) -> None:
    from .nn.atomnet_train import config_task

    if config_task(args.config) == "atoms":
        from .nn.atomnet_train import train_atomnet_from_config as train
    else:
        from .nn.train import train_from_config as train
    out = train(args.config, resume=not args.no_resume, max_steps=args.max_steps,
                device=args.device)
    print(f"training output in {out}")


def _run_atoms(args: argparse.Namespace) -> None:
    from .atoms.report import atoms_command

    atoms_command(args.image, pixel_size_A=args.pixel_size, output=args.output, plot=args.plot,
                  method=args.method, restore=not args.no_restore, threshold=args.threshold,
                  min_separation_px=args.min_separation, spacing_px=args.spacing,
                  relative_threshold=args.relative_threshold)


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except EmrestoreError as exc:
        print(f"emrestore {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
