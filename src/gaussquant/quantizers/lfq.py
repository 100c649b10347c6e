"""Lookup-Free Quantization (LFQ, MAGVIT-v2), docs/method.md §4.

Paper: "Language Model Beats Diffusion -- Tokenizer is Key to Visual Generation", Yu et al.,
https://arxiv.org/abs/2310.05737. The formulas below reproduce the official fork's LFQ
(reference vectors ``lfq_*``, matched to float32 rounding), which follows the MAGVIT-v2 /
Open-MAGVIT2 entropy loss:

- each channel -> sign in {-1, +1} (0 -> -1), straight-through gradient;
- the channels are cut into consecutive sub-codebooks of ``sub_codebook_bits`` (8) bits; for
  each sub-vector x (8 values) the logits over its 256 codes c in {-1, +1}^8 are ``2 x.c``
  and ``p = softmax(logits / temperature)`` (temperature 0.01);
- per-sample entropy = mean over (position, sub-codebook) of ``-sum p log p``;
  codebook entropy = ``-sum pbar log(pbar + 1e-5)`` of the mean ``pbar`` of p over every
  position *and every sub-codebook* (one pooled 256-code histogram);
- entropy aux loss = per-sample entropy - codebook entropy (weight 0.1);
- commitment loss = mean (z - sg(z_q))^2 (weight 0.025).

Indices: one token per 16 consecutive channels (fewer if ``bits`` < 16), the first channel of
the token being the most significant bit (bit = 1 for +1), as the official single 16-bit
index at 0.25 bpp; 32 and 64 bits give 2 and 4 tokens.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from gaussquant.config import Config
from gaussquant.errors import GaussquantError
from gaussquant.quantizers.base import QuantizerOutput

_CODEBOOK_LOG_EPS = 1e-5  # inside the log of the codebook entropy (official value)


def sign_bits_to_indices(positive: torch.Tensor, token_bits: int) -> torch.Tensor:
    """Bits (B, C, H, W) bool (True = +1) -> indices (B, C/token_bits, H, W) int64.

    Each token packs ``token_bits`` consecutive channels, first channel most significant.
    """
    b, c, h, w = positive.shape
    weights = 2 ** torch.arange(token_bits - 1, -1, -1, device=positive.device)
    bits = positive.long().view(b, c // token_bits, token_bits, h, w)
    return (bits * weights.view(1, 1, -1, 1, 1)).sum(2)


def indices_to_sign_bits(indices: torch.Tensor, token_bits: int) -> torch.Tensor:
    """Inverse of :func:`sign_bits_to_indices`: (B, T, H, W) -> (B, T * token_bits, H, W) bool."""
    b, t, h, w = indices.shape
    shifts = torch.arange(token_bits - 1, -1, -1, device=indices.device).view(1, 1, -1, 1, 1)
    bits = (indices.long()[:, :, None] >> shifts) & 1
    return bits.view(b, t * token_bits, h, w).bool()


def check_bits(name: str, bits: int, token_bits: int) -> int:
    """Validate a sign-bit quantizer's width; returns the effective bits per token."""
    if not isinstance(bits, int) or isinstance(bits, bool) or bits < 1:
        raise GaussquantError(f"{name}: bits={bits!r} must be an integer >= 1")
    if not isinstance(token_bits, int) or not 1 <= token_bits <= 62:
        raise GaussquantError(f"{name}: token_bits={token_bits!r} must be an integer in [1, 62]")
    token_bits = min(token_bits, bits)
    if bits % token_bits:
        raise GaussquantError(f"{name}: bits={bits} must be a multiple of token_bits={token_bits}")
    return token_bits


class LFQ(nn.Module):
    """LFQ with ``bits`` sign channels. Input/output (B, bits, H, W); indices (B, T, H, W).

    In training, ``losses`` holds ``entropy`` (weight x aux loss) and ``commit`` (weight x
    commitment); ``stats`` the unweighted terms. In eval no loss is computed.
    Defaults are the paper's values (docs/method.md §4).
    """

    @classmethod
    def from_config(cls, cfg: Config, bits: int) -> LFQ:
        """The ``lfq`` section with ``bits`` sign channels (the rate's bits per position)."""
        lf = cfg.lfq
        return cls(
            bits,
            sub_codebook_bits=lf.sub_codebook_bits,
            entropy_weight=lf.entropy_weight,
            commit_weight=lf.commit_weight,
            temperature=lf.temperature,
            token_bits=min(bits, 16),  # one index per 16 bits (tiny preset: 8)
        )

    def __init__(
        self,
        bits: int,
        sub_codebook_bits: int = 8,
        entropy_weight: float = 0.1,
        commit_weight: float = 0.025,
        temperature: float = 0.01,
        token_bits: int = 16,
    ):
        super().__init__()
        self.token_bits = check_bits("lfq", bits, token_bits)
        if (
            not isinstance(sub_codebook_bits, int)
            or not 1 <= sub_codebook_bits <= 16
            or bits % sub_codebook_bits
        ):
            raise GaussquantError(
                f"lfq: sub_codebook_bits={sub_codebook_bits!r} must be an integer in [1, 16] "
                f"dividing bits={bits}"
            )
        if not (temperature > 0 and math.isfinite(temperature)):
            raise GaussquantError(f"lfq: temperature={temperature!r} must be > 0")
        self.bits, self.sub_codebook_bits = bits, sub_codebook_bits
        self.entropy_weight, self.commit_weight = float(entropy_weight), float(commit_weight)
        self.temperature = float(temperature)
        self.in_channels = self.out_channels = bits
        self.tokens_per_position = bits // self.token_bits
        self.bits_per_position = bits
        self.codebook_size = 2**self.token_bits
        codes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=sub_codebook_bits)))
        self.register_buffer("sub_codes", codes, persistent=False)  # (2^s, s) in {-1, +1}

    def extra_repr(self) -> str:
        return (
            f"bits={self.bits}, sub_codebook_bits={self.sub_codebook_bits}, "
            f"tokens={self.tokens_per_position}, temperature={self.temperature}"
        )

    def entropy_terms(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sample entropy, codebook entropy) in nats for z (B, bits, H, W), float32."""
        x = z.permute(0, 2, 3, 1).reshape(-1, self.sub_codebook_bits)  # consecutive channels
        logits = 2.0 * x @ self.sub_codes.t() / self.temperature
        prob = logits.softmax(-1)
        per_sample = -(prob * logits.log_softmax(-1)).sum(-1).mean()
        avg = prob.mean(0)
        codebook = -(avg * torch.log(avg + _CODEBOOK_LOG_EPS)).sum()
        return per_sample, codebook

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if z.ndim != 4 or z.shape[1] != self.in_channels:
            raise GaussquantError(
                f"lfq: expected z of shape (B, {self.in_channels}, H, W), got {tuple(z.shape)}"
            )
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            positive = z > 0
            codes = torch.where(positive, 1.0, -1.0)
            z_q = z + (codes - z).detach() if self.training else codes  # straight-through
            indices = sign_bits_to_indices(positive, self.token_bits)
            losses, stats = {}, {}
            if self.training:
                per_sample, codebook = self.entropy_terms(z)
                aux = per_sample - codebook
                commit = (z - codes).square().mean()
                losses = {
                    "entropy": self.entropy_weight * aux,
                    "commit": self.commit_weight * commit,
                }
                stats = {
                    "entropy_aux_loss": aux.detach(),
                    "per_sample_entropy": per_sample.detach(),
                    "codebook_entropy": codebook.detach(),
                    "commit_loss": commit.detach(),
                }
        return QuantizerOutput(z_q=z_q, indices=indices, losses=losses, stats=stats)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, T, H, W) -> codes (B, bits, H, W) in {-1, +1}."""
        if indices.ndim != 4 or indices.shape[1] != self.tokens_per_position:
            raise GaussquantError(
                f"lfq: expected indices of shape (B, {self.tokens_per_position}, H, W), "
                f"got {tuple(indices.shape)}"
            )
        return torch.where(indices_to_sign_bits(indices, self.token_bits), 1.0, -1.0)
