"""`gaussquant rate`: bits-back rate of a pretrained diffusers VAE on prepared images, and the
GQ codebook (K, m) that fits it; writes PREFIX.json, PREFIX.md and PREFIX.png.
See :mod:`gaussquant.rate_analysis` and :mod:`gaussquant.models.diffusers_vae`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rate", help="per-token KL rate of a diffusers AutoencoderKL and the GQ (K, m) it fits"
    )
    p.add_argument(
        "--vae", required=True, help="AutoencoderKL folder or hub id, PATH_OR_ID[:SUBFOLDER]"
    )
    p.add_argument("--data", required=True, type=Path, help="prepared data dir (val split)")
    p.add_argument("--out", required=True, type=Path, help="output prefix: .json, .md, .png")
    p.add_argument("--bpp", type=float, default=0.25, help="bits per pixel to fit (default 0.25)")
    p.add_argument(
        "--max-images", type=int, default=512, help="first N val images (0 = all; default 512)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--offline", action="store_true", help="never contact the hub (cache only)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def output_paths(prefix: Path) -> dict[str, Path]:
    return {ext: prefix.with_name(prefix.name + f".{ext}") for ext in ("json", "md", "png")}


def run(args: argparse.Namespace) -> int:
    import torch

    from gaussquant import rate_analysis
    from gaussquant.data import PreparedDataset, verify_prepared
    from gaussquant.errors import GaussquantError
    from gaussquant.io import write_json, write_text
    from gaussquant.models import diffusers_vae as dv

    if args.bpp <= 0 or args.batch_size < 1 or args.max_images < 0:
        raise GaussquantError("rate: --bpp must be > 0, --batch-size >= 1, --max-images >= 0")
    verify_prepared(args.data)
    dataset = PreparedDataset(args.data, "val")
    vae = dv.load_vae(args.vae, local_files_only=args.offline)
    config = dv.plain_config(vae)
    factor = dv.downsampling_factor(config)
    if dataset.resolution % factor:
        raise GaussquantError(
            f"rate: image size {dataset.resolution} is not a multiple of the VAE's "
            f"downsampling factor {factor}; prepare the data at a multiple of it"
        )
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mu, logvar = encode_posteriors(dv.DiffusersEncoder(vae).to(device), dataset, args, device)
    analysis = rate_analysis.analyse(mu, logvar, factor, bpp=args.bpp)
    report = {
        "vae": args.vae,
        "vae_config": {k: config.get(k) for k in ("latent_channels", "scaling_factor")}
        | {k: config.get(k) for k in ("shift_factor", "block_out_channels")},
        "data": str(args.data),
        "resolution": dataset.resolution,
    } | analysis.report
    paths = output_paths(args.out)
    write_json(paths["json"], report)
    write_text(paths["md"], rate_analysis.render_markdown(report, f"Bits-back rate: {args.vae}"))
    rate_analysis.plot_histograms(analysis, paths["png"])
    print(report["statement"])
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def encode_posteriors(encoder, dataset, args, device):
    """(mu, logvar) float32 on the CPU, each (N, C, h, w), of the first ``--max-images``."""
    import torch

    from gaussquant.encoding import encoded_batches

    desc = None if args.no_progress else "rate: encode"
    mus, logvars = [], []
    for _x, z in encoded_batches(
        encoder, dataset, args.batch_size, args.max_images, device, desc=desc
    ):
        mu, logvar = z.float().chunk(2, dim=1)
        mus.append(mu.cpu())
        logvars.append(logvar.cpu())
    n = sum(len(m) for m in mus)
    print(f"rate: encoded {n} images with {type(encoder).__name__} on {device}")
    return torch.cat(mus), torch.cat(logvars)
