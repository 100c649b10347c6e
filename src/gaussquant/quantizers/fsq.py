"""Finite Scalar Quantization (FSQ), docs/method.md §4.

Paper: "Finite Scalar Quantization: VQ-VAE Made Simple", Mentzer et al.,
https://arxiv.org/abs/2309.15505. Numerically identical to ``vector-quantize-pytorch``'s FSQ
(used as a test oracle) and to the official fork's FSQ (reference vectors ``fsq16x4``,
``fsq865``).

Channel ``c`` is bounded to ``tanh(z_c + shift_c) * half_l_c - offset_c`` with
``half_l = (L - 1)(1 + 1e-3)/2``, ``offset = 0.5`` for even L (``0`` for odd) and
``shift = atanh(offset / half_l)``; rounded with a straight-through gradient; and scaled by
``1 / (L // 2)`` into [-1, 1]. The index is the mixed-radix number of the digits
``round(...) + L // 2`` with the first channel most significant (official order; the
vector-quantize-pytorch oracle uses the reverse digit order, same codes).

Tokens: one index per position needs prod(L) codes. For the 0.5 / 1.0 bpp level lists
(16 x 8 and 16 x 16 levels = 2^32 and 2^64 codes; the latter does not fit an int64) the
channels are split into tokens of 4 consecutive channels (16 bits each), so indices stay
int64-safe and codebook usage is measured per 2^16-code token like the other methods.
``channels_per_token=None`` picks this automatically: one token when prod(L) <= 2^16, else 4
channels per token. For a single token this is exactly the official index.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gaussquant.config import Config
from gaussquant.errors import GaussquantError
from gaussquant.quantizers.base import QuantizerOutput

_EPS = 1e-3  # widening of the tanh bound (FSQ paper code / vector-quantize-pytorch)
_SINGLE_TOKEN_MAX = 2**16  # auto split above this many codes per position


class FSQ(nn.Module):
    """FSQ with the given per-channel ``levels`` (each >= 2).

    Input z (B, len(levels), H, W); output z_q of the same shape with values in [-1, 1]
    (straight-through in training), indices (B, T, H, W) int64, T = tokens per position.
    No auxiliary loss.
    """

    @classmethod
    def from_config(cls, cfg: Config, levels: list[int]) -> FSQ:
        """``levels`` from :func:`gaussquant.methods.fsq_levels` (the ``fsq`` section at a rate)."""
        return cls(levels)

    def __init__(self, levels: list[int], channels_per_token: int | None = None):
        super().__init__()
        levels = list(levels)
        if not levels or any(
            not isinstance(lv, int) or isinstance(lv, bool) or lv < 2 for lv in levels
        ):
            raise GaussquantError(
                f"fsq: levels {levels!r} must be a non-empty list of integers >= 2"
            )
        total = math.prod(levels)
        if channels_per_token is None:
            channels_per_token = len(levels) if total <= _SINGLE_TOKEN_MAX else 4
        if (
            not isinstance(channels_per_token, int)
            or channels_per_token < 1
            or len(levels) % channels_per_token
        ):
            raise GaussquantError(
                f"fsq: channels_per_token={channels_per_token!r} must divide the number of "
                f"levels ({len(levels)}); levels={levels}"
            )
        groups = [
            levels[i : i + channels_per_token] for i in range(0, len(levels), channels_per_token)
        ]
        sizes = {math.prod(g) for g in groups}
        if len(sizes) != 1:
            raise GaussquantError(
                f"fsq: every token must have the same number of codes; levels={levels} split "
                f"into tokens of {channels_per_token} channels gives {sorted(sizes)}"
            )
        self.codebook_size = sizes.pop()
        if self.codebook_size > 2**62:
            raise GaussquantError(
                f"fsq: {self.codebook_size} codes per token overflow int64 indices; "
                "use a smaller channels_per_token"
            )
        self.levels = levels
        self.channels_per_token = channels_per_token
        self.in_channels = self.out_channels = len(levels)
        self.tokens_per_position = len(levels) // channels_per_token
        self.bits_per_position = math.log2(total)
        lv = torch.tensor(levels, dtype=torch.float64)
        half_l = (lv - 1) * (1 + _EPS) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)
        self.register_buffer("_levels", lv.float(), persistent=False)
        self.register_buffer("_half_l", half_l.float(), persistent=False)
        self.register_buffer("_offset", offset.float(), persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half_l).float(), persistent=False)
        self.register_buffer("_half_width", (lv // 2).float(), persistent=False)
        # mixed-radix basis within each token, first channel most significant (the official
        # order, reference fsq*_indices; vector-quantize-pytorch makes it least significant)
        tok_basis = torch.tensor(
            [math.prod(g[i + 1 :]) for g in groups for i in range(len(g))], dtype=torch.long
        )
        self.register_buffer("_basis", tok_basis, persistent=False)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, tokens={self.tokens_per_position}"

    def _shape(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if z.ndim != 4 or z.shape[1] != self.in_channels:
            raise GaussquantError(
                f"fsq: expected z of shape (B, {self.in_channels}, H, W), got {tuple(z.shape)}"
            )
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            bounded = torch.tanh(z + self._shape(self._shift)) * self._shape(self._half_l)
            bounded = bounded - self._shape(self._offset)
            rounded = bounded.round()
            if self.training:  # straight-through; eval returns the exact codes
                rounded = bounded + (rounded - bounded).detach()
            z_q = rounded / self._shape(self._half_width)
            indices = self.codes_to_indices(z_q.detach())
        return QuantizerOutput(z_q=z_q, indices=indices)

    def codes_to_indices(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantized codes (B, C, H, W) in [-1, 1] -> indices (B, T, H, W) int64."""
        digits = (
            (z_q * self._shape(self._half_width) + self._shape(self._half_width)).round().long()
        )
        b, c, h, w = digits.shape
        weighted = digits * self._basis.view(1, -1, 1, 1)
        return weighted.view(b, self.tokens_per_position, self.channels_per_token, h, w).sum(2)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, T, H, W) -> codes (B, C, H, W) in [-1, 1]; inverse of the index step."""
        if indices.ndim != 4 or indices.shape[1] != self.tokens_per_position:
            raise GaussquantError(
                f"fsq: expected indices of shape (B, {self.tokens_per_position}, H, W), "
                f"got {tuple(indices.shape)}"
            )
        per_channel = indices.long().repeat_interleave(self.channels_per_token, dim=1)
        levels = self._levels.long().view(1, -1, 1, 1)
        digits = (per_channel // self._basis.view(1, -1, 1, 1)) % levels
        return (digits.float() - self._shape(self._half_width)) / self._shape(self._half_width)
