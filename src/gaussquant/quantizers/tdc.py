"""Gaussian VAE bottleneck with the target divergence constraint (TDC), docs/method.md §1.

Paper: "Vector Quantization using Gaussian Variational Autoencoder", Xu et al.,
https://arxiv.org/abs/2512.06609. The encoder emits ``2C`` channels (``mu`` then ``logvar``);
training samples ``z = mu + sigma * eps``; the regulariser is either TDC (per-token KL in bits
pulled to ``log2 K`` with three multipliers) or the vanilla summed KL (nats).

Token layout is strided (docs/method.md §1): token ``k`` holds channels ``k, k + C/m, k + 2C/m, ...``;
stated once in :mod:`gaussquant.posterior`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn

from gaussquant.config import Config, TDCConfig
from gaussquant.errors import ConfigError
from gaussquant.posterior import kl_nats, nats_to_bits, split_posterior, token_rates
from gaussquant.quantizers.base import QuantizerOutput

ReduceFn = Callable[[torch.Tensor, str], torch.Tensor]


def _local_reduce(x: torch.Tensor, op: str) -> torch.Tensor:
    return x


class TDCRegularizer(nn.Module):
    """Per-token KL constraint with multipliers ``lam``, ``lam_min``, ``lam_max`` (docs/method.md §1).

    Multipliers are buffers: saved with the training state and restored on resume (the
    official code keeps plain floats that reset on resume). Batch statistics (mean, min, max of
    per-token bits) go through ``reduce_fn(tensor, op)`` with op in {"mean", "min", "max"}, so
    several processes update identical multipliers as if they saw one large batch (the official
    code updates each process from its own shard).
    """

    def __init__(self, latent_channels: int, dim: int, cfg: TDCConfig):
        super().__init__()
        if latent_channels % dim:
            raise ConfigError(
                f"tdc: codebook dim m={dim} must divide latent channels {latent_channels}"
            )
        self.latent_channels, self.dim, self.cfg = latent_channels, dim, cfg
        self.target = math.log2(cfg.codebook_size)
        self.register_buffer("lam", torch.ones((), dtype=torch.float64))
        self.register_buffer("lam_min", torch.ones((), dtype=torch.float64))
        self.register_buffer("lam_max", torch.ones((), dtype=torch.float64))
        # set by the training loop while a step's micro-batches run (gradient accumulation):
        # the multipliers then move once per step, from the statistics of all of them
        self.defer_update = False

    def forward(
        self, mu: torch.Tensor, logvar: torch.Tensor, reduce_fn: ReduceFn = _local_reduce
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted TDC loss (after the config weight) and stats; updates multipliers if training.

        Loss = weight * lam * (1/B) * sum over tokens of (w * R), R in bits, using the multipliers
        as they were before this step's update.
        """
        cfg, target, tol = self.cfg, self.target, self.cfg.tolerance
        bits = token_rates(kl_nats(mu, logvar), self.dim) * cfg.bits_per_nat  # (B, T, H, W)
        w = torch.where(
            bits > target + tol,
            self.lam_max.to(bits.dtype),
            torch.where(bits < target - tol, self.lam_min.to(bits.dtype), torch.ones_like(bits)),
        ).detach()
        kl_loss = self.lam.to(bits.dtype) * (w * bits).sum() / bits.shape[0]
        with torch.no_grad():
            stats_in = bits.detach()
            bits_mean = reduce_fn(stats_in.mean(), "mean")
            bits_min = reduce_fn(stats_in.min(), "min")
            bits_max = reduce_fn(stats_in.max(), "max")
        stats = {
            "kl_loss": kl_loss.detach(),
            "bits_mean": bits_mean,
            "bits_min": bits_min,
            "bits_max": bits_max,
            "lam": self.lam.clone(),
            "lam_min": self.lam_min.clone(),
            "lam_max": self.lam_max.clone(),
        }
        if self.training and not self.defer_update:
            self._update(bits_mean, bits_min, bits_max)
        return cfg.weight * kl_loss, stats

    def update_from(self, stats: list[dict[str, torch.Tensor]]) -> None:
        """One multiplier update from the statistics of a step's equal-sized micro-batches:
        the mean of their means, the least minimum, the largest maximum: the statistics of
        the whole batch, so ``a x b`` accumulated equals one batch of ``a b`` images."""
        self._update(
            torch.stack([s["bits_mean"] for s in stats]).mean(),
            torch.stack([s["bits_min"] for s in stats]).min(),
            torch.stack([s["bits_max"] for s in stats]).max(),
        )

    @torch.no_grad()
    def _update(self, bits_mean: torch.Tensor, bits_min: torch.Tensor, bits_max: torch.Tensor):
        f, target, tol = self.cfg.factor, self.target, self.cfg.tolerance
        # unbounded at lam_floor 0, the official rule (docs/method.md §1.4, §1.5)
        self.lam.mul_(f if bits_mean > target else 1.0 / f).clamp_(min=self.cfg.lam_floor)
        self.lam_max.mul_(f if bits_max > target + tol else 1.0 / f).clamp_(*self.cfg.lam_max_range)
        self.lam_min.mul_(1.0 / f if bits_min < target - tol else f).clamp_(*self.cfg.lam_min_range)


class GaussianBottleneck(nn.Module):
    """Gaussian VAE bottleneck: reparameterised sample in training, ``mu`` in eval.

    regularizer="tdc": :class:`TDCRegularizer`; regularizer="kl": vanilla summed KL in nats
    times ``kl_weight`` (per image sum, mean over batch). Input (B, 2C, H, W); output z_q
    (B, C, H, W), indices None (continuous; GQ conversion gives the quantized path).
    """

    def __init__(
        self,
        latent_channels: int,
        dim: int,
        regularizer: str = "tdc",
        tdc: TDCConfig | None = None,
        kl_weight: float = 0.64,
    ):
        super().__init__()
        if regularizer not in ("tdc", "kl"):
            raise ConfigError(f"bottleneck regularizer {regularizer!r}: allowed 'tdc' or 'kl'")
        self.in_channels, self.out_channels = 2 * latent_channels, latent_channels
        self.latent_channels, self.dim, self.regularizer = latent_channels, dim, regularizer
        self.kl_weight = kl_weight
        self.tdc = (
            TDCRegularizer(latent_channels, dim, tdc or TDCConfig())
            if regularizer == "tdc"
            else None
        )
        self.reduce_fn: ReduceFn = _local_reduce  # set by the training loop for multi-process runs

    @classmethod
    def tdc_from_config(cls, cfg: Config, dim: int) -> GaussianBottleneck:
        """``tdc``: TDC at codebook dimension m = ``dim`` and the ``tdc`` section's K."""
        return cls(cfg.model.latent_channels, dim, "tdc", cfg.tdc)

    @classmethod
    def vanilla_from_config(cls, cfg: Config, dim: int) -> GaussianBottleneck:
        """``vanilla``: summed KL with the ``vanilla`` section's weight (m only for statistics)."""
        return cls(cfg.model.latent_channels, dim, "kl", kl_weight=cfg.vanilla.kl_weight)

    @classmethod
    def tokenbridge_tdc_from_config(cls, cfg: Config, bits: int) -> GaussianBottleneck:
        """``tbtdc``, the TokenBridge protocol: TDC per dimension (m = 1), target ``bits`` = B
        bits per channel (docs/method.md §4)."""
        tdc = dataclasses.replace(cfg.tdc, codebook_size=2**bits)
        return cls(cfg.model.latent_channels, 1, "tdc", tdc)

    def forward(self, z: torch.Tensor, sample: bool | None = None) -> QuantizerOutput:
        mu, logvar = split_posterior(z)
        sample = self.training if sample is None else sample
        z_s = mu
        if sample:  # contiguous noise: the same draws whatever the latent's memory layout
            noise = torch.randn_like(mu, memory_format=torch.contiguous_format)
            z_s = mu + (0.5 * logvar).exp() * noise
        if self.tdc is not None:
            loss, stats = self.tdc(mu, logvar, self.reduce_fn)
            return QuantizerOutput(z_q=z_s, losses={"tdc": loss}, stats=stats)
        kl = kl_nats(mu, logvar)
        kl_loss = kl.sum() / kl.shape[0]
        with torch.no_grad():
            bits = nats_to_bits(token_rates(kl, self.dim))
            stats = {
                "kl_loss": kl_loss.detach(),
                "bits_mean": bits.mean(),
                "bits_min": bits.min(),
                "bits_max": bits.max(),
            }
        return QuantizerOutput(z_q=z_s, losses={"kl": self.kl_weight * kl_loss}, stats=stats)
