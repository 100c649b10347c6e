"""`gaussquant fid-reference`: Inception statistics of the original validation images, computed
once and shared by every model's rFID (the originals are the same for all of them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gaussquant.stages.common import add_params_args, load_stage_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fid-reference", help="FID Inception statistics of the validation originals")
    add_params_args(p)
    p.add_argument("--data", required=True, type=Path, help="prepared data dir (val split)")
    p.add_argument("--out", required=True, type=Path, help="statistics file (.npz)")
    p.add_argument(
        "--weights", type=Path, default=None, help="metric weights dir (default weights/)"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gaussquant.data import PreparedDataset, verify_prepared
    from gaussquant.evaluate import reference_stats

    cfg = load_stage_config(args)
    verify_prepared(args.data)
    stats = reference_stats(
        PreparedDataset(args.data, "val"), cfg, args.weights, progress=not args.no_progress
    )
    stats.save(args.out)
    print(f"wrote {args.out} ({stats.count} images)")
    return 0
