"""Command-line plumbing shared by the stage modules: the --params/--preset options."""

from __future__ import annotations

import argparse
import json
import sys

from gaussquant.config import Config, load_config


class _FormerPresetFlag(argparse.Action):
    """``--profile NAME``, the former spelling of ``--preset NAME``: one line on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{option_string} is now --preset (read as --preset {values})", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_preset_arg(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--preset NAME`` (the params file's ``preset`` by default) and its former ``--profile``."""
    parser.add_argument(
        "--preset", default=default, help="override the file's `preset` (tiny|quick|paper)"
    )
    parser.add_argument(
        "--profile", dest="preset", action=_FormerPresetFlag, help=argparse.SUPPRESS
    )


def add_params_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", default="params.yaml", help="parameter file (default: params.yaml)"
    )
    add_preset_arg(parser)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter after the preset, e.g. --set tdc.tolerance=0.25 (repeatable)",
    )


def load_stage_config(args: argparse.Namespace, verbose: bool = False) -> Config:
    cfg = load_config(args.params, args.preset, args.overrides)
    if verbose:
        print(f"preset {cfg.preset}; derived: {json.dumps(cfg.derived())}")
    return cfg
