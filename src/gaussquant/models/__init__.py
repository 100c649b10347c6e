"""Autoencoder backbones (docs/method.md §5), chosen by name from one literal dict.

``BACKBONES[arch] = (encoder class, decoder class, config class)``; the autoencoder
(:mod:`gaussquant.models.autoencoder`) puts a bottleneck between the two halves.
"""

from __future__ import annotations

from torch import nn

from gaussquant.errors import GaussquantError
from gaussquant.models.unet import UNetConfig, UNetDecoder, UNetEncoder
from gaussquant.models.vit import ViTConfig, ViTDecoder, ViTEncoder

BACKBONES = {
    "unet": (UNetEncoder, UNetDecoder, UNetConfig),
    "vit": (ViTEncoder, ViTDecoder, ViTConfig),
}


def build_backbone(arch: str, cfg, latent_in: int, latent_out: int) -> tuple[nn.Module, nn.Module]:
    """Encoder (image 3 ch -> ``latent_in`` ch) and decoder (``latent_out`` ch -> image 3 ch).

    ``latent_in`` is what the bottleneck consumes (2C for the Gaussian VAE: ``mu``, ``logvar``),
    ``latent_out`` what it hands to the decoder (C). ``cfg`` must be the arch's config class.
    """
    if arch not in BACKBONES:
        raise GaussquantError(f"unknown arch {arch!r}; allowed: {', '.join(BACKBONES)}")
    encoder_cls, decoder_cls, config_cls = BACKBONES[arch]
    if not isinstance(cfg, config_cls):
        raise GaussquantError(
            f"arch {arch!r} needs a {config_cls.__name__}, got {type(cfg).__name__}"
        )
    if latent_in < 1 or latent_out < 1:
        raise GaussquantError(
            f"latent channels must be positive, got in={latent_in}, out={latent_out}"
        )
    return encoder_cls(cfg, 3, latent_in), decoder_cls(cfg, latent_out, 3)
