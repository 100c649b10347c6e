"""The one return type every quantizer shares, and the contract quantizers follow.

A quantizer is an ``nn.Module`` that takes the encoder output ``z`` of shape
``(B, in_channels, H, W)`` and returns a :class:`QuantizerOutput`. It also provides
``indices_to_codes(indices) -> z_q``, the documented inverse of the index step, and the
read-only attributes ``in_channels`` (what the encoder must emit), ``out_channels``
(what the decoder receives), ``tokens_per_position`` and ``bits_per_position``.
Quantization runs in fp32 with autocast disabled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class QuantizerOutput:
    """What a quantizer returns.

    z_q:      (B, out_channels, H, W) latent fed to the decoder (straight-through in training
              for the trained quantizers; the codewords themselves in eval).
    indices:  (B, T, H, W) int64 token indices, T = tokens_per_position; ``None`` for a
              continuous (unquantized) path.
    losses:   named scalar losses, already multiplied by their configured weights; the
              training loop adds ``sum(losses.values())`` to the generator loss.
    stats:    named detached scalars for logging (bits, entropies, multipliers, ...).
    """

    z_q: torch.Tensor
    indices: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def loss(self) -> torch.Tensor:
        """Sum of the weighted auxiliary losses (0 when there are none)."""
        if not self.losses:
            return self.z_q.new_zeros(())
        return torch.stack([v.reshape(()) for v in self.losses.values()]).sum()
