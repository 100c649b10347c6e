"""`gaussquant convert`: trained Gaussian VAE -> GQ (or TokenBridge) VQ-VAE, no training; or
a pretrained diffusers AutoencoderKL (``--from-diffusers``) through the same conversion."""

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
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", type=Path, help="trained Gaussian VAE (gaussquant train)")
    source.add_argument(
        "--from-diffusers",
        metavar="SPEC",
        help="pretrained diffusers AutoencoderKL: folder or hub id, PATH_OR_ID[:SUBFOLDER]",
    )
    p.add_argument(
        "--to",
        choices=("gq", "tokenbridge", "vae"),
        default="gq",
        help="vae (with --from-diffusers): the Gaussian VAE itself, for evaluate --continuous",
    )
    p.add_argument("--out", required=True, type=Path, help="converted checkpoint path")
    p.add_argument(
        "--codebook-size",
        type=int,
        default=None,
        help="GQ codebook size K (default: the TDC target's K, tdc.codebook_size)",
    )
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--dim", type=int, help="--from-diffusers: codebook dim m (C/m tokens)")
    shape.add_argument("--bpp", type=float, help="--from-diffusers: m from bits per pixel and K")
    p.add_argument("--offline", action="store_true", help="never contact the hub (cache only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gaussquant.errors import ConfigError, GaussquantError
    from gaussquant.quantizers.convert import convert_checkpoint

    cfg = load_stage_config(args)
    k = args.codebook_size
    if k is not None and (k < 2 or k & (k - 1)):
        raise ConfigError(
            f"--codebook-size: {k} is not a power of two (allowed: 2, 4, ..., 65536, ...)"
        )
    if args.from_diffusers is None:
        if args.to == "vae" or args.dim is not None or args.bpp is not None:
            raise GaussquantError("--to vae, --dim and --bpp go with --from-diffusers only")
        meta = convert_checkpoint(args.ckpt, args.to, args.out, gq_cfg=cfg.gq, codebook_size=k)
    else:
        meta = _from_diffusers(args, cfg, k or cfg.tdc.codebook_size)
    if meta is not None:
        print(json.dumps(meta, indent=2))
    print(f"wrote {args.out}")
    return 0


def _from_diffusers(args: argparse.Namespace, cfg, k: int):
    from gaussquant.models import diffusers_vae as dv
    from gaussquant.quantizers.convert import convert_diffusers

    vae_config = dv.read_vae_config(args.from_diffusers, args.offline)
    m = dv.codebook_dim(vae_config, k, args.dim, args.bpp)
    print(f"convert {args.from_diffusers}: K = {k}, m = {m}, to {args.to}")
    return convert_diffusers(args.from_diffusers, args.to, args.out, cfg, k, m, args.offline)
