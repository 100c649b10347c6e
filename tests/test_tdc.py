"""TDC regulariser against the official reference (40 training steps), plus invariants."""

import math

import numpy as np
import pytest
import torch
from conftest import REFERENCE

from gaussquant.quantizers.tdc import (
    GaussianBottleneck,
    TDCConfig,
    TDCRegularizer,
    kl_nats,
    split_posterior,
    token_rates,
)

# (file, array prefix): the 40 steps of gq_official_vectors never put the batch mean and the
# batch max (or min) on different sides of T +- tolerance; the 40 of gq_official_tdc_mixed do,
# so they tell the max (min) rule of lam_max (lam_min) from a mean-driven one
OFFICIAL_STEPS = [("gq_official_vectors.npz", "tdc"), ("gq_official_tdc_mixed.npz", "tdc_mixed")]


@pytest.mark.parametrize("name,prefix", OFFICIAL_STEPS)
def test_matches_official_40_steps(name, prefix):
    """kl_loss (before config weight), bits mean/min/max and the multipliers before and after
    each step agree with the official code to 1e-5 relative."""
    ref = np.load(REFERENCE / name)
    reg = TDCRegularizer(8, 4, TDCConfig(codebook_size=256, weight=1.0)).train()
    z, out, lams = ref[f"{prefix}_z"], ref[f"{prefix}_out"], ref[f"{prefix}_lams"]
    assert z.shape[0] == 40
    for step in range(40):
        before = [reg.lam.item(), reg.lam_min.item(), reg.lam_max.item()]
        mu, logvar = split_posterior(torch.from_numpy(z[step]))
        loss, stats = reg(mu, logvar)
        got = [
            loss.item(),
            stats["bits_mean"].item(),
            stats["bits_min"].item(),
            stats["bits_max"].item(),
        ]
        after = [reg.lam.item(), reg.lam_min.item(), reg.lam_max.item()]
        np.testing.assert_allclose(got, out[step], rtol=1e-5, err_msg=f"step {step}")
        np.testing.assert_allclose(before + after, lams[step], rtol=1e-5, err_msg=f"step {step}")


def test_mixed_official_steps_straddle_the_thresholds():
    """The mixed file does what it is for: some batches have the mean below T + tolerance and
    the max above it, some the mean above T - tolerance and the min below it."""
    out = np.load(REFERENCE / "gq_official_tdc_mixed.npz")["tdc_mixed_out"]
    mean, lo, hi = out[:, 1], out[:, 2], out[:, 3]
    assert ((mean <= 8.5) & (hi > 8.5)).sum() >= 3
    assert ((mean >= 7.5) & (lo < 7.5)).sum() >= 3


def test_config_weight_scales_loss_only():
    mu, logvar = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    a = TDCRegularizer(8, 4, TDCConfig(codebook_size=256, weight=1.0)).eval()
    b = TDCRegularizer(8, 4, TDCConfig(codebook_size=256, weight=0.1)).eval()
    la, _ = a(mu, logvar)
    lb, _ = b(mu, logvar)
    torch.testing.assert_close(lb, 0.1 * la)


def test_token_rates_strided_layout():
    """Token k sums channels k, k + C/m, ... (docs/method.md §1)."""
    kl = torch.arange(8.0).reshape(1, 8, 1, 1)
    r = token_rates(kl, 4)  # C=8, m=4 -> 2 tokens: {0,2,4,6}, {1,3,5,7}
    assert r.flatten().tolist() == [0 + 2 + 4 + 6, 1 + 3 + 5 + 7]


def test_kl_closed_form():
    mu, logvar = torch.tensor([0.0, 1.0, 0.5]), torch.tensor([0.0, 0.0, math.log(4.0)])
    expected = [0.0, 0.5, 0.5 * (0.25 + 4 - 1 - math.log(4))]
    torch.testing.assert_close(kl_nats(mu, logvar), torch.tensor(expected))


def test_multiplier_clamps_and_directions():
    cfg = TDCConfig(codebook_size=16, weight=1.0)  # target 4 bits per token
    reg = TDCRegularizer(4, 4, cfg).train()
    big = torch.full((1, 4, 2, 2), 3.0)  # every token far above target
    for _ in range(2000):
        reg(big, torch.zeros_like(big))
    assert reg.lam_max.item() == 1000.0  # clamped at the top
    assert reg.lam_min.item() == 1.0  # no token below target: grows back to its clamp
    assert reg.lam.item() > 1e8  # unbounded
    small = torch.zeros(1, 4, 2, 2)  # zero KL: every token below target
    for _ in range(2000):
        reg(small, torch.zeros_like(small))
    assert reg.lam_min.item() == pytest.approx(0.001)
    assert reg.lam_max.item() == 1.0


def test_reduced_statistics_make_processes_agree():
    """Two processes seeing half a batch each, with reduced statistics, update their
    multipliers exactly as one process on the whole batch (the official code does not)."""
    torch.manual_seed(0)
    cfg = TDCConfig(codebook_size=256, weight=1.0)
    whole = TDCRegularizer(8, 4, cfg).train()
    shards = [TDCRegularizer(8, 4, cfg).train() for _ in range(2)]
    for _ in range(30):
        mu, logvar = torch.randn(4, 8, 2, 2) * 2, torch.randn(4, 8, 2, 2)
        whole(mu, logvar)
        halves = [(mu[:2], logvar[:2]), (mu[2:], logvar[2:])]
        bits = [token_rates(kl_nats(m, lv), 4) * cfg.bits_per_nat for m, lv in halves]

        def reduce(x, op, bits=bits):
            stats = torch.stack([getattr(b, op)() for b in bits])
            return stats.mean() if op == "mean" else getattr(stats, op)()

        for shard, (m, lv) in zip(shards, halves):
            shard(m, lv, reduce)
    for shard in shards:
        for name in ("lam", "lam_min", "lam_max"):
            assert getattr(shard, name).item() == pytest.approx(
                getattr(whole, name).item(), rel=1e-12
            )


def test_multipliers_are_saved_in_state_dict():
    b = GaussianBottleneck(8, 4, "tdc", TDCConfig(codebook_size=256)).train()
    b(torch.randn(2, 16, 2, 2) * 3)
    state = b.state_dict()
    assert {"tdc.lam", "tdc.lam_min", "tdc.lam_max"} <= set(state)
    fresh = GaussianBottleneck(8, 4, "tdc", TDCConfig(codebook_size=256))
    fresh.load_state_dict(state)
    assert fresh.tdc.lam.item() == b.tdc.lam.item() != 1.0


def test_bottleneck_samples_in_train_and_uses_mean_in_eval():
    b = GaussianBottleneck(8, 4, "kl", kl_weight=0.64)
    z = torch.randn(2, 16, 3, 3)
    mu, _ = split_posterior(z)
    torch.testing.assert_close(b.eval()(z).z_q, mu)
    assert not torch.equal(b.train()(z).z_q, mu)
    q = b.eval()(z)
    expected = 0.64 * kl_nats(*split_posterior(z)).sum() / 2
    torch.testing.assert_close(q.losses["kl"], expected)
