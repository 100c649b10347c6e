"""Training losses of docs/method.md §5: L1 + LPIPS(VGG) as an NLL with a learned log-variance, PatchGAN
hinge loss and the VQGAN adaptive weight.

Shapes: ``x``, ``x_rec`` are (B, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gaussquant.config import LossConfig


class ReconstructionNLL(nn.Module):
    """``rec / e^s + s`` with ``rec = |x - x_rec| + w * LPIPS(x, x_rec)`` per pixel and channel,
    summed over pixels and channels and averaged over the batch (docs/method.md §5).

    ``s`` is a learned scalar (a parameter of this module; optimise it with the generator).
    ``perceptual`` holds the (B,) LPIPS(VGG) distances of the batch, computed by the caller with
    a frozen network (kept out of this module so training states do not store its weights), or
    None for L1 only.
    """

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.lpips_weight = cfg.lpips_weight
        self.logvar = nn.Parameter(torch.tensor(float(cfg.logvar_init)))

    def forward(
        self, x: torch.Tensor, x_rec: torch.Tensor, perceptual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rec = (x - x_rec).abs()
        stats = {"l1": rec.mean().detach()}
        if perceptual is not None:
            p = perceptual.reshape(-1, 1, 1, 1)
            rec = rec + self.lpips_weight * p
            stats["lpips"] = p.mean().detach()
        nll = rec / self.logvar.exp() + self.logvar
        stats["logvar"] = self.logvar.detach()
        return nll.sum() / x.shape[0], stats


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_rec))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_adv_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: -E[D(x_rec)]."""
    return -logits_fake.mean()


def adaptive_weight(
    nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1.0e4
) -> torch.Tensor:
    """VQGAN adaptive weight: ||dNLL/dW|| / (||dG/dW|| + 1e-4) at the decoder's last layer,
    clamped to [0, max_weight] and detached."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
