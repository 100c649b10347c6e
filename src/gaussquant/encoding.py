"""The one pass of an encoder over validation images, and the posterior rates gathered on it.

:func:`encoded_batches` is the loop that evaluation (its token statistics ride on the pass
that reconstructs), training's end-of-run TDC check (on the model in memory, on its device,
each process a slice) and ``gaussquant rate`` (a diffusers VAE) share. :class:`RateStats`
turns the encoder outputs ``z = [mu, logvar]`` of a Gaussian VAE into per-token KL rates in
exact bits (docs/method.md §1) and per-channel means, reducible across processes;
:func:`rate_summary` is the one description of a token-rate distribution against the TDC
target that checks, tables and figures read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from gaussquant.posterior import kl_nats, nats_to_bits, split_posterior, token_rates

TDC_BAND_BITS = 2.0  # TDC holds: validation p05-p95 of token bits within target +- this
TDC_MIN_WITHIN = 0.7  # ... and at least this share of tokens within target +- tolerance


def shard(dataset, max_images: int, rank: int = 0, world: int = 1) -> tuple[Subset, int]:
    """Process ``rank``'s images (``rank, rank + world, ...``) of the first ``max_images``
    (0: all) and how many images all processes hold together."""
    n = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    return Subset(dataset, list(range(rank, n, world))), n


def encoded_batches(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    dataset,
    batch_size: int,
    max_images: int = 0,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world: int = 1,
    desc: str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, encoder(x))`` batch by batch over this process's slice of the images, in dataset
    order, ``x`` on ``device``; a progress bar when ``desc`` is given. No gradients."""
    subset, _ = shard(dataset, max_images, rank, world)
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, drop_last=False)
    for x in tqdm(loader, desc=desc, disable=desc is None, dynamic_ncols=True):
        x = x.to(device)
        with torch.no_grad():
            yield x, encoder(x)


def gather_rows(local: torch.Tensor, accelerator) -> torch.Tensor:
    """Float64 rows of every process in image order, on every process: process r holds the
    rows of images r, r + world, ... (a process may hold one row fewer)."""
    world = accelerator.num_processes if accelerator is not None else 1
    if world == 1:
        return local
    n = torch.tensor([local.shape[0]], device=local.device)
    most = int(accelerator.gather(n).max())
    k = int(accelerator.gather(torch.tensor([local.shape[1]], device=local.device)).max())
    padded = torch.full((most, k), math.nan, dtype=torch.float64, device=local.device)
    padded[: local.shape[0], : local.shape[1]] = local
    everything = accelerator.gather(padded[None]).reshape(world, most, k)
    rows = everything.transpose(0, 1).reshape(-1, k)  # image i is row i
    return rows[~torch.isnan(rows).all(1)]


class RateStats:
    """Per-token KL (bits, exact) of Gaussian posteriors with tokens of ``dim`` channels
    (strided layout), and the mean KL of each latent channel, batch by batch."""

    def __init__(self, dim: int):
        self.dim = dim
        self.tokens: list[torch.Tensor] = []
        self.channel_sum: torch.Tensor | float = 0.0
        self.positions = 0

    def update(self, z: torch.Tensor) -> None:
        """``z`` (B, 2C, H, W): the encoder output, ``mu`` then ``logvar``."""
        kl = kl_nats(*split_posterior(z.detach()))
        self.tokens.append(nats_to_bits(token_rates(kl, self.dim)).flatten(1).cpu())  # per image
        self.channel_sum = self.channel_sum + nats_to_bits(kl).sum(dim=(0, 2, 3)).cpu()
        self.positions += kl.shape[0] * kl.shape[2] * kl.shape[3]

    def gather(self, accelerator) -> None:
        """Every process ends with all processes' tokens and sums (a no-op on one)."""
        if accelerator is None or accelerator.num_processes == 1:
            return
        device = accelerator.device
        rows = gather_rows(torch.cat(self.tokens).double().to(device), accelerator)
        self.tokens = [rows.float().cpu()]  # every image's tokens, in dataset order
        sums = torch.cat(
            [
                torch.as_tensor(self.channel_sum).double().flatten(),
                torch.tensor([float(self.positions)], dtype=torch.float64),
            ]
        )
        sums = accelerator.reduce(sums.to(device), "sum").cpu()
        self.channel_sum, self.positions = sums[:-1].float(), int(sums[-1])

    def result(self) -> dict[str, np.ndarray]:
        """``token_bits`` every token's KL, ``channel_bits`` the mean KL of each channel."""
        return {
            "token_bits": torch.cat(self.tokens).flatten().numpy(),
            "channel_bits": (torch.as_tensor(self.channel_sum) / self.positions).numpy(),
        }


def posterior_rates(
    model: torch.nn.Module,
    dataset,
    batch_size: int,
    max_images: int = 512,
    accelerator=None,
    desc: str | None = None,
) -> dict[str, Any]:
    """Rates of a Gaussian VAE (``model.encoder`` and a Gaussian ``model.bottleneck``) on the
    first ``max_images`` images, on the model's device, each process a slice (gathered):
    :meth:`RateStats.result` plus ``dim`` and ``target`` (the TDC target in bits per token,
    None for a VAE trained without TDC) and ``tolerance``."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = next(model.parameters()).device
    stats = RateStats(model.bottleneck.dim)
    batches = encoded_batches(
        model.encoder, dataset, batch_size, max_images, device, rank, world, desc
    )
    for _, z in batches:
        stats.update(z)
    stats.gather(accelerator)
    return stats.result() | {"dim": stats.dim} | tdc_target(model.bottleneck)


RATE_IMAGES = 512  # validation images whose posterior rates a training records (rates.npz)


def tdc_target(bottleneck) -> dict[str, float | None]:
    """The TDC target (bits per token) and tolerance of a Gaussian bottleneck; None without TDC."""
    tdc = bottleneck.tdc
    return {
        "target": None if tdc is None else tdc.target,
        "tolerance": None if tdc is None else tdc.cfg.tolerance,
    }


def rate_summary(bits: np.ndarray, target: float | None, tolerance: float) -> dict[str, Any]:
    """The token-rate distribution in numbers; against a TDC ``target`` (bits per token), the
    shares below / within / above ``target +- tolerance`` and whether TDC holds: p05-p95
    within ``target +- TDC_BAND_BITS`` and at least ``TDC_MIN_WITHIN`` of tokens within."""
    p = dict(zip(("p01", "p05", "p50", "p95", "p99"), np.percentile(bits, [1, 5, 50, 95, 99])))
    out = {"tokens": int(bits.size), "mean": float(bits.mean()), "min": float(bits.min())}
    out |= {"max": float(bits.max())} | {k: float(v) for k, v in p.items()}
    if target is None:
        return out
    within = float((np.abs(bits - target) <= tolerance).mean())
    band = target - TDC_BAND_BITS <= out["p05"] and out["p95"] <= target + TDC_BAND_BITS
    return out | {
        "target": target,
        "tolerance": tolerance,
        "below_tolerance": float((bits < target - tolerance).mean()),
        "within_tolerance": within,
        "above_tolerance": float((bits > target + tolerance).mean()),
        "band_bits": TDC_BAND_BITS,
        "min_within": TDC_MIN_WITHIN,
        "holds": bool(band and within >= TDC_MIN_WITHIN),
    }
