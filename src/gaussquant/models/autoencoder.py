"""Autoencoder = backbone encoder -> bottleneck (Gaussian or quantizer) -> backbone decoder,
the one place a bottleneck is built from its method name.

Methods (docs/method.md §1, §4): ``tdc`` (Gaussian VAE with TDC at the rate's m and K, converted to GQ
for evaluation), ``vanilla`` (Gaussian VAE with summed KL), ``tbtdc`` (Gaussian VAE with TDC at
m = 1 and target B bits per dimension, for TokenBridge), and the trained tokenizers ``vq``,
``fsq``, ``lfq``, ``bsq``. Checkpoint I/O lives in :mod:`gaussquant.checkpoint`.
"""

from __future__ import annotations

import torch
from torch import nn

from gaussquant.config import Config
from gaussquant.errors import GaussquantError
from gaussquant.methods import TRAINED_METHODS, shape
from gaussquant.models import build_backbone
from gaussquant.models.streams import own_stream
from gaussquant.quantizers import BUILDERS
from gaussquant.quantizers.base import QuantizerOutput


class Autoencoder(nn.Module):
    """``x`` (B, 3, H, W) in [-1, 1] -> ``x_rec`` of the same shape, through ``bottleneck``."""

    def __init__(self, encoder: nn.Module, bottleneck: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.bottleneck, self.decoder = encoder, bottleneck, decoder

    def encode(self, x: torch.Tensor) -> QuantizerOutput:
        return self.bottleneck(self.encoder(x))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(z_q)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode token indices (B, T, h, w) of a quantized model."""
        return self.decoder(self.bottleneck.indices_to_codes(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        q = self.encode(x)
        return self.decode(q.z_q), q

    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output layer (for the adaptive GAN weight)."""
        weights = [p for p in self.decoder.parameters() if p.ndim >= 2]
        return weights[-1]


def build_autoencoder(
    cfg: Config, method: str, arch: str, rate: str, bottleneck: nn.Module | None = None
) -> Autoencoder:
    """A freshly initialised autoencoder for (method, arch, rate) under ``cfg``; ``bottleneck``
    (a converted model's post-training quantizer) replaces the one ``method`` would build."""
    if method not in BUILDERS:
        raise GaussquantError(f"unknown method {method!r}; allowed: {', '.join(TRAINED_METHODS)}")
    if bottleneck is None:  # its draws (a VQ codebook) leave the backbone's as every method's
        with own_stream("bottleneck"):
            bottleneck = BUILDERS[method](cfg, shape(method, cfg, cfg.rate(rate).bits))
    arch_cfg = getattr(cfg.model, arch, None) if arch in ("unet", "vit") else None
    if arch_cfg is None:
        raise GaussquantError(f"unknown arch {arch!r}; allowed: unet, vit")
    encoder, decoder = build_backbone(
        arch, arch_cfg, bottleneck.in_channels, bottleneck.out_channels
    )
    return Autoencoder(encoder, bottleneck, decoder)
