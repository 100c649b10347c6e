"""Quantizers (SPEC 2, 4): one per file, all returning :class:`QuantizerOutput`.

``QUANTIZERS`` is the one place a quantizer class is chosen by name. The Gaussian VAE
bottleneck with TDC lives in :mod:`gaussquant.quantizers.tdc`.
"""

from gaussquant.quantizers.base import QuantizerOutput
from gaussquant.quantizers.bsq import BSQ
from gaussquant.quantizers.fsq import FSQ
from gaussquant.quantizers.gaussian_quant import (
    GaussianQuant,
    codebook_sha256,
    from_tokens,
    gaussian_codebook,
    gq_search,
    to_tokens,
)
from gaussquant.quantizers.lfq import LFQ
from gaussquant.quantizers.tokenbridge import TokenBridge
from gaussquant.quantizers.vq import VectorQuantizer

QUANTIZERS = {
    "gq": GaussianQuant,
    "vq": VectorQuantizer,
    "fsq": FSQ,
    "lfq": LFQ,
    "bsq": BSQ,
    "tokenbridge": TokenBridge,
}

__all__ = [
    "BSQ",
    "FSQ",
    "LFQ",
    "QUANTIZERS",
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
