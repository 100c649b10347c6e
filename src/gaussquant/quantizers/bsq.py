"""Binary Spherical Quantization (BSQ), docs/method.md §4.

Paper: "Image and Video Tokenization with Binary Spherical Quantization", Zhao et al.,
https://arxiv.org/abs/2406.07548 (BSQ-ViT). The latent vector u = z / ||z|| (over the d
channels of a position) is quantized to ``sign(u) / sqrt(d)`` (0 -> -1) with a
straight-through gradient: d x 1 bit per position. Soft bit probabilities for the entropy
loss: ``p = sigmoid(4 u / (sqrt(d) * temperature))`` (temperature 0.01).

Entropy rules (``entropy_rule``), aux loss = per-sample entropy - codebook entropy, weight 0.1:

- ``"repo"`` (default; what the paper's BSQ numbers used, reference vectors ``bsq_*``): every
  bit of every position is one draw of a single coin. Per-sample entropy = mean over
  (position, bit) of H(p); codebook entropy = H(mean over (position, bit) of p), with
  ``H(q) = -sum q log(q + 1e-5)`` over {p, 1 - p}. The pooled coin is fair whenever half of
  all bits are +1, so it cannot see a collapsed (constant) bit.
- ``"faithful"`` (the BSQ-ViT paper's factorised estimate): per-sample entropy = mean over
  positions of sum over bits of H(p_bit); codebook entropy = sum over bits of
  H(mean over positions of p_bit), exact ``-q log q``. A constant bit contributes 0 to the
  codebook entropy, so collapse is penalised. Values are ~d x larger than the repo rule's.

Indices: like LFQ, one token per 16 consecutive channels, first channel most significant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gaussquant.config import Config
from gaussquant.errors import GaussquantError
from gaussquant.quantizers.base import QuantizerOutput
from gaussquant.quantizers.lfq import check_bits, indices_to_sign_bits, sign_bits_to_indices

ENTROPY_RULES = ("repo", "faithful")
_LOG_EPS = 1e-5  # inside the logs of the repo rule (official value)


def _binary_entropy(p: torch.Tensor, eps: float) -> torch.Tensor:
    """Entropy (nats) of a coin with P(heads) = p, elementwise; ``eps`` inside the logs
    (0 = exact, with 0 log 0 = 0)."""
    if eps:
        return -(p * torch.log(p + eps) + (1 - p) * torch.log(1 - p + eps))
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def bsq_entropies(
    u: torch.Tensor, temperature: float, rule: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample entropy, codebook entropy) in nats for unit vectors u (N, d) under ``rule``."""
    d = u.shape[1]
    p = torch.sigmoid(4.0 * u / (math.sqrt(d) * temperature))  # P(bit = +1)
    if rule == "repo":
        return _binary_entropy(p, _LOG_EPS).mean(), _binary_entropy(p.mean(), _LOG_EPS)
    return _binary_entropy(p, 0.0).sum(1).mean(), _binary_entropy(p.mean(0), 0.0).sum()


class BSQ(nn.Module):
    """BSQ with ``bits`` = d channels. Input/output (B, d, H, W); indices (B, T, H, W).

    z_q = sign(u) / sqrt(d) in eval; straight-through around u = z/||z|| in training. In
    training ``losses["entropy"]`` = weight x aux loss and ``stats`` the unweighted terms;
    in eval no loss is computed. Defaults are the paper's values (docs/method.md §4).
    """

    @classmethod
    def from_config(cls, cfg: Config, bits: int) -> BSQ:
        """The ``bsq`` section with ``bits`` sign channels (the rate's bits per position)."""
        return cls(
            bits,
            entropy_weight=cfg.bsq.entropy_weight,
            entropy_rule=cfg.bsq.entropy_rule,
            token_bits=min(bits, 16),
        )

    def __init__(
        self,
        bits: int,
        entropy_weight: float = 0.1,
        entropy_rule: str = "repo",
        temperature: float = 0.01,
        token_bits: int = 16,
    ):
        super().__init__()
        self.token_bits = check_bits("bsq", bits, token_bits)
        if entropy_rule not in ENTROPY_RULES:
            raise GaussquantError(
                f"bsq: entropy_rule={entropy_rule!r}; allowed: {', '.join(ENTROPY_RULES)}"
            )
        if not (temperature > 0 and math.isfinite(temperature)):
            raise GaussquantError(f"bsq: temperature={temperature!r} must be > 0")
        self.bits, self.entropy_rule = bits, entropy_rule
        self.entropy_weight, self.temperature = float(entropy_weight), float(temperature)
        self.in_channels = self.out_channels = bits
        self.tokens_per_position = bits // self.token_bits
        self.bits_per_position = bits
        self.codebook_size = 2**self.token_bits

    def extra_repr(self) -> str:
        rule, tokens = self.entropy_rule, self.tokens_per_position
        return f"bits={self.bits}, entropy_rule={rule!r}, tokens={tokens}"

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if z.ndim != 4 or z.shape[1] != self.in_channels:
            raise GaussquantError(
                f"bsq: expected z of shape (B, {self.in_channels}, H, W), got {tuple(z.shape)}"
            )
        with torch.autocast(z.device.type, enabled=False):
            u = F.normalize(z.float(), dim=1)
            positive = u > 0
            codes = torch.where(positive, 1.0, -1.0) / math.sqrt(self.bits)
            z_q = u + (codes - u).detach() if self.training else codes  # straight-through
            indices = sign_bits_to_indices(positive, self.token_bits)
            losses, stats = {}, {}
            if self.training:
                flat = u.permute(0, 2, 3, 1).reshape(-1, self.bits)
                per_sample, codebook = bsq_entropies(flat, self.temperature, self.entropy_rule)
                aux = per_sample - codebook
                losses = {"entropy": self.entropy_weight * aux}
                stats = {
                    "entropy_aux_loss": aux.detach(),
                    "per_sample_entropy": per_sample.detach(),
                    "codebook_entropy": codebook.detach(),
                }
        return QuantizerOutput(z_q=z_q, indices=indices, losses=losses, stats=stats)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, T, H, W) -> codes (B, d, H, W) in {-1/sqrt(d), +1/sqrt(d)}."""
        if indices.ndim != 4 or indices.shape[1] != self.tokens_per_position:
            raise GaussquantError(
                f"bsq: expected indices of shape (B, {self.tokens_per_position}, H, W), "
                f"got {tuple(indices.shape)}"
            )
        bits = indices_to_sign_bits(indices, self.token_bits)
        return torch.where(bits, 1.0, -1.0) / math.sqrt(self.bits)
