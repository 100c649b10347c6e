"""`gaussquant evaluate`: metrics JSON (and a reconstruction grid) for one checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gaussquant.stages.common import add_params_args, load_stage_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="PSNR/SSIM/LPIPS/rFID/codebook stats of a checkpoint (docs/method.md §6)"
    )
    add_params_args(p)
    p.add_argument("--ckpt", required=True, type=Path, help="trained or converted checkpoint")
    p.add_argument("--data", required=True, type=Path, help="prepared data dir (val split is used)")
    p.add_argument("--out", required=True, type=Path, help="metrics JSON")
    p.add_argument(
        "--name", default=None, help="row name in tables (default: the checkpoint's method)"
    )
    p.add_argument("--arch", default=None, help="fail unless the checkpoint has this architecture")
    p.add_argument(
        "--continuous", action="store_true", help="Gaussian VAE: decode the posterior mean"
    )
    p.add_argument(
        "--grid", type=Path, default=None, help="write originals/reconstructions PNG here"
    )
    p.add_argument(
        "--fid-ref", type=Path, default=None, help="precomputed Inception stats of the originals"
    )
    p.add_argument(
        "--weights", type=Path, default=None, help="metric weights dir (default weights/)"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from gaussquant.checkpoint import load_autoencoder
    from gaussquant.data import PreparedDataset, verify_prepared
    from gaussquant.errors import GaussquantError
    from gaussquant.evaluate import PROTOCOL, evaluate_model, weights_fingerprint
    from gaussquant.io import sha256_file, write_json
    from gaussquant.quantizers.tdc import GaussianBottleneck

    cfg = load_stage_config(args)
    fingerprint = weights_fingerprint(args.weights)  # fails early, naming fetch-weights
    verify_prepared(args.data)
    model, payload = load_autoencoder(args.ckpt, arch=args.arch)
    gaussian = isinstance(model.bottleneck, GaussianBottleneck)
    if gaussian and not args.continuous:
        raise GaussquantError(
            f"{args.ckpt} is a continuous Gaussian VAE: convert it first (gaussquant convert --to gq) "
            "or pass --continuous for the unquantized reference row"
        )
    from accelerate import Accelerator

    accelerator = Accelerator()  # one process, or several under `accelerate launch`
    torch.manual_seed(0)
    dataset = PreparedDataset(args.data, "val")
    metrics = evaluate_model(
        model,
        dataset,
        cfg,
        args.weights,
        continuous=args.continuous,
        fid_reference=args.fid_ref,
        progress=not args.no_progress,
        accelerator=accelerator,
        grid_path=args.grid,
    )
    if not accelerator.is_main_process:
        return 0
    tcfg = payload["config"]
    f = tcfg["model"]["downsample"]
    res = dataset[0].shape[-1]
    tokens = getattr(model.bottleneck, "tokens_per_position", None)
    bits = getattr(model.bottleneck, "bits_per_position", None)
    record = {
        "name": args.name or payload["method"],
        "method": payload["method"],
        "arch": payload["arch"],
        "rate": payload["rate"],
        "bits": int(payload["rate"]),  # the rate: bits per latent position
        "bpp": int(payload["rate"]) / f**2,
        "seed": tcfg["train"]["seed"],  # the training seed (an experiment axis)
        "quantized": not args.continuous,
        "bits_per_pixel": None if args.continuous else bits / f**2,
        "tokens_per_image": 0 if args.continuous else tokens * (res // f) ** 2,
        "resolution": res,
        "clamp_output": cfg.eval.clamp_output and payload["arch"] == "vit",  # eval.clamp_output
        **metrics,
        "protocol": PROTOCOL,
        "checkpoint": {
            "path": str(args.ckpt),
            "sha256": sha256_file(args.ckpt),
            "step": payload["step"],
            "quantizer": payload.get("extra", {}).get("quantizer"),
        },
        "weights_sha256": fingerprint,
        "preset": cfg.preset,
    }
    write_json(args.out, record)
    print(
        json.dumps(
            {
                k: v
                for k, v in record.items()
                if k not in ("protocol", "weights_sha256", "per_image")
            },
            indent=2,
        )
    )
    return 0
