"""The GPU check of README "Paper scale" (run by benchmarks/gpu_check.sh).

On CUDA: paper-size UNet and ViT training steps (GQ, L1 + LPIPS-VGG + TDC, batch 16) in fp32,
TF32 and bf16 autocast (images/s, peak memory by torch.cuda.max_memory_allocated); the GQ
search on CUDA vs CPU (identical indices; time; memory vs the official N x K buffer
formulation); paper-size models' forward on CUDA vs CPU (max abs difference, fp32); evaluation
throughput. Every timing synchronises the device before reading the clock. ``--dry``: the same
code on the CPU with tiny-preset models, batch 2 and a small search (the test of this script).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- gpu-check:start -->", "<!-- gpu-check:end -->"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _timed(fn, device, repeats: int) -> float:
    """Seconds per call (one warm-up call first), the device synchronised around the clock."""
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeats


@contextlib.contextmanager
def _precision(mode: str, device: torch.device):
    """fp32 (TF32 off), tf32 (TF32 matmuls/convolutions), bf16 (autocast over the step)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    autocast = (
        torch.autocast(device.type, torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()
    )
    try:
        with autocast:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def train_steps(cfg, weights, device, batch: int, repeats: int, archs, modes) -> list[dict]:
    from gaussquant.losses import ReconstructionNLL
    from gaussquant.metrics.lpips import build_lpips
    from gaussquant.models.autoencoder import build_autoencoder
    from gaussquant.models.discriminator import NLayerDiscriminator
    from gaussquant.train import TrainParts, train_step

    rate = next(iter(cfg.rates))
    lpips = build_lpips("vgg", weights).to(device)
    res = cfg.data.resolution
    rows = []
    for arch in archs:
        torch.manual_seed(0)
        model = build_autoencoder(cfg, "tdc", arch, rate).to(device)
        model.bottleneck.tdc.defer_update = True
        nll = ReconstructionNLL(cfg.loss).to(device)
        disc = NLayerDiscriminator(cfg.model.discriminator).to(device)
        opt_g = torch.optim.Adam(list(model.parameters()) + [nll.logvar], lr=1e-4)
        opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4)
        parts = TrainParts(
            model, disc, nll, lpips, opt_g, opt_d, cfg.loss, lambda loss: loss.backward(),
            model.last_layer, tdc=model.bottleneck.tdc,
        )  # fmt: skip
        x = torch.rand(batch, 3, res, res, device=device) * 2 - 1
        params = sum(p.numel() for p in model.parameters())
        for mode in modes:
            _peak_reset(device)
            with _precision(mode, device):
                sec = _timed(functools.partial(train_step, parts, x, 0, 1e-4), device, repeats)
            rows.append(
                {"arch": arch, "params_M": params / 1e6, "precision": mode, "batch": batch,
                 "images_per_s": batch / sec, "peak_GiB": _peak_gib(device)}
            )  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def gq_search_check(device, n: int, k: int, m: int) -> dict:
    """Our exact search on ``device`` vs on the CPU (identical indices) and the official N x K
    buffer formulation (benchmarks/bench_gq.py) on ``device``: time and peak memory."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_gq import official_torch_backend

    from gaussquant.quantizers.gaussian_quant import gaussian_codebook, gq_search

    g = torch.Generator().manual_seed(0)
    logvar = torch.randn(n, m, generator=g) * 0.5 - 2.0
    mu = torch.randn(n, m, generator=g) * (1 - logvar.exp()).clamp_min(0).sqrt()
    code = gaussian_codebook(k, m)
    cpu_t0 = time.perf_counter()
    ref = gq_search(mu, logvar, code)
    cpu_s = time.perf_counter() - cpu_t0
    dev = [t.to(device) for t in (mu, logvar, code)]
    _peak_reset(device)
    ours_s = _timed(lambda: gq_search(*dev), device, 3)
    ours = gq_search(*dev).cpu()
    ours_gib = _peak_gib(device)
    normal = torch.distributions.Normal(0.0, 1.0)
    prior_lp = normal.log_prob(dev[2]).float()
    z = torch.cat([dev[0], dev[1]], 1)[:, :, None, None]  # (N, 2m, 1, 1): mean then logvar
    _peak_reset(device)
    try:
        off_s = _timed(lambda: official_torch_backend(z, dev[2], prior_lp, m), device, 1)
        official = official_torch_backend(z, dev[2], prior_lp, m).reshape(-1).cpu()
        agree = float((official == ref).float().mean())
    except torch.OutOfMemoryError:
        off_s, agree = None, None
    return {
        "n": n, "k": k, "m": m, "cpu_s": cpu_s, "device_s": ours_s,
        "identical_to_cpu": bool(torch.equal(ours, ref)), "device_peak_GiB": ours_gib,
        "official_device_s": off_s, "official_peak_GiB": _peak_gib(device),
        "official_agreement": agree,
    }  # fmt: skip


@torch.no_grad()
def forward_agreement(cfg, device, batch: int) -> list[dict]:
    """Paper-size models (random weights, the same on both), fp32 with TF32 off: CPU vs device."""
    from gaussquant.models.autoencoder import build_autoencoder

    res, rows = cfg.data.resolution, []
    x = torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for arch in ("unet", "vit"):
        torch.manual_seed(0)
        model = build_autoencoder(cfg, "tdc", arch, next(iter(cfg.rates))).eval()
        cpu = model(x)[0]
        with _precision("fp32", device):
            dev = model.to(device)(x.to(device))[0].cpu()
        rows.append({"arch": arch, "max_abs_diff": float((cpu - dev).abs().max())})
    return rows


def eval_throughput(cfg, weights, device, n: int) -> dict:
    from accelerate import Accelerator

    from gaussquant.evaluate import evaluate_model
    from gaussquant.models.autoencoder import build_autoencoder

    res = cfg.data.resolution
    images = [torch.rand(3, res, res) * 2 - 1 for _ in range(n)]
    model = build_autoencoder(cfg, "tdc", "unet", next(iter(cfg.rates)))
    accelerator = Accelerator(cpu=device.type == "cpu")
    t0 = time.perf_counter()
    evaluate_model(
        model, images, cfg, weights, continuous=True, progress=False, accelerator=accelerator
    )
    _sync(device)
    return {"images": n, "images_per_s": n / (time.perf_counter() - t0), "fid": cfg.eval.fid}


def markdown(report: dict) -> str:
    import pandas as pd

    lines = [START, "## GPU check", "", f"{report['device']}, torch {report['torch']} "
             f"(`bash benchmarks/gpu_check.sh`{' --dry' if report['dry'] else ''})", ""]  # fmt: skip
    lines += ["Training steps (GQ, L1 + LPIPS-VGG + TDC, no GAN):", ""]
    lines += [pd.DataFrame(report["train"]).to_markdown(index=False, floatfmt=".3g"), ""]
    lines += ["GQ search, ours on the device vs the CPU and the official N x K formulation:", ""]
    lines += [pd.DataFrame([report["gq"]]).to_markdown(index=False, floatfmt=".3g"), ""]
    lines += ["Forward, device vs CPU (fp32, TF32 off):", ""]
    lines += [pd.DataFrame(report["forward"]).to_markdown(index=False, floatfmt=".3g"), ""]
    lines += ["Evaluation (UNet, continuous, every metric):", ""]
    lines += [pd.DataFrame([report["eval"]]).to_markdown(index=False, floatfmt=".3g"), END]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else ""
    if START in old and END in old:
        head, rest = old.split(START, 1)
        new = head + text.rstrip("\n") + rest.split(END, 1)[1]
    else:
        new = old + ("\n" if old else "") + text
    path.write_text(new)


def main(argv=None) -> int:
    from gaussquant.config import load_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry", action="store_true", help="CPU, tiny-preset sizes: checks the script")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "README.md")
    ap.add_argument(
        "--weights", type=Path, default=Path(os.environ.get("GAUSSQUANT_WEIGHTS", ROOT / "weights"))
    )
    args = ap.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry to check the script on the CPU")
    device = torch.device("cpu" if args.dry else "cuda")
    cfg = load_config(ROOT / "params.yaml", "tiny" if args.dry else "paper")
    batch = 2 if args.dry else 16
    report = {
        "device": "CPU (dry)" if args.dry else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "dry": args.dry,
        "train": train_steps(
            cfg,
            args.weights,
            device,
            batch,
            1 if args.dry else 5,
            ("unet", "vit"),
            ("fp32", "tf32", "bf16"),
        ),  # fmt: skip
        "gq": gq_search_check(device, 256 if args.dry else 65536, 1024 if args.dry else 65536, 4),
        "forward": forward_agreement(cfg, device, 1 if args.dry else 4),
        "eval": eval_throughput(cfg, args.weights, device, 4 if args.dry else 500),
    }
    write_section(args.out, markdown(report))
    # beside the section, never benchmarks/README.json (the CPU benchmarks' record)
    args.out.with_name("gpu_check.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
