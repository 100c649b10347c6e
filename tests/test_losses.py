"""Training losses (docs/method.md §5) in closed form, and one training step against a sum
assembled by hand: the NLL with a learned log-variance, its LPIPS weighting, the hinge losses,
the adaptive GAN weight with its clamp, and how ``train_step`` combines and applies them."""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from gaussquant.config import LossConfig
from gaussquant.losses import (
    ReconstructionNLL,
    adaptive_weight,
    generator_adv_loss,
    hinge_d_loss,
)


def _pair(seed=0, shape=(2, 3, 4, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1, torch.rand(shape, generator=g) * 2 - 1


def _nll_by_hand(x, x_rec, s, w=0.0, p=None):
    """sum over (C, H, W) of (|x - x_rec| + w p_b) / e^s + s, averaged over the batch, in
    float64 element by element."""
    a, b = x.double().numpy(), x_rec.double().numpy()
    total = 0.0
    for i in range(a.shape[0]):
        extra = 0.0 if p is None else w * float(p[i])
        for v in np.nditer(np.abs(a[i] - b[i])):
            total += (float(v) + extra) / math.exp(s) + s
    return total / a.shape[0]


@pytest.mark.parametrize("s", [0.0, 0.7, -1.3])
def test_nll_with_learned_logvar_closed_form(s):
    x, x_rec = _pair()
    loss = ReconstructionNLL(LossConfig(logvar_init=s))
    nll, stats = loss(x, x_rec)
    assert nll.item() == pytest.approx(_nll_by_hand(x, x_rec, s), rel=1e-6)
    assert stats["l1"].item() == pytest.approx((x - x_rec).abs().mean().item(), rel=1e-6)
    assert stats["logvar"].item() == pytest.approx(s)
    nll.backward()  # d/ds = sum(1 - rec e^-s) / B, rec = |x - x_rec| per element
    n = x[0].numel()
    expected = (n * x.shape[0] - (x - x_rec).abs().sum().item() * math.exp(-s)) / x.shape[0]
    assert loss.logvar.grad.item() == pytest.approx(expected, rel=1e-5)


def test_lpips_weighting_adds_w_times_distance_to_every_element():
    x, x_rec = _pair(1)
    p = torch.tensor([0.25, 0.6])
    for w in (1.0, 0.4):
        loss = ReconstructionNLL(LossConfig(lpips_weight=w, logvar_init=0.3))
        nll, stats = loss(x, x_rec, p)
        assert nll.item() == pytest.approx(_nll_by_hand(x, x_rec, 0.3, w, p), rel=1e-6)
        assert stats["lpips"].item() == pytest.approx(p.mean().item())
    # the perceptual term's gradient reaches the distances: d nll / d p_b = w * C*H*W / e^s / B
    p = p.clone().requires_grad_(True)
    loss(x, x_rec, p)[0].backward()
    expected = 0.4 * x[0].numel() / math.exp(0.3) / x.shape[0]
    torch.testing.assert_close(p.grad, torch.full((2,), expected))


def test_hinge_discriminator_and_generator_losses():
    real = torch.tensor([2.0, 0.5, -1.0, 0.0])
    fake = torch.tensor([-2.0, 0.0, 1.5, -0.5])
    # relu(1 - real) = 0, .5, 2, 1 (mean .875); relu(1 + fake) = 0, 1, 2.5, .5 (mean 1)
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.875 + 1.0))
    assert hinge_d_loss(fake, real).item() == pytest.approx(0.5 * (1.375 + 1.375))
    # confident and correct discriminator: no loss
    assert hinge_d_loss(torch.full((3,), 1.5), torch.full((3,), -4.0)).item() == 0.0
    assert generator_adv_loss(fake).item() == pytest.approx(0.25)
    assert generator_adv_loss(torch.tensor([[1.0, 3.0]])).item() == pytest.approx(-2.0)


def _last_layer_losses(a, b):
    """Losses linear in a weight W: d(a.W)/dW = a and d(b.W)/dW = b."""
    w = nn.Parameter(torch.ones(2, 3))
    return (a * w).sum(), (b * w).sum(), w


def test_adaptive_weight_is_the_gradient_norm_ratio_clamped_and_detached():
    a = torch.tensor([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0]])  # |a| = 5
    b = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # |b| = 1
    nll, g, w = _last_layer_losses(a, b)
    weight = adaptive_weight(nll, g, w, max_weight=100.0)
    assert weight.item() == pytest.approx(5.0 / (1.0 + 1e-4), rel=1e-6)
    assert not weight.requires_grad
    # a vanishing generator gradient: 5 / 1e-4 = 5e4 is clamped to max_weight
    nll, g, w = _last_layer_losses(a, b * 0)
    assert adaptive_weight(nll, g, w, max_weight=100.0).item() == 100.0
    nll, g, w = _last_layer_losses(a, b * 1e-3)
    assert adaptive_weight(nll, g, w, max_weight=1.0e4).item() == pytest.approx(5 / 1.1e-3)
    # the graph is kept: the caller still backpropagates both losses afterwards
    nll, g, w = _last_layer_losses(a, b)
    adaptive_weight(nll, g, w)
    (nll + g).backward()
    torch.testing.assert_close(w.grad, a + b)


class _SquaredDistance(nn.Module):
    """A stand-in perceptual distance, (B,) mean squared error, differentiable."""

    def forward(self, x, y):
        return (x - y).pow(2).mean((1, 2, 3))


def _parts(tiny_cfg, method="tdc"):
    from gaussquant.losses import ReconstructionNLL
    from gaussquant.models.autoencoder import build_autoencoder
    from gaussquant.models.discriminator import NLayerDiscriminator
    from gaussquant.train import TrainParts

    torch.manual_seed(0)
    loss_cfg = dataclasses.replace(tiny_cfg.loss, disc_weight=0.6, disc_factor=0.8, logvar_init=0.2)
    model = build_autoencoder(tiny_cfg, method, "unet", "8")
    disc = NLayerDiscriminator(tiny_cfg.model.discriminator)
    nll_loss = ReconstructionNLL(loss_cfg)
    # plain SGD: the update is lr times the gradient, so the comparison below checks gradients
    # (Adam's first step, lr * g / |g|, would amplify round-off in near-zero gradients)
    opt_g = torch.optim.SGD([*model.parameters(), nll_loss.logvar], lr=1.0)
    opt_d = torch.optim.SGD(disc.parameters(), lr=1.0)
    return TrainParts(
        model,
        disc,
        nll_loss,
        _SquaredDistance(),
        opt_g,
        opt_d,
        loss_cfg,
        lambda t: t.backward(),
        model.last_layer,
    )


def _hand_step(p, x, lr):
    """The generator and discriminator updates written out from the losses' definitions, on
    copies of the parts."""
    model, disc, nll_loss = (copy.deepcopy(m) for m in (p.model, p.disc, p.nll_loss))
    lc = p.loss
    model.train()
    x_rec, q = model(x)
    rec = (x - x_rec).abs() + lc.lpips_weight * (x - x_rec).pow(2).mean((1, 2, 3)).view(-1, 1, 1, 1)
    nll = (rec / nll_loss.logvar.exp() + nll_loss.logvar).sum() / x.shape[0]
    g = -disc(x_rec).mean()
    last = model.last_layer()
    g_nll = torch.autograd.grad(nll, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g, last, retain_graph=True)[0]
    d_weight = lc.disc_weight * min(g_nll.norm() / (g_adv.norm() + 1e-4), lc.adaptive_weight_max)
    aux = sum(q.losses.values())
    total = nll + aux + d_weight.detach() * lc.disc_factor * g
    opt_g = torch.optim.SGD([*model.parameters(), nll_loss.logvar], lr=lr)
    total.backward()
    opt_g.step()
    disc.zero_grad(set_to_none=True)  # G's backward reached the discriminator too
    real, fake = disc(x), disc(x_rec.detach())
    d_loss = (
        lc.disc_factor * 0.5 * ((1 - real).clamp(min=0).mean() + (1 + fake).clamp(min=0).mean())
    )
    opt_d = torch.optim.SGD(disc.parameters(), lr=lr)
    d_loss.backward()
    opt_d.step()
    return {"loss": total, "nll": nll, "aux": aux, "g_loss": g, "d_loss": d_loss}, model, disc


@pytest.mark.parametrize("method", ["tdc", "lfq"])
def test_train_step_total_loss_is_the_hand_assembled_sum(tiny_cfg, method):
    """After ``disc_start``: loss = NLL + auxiliary (TDC / entropy) + disc_weight * adaptive
    weight * disc_factor * G, and both optimisers step on exactly these losses."""
    from gaussquant.train import train_step

    p = _parts(tiny_cfg, method)
    x = _pair(2, (4, 3, 32, 32))[0]
    torch.manual_seed(7)  # the same posterior noise in both
    before = copy.deepcopy(p.model.state_dict())
    disc_before = copy.deepcopy(dict(p.disc.named_parameters()))
    want, model, disc = _hand_step(p, x, lr=0.05)
    torch.manual_seed(7)
    got = train_step(p, x, step=p.loss.disc_start, lr=0.05)
    assert want["aux"].item() != 0.0  # the auxiliary loss is in play
    for key, value in want.items():
        assert got[key].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7), key
    moved = 0
    for (name, a), b in zip(p.model.named_parameters(), model.parameters()):
        _assert_same_update(a - before[name], b - before[name], name)
        moved += bool((a != before[name]).any())
    assert moved > len(before) // 2
    for (name, a), b in zip(p.disc.named_parameters(), disc.parameters()):
        _assert_same_update(a - disc_before[name], b - disc_before[name], name)


def _assert_same_update(got, want, name):
    """SGD updates equal up to float32 round-off of the gradient sums (relative to the
    largest entry of the update)."""
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale + 1e-12, msg=name)


def test_train_step_before_disc_start_has_no_gan_terms(tiny_cfg):
    from gaussquant.train import train_step

    p = _parts(tiny_cfg, "fsq")
    disc_before = copy.deepcopy(p.disc.state_dict())
    got = train_step(p, _pair(3, (4, 3, 32, 32))[0], step=p.loss.disc_start - 1, lr=1e-3)
    assert got["g_loss"] is None and got["d_loss"] is None and got["d_weight"] is None
    assert got["loss"].item() == pytest.approx((got["nll"] + got["aux"]).item(), rel=1e-7)
    for k, v in p.disc.state_dict().items():
        assert torch.equal(v, disc_before[k]), k  # the discriminator was not touched
