"""TDC multipliers step by step against hand-computed values (docs/method.md §1), and the
end-of-training TDC check on hand-written rates and logs with known answers."""

import math

import numpy as np
import pytest
import torch

from gaussquant.config import TDCConfig
from gaussquant.quantizers.tdc import TDCRegularizer

# K = 16: T = 4 bits, tolerance 0.5; factor 2 and ranges [1, 8] / [1/8, 1] keep the numbers
# readable. Each row: the batch's 4 per-token rates (bits), then lam, lam_min, lam_max after
# the step and the TDC loss of the step (multipliers before the step: lam * sum(w * R) with w
# lam_max above T + 0.5, lam_min below T - 0.5, 1 within).
RULES_CFG = TDCConfig(
    codebook_size=16,
    tolerance=0.5,
    factor=2.0,
    weight=1.0,
    lam_max_range=(1.0, 8.0),
    lam_min_range=(0.125, 1.0),
    bits_per_nat=1.0,
)
STEPS = [
    # all within, mean above T: lam up, lam_max down to its floor, lam_min up to its ceiling
    ([4.2, 4.2, 4.2, 4.2], 2.0, 1.0, 1.0, 16.8),
    # mean above T, max above T + 0.5, min within
    ([3.9, 3.9, 3.9, 5.0], 4.0, 1.0, 2.0, 2 * 16.7),
    # mean below T, min below T - 0.5, max within
    ([3.0, 3.8, 3.8, 3.8], 2.0, 0.5, 1.0, 4 * (3.0 + 11.4 + 2 * 0)),
    # mean below T but max above T + 0.5: lam down, lam_max up (a mean-driven rule would not)
    ([2.0, 2.0, 2.0, 9.0], 1.0, 0.25, 2.0, 2 * (0.5 * 6.0 + 9.0)),
    # mean above T but min below T - 0.5: lam up, lam_min down (a mean-driven rule would not)
    ([3.0, 4.4, 4.4, 4.4], 2.0, 0.125, 1.0, 1 * (0.25 * 3.0 + 13.2)),
    # lam_min held at its floor 1/8, lam_max at its floor 1
    ([3.0, 4.4, 4.4, 4.4], 4.0, 0.125, 1.0, 2 * (0.125 * 3.0 + 13.2)),
    # all above: lam keeps doubling (unbounded), lam_max up to its ceiling 8, lam_min back to 1
    ([6.0, 6.0, 6.0, 6.0], 8.0, 0.25, 2.0, 4 * 24.0),
    ([6.0, 6.0, 6.0, 6.0], 16.0, 0.5, 4.0, 8 * 2 * 24.0),
    ([6.0, 6.0, 6.0, 6.0], 32.0, 1.0, 8.0, 16 * 4 * 24.0),
    ([6.0, 6.0, 6.0, 6.0], 64.0, 1.0, 8.0, 32 * 8 * 24.0),
]


def _posterior(rates):
    """mu, logvar of 4 channels (m = 1: one token each) at 1 position whose KL in nats is
    ``rates``: logvar 0, KL = mu^2 / 2."""
    mu = torch.tensor([math.sqrt(2 * r) for r in rates], dtype=torch.float64).view(1, 4, 1, 1)
    return mu, torch.zeros_like(mu)


def test_multipliers_follow_the_hand_computed_sequence():
    reg = TDCRegularizer(4, 1, RULES_CFG).train()
    assert reg.target == 4.0
    for i, (rates, lam, lam_min, lam_max, loss) in enumerate(STEPS):
        got_loss, stats = reg(*_posterior(rates))
        assert stats["bits_mean"].item() == pytest.approx(sum(rates) / 4, rel=1e-9), i
        assert (stats["bits_min"].item(), stats["bits_max"].item()) == pytest.approx(
            (min(rates), max(rates)), rel=1e-9
        )
        got = (reg.lam.item(), reg.lam_min.item(), reg.lam_max.item())
        assert got == pytest.approx((lam, lam_min, lam_max), rel=1e-12), f"step {i}"
        assert got_loss.item() == pytest.approx(loss, rel=1e-9), f"step {i}"


def test_lam_floor_stops_lam_falling_and_zero_keeps_the_official_rule():
    """tdc.lam_floor: while the batch mean stays below T, lam halves each step (factor 2) down
    to the floor and no further, then doubles again from the floor as soon as the mean exceeds
    T; with floor 0 it falls without bound, the official rule."""
    from dataclasses import replace

    below, above = [3.0] * 4, [4.2] * 4
    for floor, expected in ((0.125, [0.5, 0.25, 0.125, 0.125, 0.125, 0.25]), (0.0, None)):
        reg = TDCRegularizer(4, 1, replace(RULES_CFG, lam_floor=floor)).train()
        got = []
        for rates in [below] * 5 + [above]:
            reg(*_posterior(rates))
            got.append(reg.lam.item())
        assert got == (expected or [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.0625])


def test_multipliers_do_not_move_in_eval_mode():
    reg = TDCRegularizer(4, 1, RULES_CFG).eval()
    for rates, *_ in STEPS[:4]:
        reg(*_posterior(rates))
    assert (reg.lam.item(), reg.lam_min.item(), reg.lam_max.item()) == (1.0, 1.0, 1.0)


# ----------------------------------------------------------------------------- end-of-training check


def _check(tiny_cfg, tmp_path, bits, lam_max, lam_min=None, steps=100):
    """``train.tdc_check`` with the validation rates ``bits`` (target 8 bits, tolerance 0.5)
    and a log with one row per 10 steps: ``lam_max`` / ``lam_min`` lists, one per logged step."""
    from gaussquant.runstate import LOG_KEYS, append_log
    from gaussquant.train import tdc_check

    tmp_path.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "metrics.csv"
    lam_min = lam_min or [0.5] * len(lam_max)
    for i, (hi, lo) in enumerate(zip(lam_max, lam_min)):
        row = dict.fromkeys(LOG_KEYS, float("nan"))
        append_log(log, row | {"step": 10 * (i + 1), "lam_max": hi, "lam_min": lo})
    return tdc_check(tiny_cfg, np.asarray(bits, np.float64), 8.0, 0.5, log, steps)


# 10 below 7.5, 80 within [7.5, 8.5], 10 above 8.5; p05 and p95 inside 8 +- 2
WITHIN = np.r_[np.linspace(6.5, 7.4, 10), np.linspace(7.6, 8.4, 80), np.linspace(8.6, 9.5, 10)]
FREE = [3.0] * 10  # lam_max never at its bound 1000


def test_tdc_check_holds_for_rates_in_band_with_enough_tokens_within(tiny_cfg, tmp_path):
    c = _check(tiny_cfg, tmp_path, WITHIN, FREE)
    assert c["holds"] is True
    assert 6.0 <= c["val_p05"] < 7.5 and 8.5 < c["val_p95"] <= 10.0
    assert c["val_mean"] == pytest.approx(8.0)
    assert c["val_below_tolerance"] == pytest.approx(0.1)
    assert c["val_within_tolerance"] == pytest.approx(0.8)
    assert c["val_above_tolerance"] == pytest.approx(0.1)
    assert (c["lam_max_end"], c["lam_min_end"]) == (3.0, 0.5)
    assert c["pinned_last_20pct"] == {"lam_max": False, "lam_min": False}


@pytest.mark.parametrize(
    "bits",
    [WITHIN + 2.5, WITHIN - 2.5, np.r_[np.full(10, 2.0), WITHIN, np.full(10, 14.0)]],
    ids=["p95 above", "p05 below", "both tails out"],
)
def test_tdc_check_fails_when_a_tail_leaves_the_band(tiny_cfg, tmp_path, bits):
    assert _check(tiny_cfg, tmp_path, bits, FREE)["holds"] is False


def test_tdc_check_fails_with_too_few_tokens_within(tiny_cfg, tmp_path):
    # 60 % within +- 0.5 bit, the rest 1 bit away: inside the band, below the 70 % share
    bits = np.r_[np.full(60, 8.0), np.full(20, 7.0), np.full(20, 9.0)]
    c = _check(tiny_cfg, tmp_path, bits, FREE)
    assert c["val_within_tolerance"] == pytest.approx(0.6) and c["holds"] is False


def test_tdc_check_reports_pinned_multipliers_without_judging_them(tiny_cfg, tmp_path):
    """Steps 10 .. 100, last fifth = steps 90 and 100 (> 80). TDC's min/max rule moves the
    multipliers whenever one token of a batch lies outside +-alpha: shown, not judged."""
    pinned_end = [3.0] * 8 + [1000.0, 1000.0]
    c = _check(tiny_cfg, tmp_path, WITHIN, pinned_end)
    assert c["pinned_last_20pct"]["lam_max"] is True and c["holds"] is True
    # at the bound in one of the two rows only: not pinned
    c = _check(tiny_cfg, tmp_path / "a", WITHIN, [3.0] * 9 + [1000.0])
    assert c["pinned_last_20pct"]["lam_max"] is False
    # at the bound before the last fifth, free in it: not pinned
    c = _check(tiny_cfg, tmp_path / "b", WITHIN, [1000.0] * 8 + [3.0, 3.0])
    assert c["pinned_last_20pct"]["lam_max"] is False
    # lam_min at its lower bound 0.001 through the last fifth
    c = _check(tiny_cfg, tmp_path / "c", WITHIN, FREE, [0.5] * 8 + [0.001] * 2)
    assert c["pinned_last_20pct"] == {"lam_max": False, "lam_min": True}


def test_end_of_training_rates_are_none_without_a_gaussian_posterior():
    from gaussquant.train import end_of_training_rates

    assert end_of_training_rates("fsq", None, None, 8, None) is None
