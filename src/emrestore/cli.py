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

    atoms = sub.add_parser("atoms", help="find, refine and quantify atomic columns in an image")
    atoms.add_argument("image", help="input image file (npy, npz, tif, png, ...)")
    atoms.add_argument("--pixel-size", type=float, default=None,
                       help="pixel size in Å (overrides the file's calibration)")
    atoms.add_argument("-o", "--output", required=True, help="output CSV table of columns")
    atoms.add_argument("--plot", default=None, help="optional PNG overlay of columns and strain")
    atoms.set_defaults(handler=_run_atoms)
    return parser


def _run_atoms(args: argparse.Namespace) -> None:
    from .atoms.report import atoms_command

    atoms_command(args.image, pixel_size_A=args.pixel_size, output=args.output, plot=args.plot)


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
