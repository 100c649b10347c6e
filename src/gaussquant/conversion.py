"""Training-free conversion of a Gaussian VAE into a VQ-VAE (docs/method.md §2, §4): the one
home of the post-training quantizers.

``POST_QUANTIZERS`` maps each conversion target to how it describes itself in a checkpoint
(:meth:`PostQuantizer.create`: the module and the JSON-able record of what defines it) and how
it is rebuilt from that record (:meth:`PostQuantizer.rebuild`, what
:func:`gaussquant.checkpoint.load_autoencoder` calls). ``gq``: :class:`GaussianQuant`, whose
Sobol/inverse-CDF codebook is generated once from (seed, K, m) and whose sha256 the record
keeps (checked on rebuild). ``tokenbridge``: per-channel Gaussian-quantile bins (m = 1).
Encoder and decoder weights are kept unchanged; nothing is trained.

Reading and writing files is :mod:`gaussquant.checkpoint`'s; this module works on models in
memory, so that the checkpoint module can rebuild a converted model without importing back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from gaussquant.config import Config
from gaussquant.errors import GaussquantError
from gaussquant.methods import GAUSSIAN_METHODS, gq_dim, tokenbridge_bits
from gaussquant.quantizers.gaussian_quant import GaussianQuant, codebook_sha256
from gaussquant.quantizers.tokenbridge import TokenBridge


@dataclasses.dataclass(frozen=True)
class PostQuantizer:
    """A post-training quantizer: ``settings(cfg, rate)`` -> what defines it (JSON-able),
    ``build(settings)`` -> the module, ``fingerprint(module)`` -> fields that a rebuild must
    reproduce exactly (recorded at conversion, checked on load)."""

    name: str
    settings: Callable[[Config, str], dict[str, Any]]
    build: Callable[[dict[str, Any]], nn.Module]
    fingerprint: Callable[[nn.Module], dict[str, str]] = lambda module: {}

    def create(self, cfg: Config, rate: str, **overrides) -> tuple[nn.Module, dict[str, Any]]:
        """The quantizer of ``cfg`` at ``rate`` (``overrides`` replace settings, e.g. the
        codebook-size ablation's K) and the record a converted checkpoint stores."""
        settings = self.settings(cfg, rate) | {k: v for k, v in overrides.items() if v is not None}
        return self.from_settings(settings)

    def from_settings(self, settings: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
        """The quantizer ``settings`` define and its checkpoint record."""
        module = self.build(settings)
        return module, {"kind": self.name} | settings | self.fingerprint(module)

    def rebuild(self, record: dict[str, Any]) -> nn.Module:
        """The module a converted checkpoint recorded; an error if it does not regenerate."""
        settings = {k: v for k, v in record.items() if k != "kind"}
        expected = {k: settings.pop(k) for k in list(settings) if k.endswith("_sha256")}
        module = self.build(settings)
        for key, got in self.fingerprint(module).items():
            if got != expected.get(key):
                raise GaussquantError(
                    f"{self.name} quantizer ({_describe(settings)}) regenerates with {key} "
                    f"{got[:12]}..., the checkpoint recorded {str(expected.get(key))[:12]}...; "
                    "the Sobol generator differs on this torch build"
                )
        return module


def _describe(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def _gq_settings(cfg: Config, rate: str) -> dict[str, Any]:
    return {
        "latent_channels": cfg.model.latent_channels,
        "codebook_size": cfg.tdc.codebook_size,
        "dim": gq_dim(cfg, cfg.rate(rate).bits),
        "seed": cfg.gq.seed,
        "beta": cfg.gq.beta,
    }


def _gq_build(s: dict[str, Any]) -> GaussianQuant:
    return GaussianQuant(
        s["latent_channels"], s["codebook_size"], s["dim"], seed=s["seed"], beta=s["beta"]
    )


def _tokenbridge_settings(cfg: Config, rate: str) -> dict[str, Any]:
    bits = tokenbridge_bits(cfg, cfg.rate(rate).bits)
    return {"latent_channels": cfg.model.latent_channels, "bits": bits}


POST_QUANTIZERS: dict[str, PostQuantizer] = {
    "gq": PostQuantizer(
        "gq", _gq_settings, _gq_build, lambda q: {"codebook_sha256": codebook_sha256(q.codebook)}
    ),
    "tokenbridge": PostQuantizer(
        "tokenbridge", _tokenbridge_settings, lambda s: TokenBridge(s["latent_channels"], s["bits"])
    ),
}


def post_quantizer(name: str) -> PostQuantizer:
    if name not in POST_QUANTIZERS:
        raise GaussquantError(
            f"post-training quantizer {name!r} unknown: allowed {', '.join(POST_QUANTIZERS)}"
        )
    return POST_QUANTIZERS[name]


def rebuild_post_quantizer(record: dict[str, Any]) -> nn.Module:
    """The quantizer recorded in a converted checkpoint (``extra["quantizer"]``)."""
    return post_quantizer(record["kind"]).rebuild(record)


def convert_model(
    model: nn.Module,
    cfg: Config,
    method: str,
    rate: str,
    to: str,
    gq_cfg=None,
    codebook_size: int | None = None,
) -> dict[str, Any]:
    """Replace, in place, the Gaussian bottleneck of ``model`` (trained ``method`` under
    ``cfg``) by the post-training quantizer ``to``; returns the checkpoint ``extra`` that
    describes the result (the quantizer's record and the source method).

    ``gq_cfg`` (seed, beta) overrides the model's GQ settings when given (params.yaml);
    ``codebook_size`` overrides K (the codebook-size ablation; default: the TDC target's K)."""
    if method not in GAUSSIAN_METHODS:
        raise GaussquantError(
            f"convert needs a trained Gaussian VAE (method {', '.join(GAUSSIAN_METHODS)}), "
            f"got {method!r}"
        )
    if gq_cfg is not None:
        cfg = dataclasses.replace(cfg, gq=gq_cfg)
    size = codebook_size if to == "gq" else None
    model.bottleneck, record = post_quantizer(to).create(cfg, rate, codebook_size=size)
    return {"quantizer": record, "source_method": method}
