"""Convolutional autoencoder backbone in the SD3-VAE / LDM style (docs/method.md §5).

Written from docs/method.md §5 and the structure of the official configuration
(`tongdaxu/VQ-VAE-from-Gaussian-VAE` ``configs/sd3unet_*.yaml``: ``pit.modules.unet.Encoder`` /
``Decoder``, themselves Stability-AI ``generative-models``' LDM autoencoder) with
``attn_resolutions: [32]`` and the mid-block attention commented out.

Structure (L = len(ch_mult) levels, level 0 = full resolution):

- Encoder: 3x3 conv_in (in -> ch); per level ``num_res_blocks`` ResNet blocks
  (``ch * ch_mult[i-1] -> ch * ch_mult[i]``), each followed by single-head self-attention on the
  attention levels, then a stride-2 downsample (not after the last level); a mid block of two
  ResNet blocks (no attention); GroupNorm + SiLU + 3x3 conv_out (-> out_channels). With
  ``out_head: ln_conv1x1`` (not official) a LayerNorm over each position's channels and a 1x1
  conv_out replace the 3x3 one.
- Decoder: mirror image: 3x3 conv_in (in -> ch * ch_mult[-1]); mid block of two ResNet blocks;
  per level from the lowest resolution up, ``num_res_blocks + 1`` ResNet blocks (each followed by
  attention on the attention levels), then nearest x2 upsample + 3x3 conv (not after level 0);
  GroupNorm + SiLU + 3x3 conv_out (-> out_channels). ``conv_out`` is registered last, so it is the
  decoder's last weight (the adaptive GAN weight uses it).
- ResNet block: GroupNorm, SiLU, 3x3 conv, GroupNorm, SiLU, dropout, 3x3 conv, plus a 1x1 conv
  shortcut when the channel count changes. GroupNorm eps 1e-6, as in the LDM code.

Numerics follow the official modules op for op (SiLU as ``x * sigmoid(x)``, the attention's
token layout), so imported official weights (:mod:`gaussquant.official`) give the official
outputs to float32 rounding (tests/test_official.py).

Parameter counts of the paper configuration (checked in tests/test_models.py): encoder with
out_channels = 2C = 32: 35,325,856 (docs/method.md §5: about 35.3 M); decoder with in_channels = C = 16:
51,648,771 (docs/method.md §5: about 51.6 M). Both need exactly this structure: two attention blocks in the
encoder's 32x32 level and three in the decoder's (one after each of its num_res_blocks + 1
blocks), two mid-block ResNet blocks, no mid-block attention. One 512-channel attention block is
1,051,648 parameters (3 % of the encoder), so one more or one fewer misses the docs/method.md §5 numbers.
With ``attn_levels=[]``, ``mid_attn=True`` and 8 / 4 latent channels the same code gives the
SD 1.x VAE's 34,163,592 / 49,490,179.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gaussquant.errors import GaussquantError
from gaussquant.models.streams import own_stream
from gaussquant.sections import UNetConfig

GROUPNORM_EPS = 1e-6  # LDM autoencoder value (torch default is 1e-5)


def _swish(x: torch.Tensor) -> torch.Tensor:
    """SiLU written as the official ``x * sigmoid(x)``; F.silu rounds differently (official
    decoder output reproduced to 0.91e-5 instead of 0.99e-5 on an AVX2 CPU, tests/test_official.py)."""
    return x * torch.sigmoid(x)


class UNetEncoder(nn.Module):
    """Image ``x`` (B, in_channels, H, W) -> latent (B, out_channels, H/f, W/f), f = 2^(L-1).

    H and W must be multiples of f. For the Gaussian bottleneck ``out_channels`` is 2C
    (``mu`` then ``logvar``); for the trained quantizers it is the quantizer's input width.
    """

    def __init__(self, cfg: UNetConfig, in_channels: int = 3, out_channels: int = 32):
        super().__init__()
        self.cfg = cfg
        g, p = cfg.num_groups, cfg.dropout
        self.conv_in = nn.Conv2d(in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        c_in = cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            stage = _Stage(c_in, cfg.ch * mult, cfg.num_res_blocks, cfg.has_attn(level), g, p)
            c_in = cfg.ch * mult
            if level != len(cfg.ch_mult) - 1:
                stage.resample = _Downsample(c_in)
            self.down.append(stage)
        self.mid = _Mid(c_in, cfg.mid_attn, g, p)
        self.norm_out = nn.GroupNorm(g, c_in, eps=GROUPNORM_EPS)
        # ln_conv1x1 (not official): each position's output from its own normalised features,
        # so a token's mean part does not follow local contrast (benchmarks/notes.md)
        per_position = cfg.out_head == "ln_conv1x1"
        self.norm_position = PositionNorm() if per_position else nn.Identity()
        with own_stream("encoder.out"):  # its shape is the bottleneck's (common random numbers)
            k = 1 if per_position else 3
            self.conv_out = nn.Conv2d(c_in, out_channels, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.cfg.downsample
        if x.shape[-2] % f or x.shape[-1] % f:
            raise GaussquantError(
                f"UNet encoder: image size {tuple(x.shape[-2:])} is not a multiple of the "
                f"downsampling factor {f} (len(ch_mult) = {len(self.cfg.ch_mult)} levels)"
            )
        h = self.conv_in(x)
        for stage in self.down:
            h = stage(h)
        h = self.mid(h)
        return self.conv_out(self.norm_position(_swish(self.norm_out(h))))


class UNetDecoder(nn.Module):
    """Latent (B, in_channels, h, w) -> image (B, out_channels, h*f, w*f), unbounded values.

    The output is not clamped or squashed (as in the official code); the loss sees raw values.
    """

    def __init__(self, cfg: UNetConfig, in_channels: int = 16, out_channels: int = 3):
        super().__init__()
        self.cfg = cfg
        g, p = cfg.num_groups, cfg.dropout
        c_in = cfg.ch * cfg.ch_mult[-1]
        with own_stream("decoder.in"):  # its shape is the bottleneck's (common random numbers)
            self.conv_in = nn.Conv2d(in_channels, c_in, 3, padding=1)
        self.mid = _Mid(c_in, cfg.mid_attn, g, p)
        up = []
        for level in reversed(range(len(cfg.ch_mult))):
            c_out = cfg.ch * cfg.ch_mult[level]
            stage = _Stage(c_in, c_out, cfg.num_res_blocks + 1, cfg.has_attn(level), g, p)
            c_in = c_out
            if level != 0:
                stage.resample = _Upsample(c_in)
            up.append(stage)
        self.up = nn.ModuleList(up)  # lowest resolution first, in the order they run
        self.norm_out = nn.GroupNorm(g, c_in, eps=GROUPNORM_EPS)
        self.conv_out = nn.Conv2d(c_in, out_channels, 3, padding=1)  # registered last: last_layer

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for stage in self.up:
            h = stage(h)
        return self.conv_out(_swish(self.norm_out(h)))


# ----------------------------------------------------------------------------- blocks


class PositionNorm(nn.Module):
    """LayerNorm over the channels of each position (no affine): (B, C, H, W) -> same shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2]).permute(0, 3, 1, 2)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual; 1x1 conv shortcut when channels change."""

    def __init__(self, c_in: int, c_out: int, num_groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, c_in, eps=GROUPNORM_EPS)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(num_groups, c_out, eps=GROUPNORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, pre-GroupNorm, residual.

    q, k, v come from one 1x1 conv: the LDM code's three 1x1 convs stacked on the output
    channels (same parameters, same values; :mod:`gaussquant.official` splits and joins them).
    """

    def __init__(self, channels: int, num_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels, eps=GROUPNORM_EPS)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # contiguous (B, 1, HW, C) q, k, v and the attention output handed back to proj_out as a
        # channels-last view: the official layout, so the same kernels run (float32 parity)
        q, k, v = (
            t.permute(0, 2, 3, 1).reshape(b, 1, h * w, c).contiguous()
            for t in self.qkv(self.norm(x)).chunk(3, dim=1)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(C), one head
        return x + self.proj_out(out.reshape(b, h, w, c).permute(0, 3, 1, 2))


class _Stage(nn.Module):
    """One resolution level: ResNet blocks (each optionally followed by attention), then an
    optional resampling layer (set by the caller as ``.resample``)."""

    def __init__(self, c_in, c_out, n_blocks, attn, num_groups, dropout):
        super().__init__()
        chans = [c_in] + [c_out] * n_blocks
        self.block = nn.ModuleList(
            ResnetBlock(a, b, num_groups, dropout) for a, b in zip(chans[:-1], chans[1:])
        )
        self.attn = nn.ModuleList(
            AttnBlock(c_out, num_groups) for _ in range(n_blocks if attn else 0)
        )
        self.resample: nn.Module = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if self.attn:
                x = self.attn[i](x)
        return self.resample(x)


class _Mid(nn.Module):
    def __init__(self, channels: int, attn: bool, num_groups: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, num_groups, dropout)
        self.attn_1 = AttnBlock(channels, num_groups) if attn else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, num_groups, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Downsample(nn.Module):
    """Stride-2 3x3 conv with (0, 1, 0, 1) zero padding: H -> H/2 for even H (LDM layout)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
