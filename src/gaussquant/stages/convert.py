"""`gaussquant convert`: trained Gaussian VAE -> GQ (or TokenBridge) VQ-VAE, no training."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gaussquant.stages.common import add_params_args, load_stage_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="convert a Gaussian VAE checkpoint into a VQ-VAE (no training)"
    )
    add_params_args(p)
    p.add_argument(
        "--ckpt", required=True, type=Path, help="trained Gaussian VAE (gaussquant train)"
    )
    p.add_argument("--to", choices=("gq", "tokenbridge"), default="gq")
    p.add_argument("--out", required=True, type=Path, help="converted checkpoint path")
    p.add_argument(
        "--codebook-size",
        type=int,
        default=None,
        help="GQ codebook size K (default: the TDC target's K; the K ablation varies it)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gaussquant.quantizers.convert import convert_checkpoint

    cfg = load_stage_config(args)
    k = args.codebook_size
    if k is not None and (k < 2 or k & (k - 1)):
        from gaussquant.errors import ConfigError

        raise ConfigError(
            f"--codebook-size: {k} is not a power of two (allowed: 2, 4, ..., 65536, ...)"
        )
    meta = convert_checkpoint(args.ckpt, args.to, args.out, gq_cfg=cfg.gq, codebook_size=k)
    print(json.dumps(meta, indent=2))
    print(f"wrote {args.out}")
    return 0
