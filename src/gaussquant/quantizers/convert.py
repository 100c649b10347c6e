"""Training-free conversion of a Gaussian VAE checkpoint into a VQ-VAE (SPEC 2, 4).

``gq``: the bottleneck becomes :class:`GaussianQuant` (Sobol/inverse-CDF codebook regenerated
from (seed, K, m), its sha256 recorded and checked on load). ``tokenbridge``: per-channel
Gaussian-quantile bins (m = 1). Encoder and decoder weights are copied unchanged; nothing is
trained. A pretrained diffusers ``AutoencoderKL`` (:func:`convert_diffusers`) goes through the
same :func:`convert_model` as our own checkpoints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from gaussquant.checkpoint import (
    POST_QUANTIZERS,
    build_post_quantizer,
    gq_meta,
    load_autoencoder,
    post_quantizer_meta,
    save_checkpoint,
)
from gaussquant.config import Config, config_from_dict
from gaussquant.errors import GaussquantError
from gaussquant.methods import GAUSSIAN_METHODS

TARGETS = POST_QUANTIZERS
IMPORT_TARGET = "vae"  # convert --from-diffusers --to vae: the Gaussian VAE itself, unquantized


def convert_checkpoint(
    src: str | Path, to: str, out: str | Path, gq_cfg=None, codebook_size: int | None = None
) -> dict[str, Any]:
    """Convert a trained Gaussian VAE checkpoint ``src`` into a VQ-VAE checkpoint ``out``.

    ``gq_cfg`` (seed, beta) overrides the checkpoint's GQ settings when given (params.yaml);
    ``codebook_size`` overrides K (the codebook-size ablation; default: the TDC target's K).
    Returns the quantizer metadata written.
    """
    model, payload = load_autoencoder(src)
    method, extra = payload["method"], payload.get("extra", {})
    if method not in GAUSSIAN_METHODS or "quantizer" in extra:
        raise GaussquantError(
            f"{src}: convert needs a trained Gaussian VAE (method {', '.join(GAUSSIAN_METHODS)}), "
            f"got {method!r}"
        )
    cfg = config_from_dict(payload["config"])
    kept = {k: v for k, v in extra.items() if k == "diffusers"}  # what rebuilds the model
    source = kept | {"source_checkpoint": str(src), "source_step": payload["step"]}
    where = (payload["arch"], payload["rate"], payload["step"])
    return convert_model(model, cfg, method, *where, to, out, gq_cfg, codebook_size, source)


def convert_model(
    model: nn.Module,
    cfg: Config,
    method: str,
    arch: str,
    rate: str,
    step: int,
    to: str,
    out: str | Path,
    gq_cfg=None,
    codebook_size: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Replace the Gaussian bottleneck of ``model`` (trained ``method`` under ``cfg``) by the
    post-training quantizer ``to`` and write the converted checkpoint; returns its metadata."""
    if gq_cfg is not None:
        cfg = dataclasses.replace(cfg, gq=gq_cfg)
    meta = post_quantizer_meta(cfg, rate, to)
    if codebook_size is not None and to == "gq" and codebook_size != meta["codebook_size"]:
        meta = gq_meta(
            meta["latent_channels"], codebook_size, meta["dim"], meta["seed"], meta["beta"]
        )
    model.bottleneck = build_post_quantizer(meta)
    extra = {"quantizer": meta, "source_method": method} | (extra or {})
    save_checkpoint(out, model, cfg, to, arch, rate, step, extra)
    return meta


def convert_diffusers(
    spec: str,
    to: str,
    out: str | Path,
    cfg: Config,
    codebook_size: int,
    dim: int,
    local_files_only: bool = False,
) -> dict[str, Any] | None:
    """A pretrained diffusers ``AutoencoderKL`` (``spec``: folder or hub id) as a Gaussian VAE
    (method ``vanilla``) at codebook (K, m) under ``cfg``, converted to ``to`` like a trained
    checkpoint; ``to == "vae"`` writes that Gaussian VAE itself (the continuous reference row,
    or the source of ``convert --ckpt``). Returns the quantizer metadata (None for ``vae``)."""
    from gaussquant.models import diffusers_vae as dv

    cfg = dv.byo_config(cfg, dv.read_vae_config(spec, local_files_only), codebook_size, dim)
    model, extra = dv.pretrained_autoencoder(spec, cfg, "vanilla", None, local_files_only)
    where = (dv.BYO_ARCH, dv.byo_rate(cfg), 0)
    if to == IMPORT_TARGET:
        save_checkpoint(out, model, cfg, "vanilla", *where, extra)
        return None
    source = extra | {"source_checkpoint": str(spec), "source_step": 0}
    return convert_model(model, cfg, "vanilla", *where, to, out, extra=source)
