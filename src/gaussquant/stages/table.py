"""`gaussquant table`: Table 1 or the TokenBridge table from metrics JSONs."""

from __future__ import annotations

import argparse
from pathlib import Path

from gaussquant.stages.common import add_params_args, load_stage_config

CAPTIONS = {
    "table1": "Reconstruction on the {data} validation set ({preset} preset): GQ vs trained "
    "tokenizers at equal bits per pixel.",
    "figure1": "Reconstruction at every rate of Figure 1 on the {data} validation set ({preset} "
    "preset): GQ vs trained tokenizers at equal bits per latent position.",
    "tokenbridge": "TokenBridge (post-training per-channel quantization) on a vanilla vs a TDC "
    "Gaussian VAE, next to GQ at equal bits ({preset} preset).",
    "byo": "Your own Gaussian VAE ({preset} preset): the pretrained VAE and its TDC fine-tune, "
    "each continuous, with GQ and with TokenBridge at equal bits.",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="write a comparison table (CSV, Markdown, LaTeX)")
    add_params_args(p)
    p.add_argument("--kind", choices=sorted(CAPTIONS), required=True)
    p.add_argument("--out", required=True, type=Path, help="output prefix (writes .csv, .md, .tex)")
    p.add_argument(
        "--verdicts", type=Path, default=None, help="also write GQ-vs-baseline verdicts (prefix)"
    )
    p.add_argument("metrics", nargs="+", type=Path, help="metrics JSONs (gaussquant evaluate)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gaussquant.methods import METHODS
    from gaussquant.tables import (
        build_table,
        load_metrics,
        shared_noise,
        verdicts,
        write_tables,
        write_verdicts,
    )

    cfg = load_stage_config(args)
    runs = load_metrics(args.metrics)
    table = build_table(runs, with_published=cfg.preset == "paper")
    data = "ImageNet" if cfg.data.source == "folder" else "bundled-photo"
    caption = CAPTIONS[args.kind].format(preset=cfg.preset, data=data)
    paths = write_tables(table, args.out, cfg.table.decimals, caption)
    if args.verdicts is not None:
        baselines = [m for m in cfg.experiment.methods if not METHODS[m].gaussian]
        v = verdicts(runs, baselines)
        paths += write_verdicts(v, args.verdicts, cfg.table.decimals, shared_noise(runs, baselines))
        print(v.to_string(index=False))
    for path in paths:
        print(f"wrote {path}")
    return 0
