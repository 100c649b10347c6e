"""gaussquant: Gaussian Quant (GQ) — training-free vector quantization from Gaussian VAEs.

Reproduces "Vector Quantization using Gaussian Variational Autoencoder" (Xu et al.,
arXiv 2512.06609): a Gaussian VAE trained under the target divergence constraint (TDC) is
turned into a VQ-VAE by a random Gaussian codebook and a nearest-code rule, no training.
"""

__version__ = "0.1.0"
