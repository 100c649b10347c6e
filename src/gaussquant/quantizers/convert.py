"""Training-free conversion of a Gaussian VAE checkpoint into a VQ-VAE (SPEC 2, 4).

``gq``: the bottleneck becomes :class:`GaussianQuant` (Sobol/inverse-CDF codebook regenerated
from (seed, K, m), its sha256 recorded and checked on load). ``tokenbridge``: per-channel
Gaussian-quantile bins (m = 1). Encoder and decoder weights are copied unchanged; nothing is
trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from gaussquant.config import Config, config_from_dict
from gaussquant.errors import GaussquantError

TARGETS = ("gq", "tokenbridge")


def post_quantizer_meta(cfg: Config, rate: str, to: str) -> dict[str, Any]:
    """What defines the post-training quantizer of ``to`` at ``rate`` (stored in the checkpoint)."""
    r = cfg.rate(rate)
    if to == "gq":
        from gaussquant.quantizers.gaussian_quant import codebook_sha256, gaussian_codebook

        k, m, seed = cfg.tdc.codebook_size, r.gq_dim, cfg.gq.seed
        return {
            "kind": "gq",
            "latent_channels": cfg.model.latent_channels,
            "codebook_size": k,
            "dim": m,
            "seed": seed,
            "beta": cfg.gq.beta,
            "codebook_sha256": codebook_sha256(gaussian_codebook(k, m, seed)),
        }
    if to == "tokenbridge":
        return {
            "kind": "tokenbridge",
            "latent_channels": cfg.model.latent_channels,
            "bits": r.tokenbridge_bits,
        }
    raise GaussquantError(f"convert --to {to!r}: allowed {', '.join(TARGETS)}")


def build_post_quantizer(cfg: Config, meta: dict[str, Any]) -> nn.Module:
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


def convert_checkpoint(
    src: str | Path, to: str, out: str | Path, gq_cfg=None, codebook_size: int | None = None
) -> dict[str, Any]:
    """Convert a trained Gaussian VAE checkpoint ``src`` into a VQ-VAE checkpoint ``out``.

    ``gq_cfg`` (seed, beta) overrides the checkpoint's GQ settings when given (params.yaml);
    ``codebook_size`` overrides K (the codebook-size ablation; default: the TDC target's K).
    Returns the quantizer metadata written.
    """
    import dataclasses

    from gaussquant.models.autoencoder import (
        GAUSSIAN_METHODS,
        build_autoencoder,
        read_checkpoint,
        save_checkpoint,
    )

    payload = read_checkpoint(src)
    method = payload["method"]
    if method not in GAUSSIAN_METHODS or "quantizer" in payload.get("extra", {}):
        raise GaussquantError(
            f"{src}: convert needs a trained Gaussian VAE (method gq, vanilla or tbtdc), got {method!r}"
        )
    cfg = config_from_dict(payload["config"])
    if gq_cfg is not None:
        cfg = dataclasses.replace(cfg, gq=gq_cfg)
    meta = post_quantizer_meta(cfg, payload["rate"], to)
    if codebook_size is not None and to == "gq" and codebook_size != meta["codebook_size"]:
        from gaussquant.quantizers.gaussian_quant import codebook_sha256, gaussian_codebook

        meta["codebook_size"] = codebook_size
        meta["codebook_sha256"] = codebook_sha256(
            gaussian_codebook(codebook_size, meta["dim"], meta["seed"])
        )
    model = build_autoencoder(cfg, method, payload["arch"], payload["rate"])
    model.load_state_dict(payload["model"])
    model.bottleneck = build_post_quantizer(cfg, meta)
    name = {"gq": "gq", "tokenbridge": "tokenbridge"}[to]
    extra = {
        "quantizer": meta,
        "source_method": method,
        "source_checkpoint": str(src),
        "source_step": payload["step"],
    }
    save_checkpoint(out, model, cfg, name, payload["arch"], payload["rate"], payload["step"], extra)
    return meta
