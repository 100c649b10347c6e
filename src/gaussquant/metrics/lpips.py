"""LPIPS (v0.1) with verified offline weights: AlexNet for evaluation, VGG16 for the training loss.

The network of the official ``lpips`` package (v0.1: scaling layer, five trunk ReLU outputs
unit-normalised along channels, squared differences, non-negative 1x1 heads, spatial mean,
sum), written here so that a process does not import torchvision: ``import lpips`` pulls in
torchvision and torch._dynamo and builds a randomly initialised torchvision VGG16, 3.8 s of
every training and evaluation job (quick: 22 jobs). The state-dict keys are lpips' own, so the
files written by ``gaussquant fetch-weights`` load *strictly* (lpips' ``model_path`` loading
uses ``strict=False``, which would silently keep random heads if a key did not match), and a
test checks the outputs against the ``lpips`` package itself.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict

import torch
from torch import nn

from gaussquant.metrics.networks import TRUNK_LAYOUT
from gaussquant.metrics.weights import weight_path

NETS = ("alex", "vgg")
_SHIFT = (-0.030, -0.088, -0.188)  # lpips ScalingLayer: (x - shift) / scale
_SCALE = (0.458, 0.448, 0.450)
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def _features(net: str) -> list[nn.Module]:
    """torchvision's ``features`` layers of AlexNet / VGG16 up to the last ReLU, by index."""
    if net == "alex":
        return [
            nn.Conv2d(3, 64, 11, 4, 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, 1, 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, 1, 1),
            nn.ReLU(inplace=True),
        ]
    layers: list[nn.Module] = []
    c = 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, 1, 1), nn.ReLU(inplace=True)]
            c = int(v)
    return layers


class _Trunk(nn.Module):
    """``slice1`` .. ``slice5`` holding torchvision's layers under their ``features`` indices."""

    def __init__(self, net: str):
        super().__init__()
        layers = _features(net)
        starts = (*TRUNK_LAYOUT[net][1], len(layers))  # where each of lpips' slices starts
        for k in range(5):
            idx = range(starts[k], starts[k + 1])
            self.add_module(
                f"slice{k + 1}", nn.Sequential(OrderedDict((str(i), layers[i]) for i in idx))
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for k in range(5):
            x = getattr(self, f"slice{k + 1}")(x)
            out.append(x)
        return out


class LPIPSDistance(nn.Module):
    """LPIPS distance between images; frozen, always in eval mode, no dropout.

    ``forward(x, y)``: ``x``, ``y`` (B, 3, H, W) RGB in [-1, 1]; returns (B,) float32 distances.
    Parameters never require grad, but gradients flow to the inputs (perceptual loss).
    The network computes in the dtype of its parameters: ``.to(torch.bfloat16)`` makes the
    inputs cast to bf16 (see :func:`lpips_compute_dtype`).
    """

    def __init__(self, net: str):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPS net must be one of {NETS}, got {net!r}")
        self.net_name = net
        self.net = _Trunk(net)
        # the official heads are Dropout + 1x1 conv; the dropout (turned on in the official
        # training through a logging callback, docs/method.md §8) is meaningless for a frozen metric
        channels = [s[-2].out_channels for s in self.net.children()]  # each slice's last conv
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        super().train(False)

    @property
    def channels_last(self) -> bool:
        """Whether the trunk was moved with ``.to(memory_format=torch.channels_last)``."""
        w = self.net.slice1[0].weight
        return not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> LPIPSDistance:
        return super().train(False)  # a parent's .train() must not change the metric

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected two (B, 3, H, W) images, got {tuple(x.shape)}, {tuple(y.shape)}"
            )
        dtype = self.heads[0].weight.dtype
        if dtype != torch.float32 or self.channels_last:
            # oneDNN's convolutions are faster channels-last on CPU (VGG loss fwd+bwd, batch 16,
            # 32 px, 1 thread, AVX2 fp32: 1.11-1.14 -> 0.99 s); bf16 always runs so
            x, y = (t.to(dtype).contiguous(memory_format=torch.channels_last) for t in (x, y))
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        total = 0
        for head, a, b in zip(self.heads, fx, fy):
            diff = (_unit(a) - _unit(b)) ** 2
            total = total + head(diff).mean([2, 3], keepdim=True)
        return total.reshape(x.shape[0]).float()


def _unit(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Features divided by their L2 norm along channels (lpips' normalize_tensor)."""
    return feat / (torch.sqrt(torch.sum(feat**2, dim=1, keepdim=True)) + eps)


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 convolutions natively (so faster than fp32).

    CPU: the AVX512-BF16 or AMX-BF16 instructions (Linux flags); without them oneDNN emulates
    bf16 and the LPIPS-VGG step was measured 2x (AVX512) to 23x (AVX2) *slower* than fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    return False


def lpips_compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the LPIPS loss network for ``loss.lpips_precision`` on ``device``."""
    if precision == "fp32" or (precision == "auto" and not native_bf16(device)):
        return torch.float32
    if precision in ("bf16", "auto"):
        return torch.bfloat16
    raise ValueError(f"loss.lpips_precision must be fp32, bf16 or auto, got {precision!r}")


def build_lpips(net: str = "alex", weights_dir: str | os.PathLike | None = None) -> LPIPSDistance:
    """LPIPS v0.1 with the ``net`` ("alex" or "vgg") trunk from verified weights.

    Build once and reuse (the official evaluation rebuilt it every batch). Never downloads:
    raises MissingWeightsError (naming ``gaussquant fetch-weights``) if weights are absent.
    """
    model = LPIPSDistance(net)  # raises ValueError for an unknown net
    trunk_path = weight_path(f"lpips_{net}_trunk", weights_dir)
    heads_path = weight_path(f"lpips_{net}_heads", weights_dir)
    model.net.load_state_dict(torch.load(trunk_path, map_location="cpu", weights_only=True))
    heads = torch.load(heads_path, map_location="cpu", weights_only=True)
    expected = {f"lin{i}.model.1.weight" for i in range(len(model.heads))}
    if set(heads) != expected:
        raise ValueError(f"{heads_path}: expected keys {sorted(expected)}, got {sorted(heads)}")
    for i, head in enumerate(model.heads):
        head.load_state_dict({"weight": heads[f"lin{i}.model.1.weight"]})
    return model
