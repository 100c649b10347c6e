"""Training-free conversion of a Gaussian VAE checkpoint into a VQ-VAE (SPEC 2, 4).

``gq``: the bottleneck becomes :class:`GaussianQuant` (Sobol/inverse-CDF codebook regenerated
from (seed, K, m), its sha256 recorded and checked on load). ``tokenbridge``: per-channel
Gaussian-quantile bins (m = 1). Encoder and decoder weights are copied unchanged; nothing is
trained.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from gaussquant.checkpoint import (
    POST_QUANTIZERS,
    build_post_quantizer,
    gq_meta,
    post_quantizer_meta,
    read_checkpoint,
    save_checkpoint,
)
from gaussquant.config import config_from_dict
from gaussquant.errors import GaussquantError
from gaussquant.methods import GAUSSIAN_METHODS
from gaussquant.models.autoencoder import build_autoencoder

TARGETS = POST_QUANTIZERS


def convert_checkpoint(
    src: str | Path, to: str, out: str | Path, gq_cfg=None, codebook_size: int | None = None
) -> dict[str, Any]:
    """Convert a trained Gaussian VAE checkpoint ``src`` into a VQ-VAE checkpoint ``out``.

    ``gq_cfg`` (seed, beta) overrides the checkpoint's GQ settings when given (params.yaml);
    ``codebook_size`` overrides K (the codebook-size ablation; default: the TDC target's K).
    Returns the quantizer metadata written.
    """
    payload = read_checkpoint(src)
    method = payload["method"]
    if method not in GAUSSIAN_METHODS or "quantizer" in payload.get("extra", {}):
        raise GaussquantError(
            f"{src}: convert needs a trained Gaussian VAE (method {', '.join(GAUSSIAN_METHODS)}), "
            f"got {method!r}"
        )
    cfg = config_from_dict(payload["config"])
    if gq_cfg is not None:
        cfg = dataclasses.replace(cfg, gq=gq_cfg)
    meta = post_quantizer_meta(cfg, payload["rate"], to)
    if codebook_size is not None and to == "gq" and codebook_size != meta["codebook_size"]:
        meta = gq_meta(
            meta["latent_channels"], codebook_size, meta["dim"], meta["seed"], meta["beta"]
        )
    model = build_autoencoder(cfg, method, payload["arch"], payload["rate"])
    model.load_state_dict(payload["model"])
    model.bottleneck = build_post_quantizer(meta)
    extra = {
        "quantizer": meta,
        "source_method": method,
        "source_checkpoint": str(src),
        "source_step": payload["step"],
    }
    save_checkpoint(out, model, cfg, to, payload["arch"], payload["rate"], payload["step"], extra)
    return meta
