"""Self-describing checkpoints: write, read, and rebuild the model they hold.

A checkpoint carries the full resolved config, the method/arch/rate, the step and the weights;
a converted one (``gaussquant convert``) also the post-training quantizer's definition (GQ:
seed, K, m, beta and the codebook's sha256, regenerated and checked on load). So
:func:`load_autoencoder` needs nothing else. Models and conversion both import this module;
it imports neither of them back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from gaussquant import __version__
from gaussquant.config import Config, config_from_dict, config_to_dict, with_added_keys
from gaussquant.errors import GaussquantError
from gaussquant.io import atomic_path
from gaussquant.models.autoencoder import Autoencoder, build_autoencoder
from gaussquant.safeload import load_pickle

CHECKPOINT_FORMAT = "gaussquant-autoencoder/1"
POST_QUANTIZERS = ("gq", "tokenbridge")  # training-free conversions of a Gaussian VAE


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
    payload = load_pickle(path, "checkpoint")  # tensors and plain data only: never runs code
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise GaussquantError(
            f"{path}: not a gaussquant checkpoint (expected format {CHECKPOINT_FORMAT})"
        )
    payload["config"] = with_added_keys(payload["config"])
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
    return autoencoder_from_payload(payload), payload


def autoencoder_from_payload(payload: dict[str, Any]) -> Autoencoder:
    """The model a checkpoint's contents describe (:func:`read_checkpoint`, or a saved
    tokenizer folder), its weights loaded, in eval mode."""
    cfg = config_from_dict(payload["config"])
    extra = payload.get("extra", {})
    method = extra.get("source_method", payload["method"])  # converted: the trained source's
    if "diffusers" in extra:  # a pretrained diffusers VAE (gaussquant.models.diffusers_vae)
        from gaussquant.models.diffusers_vae import autoencoder_from_description

        model = autoencoder_from_description(extra["diffusers"], cfg, method, payload["rate"])
    else:
        model = build_autoencoder(cfg, method, payload["arch"], payload["rate"])
    if "quantizer" in extra:  # a converted checkpoint (gaussquant convert)
        model.bottleneck = build_post_quantizer(extra["quantizer"])
    model.load_state_dict(payload["model"])
    return model.eval()


# ----------------------------------------------------------------------------- post-training quantizers


def post_quantizer_meta(cfg: Config, rate: str, to: str) -> dict[str, Any]:
    """What defines the post-training quantizer of ``to`` at ``rate`` (stored in the checkpoint)."""
    r = cfg.rate(rate)
    if to == "gq":
        return gq_meta(
            cfg.model.latent_channels, cfg.tdc.codebook_size, r.gq_dim, cfg.gq.seed, cfg.gq.beta
        )
    if to == "tokenbridge":
        return {
            "kind": "tokenbridge",
            "latent_channels": cfg.model.latent_channels,
            "bits": r.tokenbridge_bits,
        }
    raise GaussquantError(f"convert --to {to!r}: allowed {', '.join(POST_QUANTIZERS)}")


def gq_meta(latent_channels: int, codebook_size: int, dim: int, seed: int, beta: float) -> dict:
    from gaussquant.quantizers.gaussian_quant import codebook_sha256, gaussian_codebook

    return {
        "kind": "gq",
        "latent_channels": latent_channels,
        "codebook_size": codebook_size,
        "dim": dim,
        "seed": seed,
        "beta": beta,
        "codebook_sha256": codebook_sha256(gaussian_codebook(codebook_size, dim, seed)),
    }


def build_post_quantizer(meta: dict[str, Any]) -> nn.Module:
    """Rebuild the quantizer recorded in a converted checkpoint; checks the codebook hash."""
    if meta["kind"] == "gq":
        from gaussquant.quantizers.gaussian_quant import GaussianQuant, codebook_sha256

        q = GaussianQuant(
            meta["latent_channels"],
            meta["codebook_size"],
            meta["dim"],
            seed=meta["seed"],
            beta=meta["beta"],
        )
        got = codebook_sha256(q.codebook)
        if got != meta["codebook_sha256"]:
            raise GaussquantError(
                f"GQ codebook (seed {meta['seed']}, K {meta['codebook_size']}, m {meta['dim']}) regenerates "
                f"with sha256 {got[:12]}..., the checkpoint recorded {meta['codebook_sha256'][:12]}...; "
                "the Sobol generator differs on this torch build"
            )
        return q
    if meta["kind"] == "tokenbridge":
        from gaussquant.quantizers.tokenbridge import TokenBridge

        return TokenBridge(meta["latent_channels"], meta["bits"])
    raise GaussquantError(f"unknown post-training quantizer {meta['kind']!r}")
