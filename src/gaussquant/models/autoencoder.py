"""Autoencoder = backbone encoder -> bottleneck (Gaussian or quantizer) -> backbone decoder,
and self-describing checkpoints.

Methods (SPEC 1, 4): ``gq`` (Gaussian VAE with TDC at the rate's m and K, converted to GQ
for evaluation), ``vanilla`` (Gaussian VAE with summed KL), ``tbtdc`` (Gaussian VAE with TDC at
m = 1 and target B bits per dimension, for TokenBridge), and the trained tokenizers ``vq``,
``fsq``, ``lfq``, ``bsq``. A checkpoint carries the full resolved config, so
:func:`load_autoencoder` needs nothing else.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gaussquant import __version__
from gaussquant.config import Config, config_from_dict, config_to_dict
from gaussquant.errors import GaussquantError
from gaussquant.io import atomic_path
from gaussquant.models import build_backbone
from gaussquant.quantizers.base import QuantizerOutput
from gaussquant.quantizers.tdc import GaussianBottleneck

CHECKPOINT_FORMAT = "gaussquant-autoencoder/1"
GAUSSIAN_METHODS = ("gq", "vanilla", "tbtdc")
TRAINED_METHODS = GAUSSIAN_METHODS + ("vq", "fsq", "lfq", "bsq")


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


def _bottleneck(cfg: Config, method: str, rate: str) -> nn.Module:
    c, r = cfg.model.latent_channels, cfg.rate(rate)
    if method == "gq":
        return GaussianBottleneck(c, r.gq_dim, "tdc", cfg.tdc)
    if method == "vanilla":
        return GaussianBottleneck(c, r.gq_dim, "kl", kl_weight=cfg.vanilla.kl_weight)
    if method == "tbtdc":  # TokenBridge protocol: TDC per dimension, target B bits (SPEC 4)
        tdc = dataclasses.replace(cfg.tdc, codebook_size=2**r.tokenbridge_bits)
        return GaussianBottleneck(c, 1, "tdc", tdc)
    from gaussquant.quantizers import BSQ, FSQ, LFQ, VectorQuantizer  # noqa: I001 (after Gaussian paths)

    if method == "vq":
        v = cfg.vq
        return VectorQuantizer(
            c, v.codebook_size, r.vq_tokens, beta=v.beta, legacy_loss=v.legacy_loss, weight=v.weight
        )
    if method == "fsq":
        return FSQ(r.fsq_levels)
    if method == "lfq":
        lf = cfg.lfq
        return LFQ(
            r.lfq_bits,
            token_bits=min(r.lfq_bits, 16),  # one index per 16 bits (tiny profile: 8)
            sub_codebook_bits=lf.sub_codebook_bits,
            entropy_weight=lf.entropy_weight,
            commit_weight=lf.commit_weight,
            temperature=lf.temperature,
        )
    if method == "bsq":
        return BSQ(
            r.bsq_bits,
            entropy_weight=cfg.bsq.entropy_weight,
            entropy_rule=cfg.bsq.entropy_rule,
            token_bits=min(r.bsq_bits, 16),
        )
    raise GaussquantError(f"unknown method {method!r}; allowed: {', '.join(TRAINED_METHODS)}")


def build_autoencoder(cfg: Config, method: str, arch: str, rate: str) -> Autoencoder:
    """A freshly initialised autoencoder for (method, arch, rate) under ``cfg``."""
    bottleneck = _bottleneck(cfg, method, rate)
    arch_cfg = getattr(cfg.model, arch, None) if arch in ("unet", "vit") else None
    if arch_cfg is None:
        raise GaussquantError(f"unknown arch {arch!r}; allowed: unet, vit")
    encoder, decoder = build_backbone(
        arch, arch_cfg, bottleneck.in_channels, bottleneck.out_channels
    )
    return Autoencoder(encoder, bottleneck, decoder)


def bits_per_pixel(model: Autoencoder, cfg: Config) -> float:
    bits = getattr(model.bottleneck, "bits_per_position", None)
    return float(bits) / cfg.model.downsample**2 if bits is not None else math.inf


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    path: str | Path,
    model: Autoencoder,
    cfg: Config,
    method: str,
    arch: str,
    rate: str,
    step: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a self-describing checkpoint atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "method": method,
        "arch": arch,
        "rate": rate,
        "step": step,
        "config": config_to_dict(cfg),
        "model": model.state_dict(),
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise GaussquantError(
            f"checkpoint {str(path)!r} not found (train it first: gaussquant train)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise GaussquantError(
            f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise GaussquantError(
            f"{path}: not a gaussquant checkpoint (expected format {CHECKPOINT_FORMAT})"
        )
    return payload


def load_autoencoder(
    path: str | Path, arch: str | None = None
) -> tuple[Autoencoder, dict[str, Any]]:
    """Rebuild the model from a checkpoint; ``arch`` (if given) must match the checkpoint's."""
    payload = read_checkpoint(path)
    if arch is not None and arch != payload["arch"]:
        raise GaussquantError(
            f"{path}: checkpoint architecture is {payload['arch']!r} but {arch!r} was requested"
        )
    cfg = config_from_dict(payload["config"])
    extra = payload.get("extra", {})
    if "quantizer" in extra:  # a converted checkpoint (gaussquant convert)
        from gaussquant.quantizers.convert import build_post_quantizer

        model = build_autoencoder(cfg, extra["source_method"], payload["arch"], payload["rate"])
        model.bottleneck = build_post_quantizer(cfg, extra["quantizer"])
    else:
        model = build_autoencoder(cfg, payload["method"], payload["arch"], payload["rate"])
    model.load_state_dict(payload["model"])
    return model.eval(), payload
