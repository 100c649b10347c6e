"""`gaussquant train`: train one (method, arch, rate) autoencoder; resumes automatically."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gaussquant.stages.common import add_params_args, load_stage_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a Gaussian VAE (TDC/vanilla) or a VQ/FSQ/LFQ/BSQ tokenizer"
    )
    add_params_args(p)
    p.add_argument("--method", required=True, help="gq | vanilla | tbtdc | vq | fsq | lfq | bsq")
    p.add_argument("--arch", required=True, help="unet | vit")
    p.add_argument("--rate", required=True, help="a key of params.yaml `rates`, e.g. 0.25")
    p.add_argument(
        "--data", required=True, type=Path, help="prepared data dir (gaussquant prepare-data)"
    )
    p.add_argument("--out", required=True, type=Path, help="run dir: model.pt, metrics.csv, state/")
    p.add_argument(
        "--weights", type=Path, default=None, help="metric weights dir (default weights/)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gaussquant.data import verify_prepared
    from gaussquant.train import train

    cfg = load_stage_config(args, verbose=True)
    cfg.rate(args.rate)  # fail early on an unknown rate
    verify_prepared(args.data)
    ckpt = train(
        cfg,
        args.method,
        args.arch,
        args.rate,
        args.data,
        args.out,
        args.weights,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # one line, not one per process
        print(f"wrote {ckpt}")
    return 0
