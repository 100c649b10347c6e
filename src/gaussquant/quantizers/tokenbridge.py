"""TokenBridge post-training quantization of a Gaussian VAE latent, docs/method.md §4.

Paper: "Bridging Continuous and Discrete Tokens for Autoregressive Visual Generation",
Wang et al., ICCV 2025, https://arxiv.org/abs/2503.16430. No official TokenBridge+TDC code
exists; this is our protocol (docs/method.md §4): m = 1, every latent channel is its own token.

What is quantized: the posterior mean ``mu`` (the latent the decoder sees in eval; the
log-variance is ignored). Each value goes into one of 2^B bins whose edges are the
standard-normal quantiles ``Phi^-1(k / 2^B)``, k = 1 .. 2^B - 1 (equiprobable under the N(0, 1)
prior), and is decoded at the mean of the standard normal truncated to its bin,
``(phi(a) - phi(b)) / (Phi(b) - Phi(a)) = 2^B (phi(a) - phi(b))``. A value on an edge goes
to the upper bin. Bits per latent position = C * B.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gaussquant.errors import GaussquantError
from gaussquant.quantizers.base import QuantizerOutput


def gaussian_bins(bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(edges (2^B - 1,), centers (2^B,)) in float64 for B bits: N(0, 1) quantile edges and
    truncated-normal bin means."""
    n = 2**bits
    edges = torch.special.ndtri(torch.arange(1, n, dtype=torch.float64) / n)
    full = torch.cat([torch.tensor([-math.inf]), edges, torch.tensor([math.inf])]).double()
    pdf = torch.exp(-0.5 * full.square()) / math.sqrt(2 * math.pi)  # phi(+-inf) = 0
    mass = torch.special.ndtr(full[1:]) - torch.special.ndtr(full[:-1])
    centers = (pdf[:-1] - pdf[1:]) / mass
    return edges, centers


class TokenBridge(nn.Module):
    """Per-channel Gaussian-quantile quantizer for a Gaussian VAE (eval only).

    latent_channels C, bits B per channel. Input z (B, 2C, H, W) = [mu, logvar]; output z_q
    (B, C, H, W) = bin centers of mu, indices (B, C, H, W) int64 in [0, 2^B).
    """

    def __init__(self, latent_channels: int, bits: int):
        super().__init__()
        if not isinstance(latent_channels, int) or latent_channels < 1:
            raise GaussquantError(f"tokenbridge: latent_channels={latent_channels!r} must be >= 1")
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
            raise GaussquantError(
                f"tokenbridge: bits={bits!r} per channel must be an integer in [1, 16]"
            )
        self.latent_channels, self.bits = latent_channels, bits
        self.in_channels, self.out_channels = 2 * latent_channels, latent_channels
        self.tokens_per_position = latent_channels
        self.bits_per_position = latent_channels * bits
        self.codebook_size = 2**bits
        edges, centers = gaussian_bins(bits)
        self.register_buffer("edges", edges, persistent=False)  # float64: exact bin tests
        self.register_buffer("centers", centers.float(), persistent=False)

    def extra_repr(self) -> str:
        return f"C={self.latent_channels}, bits={self.bits}"

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if self.training:
            raise GaussquantError(
                "TokenBridge is a post-training quantizer; call .eval() before quantizing"
            )
        if z.ndim != 4 or z.shape[1] != self.in_channels:
            raise GaussquantError(
                f"tokenbridge: expected z of shape (B, {self.in_channels}, H, W) = [mu, logvar], "
                f"got {tuple(z.shape)}"
            )
        with torch.autocast(z.device.type, enabled=False):
            mu = z[:, : self.latent_channels].double()
            indices = torch.bucketize(mu, self.edges, right=True)  # edges[i-1] <= mu < edges[i]
        return QuantizerOutput(z_q=self.indices_to_codes(indices), indices=indices)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, C, H, W) -> bin centers (B, C, H, W) float32."""
        if indices.ndim != 4 or indices.shape[1] != self.tokens_per_position:
            raise GaussquantError(
                f"tokenbridge: expected indices of shape (B, {self.tokens_per_position}, H, W), "
                f"got {tuple(indices.shape)}"
            )
        return self.centers[indices.long()]
