"""`gaussquant train`: train one (method, arch, rate) autoencoder; resumes automatically.
``--init-from-diffusers``: TDC fine-tuning of a pretrained diffusers AutoencoderKL instead."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gaussquant.methods import METHODS
from gaussquant.stages.common import add_params_args, load_stage_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a Gaussian VAE (TDC/vanilla) or a VQ/FSQ/LFQ/BSQ tokenizer"
    )
    add_params_args(p)
    p.add_argument("--method", required=True, choices=list(METHODS), metavar="|".join(METHODS))
    p.add_argument("--arch", help="unet | vit (not with --init-from-diffusers)")
    p.add_argument("--rate", help="a key of params.yaml `rates`, e.g. 0.25 (not with --init-...)")
    p.add_argument(
        "--data", required=True, type=Path, help="prepared data dir (gaussquant prepare-data)"
    )
    p.add_argument("--out", required=True, type=Path, help="run dir: model.pt, metrics.csv, state/")
    p.add_argument(
        "--weights", type=Path, default=None, help="metric weights dir (default weights/)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    byo = p.add_argument_group("pretrained diffusers VAE (README: Your own VAE)")
    byo.add_argument(
        "--init-from-diffusers",
        metavar="SPEC",
        help="start from this AutoencoderKL (folder or hub id, PATH_OR_ID[:SUBFOLDER])",
    )
    byo.add_argument(
        "--codebook-size", type=int, default=None, help="TDC target K (default tdc.codebook_size)"
    )
    shape = byo.add_mutually_exclusive_group()
    shape.add_argument("--dim", type=int, help="codebook dim m: C/m tokens of log2 K bits")
    shape.add_argument("--bpp", type=float, help="m from bits per pixel and K")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gaussquant.data import verify_prepared
    from gaussquant.errors import GaussquantError
    from gaussquant.train import train

    cfg = load_stage_config(args, verbose=True)
    if args.init_from_diffusers is None:
        if args.arch is None or args.rate is None:
            raise GaussquantError("--arch and --rate are required (or --init-from-diffusers)")
        cfg.rate(args.rate)  # fail early on an unknown rate
    else:
        cfg = _byo_config(args, cfg)
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
        init_from_diffusers=args.init_from_diffusers,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # one line, not one per process
        print(f"wrote {ckpt}")
    return 0


def _byo_config(args: argparse.Namespace, cfg):
    """The params re-based on the pretrained VAE (``diffusers_vae.byo_config``); sets
    ``args.arch`` and ``args.rate`` to the byo ones."""
    import json

    from gaussquant.errors import GaussquantError
    from gaussquant.models import diffusers_vae as dv

    if args.arch is not None or args.rate is not None:
        raise GaussquantError(
            "--arch/--rate: not with --init-from-diffusers (the VAE and --dim/--bpp set them)"
        )
    k = args.codebook_size or cfg.tdc.codebook_size
    vae_config = dv.read_vae_config(args.init_from_diffusers)
    cfg = dv.byo_config(cfg, vae_config, k, dv.codebook_dim(vae_config, k, args.dim, args.bpp))
    args.arch, args.rate = dv.BYO_ARCH, dv.byo_rate(cfg)
    print(f"{args.init_from_diffusers}: derived {json.dumps(cfg.derived())}")
    return cfg
