"""`gaussquant ablation`: tables and figures of the codebook-size, tolerance, seed and KL-range
ablations (docs/method.md §3, §7)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gaussquant.stages.common import add_params_args, load_stage_config

CAPTIONS = {
    "codebook": "GQ reconstruction vs codebook size: log2 K - R, R = mean per-token KL of the TDC VAE "
    "(docs/method.md §3: larger K buys little, smaller K breaks reconstruction).",
    "tolerance": "TDC tolerance alpha: reconstruction after GQ and the spread of per-token KL.",
    "seed": "GQ codebook seed: the same trained VAE converted with different Sobol seeds.",
    "kl": "Per-token and per-dimension KL (bits) on validation images: vanilla vs TDC "
    "(docs/method.md §7 reports 0.26-27.29 vs 2.93-5.63 bits per dimension at ImageNet scale).",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablation", help="write one ablation table (CSV, Markdown) and figure")
    add_params_args(p)
    p.add_argument("--kind", choices=sorted(CAPTIONS), required=True)
    p.add_argument("--out", required=True, type=Path, help="output prefix (.csv, .md, .png)")
    p.add_argument(
        "--vae",
        type=Path,
        nargs="*",
        default=[],
        help="trained Gaussian VAEs: the rates.npz each training wrote beside its model.pt",
    )
    p.add_argument(
        "--tolerances", type=float, nargs="*", default=[], help="tolerance of each metrics file"
    )
    p.add_argument("metrics", type=Path, nargs="*", help="metrics JSONs (gaussquant evaluate)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gaussquant import ablations as ab
    from gaussquant.errors import GaussquantError
    from gaussquant.records import load_rates

    load_stage_config(args)  # a bad params file or preset fails here, as in every stage
    records = [json.loads(p.read_text()) for p in args.metrics]
    rates = {p.parent.name: load_rates(p) for p in args.vae}
    if args.kind == "codebook":
        if len(rates) != 1:
            raise GaussquantError(
                "--kind codebook needs exactly one --vae (the TDC VAE's rates.npz)"
            )
        df = ab.codebook_size_table(records, ab.mean_bits(next(iter(rates.values()))))
    elif args.kind == "seed":
        df = ab.seed_table(records)
    elif args.kind == "tolerance":
        if not (len(args.tolerances) == len(records) == len(rates)):
            raise GaussquantError(
                "--kind tolerance needs one --tolerances value and one --vae per metrics file"
            )
        df = ab.tolerance_table(records, args.tolerances, list(rates.values()))
    else:
        df = ab.kl_range_table(rates)
    ab.write_ablation(df, args.out, CAPTIONS[args.kind])
    ab.plot(args.kind, df, args.out.with_suffix(".png"), rates)
    print(df.to_string(index=False))
    return 0
