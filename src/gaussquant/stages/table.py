"""`gaussquant table`: Table 1 or the TokenBridge table from metrics JSONs."""

from __future__ import annotations

import argparse
from pathlib import Path

from gaussquant.stages.common import add_params_args, load_stage_config

CAPTIONS = {
    "table1": "Reconstruction on the {data} validation set ({profile} profile): GQ vs trained "
    "tokenizers at equal bits per pixel.",
    "tokenbridge": "TokenBridge (post-training per-channel quantization) on a vanilla vs a TDC "
    "Gaussian VAE, next to GQ at equal bits ({profile} profile).",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="write a comparison table (CSV, Markdown, LaTeX)")
    add_params_args(p)
    p.add_argument("--kind", choices=sorted(CAPTIONS), required=True)
    p.add_argument("--out", required=True, type=Path, help="output prefix (writes .csv, .md, .tex)")
    p.add_argument("metrics", nargs="+", type=Path, help="metrics JSONs (gaussquant evaluate)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gaussquant.tables import build_table, load_metrics, write_tables

    cfg = load_stage_config(args)
    table = build_table(load_metrics(args.metrics), with_published=cfg.profile == "paper")
    data = "ImageNet" if cfg.data.source == "folder" else "bundled-photo"
    caption = CAPTIONS[args.kind].format(profile=cfg.profile, data=data)
    for path in write_tables(table, args.out, cfg.table.decimals, caption):
        print(f"wrote {path}")
    return 0
