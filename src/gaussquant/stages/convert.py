"""`gaussquant convert`: trained Gaussian VAE -> GQ (or TokenBridge) VQ-VAE, no training; or
a pretrained diffusers AutoencoderKL (``--from-diffusers``) through the same conversion
(:func:`gaussquant.conversion.convert_model`, on the model in memory; this stage reads and
writes the checkpoints)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from gaussquant.stages.common import add_params_args, load_stage_config

IMPORT_TARGET = "vae"  # convert --from-diffusers --to vae: the Gaussian VAE itself, unquantized


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
        choices=("gq", "tokenbridge", IMPORT_TARGET),
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
    from gaussquant.config import check_power_of_two
    from gaussquant.errors import GaussquantError

    cfg = load_stage_config(args)
    k = args.codebook_size
    if k is not None:
        check_power_of_two("--codebook-size", k)
    if args.from_diffusers is None:
        if args.to == IMPORT_TARGET or args.dim is not None or args.bpp is not None:
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

    vae_config = dv.read_vae_config(args.from_diffusers, args.offline)
    m = dv.codebook_dim(vae_config, k, args.dim, args.bpp)
    print(f"convert {args.from_diffusers}: K = {k}, m = {m}, to {args.to}")
    return convert_diffusers(args.from_diffusers, args.to, args.out, cfg, k, m, args.offline)


def convert_checkpoint(
    src: str | Path, to: str, out: str | Path, gq_cfg=None, codebook_size: int | None = None
) -> dict[str, Any]:
    """Convert the trained Gaussian VAE checkpoint ``src`` into a VQ-VAE checkpoint ``out``
    (``gq_cfg``, ``codebook_size``: see :func:`gaussquant.conversion.convert_model`); returns
    the quantizer record written."""
    from gaussquant.checkpoint import load_autoencoder, save_checkpoint
    from gaussquant.config import config_from_dict
    from gaussquant.conversion import convert_model
    from gaussquant.errors import GaussquantError

    model, payload = load_autoencoder(src)
    extra = payload.get("extra", {})
    if "quantizer" in extra:
        raise GaussquantError(f"{src}: already converted ({extra['quantizer']['kind']})")
    cfg = config_from_dict(payload["config"])
    kept = {k: v for k, v in extra.items() if k == "diffusers"}  # what rebuilds the model
    source = kept | {"source_checkpoint": str(src), "source_step": payload["step"]}
    method, arch, rate = payload["method"], payload["arch"], payload["rate"]
    if gq_cfg is not None:  # the written checkpoint records the GQ settings it was made with
        cfg = dataclasses.replace(cfg, gq=gq_cfg)
    try:
        new = convert_model(model, cfg, method, rate, to, codebook_size=codebook_size)
    except GaussquantError as err:
        raise GaussquantError(f"{src}: {err}") from None
    save_checkpoint(out, model, cfg, to, arch, rate, payload["step"], new | source)
    return new["quantizer"]


def convert_diffusers(
    spec: str,
    to: str,
    out: str | Path,
    cfg,
    codebook_size: int,
    dim: int,
    local_files_only: bool = False,
) -> dict[str, Any] | None:
    """A pretrained diffusers ``AutoencoderKL`` (``spec``: folder or hub id) as a Gaussian VAE
    (method ``vanilla``) at codebook (K, m) under ``cfg``, converted to ``to`` like a trained
    checkpoint; ``to == "vae"`` writes that Gaussian VAE itself (the continuous reference row,
    or the source of ``convert --ckpt``). Returns the quantizer record (None for ``vae``)."""
    from gaussquant.checkpoint import save_checkpoint
    from gaussquant.conversion import convert_model
    from gaussquant.models import diffusers_vae as dv

    cfg = dv.byo_config(cfg, dv.read_vae_config(spec, local_files_only), codebook_size, dim)
    model, extra = dv.pretrained_autoencoder(spec, cfg, "vanilla", None, local_files_only)
    rate = dv.byo_rate(cfg)
    where = (dv.BYO_ARCH, rate, 0)
    if to == IMPORT_TARGET:
        save_checkpoint(out, model, cfg, "vanilla", *where, extra)
        return None
    new = convert_model(model, cfg, "vanilla", rate, to)
    source = extra | {"source_checkpoint": str(spec), "source_step": 0}
    save_checkpoint(out, model, cfg, to, *where, new | source)
    return new["quantizer"]
