"""Training throughput: our Accelerate loop vs plain PyTorch reference loops, same model, data,
losses and steps, measured in one run.

References written for this benchmark:
- ``plain``: a straightforward loop, one autoencoder forward per generator update, and the
  discriminator update reusing that forward (the same arithmetic as ours, no framework).
- ``taming``: the optimizer_idx design of taming/official code: each of the two updates
  (generator, discriminator) runs its own autoencoder forward.

Usage: python benchmarks/bench_train.py [--profile quick] [--steps 30] [--gan] [--out JSON]
Prints a Markdown table; rows report generator updates/s, images/s and peak RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from gaussquant.config import load_config
from gaussquant.data import PreparedDataset, prepare
from gaussquant.losses import ReconstructionNLL, adaptive_weight, generator_adv_loss, hinge_d_loss
from gaussquant.metrics.lpips import build_lpips
from gaussquant.models.autoencoder import build_autoencoder
from gaussquant.models.discriminator import NLayerDiscriminator
from gaussquant.train import train

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference_loop(cfg, method, arch, rate, data_dir, steps, weights, taming: bool) -> float:
    """Seconds per step (after 2 warm-up steps) of a plain PyTorch loop."""
    torch.manual_seed(cfg.train.seed)
    model = build_autoencoder(cfg, method, arch, rate).train()
    disc = NLayerDiscriminator(cfg.model.discriminator).train()
    perceptual = build_lpips("vgg", weights) if cfg.loss.lpips_weight > 0 else None
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
    t0 = None
    for step in range(steps + 2):
        if step == 2:
            t0 = time.perf_counter()
        try:
            x = next(it)
        except StopIteration:
            it = iter(loader)
            x = next(it)
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
            if taming:  # optimizer_idx = 1: a second autoencoder forward
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


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--gan", action="store_true", help="discriminator on from step 0")
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    cfg = load_config(ROOT / "params.yaml", args.profile)
    if args.gan:
        cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, disc_start=0))
    data_dir = Path(tempfile.mkdtemp(prefix="bench-data-"))
    prepare(cfg.data, data_dir / "d", progress=False)
    rows = []
    rate = cfg.experiment.rates[0]
    for arch in cfg.experiment.archs:
        batch = cfg.train.batch_size["gq"]
        t_ours = ours(cfg, "gq", arch, rate, data_dir / "d", args.steps, args.weights)
        t_plain = reference_loop(
            cfg, "gq", arch, rate, data_dir / "d", args.steps, args.weights, taming=False
        )
        t_taming = reference_loop(
            cfg, "gq", arch, rate, data_dir / "d", args.steps, args.weights, taming=True
        )
        rows.append(
            {
                "profile": args.profile,
                "arch": arch,
                "gan": args.gan,
                "batch": batch,
                "ours_updates_per_s": 1 / t_ours,
                "plain_updates_per_s": 1 / t_plain,
                "taming_updates_per_s": 1 / t_taming,
                "ours_images_per_s": batch / t_ours,
                "ours_vs_plain": t_plain / t_ours,
                "ours_vs_taming": t_taming / t_ours,
                "peak_rss_mb": _peak_rss_mb(),
            }
        )
    shutil.rmtree(data_dir, ignore_errors=True)
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
