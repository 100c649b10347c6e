"""Self-describing checkpoints: write, read, and rebuild the model they hold.

A checkpoint carries the full resolved config, the method/arch/rate, the step and the weights;
a converted one (``gaussquant convert``) also the post-training quantizer's definition (GQ:
seed, K, m, beta and the codebook's sha256, regenerated and checked on load). So
:func:`load_autoencoder` needs nothing else. This module only writes, reads and rebuilds:
what a post-training quantizer is and how it is rebuilt is :mod:`gaussquant.conversion`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gaussquant import __version__
from gaussquant.config import (
    Config,
    config_from_dict,
    config_to_dict,
    migrate_rates,
    migrate_saved_config,
)
from gaussquant.conversion import rebuild_post_quantizer
from gaussquant.errors import GaussquantError
from gaussquant.io import atomic_path
from gaussquant.methods import current_method
from gaussquant.models.autoencoder import Autoencoder, build_autoencoder
from gaussquant.models.diffusers_vae import autoencoder_from_description
from gaussquant.safeload import load_pickle

CHECKPOINT_FORMAT = "gaussquant-autoencoder/1"


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
    payload["config"], payload["rate"] = migrate_rates(payload["config"], payload["rate"])
    payload["config"] = migrate_saved_config(payload["config"])
    migrate_method(payload)
    return payload


def migrate_method(payload: dict[str, Any]) -> None:
    """A checkpoint written when the trained TDC VAE was named ``gq``: its trained method (the
    payload's, or a converted checkpoint's ``source_method``) in today's name."""
    extra = payload.setdefault("extra", {})
    if "source_method" in extra:
        extra["source_method"] = current_method(extra["source_method"])
    elif "quantizer" not in extra:  # a converted checkpoint's method is its quantizer
        payload["method"] = current_method(payload["method"])


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
    converted = extra.get("quantizer")  # gaussquant convert's quantizer record
    bottleneck = None if converted is None else rebuild_post_quantizer(converted)
    if "diffusers" in extra:  # a pretrained diffusers VAE (gaussquant.models.diffusers_vae)
        desc = extra["diffusers"]
        model = autoencoder_from_description(desc, cfg, method, payload["rate"], bottleneck)
    else:
        model = build_autoencoder(cfg, method, payload["arch"], payload["rate"], bottleneck)
    model.load_state_dict(payload["model"])
    return model.eval()
