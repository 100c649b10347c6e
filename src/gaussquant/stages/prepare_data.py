"""`gaussquant prepare-data`: bundled photos -> uint8 shards; an image folder -> an index."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from gaussquant.stages.common import add_params_args, load_stage_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare-data",
        help="prepare train/val data: bundled photo shards, or an index of an image folder",
        description="Write OUT/manifest.json and OUT/{train,val}/: uint8 shard-*.npy (bundled "
        "photos) or index.tsv.gz (an image folder, read in place by the loader) from "
        "params.yaml's `data:` section. The options below override it for ad-hoc use.",
    )
    add_params_args(p)
    p.add_argument("--out", required=True, type=Path, help="output folder (replaced atomically)")
    p.add_argument("--source", choices=("bundled", "folder"), default=None, help="data.source")
    p.add_argument("--train-dir", default=None, help="data.train_dir (folder source)")
    p.add_argument("--val-dir", default=None, help="data.val_dir (folder source)")
    p.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="fail on the first unreadable image instead of skipping it (data.strict)",
    )
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gaussquant.data import prepare

    cfg = load_stage_config(args).data  # the whole file, --set included, checked before any work
    overrides = {
        "source": args.source,
        "train_dir": args.train_dir,
        "val_dir": args.val_dir,
        "strict": args.strict,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    manifest = prepare(cfg, args.out, workers=args.workers, progress=not args.no_progress)
    counts = manifest["counts"]
    print(
        f"wrote {args.out}: {counts['train']} train + {counts['val']} val images "
        f"({cfg.source}, {cfg.resolution} px), {len(manifest['skipped'])} skipped, "
        f"sha256 {manifest['sha256'][:16]}"
    )
    for item in manifest["skipped"]:
        print(f"skipped {item['split']}/{item['file']}: {item['reason']}")
    return 0
