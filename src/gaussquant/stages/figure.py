"""`gaussquant figure`: rate-distortion, TDC KL histograms, TDC dynamics, reconstruction grids."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from gaussquant.errors import GaussquantError
from gaussquant.io import write_json
from gaussquant.stages.common import add_params_args, load_stage_config

KINDS = ("rate-distortion", "figure1", "kl-hist", "tdc-dynamics", "recon-grid")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figure", help="draw one of the paper-style figures")
    add_params_args(p)
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--out", required=True, type=Path, help="output PNG")
    p.add_argument(
        "--summary", type=Path, help="kl-hist: JSON with the per-token KL range of each model"
    )
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        help="metrics JSONs, training logs, grids; kl-hist: the rates.npz of Gaussian VAE trainings",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from gaussquant import figures

    cfg = load_stage_config(args)
    for path in args.inputs:
        if not path.exists():
            raise GaussquantError(f"input {str(path)!r} not found")
    target = math.log2(cfg.tdc.codebook_size)
    if args.kind in ("rate-distortion", "figure1"):
        from gaussquant.records import load_metrics

        pdf = args.out.with_suffix(".pdf") if args.kind == "figure1" else None
        figures.rate_distortion(
            load_metrics(args.inputs), args.out, with_published=cfg.preset == "paper", pdf=pdf
        )
    elif args.kind == "tdc-dynamics":
        logs = {p.parent.name: pd.read_csv(p) for p in args.inputs}
        summaries = {p.parent.name: p.parent / "summary.json" for p in args.inputs}
        checks = {
            k: json.loads(v.read_text()).get("tdc") for k, v in summaries.items() if v.is_file()
        }
        figures.tdc_dynamics(logs, target, cfg.tdc.tolerance, args.out, checks)
    elif args.kind == "recon-grid":
        figures.stack_grids(args.inputs, args.out)
    else:
        from gaussquant.records import load_rates

        rates = {p.parent.name: load_rates(p)["token_bits"] for p in args.inputs}
        ranges = figures.kl_histograms(rates, target, args.out)
        if args.summary is not None:
            write_json(args.summary, {"target_bits": target, "ranges_bits": ranges})
        print(json.dumps(ranges, indent=2))
    print(f"wrote {args.out}")
    return 0
