"""Why does a TDC VAE's per-token rate spread? Train one quick TDC VAE with overrides and take
its validation posteriors apart (benchmarks/notes.md, "quick: why the UNet's per-token rates
spread").

    python benchmarks/tdc_probe.py NAME ARCH [--data DIR] [--set key=value ...] [--map]

Trains ``tdc`` (the TDC VAE) at 16 bits per position with the quick preset (``--preset``,
``--rate``) plus ``--set`` overrides (a rate's training length: ``--set
'train.steps_by_rate={64: 4000}'``; ``train.steps`` is that of the rates not named there)
into ``results/probe/NAME`` on the prepared quick data (``make reproduce`` writes it to
``results/quick/data``), then encodes the first 128 validation images and appends one JSON
line to ``results/probe/probe.jsonl``:

- the TDC check's numbers (p05-p95, shares below / within / above target +- tolerance);
- where the spread lives: the standard deviation of each image's mean rate (between images),
  the mean per-image standard deviation over positions (within images), border vs inner
  positions of the latent grid;
- what it follows: the correlation of a position's rate with the local contrast (pixel standard
  deviation in the 12 px window around its 4 x 4 patch) and with brightness;
- how the rate splits into its mean part (sum of mu^2) and its variance part (sum of
  sigma^2 - 1 - log sigma^2) and the correlation of the two over tokens: a model that holds
  TDC trades one against the other token by token;
- how much the decoder cares about the posterior noise: the L1 error of reconstructions from
  ``z = mu + sigma * eps`` (as in training) against ``z = mu`` (the rate a token carries in its
  variance part buys only noise reduction);
- the multipliers' end values.

``--target-bits T`` trains to a lower target: one token of K = 2^T per position at T bits per
position (every codebook and rate list follows; the TokenBridge shape, which needs at least C
bits per position, is left out in this process). ``--logvar-bias B`` starts the encoder's
``logvar`` outputs at ``B`` (their bias; -2.3 puts a token at ``mu = 0`` on a 16-bit target: 1
bit per dimension) instead of near 0: a probe of the TDC warm start, patched in this process
only. ``--map`` also draws 8 validation images over their per-position rate maps (NAME.png).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gaussquant.checkpoint import load_autoencoder
from gaussquant.config import load_config
from gaussquant.data import PreparedDataset
from gaussquant.encoding import rate_summary
from gaussquant.methods import METHODS
from gaussquant.posterior import kl_nats, split_posterior, token_rates
from gaussquant.train import train

N_IMAGES = 128


def local_stats(x: torch.Tensor, f: int, window: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Brightness and contrast (grey mean and standard deviation) of the ``window`` px around
    each latent position's ``f x f`` patch."""
    grey, pad = x.mean(1, keepdim=True), (window - f) // 2
    pool = lambda t: F.avg_pool2d(F.pad(t, [pad] * 4, mode="replicate"), window, f)  # noqa: E731
    mean = pool(grey)
    std = (pool(grey**2) - mean**2).clamp_min(0).sqrt()
    return mean[:, 0].numpy(), std[:, 0].numpy()


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def noise_l1(model, mu: torch.Tensor, logvar: torch.Tensor, x: torch.Tensor) -> dict:
    """Mean L1 of reconstructions from the sampled posterior (4 draws) and from its mean."""
    gen = torch.Generator().manual_seed(0)
    l1 = lambda z: float((model.decoder(z).clamp(-1, 1) - x).abs().mean())  # noqa: E731
    draws = [mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=gen) for _ in range(4)]
    return {"l1_sampled": float(np.mean([l1(z) for z in draws])), "l1_mean": l1(mu)}


def analyse(model, x: torch.Tensor, bits_per_nat: float) -> dict:
    with torch.no_grad():
        mu, logvar = split_posterior(model.encoder(x))
        noise = noise_l1(model, mu, logvar, x)
    scale = bits_per_nat / 2
    mean_part = (mu**2 * scale).sum(1).numpy()
    var_part = ((logvar.exp() - 1 - logvar) * scale).sum(1).numpy()
    pos = (kl_nats(mu, logvar) * bits_per_nat).sum(1).numpy()  # bits per position (N, h, w)
    border = np.ones(pos.shape[1:], bool)
    border[1:-1, 1:-1] = False
    brightness, contrast = local_stats(x, x.shape[-1] // pos.shape[-1])
    return {
        "sd_between_images": float(pos.mean((1, 2)).std()),
        "sd_within_images": float(pos.reshape(len(pos), -1).std(1).mean()),
        "border_mean": float(pos[:, border].mean()),
        "inner_mean": float(pos[:, ~border].mean()),
        "corr_contrast": corr(contrast, pos),
        "corr_brightness": corr(brightness, pos),
        "mean_part": float(mean_part.mean()),
        "var_part": float(var_part.mean()),
        "corr_mean_var_parts": corr(mean_part, var_part),
        **noise,
        "rate_maps": pos,
    }


def token_slots(kl_bits: torch.Tensor, dim: int) -> dict:
    """How the tokens of a position share its rate (``kl_bits`` per dimension, (N, C, h, w))."""
    slots = token_rates(kl_bits, dim)  # (N, C/dim, h, w)
    if slots.shape[1] == 1:
        return {}
    flat = slots.transpose(0, 1).flatten(1).numpy()  # (slots, N*h*w)
    c = np.corrcoef(flat)
    return {
        "slot_means": [round(float(v), 3) for v in flat.mean(1)],
        "sd_within_positions": float(slots.std(1).mean()),
        "corr_between_slots": float(c[~np.eye(len(c), dtype=bool)].mean()),
    }


def draw(x: torch.Tensor, maps: np.ndarray, target: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = list(range(0, len(x), len(x) // 8))[:8]
    fig, ax = plt.subplots(2, len(idx), figsize=(1.6 * len(idx), 3.6))
    for j, i in enumerate(idx):
        ax[0, j].imshow(((x[i].permute(1, 2, 0) + 1) / 2).clamp(0, 1))
        im = ax[1, j].imshow(maps[i], vmin=0, vmax=2 * target, cmap="viridis")
        ax[1, j].set_title(f"mean {maps[i].mean():.1f}", fontsize=8)
    for a in ax.ravel():
        a.axis("off")
    fig.colorbar(im, ax=ax.ravel().tolist(), shrink=0.6, label="bits per position")
    fig.savefig(out, dpi=100)
    plt.close(fig)


def start_logvar_at(bias: float) -> None:
    """Patch the encoders built in this process: the ``logvar`` half of the output layer's
    biases starts at ``bias`` (the ``mu`` half and all weights as initialised)."""
    from gaussquant.models import unet, vit

    for cls, attr in ((unet.UNetEncoder, "conv_out"), (vit.ViTEncoder, "proj_out")):
        init = cls.__init__

        def patched(self, *a, _init=init, _attr=attr, **k):
            _init(self, *a, **k)
            out = getattr(self, _attr)
            with torch.no_grad():
                out.bias[out.bias.numel() // 2 :] = bias

        cls.__init__ = patched


def target_overrides(bits: int) -> list[str]:
    """``--set`` overrides for a TDC target of ``bits`` per token: one token of K = 2^bits per
    latent position (the codebooks and the rate lists follow, so the config validates)."""
    k = 2**bits
    keys = ("rates", "experiment.rates", "experiment.figure1_rates")
    return [
        f"tdc.codebook_size={k}",
        f"vq.codebook_size={k}",
        f"lfq.sub_codebook_bits={math.gcd(bits, 8)}",
        f"ablation.rate={bits}",
        *(f"{key}=[{bits}]" for key in keys),
        "train.steps_by_rate={}",  # named the profile's rates: none is left
    ]


def drop_tokenbridge() -> None:
    """The TokenBridge TDC shape needs at least C bits per position (one bit per channel); a
    lower target probes the TDC VAE only, so this process leaves that method out."""
    METHODS.pop("tbtdc", None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("arch", choices=["unet", "vit"])
    p.add_argument("--data", type=Path, default=Path("results/quick/data"))
    p.add_argument("--preset", default="quick")
    p.add_argument("--rate", default="16", help="bits per latent position (default 16)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", type=Path, default=Path("results/probe"))
    p.add_argument("--map", action="store_true")
    p.add_argument("--logvar-bias", type=float, default=None)
    p.add_argument("--target-bits", type=int, default=None, help="a lower TDC target, e.g. 12")
    args = p.parse_args()
    if args.target_bits is not None:
        drop_tokenbridge()
        args.overrides = target_overrides(args.target_bits) + args.overrides
        args.rate = str(args.target_bits)
    if args.logvar_bias is not None:
        start_logvar_at(args.logvar_bias)
    cfg = load_config("params.yaml", args.preset, args.overrides)
    t0 = time.perf_counter()
    ckpt = train(cfg, "tdc", args.arch, args.rate, args.data, args.out / args.name, progress=False)
    seconds = time.perf_counter() - t0
    model, _ = load_autoencoder(ckpt)
    model.eval()
    ds = PreparedDataset(args.data, "val")
    x = torch.stack([ds[i] for i in range(min(N_IMAGES, len(ds)))])
    stats = analyse(model, x, cfg.tdc.bits_per_nat)
    maps = stats.pop("rate_maps")
    tdc = model.bottleneck.tdc
    with torch.no_grad():
        kl_bits = kl_nats(*split_posterior(model.encoder(x))) * cfg.tdc.bits_per_nat
    bits = token_rates(kl_bits, tdc.dim).flatten().numpy()
    stats |= token_slots(kl_bits, tdc.dim)
    summary = rate_summary(bits, tdc.target, tdc.cfg.tolerance)
    with open(args.out / args.name / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    row = {"name": args.name, "arch": args.arch, "overrides": args.overrides}
    row["logvar_bias"] = args.logvar_bias
    row |= {"train_s": round(seconds), "tdc": summary, "posterior": stats}
    row["multipliers"] = {k: float(last[k]) for k in ("lam", "lam_min", "lam_max")}
    with open(args.out / "probe.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))
    if args.map:
        draw(x, maps, tdc.target, args.out / f"{args.name}.png")


if __name__ == "__main__":
    main()
