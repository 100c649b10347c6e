"""docs/method.md §3 theory experiment: closed forms, bounds, Monte-Carlo agreement, the stage end to end."""

import itertools
import math
import types

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from gaussquant import theory as T

# small grid: R = 2 nats, a centred (mu = 0) and a mean-dominated (mu = 1.9, sigma = 0.59) family
SMALL = dict(
    rates=[2.0],
    mean_shares=[0.0, 0.9],
    t_grid=[-3.0, -1.0, 0.0, 1.0, 2.0],
    trials=6000,
    sobol_trials=1500,
    dims=[1, 3],
    md_rate_bits=4,
    md_t_bits=[-2, 0, 2],
    md_trials=1500,
)


@pytest.fixture(scope="module")
def results():
    return T.run_theory(T.TheoryConfig(**SMALL))


def test_posterior_family_has_the_requested_rate():
    rates, shares = np.array([0.05, 0.7, 2.0, 5.5])[:, None], np.array([0.0, 0.3, 0.9])
    mu, sigma = T.posterior_for_rate(rates, shares)
    np.testing.assert_allclose(T.kl_nats(mu, sigma), np.broadcast_to(rates, mu.shape), rtol=1e-10)
    np.testing.assert_allclose(mu, np.sqrt(2 * shares * rates))
    assert np.all(sigma < 1) and np.all(np.diff(sigma, axis=1) > 0)  # more mean share, wider
    assert T.event_radius2(1) == 1.0
    assert stats.chi2.cdf(T.event_radius2(4), 4) == pytest.approx(stats.chi2.cdf(1, 1))


@pytest.mark.parametrize(
    "mu,sigma", [(0.0, 0.011), (0.0, 0.08), (1.41, 0.23), (2.68, 0.45), (-1.9, 0.59)]
)
def test_exact_formula_matches_closed_form_and_quadrature(mu, sigma):
    p = stats.norm.cdf(mu + sigma) - stats.norm.cdf(mu - sigma)
    for k in (1, 2, 7, 148, 2981, 65536):
        want = (1 - p) ** k
        assert T.exact_failure(mu, sigma, k) == pytest.approx(want, rel=1e-9, abs=1e-300)
        # independent route: density of the nearest codeword integrated outside the interval
        assert T.exact_failure_rule(mu, sigma, k, beta=0.0) == pytest.approx(want, rel=1e-8)
        if mu == 0:  # centred posterior: the GQ score's vertex mu / (1 - sigma^2) is mu itself
            assert T.exact_failure_rule(mu, sigma, k, beta=1.0) == pytest.approx(want, rel=1e-8)
    # K = 1: the only codeword is a N(0, 1) draw, it misses with probability 1 - p
    assert T.exact_failure(mu, sigma, 1) == pytest.approx(1 - p, rel=1e-12)


def test_gq_score_in_1d_is_nearest_to_shifted_centre():
    """beta = 1 picks the codeword nearest to mu / (1 - sigma^2), the fact exact_failure_rule
    relies on; checked draw by draw."""
    rng = np.random.default_rng(0)
    cb = rng.standard_normal((500, 64))
    mu, sigma = 1.3, 0.4
    score = cb * cb - ((cb - mu) / sigma) ** 2
    centre = mu / (1 - sigma**2)
    np.testing.assert_array_equal(score.argmax(1), np.abs(cb - centre).argmin(1))


def test_bounds_hold_and_are_tight_for_centred_posteriors():
    t = np.linspace(-6, 6, 49)
    for rate, share in itertools.product([0.5, 2.0, 4.0], [0.0, 0.5, 0.9]):
        mu, sigma = map(float, T.posterior_for_rate(rate, share))
        c1, c2 = abs(mu * sigma), abs(mu) + sigma
        tt = t[t >= -rate]  # K >= 1 (Bernoulli's inequality needs it)
        exact = T.exact_failure(mu, sigma, np.exp(rate + tt))
        assert np.all(T.lower_bound(tt, c2) <= exact) and np.all(exact <= T.upper_bound(tt, c1))
    # mu = 0: log P / log(upper) -> 1 and (1 - P) / (1 - lower) -> 1, up to O(p + sigma^2)
    mu, sigma = map(float, T.posterior_for_rate(4.0, 0.0))
    ratio = math.log(T.exact_failure(mu, sigma, math.exp(4.0 + 3))) / math.log(T.upper_bound(3, 0))
    assert 1.0 <= ratio < 1.01
    success = -math.expm1(math.log1p(-T.interval_mass(mu, sigma)) * math.exp(4.0 - 6))
    assert success / (1 - T.lower_bound(-6.0, sigma)) == pytest.approx(1.0, abs=5e-3)


def test_clopper_pearson_covers():
    lo, hi = T.clopper_pearson(np.array([0, 5, 100]), 100, 0.99)
    assert lo[0] == 0 and hi[2] == 1
    assert hi[0] == pytest.approx(1 - 0.005 ** (1 / 100))  # closed form at zero failures
    assert lo[1] < 0.05 < hi[1]


def test_iid_monte_carlo_agrees_with_exact_and_bounds(results):
    iid = results[(results.experiment == "1d") & (results.kind == "iid")]
    assert len(iid) == 2 * 2 * 5 and set(iid.rule) == {"nn", "gq"}
    inside = (iid.exact >= iid.ci_low) & (iid.exact <= iid.ci_high)
    assert inside.all(), iid[~inside]
    nn = iid[iid.bounds_apply]
    assert (nn.rule == "nn").all() and len(nn) == 10
    assert ((nn.lower <= nn.exact) & (nn.exact <= nn.upper)).all()
    assert ((nn.ci_high >= nn.lower) & (nn.ci_low <= nn.upper)).all()
    # the GQ score really is a different rule: for sigma = 0.59 it fails far more at large K
    big = iid[(iid.mean_share == 0.9) & (iid.t > 1.5)].set_index("rule")
    assert big.loc["gq", "ci_low"] > 10 * big.loc["nn", "ci_high"]


def test_failure_probability_decreases_with_t(results):
    d = results[results.experiment == "1d"]
    for _, g in d[d.rule == "nn"].groupby(["kind", "mean_share"]):
        g = g.sort_values("t")
        assert np.all(np.diff(g.exact) < 0)
        # MC: each estimate at most the previous one's CI upper end
        assert np.all(g.estimate.to_numpy()[1:] <= g.ci_high.to_numpy()[:-1])
    # not so the GQ score (beta = 1) with a wide posterior: more codewords pull zhat towards
    # mu / (1 - sigma^2), outside the interval
    gq = d[(d.rule == "gq") & (d.kind == "iid") & (d.mean_share == 0.9)].sort_values("t")
    assert gq.exact.iloc[-1] > gq.exact.iloc[-2] and gq.estimate.iloc[-1] > gq.ci_high.iloc[-2]


def test_sobol_codewords_are_marginally_normal():
    """E[#codewords in the interval] = K p for scrambled Sobol too (each point ~ N(0, 1)),
    which is why its estimate is comparable with the i.i.d. formula."""
    k, mu, sigma = 20, 0.7, 0.3
    cb = T._sobol_stack(k, 3000, itertools.count(42))
    counts = (np.abs(cb - mu) < sigma).sum(1)
    kp = k * T.interval_mass(mu, sigma)
    assert abs(counts.mean() - kp) < 3.3 * counts.std() / math.sqrt(len(counts))


def test_sobol_close_to_iid(results):
    """Lower regime (K p <= 1/2): both probabilities of a hit equal K p minus the chance of two
    or more codewords in the interval, which is at most (K p)^2 / 2, so they differ by at most
    that plus the Sobol estimate's CI half-width. Upper regime: stratified Sobol points leave
    no larger gaps than i.i.d. ones, so Sobol fails no more often (within its CI)."""
    d = results[(results.experiment == "1d") & (results.rule == "nn")]
    sob = d[d.kind == "sobol"].sort_values(["mean_share", "K"]).reset_index(drop=True)
    iid = d[d.kind == "iid"].sort_values(["mean_share", "K"]).reset_index(drop=True)
    assert (sob.K == iid.K).all() and (sob.mu == iid.mu).all()
    kp = sob.K * T.interval_mass(sob.mu, sob.sigma)
    low = kp <= 0.5
    assert low.sum() >= 3
    half = (sob.ci_high - sob.ci_low) / 2
    assert ((sob.estimate - iid.exact).abs() <= kp**2 / 2 + half)[low].all()
    assert (sob.ci_low <= iid.exact)[sob.t >= 0].all()
    # and in the upper regime stratification is a large gain, not a tie
    assert (sob.estimate < iid.exact / 2)[sob.t > 0.9].all()


def test_md_failures_reduce_to_1d_and_gq_never_beats_nn():
    rng = np.random.default_rng(1)
    mu, sigma = T.sample_posteriors(rng, 400, 1, 3.0, 0.9)
    cb = rng.standard_normal((400, 50, 1))
    for beta in (0.0, 1.0):
        want = np.array(
            [T.failures_1d(cb[i : i + 1, :, 0], mu[i, 0], sigma[i, 0], beta)[0] for i in range(400)]
        )
        np.testing.assert_array_equal(T.failures_md(cb, mu, sigma, beta), want)
    mu, sigma = T.sample_posteriors(rng, 400, 4, 6.0, 0.9)
    np.testing.assert_allclose(T.kl_nats(mu, sigma).sum(1), 6.0, rtol=1e-10)
    cb = rng.standard_normal((400, 256, 4))
    nn, gq = T.failures_md(cb, mu, sigma, 0.0), T.failures_md(cb, mu, sigma, 1.0)
    assert np.all(gq[nn])  # no codeword in the ellipsoid: no rule can land in it
    # the matrix-form score picks the same codeword as the score written out
    direct = -(((cb - mu[:, None]) / sigma[:, None]) ** 2).sum(-1) + (cb**2).sum(-1)
    zhat = np.take_along_axis(cb, direct.argmax(1)[:, None, None], 1)[:, 0]
    np.testing.assert_array_equal(gq, (((zhat - mu) / sigma) ** 2).sum(1) >= T.event_radius2(4))
    shared = T.failures_md(cb[0], mu, sigma, 1.0)  # one codebook for every posterior
    np.testing.assert_array_equal(shared[:1], gq[:1])


def test_md_results(results):
    md = results[results.experiment == "md"]
    assert len(md) == 2 * 2 * 3 * 2 and md.upper.isna().all()
    known = md[md.exact.notna()]
    assert set(known.m) == {1} and set(known.rule) == {"nn"} and set(known.kind) == {"iid"}
    assert ((known.exact >= known.ci_low) & (known.exact <= known.ci_high)).all()
    both = md.pivot_table(index=["kind", "m", "t_bits"], columns="rule", values="failures")
    assert (both.gq >= both.nn).all()  # same draws: gq fails whenever nn does


def test_config_rejects_bad_values():
    from gaussquant.errors import ConfigError

    with pytest.raises(ConfigError, match="theory.kinds"):  # one exception type for every section
        T.TheoryConfig(kinds=["halton"])
    with pytest.raises(ConfigError, match="theory.mean_shares"):
        T.TheoryConfig(mean_shares=[1.0])
    with pytest.raises(ConfigError, match="theory.md_t_bits"):
        T.TheoryConfig(md_rate_bits=16, md_t_bits=[1])
    with pytest.raises(T.GaussquantError, match="max_codebook"):
        T.run_1d(T.TheoryConfig(rates=[12.0], max_codebook=1024, md_rate_bits=4))


def test_stage_writes_csv_and_figure(tmp_path, monkeypatch):
    from gaussquant import cli
    from gaussquant.stages import theory as stage

    tiny = T.TheoryConfig(
        rates=[2.0],
        mean_shares=[0.0, 0.9],
        t_grid=[-2.0, 0.0, 2.0],
        trials=2000,
        sobol_trials=200,
        dims=[1, 4],
        md_rate_bits=4,
        md_t_bits=[-1, 0, 2],
        md_trials=200,
    )
    # config.py's `theory` section is the lead's; feed the stage its config directly
    monkeypatch.setattr(stage, "load_stage_config", lambda args: types.SimpleNamespace(theory=tiny))
    csv, png = tmp_path / "out" / "theory.csv", tmp_path / "out" / "theory.png"
    argv = ["theory", "--out-csv", str(csv), "--out-fig", str(png), "--no-progress"]
    assert cli.main(argv) == 0
    df = pd.read_csv(csv)
    assert list(df.columns) == T.COLUMNS and len(df) == 2 * 3 * 2 * 2 + 2 * 2 * 3 * 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert sorted(p.name for p in csv.parent.iterdir()) == ["theory.csv", "theory.png"]


def test_tiny_preset_has_a_theory_section():
    from gaussquant.config import Config, load_config

    assert "theory" in Config.__dataclass_fields__
    cfg = load_config(T.__file__.rsplit("/src/", 1)[0] + "/params.yaml", "tiny")
    assert isinstance(cfg.theory, T.TheoryConfig)
