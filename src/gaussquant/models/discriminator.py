"""PatchGAN discriminator with ActNorm (docs/method.md §5).

The official configuration uses the taming-transformers / LDM ``NLayerDiscriminator``
(pix2pix PatchGAN) with ``ndf: 160, n_layers: 6, use_actnorm: True``. Written from that
description: 4x4 convs with padding 1, LeakyReLU(0.2); the first conv (stride 2, no norm),
``n_layers - 1`` more stride-2 convs with channels ``ndf * min(2^n, 8)``, one stride-1 conv with
``ndf * min(2^n_layers, 8)`` channels, each followed by a norm, and a stride-1 conv to one logit
per patch. Init as taming: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0,
conv biases torch's default; ActNorm initialises itself from the first training batch.

Spatial size: every stride-2 conv maps S -> floor(S / 2) and each stride-1 conv S -> S - 1, so
the logit map is ``floor(S / 2^n_layers) - 2`` per side and the input needs
``S >= 3 * 2^n_layers`` (192 px for the paper's 6 layers: 256 px -> 2x2 logits; 32 px allows at
most 3 layers).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from gaussquant.errors import GaussquantError
from gaussquant.sections import DiscriminatorConfig


class NLayerDiscriminator(nn.Module):
    """Image (B, in_channels, H, W) in [-1, 1] -> patch logits (B, 1, H/2^n - 2, W/2^n - 2)."""

    def __init__(self, cfg: DiscriminatorConfig, in_channels: int = 3):
        super().__init__()
        self.cfg = cfg
        norm = ActNorm if cfg.use_actnorm else nn.BatchNorm2d
        use_bias = cfg.use_actnorm  # BatchNorm has its own shift (taming drops the conv bias)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, cfg.ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        c_prev = cfg.ndf
        for n in range(1, cfg.n_layers + 1):
            c = cfg.ndf * min(2**n, 8)
            stride = 2 if n < cfg.n_layers else 1
            layers += [
                nn.Conv2d(c_prev, c, 4, stride=stride, padding=1, bias=use_bias),
                norm(c),
                nn.LeakyReLU(0.2),
            ]
            c_prev = c
        layers.append(nn.Conv2d(c_prev, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_taming_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        need, size = self.cfg.min_image_size, min(x.shape[-2:])
        if size < need:
            fits = (size // 3).bit_length() - 1  # largest n with 3 * 2^n <= size
            fix = f"at most {fits}" if fits >= 1 else "1 and images of at least 6 px"
            raise GaussquantError(
                f"discriminator: n_layers={self.cfg.n_layers} needs images of at least "
                f"{need}x{need} px, got {x.shape[-2]}x{x.shape[-1]}; set "
                f"model.discriminator.n_layers to {fix}"
            )
        return self.main(x)


def _taming_init(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class ActNorm(nn.Module):
    """Per-channel affine ``scale * (x + loc)`` initialised from the first training batch.

    On the first forward in training mode, ``loc = -mean`` and ``scale = 1 / (std + 1e-6)``
    per channel over (B, H, W) (unbiased std, as taming), so that batch leaves with mean 0 and
    std 1 per channel. The ``initialized`` flag is a buffer: it is in the ``state_dict``, so a
    resumed model never re-initialises and continues bitwise. Under ``torch.distributed`` the
    statistics are all-reduced first, so every process starts from the same values, those of
    the global batch (taming initialises each process from its own shard, and DDP does not
    re-broadcast parameters, so replicas would silently differ).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not bool(self.initialized):
            self._initialize(x)
        return self.scale * (x + self.loc)

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        flat = x.detach().transpose(0, 1).reshape(x.shape[1], -1).double()
        count = flat.new_full((flat.shape[0],), flat.shape[1])
        stats = torch.stack([count, flat.sum(1), flat.pow(2).sum(1)])  # fp64 sums: no cancellation
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        count, total, total_sq = stats
        mean = total / count
        std = ((total_sq - count * mean.pow(2)) / (count - 1)).clamp_min(0).sqrt()
        self.loc.copy_((-mean).reshape_as(self.loc))
        self.scale.copy_((1.0 / (std + 1e-6)).reshape_as(self.scale))
        self.initialized.fill_(1)
