"""Metric network definitions (a leaf: imports nothing of the project, and torch only inside
the functions): the LPIPS trunk layouts and the FID Inception's pool3 path. The weight fetcher
(:mod:`gaussquant.metrics.weights`, which converts and checks the files) and the metrics
(:mod:`gaussquant.metrics.lpips`, :mod:`gaussquant.metrics.fid`) both import it.
"""

from __future__ import annotations

import os

# LPIPS trunks: torchvision `features` indices of the conv layers, and the first index of each
# of lpips' five slices (lpips.pretrained_networks keeps torchvision's indices inside slices).
TRUNK_LAYOUT = {
    "alex": ((0, 3, 6, 8, 10), (0, 2, 5, 8, 10)),
    "vgg": ((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), (0, 4, 9, 16, 23)),
}

INCEPTION_SIZE = 299
FEATURE_DIM = 2048

# torch-fidelity's module names in forward order up to the pool3 average pool.
_POOL3_LAYERS = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "MaxPool_1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "MaxPool_2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
    "AvgPool",
)


def load_fidelity_inception(path: str | os.PathLike):
    """torch-fidelity's InceptionV3 (eval, frozen) with weights from ``path`` (loaded strictly)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
    )


def pool3_from_299(net, x):
    """Run torch-fidelity's Inception ``net`` on an already preprocessed (B, 3, 299, 299) input.

    Same layers as torch-fidelity's ``forward`` without its uint8 resize/normalise step.
    Returns (B, 2048) float32 pool3 features.
    """
    for name in _POOL3_LAYERS:
        x = getattr(net, name)(x)
    return x.flatten(1).float()
