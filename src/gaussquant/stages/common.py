"""Command-line plumbing shared by the stage modules: the --params/--profile options."""

from __future__ import annotations

import argparse
import json

from gaussquant.config import Config, load_config


def add_params_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", default="params.yaml", help="parameter file (default: params.yaml)"
    )
    parser.add_argument(
        "--profile", default=None, help="override the file's `profile` (tiny|quick|paper)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter after the profile, e.g. --set tdc.tolerance=0.25 (repeatable)",
    )


def load_stage_config(args: argparse.Namespace, verbose: bool = False) -> Config:
    cfg = load_config(args.params, args.profile, args.overrides)
    if verbose:
        print(f"profile {cfg.profile}; derived: {json.dumps(cfg.derived())}")
    return cfg
