"""Table statistics: t intervals over seeds, paired verdicts, bootstrap over images, best-row
marking and the GQ-vs-baseline verdict table, against hand-computed values."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from gaussquant import stats as S
from gaussquant.errors import GaussquantError
from gaussquant.published import published

T975_DF1, T975_DF2, T95_DF2 = 12.706205, 4.302653, 2.919986  # Student t quantiles (tables)


def test_mean_ci_is_the_student_t_interval():
    ci = S.mean_ci([1.0, 2.0, 3.0])  # sd 1, sem 1/sqrt(3)
    assert (ci.mean, ci.n) == (2.0, 3)
    assert ci.half_width == pytest.approx(T975_DF2 / math.sqrt(3), rel=1e-6)
    assert ci.half_width == pytest.approx(2.48414, abs=1e-5)
    assert (ci.low, ci.high) == pytest.approx((2 - 2.48414, 2 + 2.48414), abs=1e-5)
    assert S.mean_ci([1, 2, 3], level=0.90).half_width == pytest.approx(T95_DF2 / math.sqrt(3))
    assert S.mean_ci([0, 2]).half_width == pytest.approx(T975_DF1, rel=1e-6)  # sem = 1


def test_equal_values_give_a_zero_width_interval():
    ci = S.mean_ci([0.5, 0.5, 0.5, 0.5])
    assert (ci.mean, ci.low, ci.high, ci.half_width) == (0.5, 0.5, 0.5, 0.0)


def test_one_seed_and_nan_values_are_errors():
    with pytest.raises(GaussquantError, match=r"needs >= 2 seeds, got 1: \[27.6\]"):
        S.mean_ci([27.6])
    with pytest.raises(GaussquantError, match=r"NaN values at positions \[1\]"):
        S.mean_ci([1.0, math.nan, 3.0])
    with pytest.raises(GaussquantError, match="level"):
        S.mean_ci([1, 2], level=95)


def test_paired_difference_pairs_by_seed_not_by_order():
    gq = {0: 27.6, 1: 27.7, 2: 27.5}
    fsq = {2: 26.4, 0: 26.3, 1: 26.5}  # diffs 1.3, 1.2, 1.1: mean 1.2, sd 0.1
    ci = S.paired_difference(gq, fsq)
    assert ci.mean == pytest.approx(1.2) and ci.n == 3
    assert ci.half_width == pytest.approx(T975_DF2 * 0.1 / math.sqrt(3), rel=1e-6)
    seq = S.paired_difference([27.6, 27.7, 27.5], [26.3, 26.5, 26.4])
    assert (seq.mean, seq.half_width) == pytest.approx((ci.mean, ci.half_width))
    assert ci.low > 0


def test_an_exactly_zero_difference_is_not_significant():
    ci = S.paired_difference({0: 0.3, 1: 0.4, 2: 0.5}, {0: 0.3, 1: 0.4, 2: 0.5})
    assert (ci.mean, ci.low, ci.high, ci.half_width) == (0.0, 0.0, 0.0, 0.0)
    assert S.verdict(ci, higher_is_better=True) == "no significant difference"
    assert S.verdict(ci, higher_is_better=False) == "no significant difference"


def test_mismatched_seeds_are_an_error_naming_them():
    with pytest.raises(GaussquantError, match=r"seeds \[2, 3\] are not in both"):
        S.paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 2.0, 3: 3.0})
    with pytest.raises(GaussquantError, match="3 values against 2"):
        S.paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(GaussquantError, match="two seed -> value mappings"):
        S.paired_difference({0: 1.0, 1: 2.0}, [1.0, 2.0])


@pytest.mark.parametrize(
    "low,high,higher,want",
    [
        (0.1, 0.3, True, "GQ better"),  # PSNR up
        (-0.3, -0.1, True, "GQ worse"),
        (-0.1, 0.3, True, "no significant difference"),
        (-0.02, -0.01, False, "GQ better"),  # LPIPS down
        (0.01, 0.02, False, "GQ worse"),
        (-0.01, 0.02, False, "no significant difference"),
        (0.0, 0.4, True, "no significant difference"),  # touching 0 does not exclude it
    ],
)
def test_verdict_reads_the_metric_direction(low, high, higher, want):
    ci = S.CI((low + high) / 2, low, high, (high - low) / 2, 3)
    assert S.verdict(ci, higher) == want
    assert want in S.VERDICTS


def test_bootstrap_of_constant_values_has_zero_width():
    ci = S.bootstrap_ci(np.full(128, 0.875))
    assert ci.half_width == 0.0 and ci.low == ci.high == pytest.approx(0.875)
    assert (ci.mean, ci.n) == (pytest.approx(0.875), 128)


def test_bootstrap_of_two_values_matches_the_resampling_distribution():
    # resampled means of [0, 1]: 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    ci = S.bootstrap_ci([0.0, 1.0])
    assert (ci.mean, ci.low, ci.high) == (0.5, 0.0, 1.0)
    narrow = S.bootstrap_ci([0.0, 1.0], level=0.4)  # quantiles 0.3, 0.7 both fall on 0.5
    assert (narrow.low, narrow.high) == (0.5, 0.5)


def test_bootstrap_covers_the_true_mean_with_the_normal_width():
    mu, sigma, n = 5.0, 2.0, 4000  # 4000 images: the resamples are drawn in chunks
    x = np.random.default_rng(1).normal(mu, sigma, n)
    ci = S.bootstrap_ci(x, n_boot=2000, seed=0)
    assert ci.low < mu < ci.high and ci.mean == pytest.approx(x.mean())
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * sigma / math.sqrt(n), rel=0.10)
    assert S.bootstrap_ci(x, seed=0) == ci  # deterministic given the seed
    assert S.bootstrap_ci(x, seed=1) != ci


def test_significantly_best_on_a_clear_case():
    cells = {
        "gq": {0: 27.6, 1: 27.9, 2: 27.7},
        "fsq": {0: 26.3, 1: 26.5, 2: 26.4},
        "vq": {0: 26.5, 1: 26.6, 2: 26.4},
    }
    assert S.significantly_best(cells, higher_is_better=True) == "gq"
    lpips = {"gq": {0: 0.059, 1: 0.060, 2: 0.058}, "fsq": {0: 0.075, 1: 0.077, 2: 0.074}}
    assert S.significantly_best(lpips, higher_is_better=False) == "gq"
    assert S.significantly_best(lpips, higher_is_better=True) == "fsq"


def test_significantly_best_is_none_when_ambiguous():
    tie = {"gq": {0: 10.0, 1: 11.0, 2: 12.0}, "bsq": {0: 10.5, 1: 10.4, 2: 12.2}}
    assert S.significantly_best(tie, True) is None  # diffs -0.5, 0.6, -0.2
    # gq beats fsq clearly but not bsq: no single best row
    three = {**tie, "fsq": {0: 5.0, 1: 6.0, 2: 7.5}}
    assert S.significantly_best(three, True) is None
    few = {"gq": {0: 30.0, 1: 31.0}, "fsq": {1: 20.0, 2: 21.0}}  # one common seed
    assert S.significantly_best(few, True) is None
    assert S.significantly_best({"gq": {0: 1.0, 1: 2.0}}, True) is None


def test_format_ci():
    assert S.format_ci(S.CI(27.6123, 27.49, 27.74, 0.1249, 3), 2) == "27.61 \u00b1 0.12"
    assert S.format_ci(S.mean_ci([1, 2, 3]), 3) == "2.000 \u00b1 2.484"


def _exact_power(delta, sd, n, level=0.95):
    """Power of the two-sided paired t-test, written out here independently of the library:
    T = (Z + nc) / (R / sqrt(df)) with Z standard normal, R ~ chi(df), nc = delta sqrt(n) / sd;
    P(|T| > crit) integrated over R."""
    df, nc = n - 1, delta * math.sqrt(n) / sd
    crit = stats.t.ppf(0.5 + level / 2, df)

    def rejects(r):  # P(|Z + nc| > crit r / sqrt(df)) given R = r
        c = crit * r / math.sqrt(df)
        return (stats.norm.sf(c - nc) + stats.norm.cdf(-c - nc)) * stats.chi.pdf(r, df)

    lo, hi = stats.chi.ppf(1e-15, df), stats.chi.isf(1e-15, df)  # where R's mass lies
    return integrate.quad(rejects, lo, hi, epsabs=1e-12, epsrel=1e-10)[0]


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
@pytest.mark.parametrize("level", [0.95, 0.90])
def test_mde_is_where_the_exact_power_reaches_80_percent(n, level):
    sd = 0.37
    mde = S.min_detectable_difference(sd, n, level)
    assert S.POWER == 0.8
    assert _exact_power(mde, sd, n, level) == pytest.approx(0.8, abs=1e-6)
    assert _exact_power(mde * (1 - 1e-4), sd, n, level) < 0.8
    assert S.paired_power(mde / sd, n, level) == pytest.approx(0.8, abs=1e-9)
    assert S.paired_power(0.0, n, level) == pytest.approx(1 - level, abs=1e-12)  # both tails


def test_mde_approaches_the_normal_formula_for_many_seeds():
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)  # 1.95996 + 0.84162
    for sd in (0.05, 1.0, 3.0):
        want = z * sd / math.sqrt(1000)
        assert S.min_detectable_difference(sd, 1000) == pytest.approx(want, rel=0.01)
    # few seeds: the t test needs more than the normal formula says
    assert S.min_detectable_difference(1.0, 3) > 1.5 * z / math.sqrt(3)


def test_mde_is_linear_in_sd_and_falls_with_more_seeds():
    base = S.min_detectable_difference(1.0, 4)
    for sd in (0.001, 0.25, 7.0):
        assert S.min_detectable_difference(sd, 4) == pytest.approx(sd * base, rel=1e-9)
    by_n = [S.min_detectable_difference(1.0, n) for n in range(2, 21)]
    assert all(a > b for a, b in zip(by_n, by_n[1:]))
    assert S.min_detectable_difference(1.0, 4, level=0.99) > base  # stricter test, larger MDE


def test_mde_edge_cases():
    assert math.isnan(S.min_detectable_difference(1.0, 1))
    assert math.isnan(S.min_detectable_difference(math.nan, 3))
    assert math.isnan(S.min_detectable_difference(math.inf, 3))
    assert S.min_detectable_difference(0.0, 3) == 0.0


@pytest.mark.parametrize("n", [3, 5])
def test_simulated_t_tests_at_the_mde_reject_80_percent_of_the_time(n):
    sd, trials = 0.5, 20_000
    mde = S.min_detectable_difference(sd, n)
    diffs = np.random.default_rng(n).normal(mde, sd, size=(trials, n))
    crit = stats.t.ppf(0.975, n - 1)
    half = crit * diffs.std(axis=1, ddof=1) / math.sqrt(n)
    mean = diffs.mean(axis=1)
    rejected = (mean - half > 0) | (mean + half < 0)
    assert rejected.mean() == pytest.approx(0.80, abs=0.02)
    # the vectorised test above is the table's: verdict(mean_ci(...)) on a subset
    table = [S.verdict(S.mean_ci(d), True) != S.VERDICTS[1] for d in diffs[:300]]
    assert table == rejected[:300].tolist()


def test_seeds_needed_is_the_first_n_with_80_percent_power():
    sd = 0.4
    for gap in (0.05, 0.3, 1.0, -1.0, 1.27, 5.0):
        n = int(S.seeds_needed(gap, sd))
        assert n >= 2 and _exact_power(abs(gap), sd, n) >= 0.8
        assert n == 2 or _exact_power(abs(gap), sd, n - 1) < 0.8
    assert S.seeds_needed(-1.0, sd) == S.seeds_needed(1.0, sd)
    # standard power tables (paired / one-sample t, two-sided 5 %, 80 %): d = 0.2, 0.5, 0.8
    assert [S.seeds_needed(d, 1.0) for d in (0.2, 0.5, 0.8)] == [199, 34, 15]
    for n in (3, 6, 12):  # the MDE at n seeds needs n seeds
        assert S.seeds_needed(S.min_detectable_difference(sd, n) * (1 + 1e-9), sd) == n


def test_seeds_needed_edge_cases_and_cap():
    assert math.isnan(S.seeds_needed(math.nan, 1.0))
    assert math.isnan(S.seeds_needed(0.0, 1.0))
    assert math.isnan(S.seeds_needed(1.0, math.nan))
    assert S.seeds_needed(0.01, 0.0) == 2  # no spread: two seeds give a zero-width interval
    assert S.seeds_needed(0.2, 1.0, cap=198) == math.inf  # needs 199
    assert S.seeds_needed(0.2, 1.0, cap=199) == 199
    assert S.seeds_needed(0.001, 1.0) == math.inf  # about 7.8 million > SEEDS_CAP


def _runs():
    rows = []

    def add(arch, bits, name, **metric_values):
        for seed in range(3):
            row = {"arch": arch, "bits": bits, "name": name, "seed": seed, "rfid": math.nan}
            rows.append(row | {k: v[seed] for k, v in metric_values.items()})

    add("unet", 16, "gq", psnr=[27.6, 27.7, 27.5], lpips=[0.08, 0.09, 0.10])
    add("unet", 16, "fsq", psnr=[26.3, 26.5, 26.4], lpips=[0.07, 0.075, 0.08])
    add("unet", 16, "gq-vanilla", psnr=[25.0, 25.1, 25.2], lpips=[0.08, 0.09, 0.10])
    add("vit", 64, "gq", ssim=[0.900, 0.901, 0.902], psnr=[math.nan] * 3)
    add("vit", 64, "bsq", ssim=[0.912, 0.914, 0.916], psnr=[math.nan] * 3)
    return pd.DataFrame(rows)


def test_verdict_table_against_the_published_ordering():
    # the published values this relies on (docs/method.md §7), by bits per latent position (0.25 bpp at f8 = 16)
    assert published("unet", "gq", 16)["psnr"] == 27.61
    assert published("unet", "fsq", 16)["psnr"] == 26.34
    assert (published("unet", "gq", 16)["lpips"], published("unet", "fsq", 16)["lpips"]) == (
        0.059,
        0.075,
    )
    assert (published("vit", "gq", 64)["ssim"], published("vit", "bsq", 64)["ssim"]) == (
        0.903,
        0.914,
    )
    assert published("unet", "gq-vanilla", 16) is None and published("unet", "gq", 4) is None

    table = S.verdict_table(_runs(), ["psnr", "ssim", "lpips", "rfid"])
    assert list(table.columns) == S.VERDICT_COLUMNS
    got = {(r.arch, r.baseline, r.metric): r for r in table.itertuples()}
    # rfid is all NaN, psnr all NaN for ViT, ssim absent for UNet: left out
    assert sorted(got) == [
        ("unet", "fsq", "lpips"),
        ("unet", "fsq", "psnr"),
        ("unet", "gq-vanilla", "lpips"),
        ("unet", "gq-vanilla", "psnr"),
        ("vit", "bsq", "ssim"),
    ]
    psnr = got[("unet", "fsq", "psnr")]  # diffs 1.3, 1.2, 1.1; paper 27.61 - 26.34
    assert (psnr.diff, psnr.n, psnr.verdict, psnr.paper_agrees) == (
        pytest.approx(1.2),
        3,
        "GQ better",
        "yes",
    )
    assert (psnr.low, psnr.high) == pytest.approx((1.2 - 0.248414, 1.2 + 0.248414), abs=1e-6)
    assert psnr.paper_diff == pytest.approx(1.27)
    # sd of the diffs 0.1: MDE at 3 seeds; the paper's 1.27 dB gap is 12.7 sd: 2 seeds suffice
    assert _exact_power(psnr.mde, 0.1, 3) == pytest.approx(0.8, abs=1e-6)
    assert psnr.mde == pytest.approx(0.1 * S.min_detectable_difference(1.0, 3))
    assert psnr.seeds_needed == 2
    lpips = got[("unet", "fsq", "lpips")]  # ours worse (higher LPIPS), paper has GQ better
    assert (lpips.diff, lpips.verdict, lpips.paper_agrees) == (
        pytest.approx(0.015),
        "GQ worse",
        "no",
    )
    same = got[("unet", "gq-vanilla", "lpips")]  # identical values, and no published row
    assert (same.diff, same.verdict, same.paper_agrees) == (0.0, "no significant difference", "-")
    assert same.mde == 0.0 and math.isnan(same.seeds_needed)  # no spread; no published gap
    assert got[("unet", "gq-vanilla", "psnr")].paper_agrees == "-"
    assert math.isnan(got[("unet", "gq-vanilla", "psnr")].paper_diff)
    ssim = got[("vit", "bsq", "ssim")]  # both say GQ worse at ViT 1 bpp
    assert (ssim.verdict, ssim.paper_agrees) == ("GQ worse", "yes")
    assert ssim.paper_diff == pytest.approx(0.903 - 0.914)


def test_verdict_table_n_s_and_errors():
    runs = _runs()
    noisy = runs.copy()
    gq_psnr = (noisy["name"] == "gq") & (noisy["arch"] == "unet")
    noisy.loc[gq_psnr, "psnr"] = [26.0, 27.0, 26.6]  # diffs -0.3, 0.5, 0.2: contains 0
    row = S.verdict_table(noisy, ["psnr"]).iloc[0]
    assert (row.baseline, row.verdict, row.paper_agrees) == (
        "fsq",
        "no significant difference",
        "n/s",
    )
    sd = math.sqrt((0.3 + 0.4 / 3) ** 2 + (0.5 - 0.4 / 3) ** 2 + (0.2 - 0.4 / 3) ** 2) / math.sqrt(
        2
    )
    assert _exact_power(row.mde, sd, 3) == pytest.approx(0.8, abs=1e-6)
    assert row.mde > abs(row["diff"])  # a gap as small as the one measured would often be missed
    # the paper's 1.27 dB gap is 3.14 sd: 3 seeds fall short, 4 reach 80 %
    assert row.seeds_needed == 4
    assert _exact_power(1.27, sd, 3) < 0.8 <= _exact_power(1.27, sd, 4)
    with pytest.raises(GaussquantError, match="unknown metrics"):
        S.verdict_table(runs, ["fid"])
    unpaired = runs.copy()
    unpaired.loc[(unpaired["name"] == "fsq"), "seed"] = [0, 1, 7]
    with pytest.raises(
        GaussquantError, match=r"unet 16 bits per position, gq vs fsq, psnr: .*\[2, 7\]"
    ):
        S.verdict_table(unpaired, ["psnr"])
    twice = pd.concat([runs, runs.iloc[[0]]])
    with pytest.raises(GaussquantError, match=r"seeds \[0\] appear more than once"):
        S.verdict_table(twice, ["psnr"])


def test_seed_correlation_measures_the_noise_methods_share():
    """Methods that move together over seeds correlate 1, independent draws near 0; the paired
    difference of two perfectly correlated methods has no seed noise left."""
    from gaussquant.stats import seed_correlation

    rng = np.random.default_rng(0)
    seeds = range(200)
    shared = rng.normal(size=200)
    rows = []
    for name, offset in (("gq", 1.0), ("fsq", 0.0), ("bsq", -0.5)):
        noise = rng.normal(size=200)
        for s in seeds:
            # psnr: seed effect shared by every method; ssim: independent per method
            rows.append(
                {"arch": "vit", "bits": 16, "name": name, "seed": s, "psnr": offset + shared[s],
                 "ssim": noise[s]}
            )  # fmt: skip
    got = seed_correlation(pd.DataFrame(rows), ["psnr", "ssim", "lpips"]).set_index("metric")
    assert got.loc["psnr", "correlation"] == pytest.approx(1.0)
    assert abs(got.loc["ssim", "correlation"]) < 0.15  # 200 seeds: sd of r ~ 0.07
    assert "lpips" not in got.index and got.loc["psnr", "methods"] == 3
    few = pd.DataFrame(rows)[lambda d: d["seed"] < 2]
    assert math.isnan(seed_correlation(few, ["psnr"])["correlation"].iloc[0])
