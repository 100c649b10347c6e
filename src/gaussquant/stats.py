"""Statistics behind the comparison tables: intervals over training seeds, paired GQ-vs-baseline
verdicts, and a bootstrap over evaluation images.

Every (method, arch, rate) cell is trained with several seeds and each run is evaluated on the
same validation images, so a metric has two sources of noise:

- training (seed to seed): :func:`mean_ci` over the per-seed values (Student t, ``ddof=1``) and
  :func:`paired_difference` for GQ minus a baseline, paired by seed. These decide the tables'
  bold marks (:func:`significantly_best`) and verdicts (:func:`verdict`, :func:`verdict_table`).
  What a verdict could have detected: :func:`min_detectable_difference` (at the measured spread
  and seed count) and :func:`seeds_needed` (for a given gap), both at :data:`POWER`.
- evaluation sample (which images): :func:`bootstrap_ci` of one run's mean over its per-image
  values.

Intervals are in the metric's own units (PSNR in dB, SSIM / LPIPS unitless, rFID in FID units).
Torch-free: numpy, scipy, pandas only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from gaussquant.errors import GaussquantError
from gaussquant.published import published as _published
from gaussquant.records import METRICS, PAPER_METRICS

# metric key -> higher is better (the ones the paper reports; docs/method.md §7)
HIGHER_IS_BETTER = {k: METRICS[k][1] for k in PAPER_METRICS}
VERDICTS = ("GQ better", "no significant difference", "GQ worse")
POWER = 0.8  # power of the paired t-test behind mde and seeds_needed (docs/method.md §6.5)
SEEDS_CAP = 10_000  # seeds_needed searches n <= this; beyond it returns inf
_BOOT_CHUNK = 1 << 22  # resampled values held at once (32 MiB of float64)


@dataclass(frozen=True)
class CI:
    """A point estimate with a two-sided interval ``[low, high]`` from ``n`` values.

    ``half_width`` is ``(high - low) / 2``; for the t interval ``low = mean - half_width``.
    ``sd``: standard deviation of the ``n`` values (``ddof=1``).
    """

    mean: float
    low: float
    high: float
    half_width: float
    n: int
    sd: float = math.nan


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise GaussquantError(f"confidence level must lie in (0, 1), got {level!r}")


def _as_values(values, what: str, unit: str) -> np.ndarray:
    """1-D float array of >= 2 values without NaN, else an error naming what was given."""
    x = np.asarray(values, dtype=float).reshape(-1)
    if x.size < 2:
        raise GaussquantError(f"{what} needs >= 2 {unit}, got {x.size}: {x.tolist()}")
    nan = np.flatnonzero(np.isnan(x))
    if nan.size:
        raise GaussquantError(f"{what} got NaN values at positions {nan.tolist()}: {x.tolist()}")
    return x


def mean_ci(values: Sequence[float], level: float = 0.95) -> CI:
    """Mean over seeds with its Student t interval (``ddof=1``, ``n - 1`` degrees of freedom).

    ``values``: one number per training seed, shape ``(n,)``, ``n >= 2``. All-equal values give
    a zero-width interval.
    """
    _check_level(level)
    x = _as_values(values, "a confidence interval over seeds", "seeds")
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * sd / math.sqrt(x.size))
    return CI(mean, mean - half, mean + half, half, int(x.size), sd)


def _paired_arrays(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Align ``a`` and ``b`` by seed (mappings) or by position (sequences)."""
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise GaussquantError("paired_difference needs two seed -> value mappings or two sequences")
    if isinstance(a, Mapping):
        unpaired = set(a) ^ set(b)
        if unpaired:
            raise GaussquantError(
                f"paired_difference: seeds {sorted(unpaired, key=str)} are not in both inputs "
                f"(a has {sorted(a, key=str)}, b has {sorted(b, key=str)})"
            )
        return np.array([a[s] for s in a], float), np.array([b[s] for s in a], float)
    x, y = np.asarray(a, float).reshape(-1), np.asarray(b, float).reshape(-1)
    if x.size != y.size:
        raise GaussquantError(
            f"paired_difference: {x.size} values against {y.size}; pair them seed by seed"
        )
    return x, y


def paired_difference(a, b, level: float = 0.95) -> CI:
    """t interval of the mean of ``a - b`` paired by seed.

    ``a``, ``b``: mappings seed -> value with exactly the same seeds, or two aligned sequences of
    equal length. By convention ``a`` is GQ (the reference) and ``b`` the baseline, so that
    :func:`verdict` reads the sign.
    """
    x, y = _paired_arrays(a, b)
    return mean_ci(x - y, level)


def verdict(diff_ci: CI, higher_is_better: bool) -> str:
    """Read a GQ - baseline interval: one of :data:`VERDICTS`.

    "GQ better" when the interval excludes 0 on the good side (above 0 if higher is better),
    "GQ worse" when it excludes 0 on the bad side, else "no significant difference" (this
    includes an exactly-zero, zero-width difference).
    """
    if diff_ci.low > 0:
        return VERDICTS[0] if higher_is_better else VERDICTS[2]
    if diff_ci.high < 0:
        return VERDICTS[2] if higher_is_better else VERDICTS[0]
    return VERDICTS[1]


def paired_power(effect: float, n: int, level: float = 0.95) -> float:
    """Exact power of the two-sided paired t-test of :func:`verdict` at ``level``.

    ``effect``: true mean difference over the standard deviation of the per-seed differences;
    ``n >= 2`` seeds. The statistic is noncentral t with ``n - 1`` degrees of freedom and
    noncentrality ``effect * sqrt(n)``; both tails count. (The lower tail is taken as the upper
    tail at ``-nc``: scipy's ``nct.cdf`` far below the centre returns NaN.)
    """
    _check_level(level)
    df, nc = n - 1, abs(effect) * math.sqrt(n)
    crit = stats.t.ppf(0.5 + level / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def _power_short(effect: float, n: int, level: float) -> float:
    """How far :func:`paired_power` falls short of :data:`POWER` (the root is the MDE)."""
    return paired_power(effect, n, level) - POWER


def min_detectable_difference(sd: float, n: int, level: float = 0.95) -> float:
    """Smallest |true difference| that :func:`verdict` detects with probability :data:`POWER`.

    ``sd``: measured standard deviation of the ``n`` per-seed differences (``ddof=1``), in the
    metric's units; the result is in the same units. NaN when ``n < 2`` or ``sd`` is not
    finite; 0 when ``sd == 0`` (every nonzero difference gives a zero-width interval).
    """
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    hi = 1.0
    while _power_short(hi, n, level) < 0:  # bracket the root: power rises with the effect
        hi *= 2
    effect = optimize.brentq(_power_short, 0.0, hi, args=(n, level), xtol=1e-12, rtol=1e-12)
    return sd * effect


def seeds_needed(gap: float, sd: float, level: float = 0.95, cap: int = SEEDS_CAP) -> float:
    """Fewest seeds (>= 2) at which :func:`verdict` detects a true difference ``gap`` with
    probability :data:`POWER`, if the per-seed differences have standard deviation ``sd``.

    NaN when ``gap`` is NaN or 0 or ``sd`` is not finite; 2 when ``sd == 0``; ``inf`` when
    more than ``cap`` seeds would be needed. Power rises with ``n``: the search doubles ``n``
    up to ``cap``, then bisects.
    """
    if math.isnan(gap) or gap == 0 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 2.0
    effect = gap / sd
    lo, hi = 1, 2  # n = 1 detects nothing; hi is the first n tried that does
    while _power_short(effect, hi, level) < 0:
        if hi >= cap:
            return math.inf
        lo, hi = hi, min(2 * hi, cap)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _power_short(effect, mid, level) >= 0 else (mid, hi)
    return float(hi)


def bootstrap_ci(
    per_image_values: Sequence[float], level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> CI:
    """Percentile-bootstrap interval of the mean over images (the evaluation-sample noise).

    ``per_image_values``: one metric value per validation image, shape ``(n,)``, ``n >= 2``.
    ``n_boot`` resamples of ``n`` images with replacement, drawn from
    ``numpy.random.default_rng(seed)``: the result is a function of the inputs alone.
    ``mean`` is the sample mean; the interval need not be symmetric about it.
    """
    _check_level(level)
    if n_boot < 2:
        raise GaussquantError(f"bootstrap_ci needs n_boot >= 2, got {n_boot}")
    x = _as_values(per_image_values, "bootstrap_ci", "images")
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOT_CHUNK // x.size)  # resamples per chunk: bounded memory for large n
    means = np.concatenate(
        [
            x[rng.integers(0, x.size, size=(min(rows, n_boot - start), x.size))].mean(axis=1)
            for start in range(0, n_boot, rows)
        ]
    )
    low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    half = float(high - low) / 2
    return CI(float(x.mean()), float(low), float(high), half, int(x.size), float(x.std(ddof=1)))


def significantly_best(
    cells: Mapping[str, Mapping[object, float]], higher_is_better: bool, level: float = 0.95
) -> str | None:
    """The row that beats every other row significantly, paired over their common seeds.

    ``cells``: row name -> {seed: value}. A row is best when, against each other row, the
    :func:`paired_difference` interval excludes 0 on its good side. Requiring all these
    tests at once is an intersection-union test, so no multiplicity correction is needed. At
    most one row can qualify. None when no row does, when there are fewer than 2 rows, or when
    any two rows share fewer than 2 seeds.
    """
    names = list(cells)
    if len(names) < 2:
        return None
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if len(set(cells[a]) & set(cells[b])) < 2:
                return None
    good = VERDICTS[0]  # verdict() calls the first argument "GQ"; here it is the candidate
    for cand in names:
        wins = []
        for other in names:
            if other == cand:
                continue
            common = set(cells[cand]) & set(cells[other])
            a = {s: cells[cand][s] for s in common}
            b = {s: cells[other][s] for s in common}
            wins.append(verdict(paired_difference(a, b, level), higher_is_better) == good)
        if all(wins):
            return cand
    return None


def format_ci(ci: CI, decimals: int) -> str:
    """Table cell text: ``"27.61 ± 0.12"`` (mean ± half width, fixed decimals)."""
    return f"{ci.mean:.{decimals}f} \u00b1 {ci.half_width:.{decimals}f}"


def _paper_agrees(verdict_text: str, paper_diff: float, higher_is_better: bool) -> str:
    """Compare our verdict with the published ordering (paper_diff = GQ - baseline)."""
    if math.isnan(paper_diff):
        return "-"
    if verdict_text == VERDICTS[1]:
        return "n/s"
    if paper_diff == 0:  # the paper has a tie, we have a significant ordering
        return "no"
    paper_gq_better = (paper_diff > 0) == higher_is_better
    return "yes" if (verdict_text == VERDICTS[0]) == paper_gq_better else "no"


def _seed_values(group: pd.DataFrame, name: str, metric: str) -> dict[object, float]:
    rows = group[group["name"] == name]
    dup = rows["seed"][rows["seed"].duplicated()].tolist()
    if dup:
        raise GaussquantError(f"{name!r}: seeds {dup} appear more than once in one (arch, rate)")
    return dict(zip(rows["seed"], rows[metric].astype(float)))


def _paper_diff(published, arch, bits, reference, baseline, metric) -> float:
    """The published difference at the same bits per latent position (docs/method.md §7)."""
    ref, base = published(arch, reference, bits), published(arch, baseline, bits)
    if not ref or not base or metric not in ref or metric not in base:
        return math.nan
    return ref[metric] - base[metric]


VERDICT_COLUMNS = [
    "arch", "bits", "baseline", "metric", "diff", "low", "high", "n", "mde", "verdict",
    "paper_diff", "paper_agrees", "seeds_needed",
]  # fmt: skip


def verdict_table(
    df: pd.DataFrame,
    metrics: Sequence[str],
    reference: str = "gq",
    published: Callable[[str, str, int], dict[str, float] | None] = _published,
    level: float = 0.95,
) -> pd.DataFrame:
    """Paired verdicts of ``reference`` against every other method, per (arch, rate, metric).

    ``df``: long frame, one row per run, columns ``arch``, ``bits`` (the rate: bits per latent
    position), ``name``, ``seed`` and the ``metrics`` (keys of :data:`HIGHER_IS_BETTER`).
    Output: one row per (arch, bits, baseline,
    metric) with ``diff`` = mean of reference - baseline over seeds, its interval ``low``/``high``,
    ``n`` seeds, ``mde`` (:func:`min_detectable_difference` of the per-seed differences' spread:
    the smallest true difference this row detects with probability :data:`POWER`),
    ``verdict``, ``paper_diff`` (the same difference in docs/method.md §7's numbers, NaN when
    not published at these bits per position), ``paper_agrees``: "yes" when our significant
    ordering matches the paper's, "no" when it is the opposite (or the paper has a tie), "n/s"
    when ours is not significant, "-" when there is no published value, and ``seeds_needed``
    (:func:`seeds_needed` for ``paper_diff`` at the measured spread; inf beyond
    :data:`SEEDS_CAP`). A metric missing or all NaN for either method of a pair is left out;
    seeds must match exactly (else an error naming them).
    """
    unknown = [m for m in metrics if m not in HIGHER_IS_BETTER]
    if unknown:
        raise GaussquantError(f"unknown metrics {unknown}; known: {sorted(HIGHER_IS_BETTER)}")
    metrics = [m for m in metrics if m in df]
    rows = []
    for (arch, bits), group in df.groupby(["arch", "bits"], sort=True):
        if reference not in set(group["name"]):
            continue
        for baseline in sorted(set(group["name"]) - {reference}):
            for m in metrics:
                row = _verdict_row(group, reference, baseline, m, published, level)
                if row is not None:
                    rows.append([arch, bits, baseline, m, *row])
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def _verdict_row(group, reference, baseline, metric, published, level) -> list | None:
    """diff ... seeds_needed (:data:`VERDICT_COLUMNS` after the metric) for one pair; None if
    not computed."""
    arch, bits = group["arch"].iloc[0], int(group["bits"].iloc[0])
    ref = _seed_values(group, reference, metric)
    base = _seed_values(group, baseline, metric)
    if all(map(math.isnan, ref.values())) or all(map(math.isnan, base.values())):
        return None
    try:
        ci = paired_difference(ref, base, level)
    except GaussquantError as e:
        raise GaussquantError(
            f"{arch} {bits} bits per position, {reference} vs {baseline}, {metric}: {e}"
        ) from e
    v = verdict(ci, HIGHER_IS_BETTER[metric])
    paper = _paper_diff(published, arch, bits, reference, baseline, metric)
    return [
        ci.mean,
        ci.low,
        ci.high,
        ci.n,
        min_detectable_difference(ci.sd, ci.n, level),
        v,
        paper,
        _paper_agrees(v, paper, HIGHER_IS_BETTER[metric]),
        seeds_needed(paper, ci.sd, level),
    ]


SHARED_NOISE_COLUMNS = ["arch", "bits", "metric", "correlation", "methods", "seeds"]


def seed_correlation(df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """How much of the seed-to-seed noise the methods share, per (arch, bits, metric): the mean
    Pearson correlation over seeds between every two methods' per-seed values (NaN with fewer
    than 3 seeds common to them). A paired difference loses the shared part,
    var(a - b) = var(a) + var(b) - 2 cov(a, b): common random numbers (one backbone
    initialisation, data order and noise per seed for every method) exist to raise it.
    ``df``: the long frame of :func:`verdict_table`."""
    rows = []
    for (arch, bits), group in df.groupby(["arch", "bits"], sort=True):
        for metric in (m for m in metrics if m in group):
            wide = group.pivot_table(index="name", columns="seed", values=metric).dropna(axis=1)
            wide = wide[wide.std(axis=1) > 0]  # a constant method has no correlation
            corr = np.nan
            if wide.shape[0] >= 2 and wide.shape[1] >= 3:
                c = np.corrcoef(wide.to_numpy(float))
                corr = float(c[np.triu_indices_from(c, k=1)].mean())
            rows.append([arch, int(bits), metric, corr, wide.shape[0], wide.shape[1]])
    return pd.DataFrame(rows, columns=SHARED_NOISE_COLUMNS)
