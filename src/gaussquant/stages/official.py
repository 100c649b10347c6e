"""`gaussquant import-official` / `export-official`: released official checkpoints <-> ours.

``import-official CKPT --out OURS.pt [--config NAME]`` reads an official Lightning checkpoint
(or a bare state dict) of `tongdaxu/VQ-VAE-from-Gaussian-VAE` and writes our self-describing
checkpoint (with the source's sha256 and the official configuration name); every official
tensor is used and every one of ours filled, else the command fails naming the keys.
``--eval-out`` also writes the model our evaluation measures (a Gaussian VAE converted to GQ).
``export-official OURS.pt --out CKPT`` writes the inverse, ``{"state_dict": ...}``.
``official-table --out PREFIX METRICS...`` puts evaluated official checkpoints next to docs/method.md §7.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gaussquant.sections import RELEASED_WEIGHTS
from gaussquant.stages.common import add_params_args, load_stage_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-official",
        help="official checkpoint (e.g. sd3unet_gq_0.25.ckpt) -> our checkpoint",
        description="Map an official Lightning checkpoint onto our UNet/ViT autoencoder. The "
        "model sections come from the checkpoint's shapes and --config; every other section "
        "(losses, rates, GQ seed) from --params / --preset (default: the paper preset).",
    )
    add_params_args(p)
    p.set_defaults(preset="paper")  # official checkpoints are paper-size models
    p.add_argument(
        "ckpt",
        type=Path,
        help="official .ckpt (Lightning) or bare state dict; with --hub, its file name there",
    )
    p.add_argument(
        "--hub",
        metavar="REPO",
        default=None,
        help=f"download CKPT from this Hugging Face repository (cached), e.g. {RELEASED_WEIGHTS}",
    )
    p.add_argument("--revision", default=None, help="with --hub: branch, tag or commit")
    p.add_argument("--out", required=True, type=Path, help="our checkpoint to write")
    p.add_argument(
        "--config",
        default=None,
        help="official configuration, e.g. sd3unet_gq_0.25 (needed for GQ at 0.5 / 1.0 bpp, "
        "LFQ vs BSQ; default: inferred, GQ at 0.25 bpp)",
    )
    p.add_argument(
        "--eval-out",
        type=Path,
        default=None,
        help="also write the model to evaluate: a Gaussian VAE converted to GQ (params' gq "
        "section), a trained tokenizer as imported",
    )
    p.add_argument("--rate", default=None, help="our rate name (default: from --config)")
    p.add_argument(
        "--vit-heads",
        type=int,
        default=None,
        help="ViT attention heads (not stored in a checkpoint; default: from --config or params)",
    )
    p.set_defaults(func=run_import)

    e = sub.add_parser(
        "export-official",
        help="our checkpoint -> official {'state_dict': ...} (loads into the official modules)",
    )
    e.add_argument("ckpt", type=Path, help="our checkpoint (import-official, train or convert)")
    e.add_argument("--out", required=True, type=Path, help="official-format checkpoint to write")
    e.set_defaults(func=run_export)

    t = sub.add_parser(
        "official-table",
        help="evaluated official checkpoints next to the published docs/method.md §7 numbers (CSV, Markdown)",
    )
    add_params_args(t)
    t.add_argument("--out", required=True, type=Path, help="output prefix (writes .csv, .md)")
    t.add_argument(
        "metrics", nargs="+", type=Path, help="metrics JSONs named by official configuration"
    )
    t.set_defaults(func=run_table)


def run_import(args: argparse.Namespace) -> int:
    from gaussquant.official import import_official

    cfg = load_stage_config(args)
    if args.hub is not None:
        from gaussquant.pretrained import hub_file

        args.ckpt = hub_file(args.hub, str(args.ckpt), args.revision)
        print(f"{args.hub}/{args.ckpt.name}: {args.ckpt}")
    meta = import_official(args.ckpt, args.out, cfg, args.config, args.rate, args.vit_heads)
    for note in meta["notes"]:
        print(f"note: {note}")
    print(json.dumps({k: v for k, v in meta.items() if k != "notes"}, indent=2))
    print(
        f"mapped {meta['tensors_mapped']} official tensors, skipped "
        f"{meta['skipped_loss_tensors']} loss.* tensors; wrote {args.out}"
    )
    if args.eval_out is not None:
        write_evaluable(args.out, args.eval_out, meta["method"], cfg)
    return 0


def write_evaluable(imported: Path, out: Path, method: str, cfg) -> None:
    """The model ``gaussquant evaluate`` measures: GQ for a Gaussian VAE, else the import."""
    import shutil

    from gaussquant.io import atomic_path
    from gaussquant.methods import GAUSSIAN_METHODS
    from gaussquant.stages.convert import convert_checkpoint

    if method in GAUSSIAN_METHODS:
        meta = convert_checkpoint(imported, "gq", out, gq_cfg=cfg.gq)
        print(f"converted to GQ (K={meta['codebook_size']}, m={meta['dim']}); wrote {out}")
        return
    with atomic_path(out) as tmp:
        shutil.copyfile(imported, tmp)
    print(f"{method}: evaluated as imported; wrote {out}")


def run_table(args: argparse.Namespace) -> int:
    from gaussquant.official import comparison_table, write_comparison
    from gaussquant.records import load_metrics

    cfg = load_stage_config(args)
    table = comparison_table(load_metrics(args.metrics))
    data = "ImageNet" if cfg.data.source == "folder" else "bundled-photo"
    caption = (
        f"Released official checkpoints evaluated with our protocol on the {data} validation "
        f"set ({cfg.preset} preset), next to the published values (docs/method.md §7); diff = ours - paper."
    )
    for path in write_comparison(table, args.out, cfg.table.decimals, caption):
        print(f"wrote {path}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from gaussquant.official import export_official

    meta = export_official(args.ckpt, args.out)
    print(json.dumps(meta, indent=2))
    print(f"wrote {args.out}")
    return 0
