"""gaussquant: Gaussian Quant (GQ) — training-free vector quantization from Gaussian VAEs.

Reproduces "Vector Quantization using Gaussian Variational Autoencoder" (Xu et al.,
arXiv 2512.06609): a Gaussian VAE trained under the target divergence constraint (TDC) is
turned into a VQ-VAE by a random Gaussian codebook and a nearest-code rule, no training.

Public API (:mod:`gaussquant.api`, imported on first use so that the CLI starts fast)::

    from gaussquant import GaussianQuant, Tokenizer, from_gaussian_vae, load_tokenizer
"""

__version__ = "0.1.0"

__all__ = ["GaussianQuant", "Tokenizer", "from_gaussian_vae", "load_tokenizer", "__version__"]


def __getattr__(name: str):
    # imported on first use: `import gaussquant.config` (the CLI, Snakefile parsing) stays
    # torch-free; gaussquant.codedeps knows that no stage runs this (PEP 562 lazy exports)
    if name in __all__:
        from gaussquant import api

        return getattr(api, name)
    raise AttributeError(f"module 'gaussquant' has no attribute {name!r}")
