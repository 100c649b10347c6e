"""Training throughput: our Accelerate loop vs plain PyTorch reference loops, same model, data,
losses and steps, measured in one run.

References written for this benchmark:
- ``plain``: :func:`gaussquant.train.train_step` (the library's own generator and discriminator
  blocks) in a bare loop: no Accelerate, no logging, no resume bookkeeping, a shuffling
  DataLoader, the UNet in the default contiguous layout where ours trains channels-last on CPU;
  the LPIPS loss in the configured ``loss.lpips_precision``.
- ``taming``: the optimizer_idx design of taming/official code: each of the two updates
  (generator, discriminator) runs its own autoencoder forward.

Each measurement runs in a fresh single-threaded process (its own peak RSS), after 2 warm-up
steps. Rows: the quick profile without GAN (as it trains) and with the discriminator on from
step 0, and one paper-size step per backbone (SPEC 5 networks at 256 px on bundled photos,
batch 1 on CPU, no GAN as in the first 20k paper steps). ``ours_speedup`` = the row's seconds
per step / ours.

Usage: python benchmarks/bench_train.py [--steps 20] [--paper-steps 1] [--no-paper] [--out JSON]
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


def reference_loop(cfg, method, arch, rate, data_dir, steps, weights, taming: bool) -> float:
    """Seconds per step (after 2 warm-up steps) of a plain PyTorch loop."""
    torch.manual_seed(cfg.train.seed)
    model = build_autoencoder(cfg, method, arch, rate).train()
    disc = NLayerDiscriminator(cfg.model.discriminator).train()
    perceptual = build_lpips("vgg", weights) if cfg.loss.lpips_weight > 0 else None
    if perceptual is not None:  # the configured loss precision (quick: bf16 on native-bf16 CPUs)
        perceptual = perceptual.to(
            lpips_compute_dtype(cfg.loss.lpips_precision, torch.device("cpu"))
        )
    nll_loss = ReconstructionNLL(cfg.loss)
    lr = cfg.train.lr[method]
    opt_g = torch.optim.Adam(
        list(model.parameters()) + [nll_loss.logvar], lr=lr, betas=tuple(cfg.train.betas)
    )
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=tuple(cfg.train.betas))
    data = PreparedDataset(data_dir, "train")
    loader = torch.utils.data.DataLoader(
        data, batch_size=cfg.train.batch_size[method], shuffle=True, drop_last=True
    )
    it = iter(loader)
    lc = cfg.loss
    parts = TrainParts(
        model, disc, nll_loss, perceptual, opt_g, opt_d, lc, torch.Tensor.backward, model.last_layer
    )
    t0 = None
    for step in range(steps + 2):
        if step == 2:
            t0 = time.perf_counter()
        try:
            x = next(it)
        except StopIteration:
            it = iter(loader)
            x = next(it)
        if not taming:  # the library's step itself, without Accelerate, logging or resume
            train_step(parts, x, step, lr)
            continue
        # taming's optimizer_idx design, written here as the reference: each update runs its
        # own autoencoder forward (the discriminator's a second one)
        use_gan = step >= lc.disc_start
        x_rec, q = model(x)
        p = perceptual(x, x_rec) if perceptual is not None else None
        nll, _ = nll_loss(x, x_rec, p)
        loss = nll + q.loss
        if use_gan:
            g = generator_adv_loss(disc(x_rec))
            loss = loss + lc.disc_weight * adaptive_weight(nll, g, model.last_layer()) * g
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        if use_gan:
            with torch.no_grad():
                x_rec, _ = model(x)
            d_loss = hinge_d_loss(disc(x), disc(x_rec.detach()))
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
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
    """Child side: one (impl, profile, arch) measurement; prints nothing, writes JSON."""
    torch.set_num_threads(args.threads)
    cfg = _config(args.profile, args.gan, args.batch)
    rate = cfg.experiment.rates[0]
    if args.impl == "ours":
        t = ours(cfg, "gq", args.arch, rate, args.data, args.steps, args.weights)
    else:
        t = reference_loop(
            cfg, "gq", args.arch, rate, args.data, args.steps, args.weights, args.impl == "taming"
        )
    return {"seconds_per_step": t, "peak_rss_mb": _peak_rss_mb()}


def _config(profile: str, gan: bool, batch: int | None):
    cfg = load_config(ROOT / "params.yaml", profile)
    if profile == "paper":  # the paper networks on bundled photos at 256 px (no ImageNet here)
        cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, source="bundled", n_train=64, n_val=4)
        )
    if gan:
        cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, disc_start=0))
    if batch:
        sizes = dict.fromkeys(cfg.train.batch_size, batch)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=sizes))
    return cfg


def _spawn(impl, profile, arch, steps, gan, batch, data, weights, threads) -> dict:
    """Run one measurement in a fresh process (its own peak RSS); return its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--impl", impl]
        cmd += ["--profile", profile, "--arch", arch, "--steps", str(steps), "--data", str(data)]
        cmd += ["--weights", str(weights), "--threads", str(threads), "--json", str(out)]
        cmd += (["--gan"] if gan else []) + (["--batch", str(batch)] if batch else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"bench_train child {impl} {profile} {arch} failed:\n{proc.stderr[-3000:]}"
            )
        return json.loads(out.read_text())


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20, help="timed steps, quick profile")
    ap.add_argument("--paper-steps", type=int, default=1, help="timed steps, paper networks")
    ap.add_argument("--paper-batch", type=int, default=1, help="batch of the paper-size step")
    ap.add_argument("--no-paper", action="store_true", help="skip the paper-size rows")
    ap.add_argument("--threads", type=int, default=1, help="threads per measurement")
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument("--out", type=Path)
    # child-process options
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", choices=("ours", "plain", "taming"), help=argparse.SUPPRESS)
    ap.add_argument("--profile", default="quick", help=argparse.SUPPRESS)
    ap.add_argument("--arch", help=argparse.SUPPRESS)
    ap.add_argument("--gan", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.json.write_text(json.dumps(_measure(args)))
        return []

    # (profile, gan, batch, impls, steps): quick without GAN (as the quick profile trains),
    # quick with the discriminator on from step 0 (where the taming design pays a second
    # forward), and one paper-size step per backbone (no GAN, as the first 20k paper steps)
    plan = [
        ("quick", False, None, ("ours", "plain"), args.steps),
        ("quick", True, None, ("ours", "plain", "taming"), args.steps),
    ]
    if not args.no_paper:
        plan.append(("paper", False, args.paper_batch, ("ours", "plain"), args.paper_steps))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data = {}
        for profile in sorted({p[0] for p in plan}):
            cfg = _config(profile, False, None)
            data[profile] = Path(tmp) / profile
            prepare(
                dataclasses.replace(cfg.data, n_train=min(cfg.data.n_train or 64, 512)),
                data[profile],
                progress=False,
            )
        for profile, gan, batch, impls, steps in plan:
            cfg = _config(profile, gan, batch)
            for arch in cfg.experiment.archs:
                res = {}
                for impl in impls:
                    print(f"bench train: {profile} {arch} gan={gan} {impl}", flush=True)
                    res[impl] = _spawn(
                        impl,
                        profile,
                        arch,
                        steps,
                        gan,
                        batch,
                        data[profile],
                        args.weights,
                        args.threads,
                    )
                b = cfg.train.batch_size["gq"]
                ours_t = res["ours"]["seconds_per_step"]
                for impl in impls:
                    t = res[impl]["seconds_per_step"]
                    rows.append(
                        {
                            "profile": profile,
                            "px": cfg.data.resolution,
                            "arch": arch,
                            "gan": gan,
                            "batch": b,
                            "loop": impl,
                            "timed_steps": steps,
                            "updates_per_s": 1 / t,
                            "images_per_s": b / t,
                            "seconds_per_step": t,
                            "ours_speedup": t / ours_t,
                            "peak_rss_mb": res[impl]["peak_rss_mb"],
                        }
                    )
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
