"""`gaussquant <subcommand>`: the stage entry points each pipeline rule calls.

Each module in ``gaussquant.stages`` exposes ``register(subparsers)``, which adds its
sub-parser and sets ``func``. Stage modules import heavy libraries inside their functions
so ``gaussquant --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gaussquant import __version__
from gaussquant.errors import GaussquantError

STAGES = (
    "prepare_data",
    "fetch_weights",
    "train",
    "convert",
    "evaluate",
    "fid_reference",
    "table",
    "figure",
    "theory",
    "rate",
    "ablation",
    "report",
    "bench",
    "official",
    "reconstruct",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gaussquant",
        description="Gaussian Quant: train a TDC Gaussian VAE, convert it to a VQ-VAE, "
        "evaluate and compare against VQGAN/FSQ/LFQ/BSQ/TokenBridge.",
    )
    parser.add_argument("--version", action="version", version=f"gaussquant {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<subcommand>")
    for name in STAGES:  # a stage that fails to import is an error, never a missing command
        module = importlib.import_module(f"gaussquant.stages.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except GaussquantError as err:
        print(f"gaussquant {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gaussquant {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
