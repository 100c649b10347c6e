"""Vision-transformer autoencoder backbone in the BSQ-ViT style, ViT-B/8 (docs/method.md §5).

Written from docs/method.md §5 and the structure of the official configuration
(`tongdaxu/VQ-VAE-from-Gaussian-VAE` ``configs/bsqvit_gq_*.yaml``: ``pit.modules.vit``
``TransformerEncoder`` / ``TransformerDecoder``, taken from `zhaoyue-zephyrus/bsq-vit`).

Structure (N = (image_size / patch)^2 tokens, w = width):

- Encoder: non-overlapping patches flattened in (c, py, px) order -> Linear(3 p^2, w, no bias)
  -> + learned positional embedding -> LayerNorm (ln_pre) -> ``layers`` pre-norm blocks ->
  LayerNorm (ln_post) -> Linear(w, out_channels) -> latent grid (B, out_channels, H/p, W/p).
- Decoder: Linear(in_channels, w) per position -> + positional embedding -> ln_pre -> blocks ->
  ln_post -> head Linear(w, head_ratio * w) -> tanh -> Linear(-, 3 p^2) -> patches -> image,
  clamped to [-1, 1] (see :func:`clamp_output`). The head's last Linear is registered last, so it
  is the decoder's last weight (the adaptive GAN weight uses it).
- Block: x + Attn(LN(x)); x + MLP(LN(x)); multi-head attention with a fused qkv projection
  (same parameters as ``nn.MultiheadAttention``), MLP Linear-GELU-Linear with ratio mlp_ratio.
- Init (as BSQ-ViT): positional embedding N(0, 0.02); patch embedding, block weights and the
  decoder head weights truncated normal std 0.02; block biases zero; LayerNorm ones / zeros;
  the latent projections (encoder out, decoder in) and the head biases torch's default.

Parameter counts of the paper configuration (tests/test_models.py checks them in closed form):
encoder with out_channels = 2C = 32: 86,016,032 (docs/method.md §5: about 86.0 M); decoder with in_channels
= C = 16: 88,809,408 (docs/method.md §5: about 88.8 M). The decoder's extra 2.95 M are the tanh head with
hidden width 3072 (BSQ-ViT's fixed ``dim_ffn_output``; here ``head_ratio * width``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from gaussquant.errors import GaussquantError
from gaussquant.models.streams import own_stream
from gaussquant.sections import CLAMP_MODES as CLAMP_MODES  # re-exported
from gaussquant.sections import ViTConfig


class ViTEncoder(nn.Module):
    """Image ``x`` (B, in_channels, S, S), S = image_size -> latent (B, out_channels, S/p, S/p)."""

    def __init__(self, cfg: ViTConfig, in_channels: int = 3, out_channels: int = 32):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.patch_embed = nn.Linear(in_channels * cfg.patch**2, w, bias=False)  # ln_pre follows
        self.pos_embed = nn.Parameter(torch.empty(cfg.grid**2, w))
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers))
        self.ln_post = nn.LayerNorm(w)
        with own_stream("encoder.out"):  # its shape is the bottleneck's (common random numbers)
            self.proj_out = nn.Linear(w, out_channels)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.patch_embed.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, p = self.cfg.image_size, self.cfg.patch
        if tuple(x.shape[-2:]) != (s, s):
            raise GaussquantError(
                f"ViT encoder: built for {s}x{s} images (vit.image_size), got "
                f"{x.shape[-2]}x{x.shape[-1]}; the positional embedding fixes the size"
            )
        h = rearrange(x, "b c (gh p) (gw q) -> b (gh gw) (c p q)", p=p, q=p)
        h = self.ln_pre(self.patch_embed(h) + self.pos_embed)
        for block in self.blocks:
            h = block(h)
        h = self.proj_out(self.ln_post(h))
        return rearrange(h, "b (gh gw) c -> b c gh gw", gh=self.cfg.grid)


class ViTDecoder(nn.Module):
    """Latent (B, in_channels, S/p, S/p) -> image (B, out_channels, S, S), clamped to [-1, 1].

    ``forward(z, clamp=False)`` returns the raw output: what the official ``decode()`` gives (the
    official eval.py reports it); its ``forward()``/``dequant()`` clamp, as ``clamp=True`` here.
    """

    def __init__(self, cfg: ViTConfig, in_channels: int = 16, out_channels: int = 3):
        super().__init__()
        self.cfg = cfg
        w, hidden = cfg.width, int(cfg.head_ratio * cfg.width)
        with own_stream("decoder.in"):  # its shape is the bottleneck's (common random numbers)
            self.proj_in = nn.Linear(in_channels, w)
        self.pos_embed = nn.Parameter(torch.empty(cfg.grid**2, w))
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers))
        self.ln_post = nn.LayerNorm(w)
        self.head = nn.Linear(w, hidden)
        self.conv_out = nn.Linear(
            hidden, out_channels * cfg.patch**2
        )  # registered last: last_layer
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.trunc_normal_(self.conv_out.weight, std=0.02)

    def forward(self, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        g, p = self.cfg.grid, self.cfg.patch
        if tuple(z.shape[-2:]) != (g, g):
            raise GaussquantError(
                f"ViT decoder: built for a {g}x{g} latent grid (vit.image_size / vit.patch), "
                f"got {z.shape[-2]}x{z.shape[-1]}"
            )
        h = self.proj_in(rearrange(z, "b c gh gw -> b (gh gw) c"))
        h = self.ln_pre(h + self.pos_embed)
        for block in self.blocks:
            h = block(h)
        h = self.conv_out(torch.tanh(self.head(self.ln_post(h))))
        x = rearrange(h, "b (gh gw) (c p q) -> b c (gh p) (gw q)", gh=g, p=p, q=p)
        return clamp_output(x, self.cfg.clamp) if clamp else x


def clamp_output(x: torch.Tensor, mode: str = "inward") -> torch.Tensor:
    """Clamp to [-1, 1]. ``"hard"``: ``torch.clamp`` (zero gradient outside the range).

    ``"inward"``: same values; the gradient ``g`` reaches an out-of-range input only when plain
    descent (x -= lr * g) moves it back towards the range (x > 1 with g > 0, x < -1 with g < 0),
    so saturated pixels that the loss wants darker / brighter can recover, while the loss can
    never push them further out.
    """
    if mode == "hard":
        return x.clamp(-1.0, 1.0)
    return _InwardClamp.apply(x)


class _InwardClamp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(-1.0, 1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        blocked = ((x > 1.0) & (grad < 0)) | ((x < -1.0) & (grad > 0))
        return grad.masked_fill(blocked, 0.0)


# ----------------------------------------------------------------------------- blocks


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)). Input (B, N, width)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_out = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        for lin in (self.qkv, self.attn_out, self.mlp[0], self.mlp[2]):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(self.ln_1(x)), "b n (t h d) -> t b h n d", t=3, h=self.heads)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.attn_out(rearrange(a, "b h n d -> b n (h d)"))
        return x + self.mlp(self.ln_2(x))
