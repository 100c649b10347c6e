"""The Gaussian posterior of a latent position and its token layout (docs/method.md §1): the one home of
the log-variance clamp, the per-dimension KL, the strided token layout and per-token rates.

Encoder output ``z`` (B, 2C, H, W): channels ``0..C-1`` are ``mu``, ``C..2C-1`` are ``logvar``
(the official regulariser's ``chunk(2)`` of the channel axis). A token of dimension ``m`` holds
channels ``k, k + C/m, k + 2C/m, ...`` (the official strided layout, kept for checkpoint and
index compatibility): channels are read as an ``(m, C/m)`` grid and transposed.
"""

from __future__ import annotations

import math

import torch

from gaussquant.errors import GaussquantError

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # docs/method.md §1 clamp


def split_posterior(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder output (B, 2C, H, W) -> float32 ``mu`` and clamped ``logvar``, each (B, C, H, W)."""
    mu, logvar = z.float().chunk(2, dim=1)
    return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


def kl_nats(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-dimension KL(N(mu, e^logvar) || N(0, 1)) in nats, same shape as ``mu``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def to_tokens(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C/dim, H, W, dim) in the strided layout; :func:`from_tokens` inverts."""
    b, c, h, w = x.shape
    return x.reshape(b, dim, c // dim, h, w).permute(0, 2, 3, 4, 1)


def from_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, dim) -> (B, T * dim, H, W); inverse of :func:`to_tokens`."""
    b, t, h, w, dim = tokens.shape
    return tokens.permute(0, 4, 1, 2, 3).reshape(b, dim * t, h, w)


def token_rates(per_dim: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum a per-dimension map (B, C, H, W) over each token's ``dim`` channels -> (B, C/dim, H, W)."""
    return to_tokens(per_dim, dim).sum(-1)


def nats_to_bits(x: torch.Tensor, bits_per_nat: float | None = None) -> torch.Tensor:
    """Exact (divide by ln 2) unless ``bits_per_nat`` is given (TDC's loss uses the official
    truncated 1.4426, ``tdc.bits_per_nat``)."""
    return x / math.log(2) if bits_per_nat is None else x * bits_per_nat


def token_bits(z: torch.Tensor, dim: int, bits_per_nat: float | None = None) -> torch.Tensor:
    """Per-token KL rate in bits (B, C/dim, H, W) of the posterior ``z`` (B, 2C, H, W)."""
    return nats_to_bits(token_rates(kl_nats(*split_posterior(z)), dim), bits_per_nat)


# ----------------------------------------------------------------------------- rate arithmetic
def divisors(n: int) -> list[int]:
    return [m for m in range(1, n + 1) if n % m == 0]


def bits_per_pixel(channels: int, dim: int, log2k: int, factor: int) -> float:
    """``(C/m) * log2 K / f^2``: tokens per position times bits per token over pixels per position."""
    return channels // dim * log2k / factor**2


def dim_for_bpp(channels: int, factor: int, log2k: int, bpp: float) -> int:
    """The codebook dim m giving ``bpp`` bits per pixel with K = 2^log2k: the inverse of
    :func:`bits_per_pixel`, ``m = C log2 K / (bpp f^2)``; an error unless m divides C."""
    m = channels * log2k / (bpp * factor**2) if bpp > 0 else 0.0
    if m < 1 or abs(m - round(m)) > 1e-9 or channels % round(m):
        reachable = [bits_per_pixel(channels, d, log2k, factor) for d in divisors(channels)]
        raise GaussquantError(
            f"--bpp {bpp:g}: not reachable with K = 2^{log2k} on C = {channels} channels at "
            f"f = {factor}; allowed: {', '.join(f'{b:g}' for b in reachable)} (or give --dim)"
        )
    return round(m)
