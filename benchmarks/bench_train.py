"""Training throughput: our Accelerate loop vs plain PyTorch reference loops, same model, data,
losses and steps, measured in one run.

References written for this benchmark:
- ``plain``: the generator and discriminator updates written out here from the losses
  (:mod:`gaussquant.losses`), not the library's ``train_step``, in a bare loop with what ours
  does around a step and nothing else: the same memory layout (UNet and LPIPS channels-last on
  CPU), the same DataLoader workers (``train.num_workers``), the same finite-loss check and a
  metrics row written every step (ours runs with ``log_every`` 1 here); no Accelerate, no
  resume bookkeeping. The LPIPS loss in the configured ``loss.lpips_precision``.
- ``taming``: the same loop in the optimizer_idx design of taming/official code: each of the
  two updates (generator, discriminator) runs its own autoencoder forward.

Each measurement runs in a fresh single-threaded process (its own peak RSS), after 2 warm-up
steps. Rows: the quick preset without GAN (as it trains) and with the discriminator on from
step 0, and paper-size steps per backbone (docs/method.md §5 networks at 256 px on bundled photos, batch
1 on CPU, no GAN as in the first 20k paper steps). Every row times at least 3 steps.
``ours_speedup`` = the row's seconds per step / ours.

``floor``: the same step's floating-point operations (torch's FlopCounterMode) divided by this
core's measured fp32 GEMM throughput (1024 x 1024 products), i.e. the step if every operation
ran as fast as that matrix product; ``of_gemm_speed`` = floor / the row's seconds per step. Not
a hard bound: large convolutions can beat a 1024 GEMM (``of_gemm_speed`` > 1). The floor row's
``timed_steps`` is the one counted step.

Usage: python benchmarks/bench_train.py [--steps 20] [--paper-steps 3] [--no-paper] [--out JSON]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from gaussquant.config import load_config
from gaussquant.data import PreparedDataset, prepare
from gaussquant.losses import ReconstructionNLL, adaptive_weight, generator_adv_loss, hinge_d_loss
from gaussquant.metrics.lpips import build_lpips, lpips_compute_dtype
from gaussquant.models.autoencoder import build_autoencoder
from gaussquant.models.discriminator import NLayerDiscriminator
from gaussquant.train import TrainParts, train, train_step

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plain_parts(cfg, method, arch, rate, data_dir, weights):
    """The library's step parts without Accelerate, and a shuffling DataLoader."""
    torch.manual_seed(cfg.train.seed)
    model = build_autoencoder(cfg, method, arch, rate).train()
    if arch == "unet":  # the layout ours trains in on CPU
        model = model.to(memory_format=torch.channels_last)
    disc = NLayerDiscriminator(cfg.model.discriminator).train()
    perceptual = build_lpips("vgg", weights) if cfg.loss.lpips_weight > 0 else None
    if perceptual is not None:  # the configured loss precision (quick: bf16 on native-bf16 CPUs)
        perceptual = perceptual.to(
            lpips_compute_dtype(cfg.loss.lpips_precision, torch.device("cpu"))
        ).to(memory_format=torch.channels_last)
    nll_loss = ReconstructionNLL(cfg.loss)
    lr = cfg.train.lr[method]
    opt_g = torch.optim.Adam(
        list(model.parameters()) + [nll_loss.logvar], lr=lr, betas=tuple(cfg.train.betas)
    )
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=tuple(cfg.train.betas))
    data = PreparedDataset(data_dir, "train")
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=cfg.train.batch_size[method],
        shuffle=True,
        drop_last=True,
        num_workers=cfg.train.num_workers,
    )
    parts = TrainParts(
        model,
        disc,
        nll_loss,
        perceptual,
        opt_g,
        opt_d,
        cfg.loss,
        torch.Tensor.backward,
        model.last_layer,
    )
    return parts, loader, lr


def gemm_flops_per_s(n: int = 1024, reps: int = 10) -> float:
    """This core's fp32 matrix-multiply throughput (median of ``reps`` n x n products)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / sorted(times)[reps // 2]


def floor_step(cfg, method, arch, rate, data_dir, weights) -> dict:
    """The step's floating-point operations (counted by torch's FlopCounterMode on one
    ``train_step``, after a warm-up step) at this core's GEMM throughput: the seconds a step
    would take if every operation ran as fast as a large matrix product."""
    from torch.utils.flop_counter import FlopCounterMode

    parts, loader, lr = _plain_parts(cfg, method, arch, rate, data_dir, weights)
    x = next(iter(loader))
    train_step(parts, x, 0, lr)
    with FlopCounterMode(display=False) as counter:
        train_step(parts, x, 1, lr)
    flop, gemm = counter.get_total_flops(), gemm_flops_per_s()
    return {
        "gflop_per_step": flop / 1e9,
        "gemm_gflop_per_s": gemm / 1e9,
        "seconds_per_step": flop / gemm,
    }


def written_out_step(p, x, step, lr, taming: bool) -> dict:
    """One training step written out from the losses, independent of ``train_step``: the
    generator update (NLL + auxiliary + adaptive-weighted hinge generator loss from
    ``loss.disc_start``), then the discriminator's on the same reconstruction, or (``taming``)
    on a second autoencoder forward. Returns the detached terms."""
    lc = p.loss
    use_gan = step >= lc.disc_start and lc.disc_factor > 0
    for opt in (p.opt_g, p.opt_d):
        for group in opt.param_groups:
            group["lr"] = lr
    x_rec, q = p.model(x)
    nll, stats = p.nll_loss(x, x_rec, p.perceptual(x, x_rec) if p.perceptual else None)
    terms = {"nll": nll, "aux": q.loss, **q.losses}
    loss = nll + q.loss
    if use_gan:
        g = generator_adv_loss(p.disc(x_rec))
        w = lc.disc_weight * adaptive_weight(nll, g, p.last_layer(), lc.adaptive_weight_max)
        loss = loss + w * lc.disc_factor * g
        terms |= {"g_loss": g, "d_weight": w}
    terms["loss"] = loss
    p.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    p.opt_g.step()
    if use_gan:
        if taming:
            with torch.no_grad():
                x_rec, _ = p.model(x)
        d_loss = lc.disc_factor * hinge_d_loss(p.disc(x), p.disc(x_rec.detach()))
        terms["d_loss"] = d_loss
        p.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        p.opt_d.step()
    if not all(bool(torch.isfinite(v).all()) for v in terms.values()):
        raise RuntimeError(f"non-finite loss at step {step}")
    return {k: v.detach() for k, v in terms.items()} | stats | q.stats


def reference_loop(cfg, method, arch, rate, data_dir, steps, weights, taming: bool) -> float:
    """Seconds per step (after 2 warm-up steps) of a plain PyTorch loop, one metrics row per
    step appended to a CSV file, as ours does with ``log_every`` 1."""
    parts, loader, lr = _plain_parts(cfg, method, arch, rate, data_dir, weights)
    it = iter(loader)
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "log.csv", "w") as log:
        t0 = time.perf_counter()
        for step in range(steps + 2):
            if step == 2:
                t0 = time.perf_counter()
            try:
                x = next(it)
            except StopIteration:
                it = iter(loader)
                x = next(it)
            if arch == "unet":
                x = x.contiguous(memory_format=torch.channels_last)
            terms = written_out_step(parts, x, step, lr, taming)
            row = {"step": step + 1, **{k: float(v) for k, v in sorted(terms.items())}}
            row["time_s"] = time.perf_counter() - t0
            log.write(",".join(f"{v:.6g}" for v in row.values()) + "\n")
            log.flush()
        return (time.perf_counter() - t0) / steps


def ours(cfg, method, arch, rate, data_dir, steps, weights) -> float:
    out = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        cfg = dataclasses.replace(
            cfg,
            train=dataclasses.replace(cfg.train, steps=steps + 2, log_every=1, save_every=10**9),
        )
        train(cfg, method, arch, rate, data_dir, out, weights, progress=False)
        log = pd.read_csv(out / "metrics.csv")
        t = log.set_index("step")["time_s"]
        return (t[steps + 2] - t[2]) / steps
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _measure(args) -> dict:
    """Child side: one (impl, preset, arch) measurement; prints nothing, writes JSON."""
    torch.set_num_threads(args.threads)
    cfg = _config(args.preset, args.gan, args.batch)
    rate = cfg.experiment.rates[0]
    if args.impl == "floor":
        floor = floor_step(cfg, "tdc", args.arch, rate, args.data, args.weights)
        return floor | {"peak_rss_mb": _peak_rss_mb()}
    if args.impl == "ours":
        t = ours(cfg, "tdc", args.arch, rate, args.data, args.steps, args.weights)
    else:
        t = reference_loop(
            cfg, "tdc", args.arch, rate, args.data, args.steps, args.weights, args.impl == "taming"
        )
    return {"seconds_per_step": t, "peak_rss_mb": _peak_rss_mb()}


def _config(preset: str, gan: bool, batch: int | None):
    cfg = load_config(ROOT / "params.yaml", preset)
    if preset == "paper":  # the paper networks on bundled photos at 256 px (no ImageNet here)
        cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, source="bundled", n_train=64, n_val=4)
        )
    if gan:
        cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, disc_start=0))
    if batch:
        sizes = dict.fromkeys(cfg.train.batch_size, batch)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=sizes))
    return cfg


def _spawn(impl, preset, arch, steps, gan, batch, data, weights, threads) -> dict:
    """Run one measurement in a fresh process (its own peak RSS); return its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--impl", impl]
        cmd += ["--preset", preset, "--arch", arch, "--steps", str(steps), "--data", str(data)]
        cmd += ["--weights", str(weights), "--threads", str(threads), "--json", str(out)]
        cmd += (["--gan"] if gan else []) + (["--batch", str(batch)] if batch else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"bench_train child {impl} {preset} {arch} failed:\n{proc.stderr[-3000:]}"
            )
        return json.loads(out.read_text())


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20, help="timed steps, quick preset")
    ap.add_argument("--paper-steps", type=int, default=3, help="timed steps, paper networks")
    ap.add_argument("--paper-batch", type=int, default=1, help="batch of the paper-size step")
    ap.add_argument("--no-paper", action="store_true", help="skip the paper-size rows")
    ap.add_argument("--threads", type=int, default=1, help="threads per measurement")
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument("--out", type=Path)
    # child-process options
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", choices=("ours", "plain", "taming", "floor"), help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="quick", help=argparse.SUPPRESS)
    ap.add_argument("--arch", help=argparse.SUPPRESS)
    ap.add_argument("--gan", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if min(args.steps, args.paper_steps) < 3:
        ap.error("time at least 3 steps per row (--steps, --paper-steps)")
    if args.worker:
        args.json.write_text(json.dumps(_measure(args)))
        return []

    # (preset, gan, batch, impls, steps): quick without GAN (as the quick preset trains),
    # quick with the discriminator on from step 0 (where the taming design pays a second
    # forward), and paper-size steps per backbone (no GAN, as the first 20k paper steps)
    plan = [
        ("quick", False, None, ("ours", "plain", "floor"), args.steps),
        ("quick", True, None, ("ours", "plain", "taming", "floor"), args.steps),
    ]
    if not args.no_paper:
        plan.append(
            ("paper", False, args.paper_batch, ("ours", "plain", "floor"), args.paper_steps)
        )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data = {}
        for preset in sorted({p[0] for p in plan}):
            cfg = _config(preset, False, None)
            data[preset] = Path(tmp) / preset
            prepare(
                dataclasses.replace(cfg.data, n_train=min(cfg.data.n_train or 64, 512)),
                data[preset],
                progress=False,
            )
        for preset, gan, batch, impls, steps in plan:
            cfg = _config(preset, gan, batch)
            for arch in cfg.experiment.archs:
                res = {}
                for impl in impls:
                    print(f"bench train: {preset} {arch} gan={gan} {impl}", flush=True)
                    res[impl] = _spawn(
                        impl,
                        preset,
                        arch,
                        steps,
                        gan,
                        batch,
                        data[preset],
                        args.weights,
                        args.threads,
                    )
                b = cfg.train.batch_size["tdc"]
                ours_t = res["ours"]["seconds_per_step"]
                floor = res["floor"]
                for impl in impls:
                    t = res[impl]["seconds_per_step"]
                    rows.append(
                        {
                            "preset": preset,
                            "px": cfg.data.resolution,
                            "arch": arch,
                            "gan": gan,
                            "batch": b,
                            "loop": impl,
                            "timed_steps": 1 if impl == "floor" else steps,
                            "updates_per_s": 1 / t,
                            "images_per_s": b / t,
                            "seconds_per_step": t,
                            "ours_speedup": t / ours_t,
                            "of_gemm_speed": floor["seconds_per_step"] / t,
                            "gflop_per_step": floor["gflop_per_step"],
                            "peak_rss_mb": res[impl]["peak_rss_mb"],
                        }
                    )
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
