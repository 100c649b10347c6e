"""Quantizers (docs/method.md §2, §4): one per file, all returning :class:`QuantizerOutput`.

``BUILDERS`` is the one place a trained method's bottleneck is chosen by name (the names of
:data:`gaussquant.methods.METHODS`): each builds itself from its config section at a rate.
The Gaussian VAE bottleneck with TDC lives in :mod:`gaussquant.quantizers.tdc`.
"""

from gaussquant.posterior import from_tokens, to_tokens
from gaussquant.quantizers.base import QuantizerOutput
from gaussquant.quantizers.bsq import BSQ
from gaussquant.quantizers.fsq import FSQ
from gaussquant.quantizers.gaussian_quant import (
    GaussianQuant,
    codebook_sha256,
    gaussian_codebook,
    gq_search,
)
from gaussquant.quantizers.lfq import LFQ
from gaussquant.quantizers.tdc import GaussianBottleneck
from gaussquant.quantizers.tokenbridge import TokenBridge
from gaussquant.quantizers.vq import VectorQuantizer

BUILDERS = {  # method name -> (cfg: Config, shape at a rate: methods.shape) -> bottleneck module
    "vq": VectorQuantizer.from_config,
    "fsq": FSQ.from_config,
    "lfq": LFQ.from_config,
    "bsq": BSQ.from_config,
    "tdc": GaussianBottleneck.tdc_from_config,
    "vanilla": GaussianBottleneck.vanilla_from_config,
    "tbtdc": GaussianBottleneck.tokenbridge_tdc_from_config,
}

__all__ = [
    "BUILDERS",
    "BSQ",
    "FSQ",
    "GaussianBottleneck",
    "LFQ",
    "GaussianQuant",
    "QuantizerOutput",
    "TokenBridge",
    "VectorQuantizer",
    "codebook_sha256",
    "from_tokens",
    "gaussian_codebook",
    "gq_search",
    "to_tokens",
]
