"""LPIPS (v0.1) with verified offline weights: AlexNet for evaluation, VGG16 for the training loss.

Built on the `lpips` package's network (``lpips.LPIPS(version="0.1")``, its scaling layer and
unit-normalised feature differences), with trunk and heads loaded *strictly* from the files
written by ``gaussquant fetch-weights``: lpips' own ``model_path`` loading uses
``strict=False``, which would silently keep random heads if a key did not match, and its
pretrained trunk would be downloaded from the internet.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from gaussquant.weights import weight_path

NETS = ("alex", "vgg")


class LPIPSDistance(nn.Module):
    """LPIPS distance between images; frozen, always in eval mode, no dropout.

    ``forward(x, y)``: ``x``, ``y`` (B, 3, H, W) RGB in [-1, 1]; returns (B,) distances.
    Parameters never require grad, but gradients flow to the inputs (perceptual loss).
    """

    def __init__(self, inner: nn.Module, net: str):
        super().__init__()
        self.net_name = net
        self.inner = inner
        # The official code turned these dropouts on through a logging callback (SPEC 8);
        # they are meaningless for a frozen metric, so they are removed.
        for lin in inner.lins:
            if isinstance(lin.model[0], nn.Dropout):
                lin.model[0] = nn.Identity()
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> LPIPSDistance:
        return super().train(False)  # a parent's .train() must not change the metric

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected two (B, 3, H, W) images, got {tuple(x.shape)}, {tuple(y.shape)}"
            )
        return self.inner(x, y).reshape(x.shape[0])


def build_lpips(net: str = "alex", weights_dir: str | os.PathLike | None = None) -> LPIPSDistance:
    """LPIPS v0.1 with the ``net`` ("alex" or "vgg") trunk from verified weights.

    Build once and reuse (the official evaluation rebuilt it every batch). Never downloads:
    raises MissingWeightsError (naming ``gaussquant fetch-weights``) if weights are absent.
    """
    if net not in NETS:
        raise ValueError(f"LPIPS net must be one of {NETS}, got {net!r}")
    import lpips

    trunk_path = weight_path(f"lpips_{net}_trunk", weights_dir)
    heads_path = weight_path(f"lpips_{net}_heads", weights_dir)
    with warnings.catch_warnings():
        # pnet_rand=True builds torchvision's net without weights (no download); torchvision
        # warns about lpips' old `pretrained=` argument.
        warnings.simplefilter("ignore")
        inner = lpips.LPIPS(pretrained=False, net=net, version="0.1", pnet_rand=True, verbose=False)
    inner.net.load_state_dict(torch.load(trunk_path, map_location="cpu", weights_only=True))
    heads = torch.load(heads_path, map_location="cpu", weights_only=True)
    expected = {f"lin{i}.model.1.weight" for i in range(len(inner.lins))}
    if set(heads) != expected:
        raise ValueError(f"{heads_path}: expected keys {sorted(expected)}, got {sorted(heads)}")
    for i, lin in enumerate(inner.lins):
        lin.load_state_dict({"model.1.weight": heads[f"lin{i}.model.1.weight"]})
    return LPIPSDistance(inner, net)
