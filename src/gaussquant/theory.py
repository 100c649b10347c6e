"""Monte-Carlo check of the 1-D Gaussian Quant theorems (docs/method.md §3) and an m-dimensional analogue.

Paper: "Vector Quantization using Gaussian Variational Autoencoder", Xu et al.,
https://arxiv.org/abs/2512.06609. Logs are natural; rates ``R`` are in nats unless a name says
``bits``.

1-D. A posterior ``q = N(mu, sigma^2)`` with ``R = KL(q || N(0, 1))`` is quantised with ``K``
codewords. The theorems' ``zhat`` is the codeword of highest posterior density, i.e. the
nearest one to ``mu`` (rule ``nn``: GQ score with ``beta = 0``): only for it is
``P(|zhat - mu| >= sigma) = P(no codeword in [mu - sigma, mu + sigma]) = (1 - p)^K``,
``p = Phi(mu + sigma) - Phi(mu - sigma)``, for an i.i.d. N(0, 1) codebook (docs/method.md §3's exact
formula). docs/method.md §2's score with ``beta = 1`` (rule ``gq``) is a different rule: for ``sigma < 1``
it picks the codeword nearest to ``mu / (1 - sigma^2)``, the mode of q/p rather than of q. Both
are simulated; ``gq`` gets its own exact value by quadrature (:func:`exact_failure_rule`).

Bounds. With the signed ``t = log K - R``: ``upper = exp(-e^t sqrt(2/pi) e^(-c1 - 1/2))`` (docs/method.md §3's
``log K = R + t``) and ``lower = 1 - e^t sqrt(2/pi) e^(c2^2/2 - 1/2)`` (docs/method.md §3's ``log K = R - t'``,
``t' = -t``), ``c1 = |mu sigma|``, ``c2 = |mu| + sigma`` of the posterior itself. Both hold at
every ``t`` with ``K >= 1`` for rule ``nn`` and i.i.d. codebooks: ``e^-Kp >= (1 - p)^K >= 1 - Kp``
and ``p`` lies between ``2 sigma`` times the least and the largest normal density on the interval.

Posteriors. A family is (R, mean share f): ``mu = sqrt(2 f R)`` and ``sigma < 1`` carries the rest
(:func:`posterior_for_rate`); ``f = 0`` (``mu = 0``) makes both bounds nearly tight.

Codebooks. ``iid``: a fresh N(0, 1) codebook per trial. ``sobol``: the GQ codebook of docs/method.md §2
(:func:`gaussquant.quantizers.gaussian_quant.gaussian_codebook`), deterministic given its seed.
In 1-D the posterior of a row is fixed, so the randomness is the scrambling: trial ``i`` uses
seed ``sobol_seed + i``; every scrambled point is marginally N(0, 1), so the estimate compares
with the i.i.d. formula. In m-D the codebook is the one GQ ships (seed ``sobol_seed``) and the
randomness is over the posteriors, drawn at the token rate.

m-D event. For ``m`` dims with a diagonal posterior, ``zhat`` fails when it lies outside the
highest-density ellipsoid of q with the q-mass of the 1-sigma interval (0.6827):
``||(zhat - mu) / sigma||_2^2 >= chi2_m^-1(0.6827)`` (for ``m = 1`` exactly ``|zhat - mu| >=
sigma``). For rule ``nn`` (argmax q) that means "no codeword in the ellipsoid", the fewest
failures any rule can have; the docs/method.md §2 score can only fail more often.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
from scipy import special  # scipy.stats is imported where used: it costs ~0.35 s

from gaussquant.errors import GaussquantError
from gaussquant.sections import KINDS as KINDS  # re-exported
from gaussquant.sections import RULES as RULES  # re-exported
from gaussquant.sections import TheoryConfig

ONE_SIGMA_MASS = math.erf(1.0 / math.sqrt(2.0))  # 0.6827, q-mass of [mu - sigma, mu + sigma]
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
LN2 = math.log(2.0)
COLUMNS = (
    "experiment kind rule m R R_bits t t_bits K mean_share mu sigma c1 c2 estimate ci_low ci_high "
    "exact upper lower bounds_apply failures trials"
).split()


# ----------------------------------------------------------------------------- closed forms


def kl_nats(mu: np.ndarray | float, sigma: np.ndarray | float) -> np.ndarray:
    """KL(N(mu, sigma^2) || N(0, 1)) in nats, elementwise."""
    mu, sigma = np.asarray(mu, float), np.asarray(sigma, float)
    return 0.5 * (mu * mu + sigma * sigma - 1.0 - 2.0 * np.log(sigma))


def variance_sigma(rate) -> np.ndarray:
    """The sigma in (0, 1] with ``KL(N(0, sigma^2) || N(0, 1)) = rate`` nats, elementwise.

    ``sigma^2 - log sigma^2 = 1 + 2 rate`` is solved by ``sigma^2 = -W0(-e^(-1 - 2 rate))``
    (principal Lambert W branch, the root below 1).
    """
    arg = -np.exp(-1.0 - 2.0 * np.maximum(np.asarray(rate, float), 0.0))
    return np.sqrt(np.clip(-special.lambertw(arg, 0).real, 0.0, 1.0))


def posterior_for_rate(rate, mean_share) -> tuple[np.ndarray, np.ndarray]:
    """The posterior family used here: KL = ``rate`` nats of which a share ``f`` in [0, 1) is
    carried by the mean: ``mu = sqrt(2 f R) >= 0`` and ``sigma < 1`` solves
    ``(sigma^2 - 1 - 2 log sigma) / 2 = (1 - f) R``. ``f = 0`` is the centred posterior (both
    docs/method.md §3 bounds are tightest there: c1 = 0, c2 = sigma); ``f -> 1`` gives sigma -> 1.
    Elementwise over broadcast arrays; returns ``(mu, sigma)``."""
    rate, share = np.broadcast_arrays(np.asarray(rate, float), np.asarray(mean_share, float))
    return np.sqrt(2.0 * share * rate), variance_sigma((1.0 - share) * rate)


def interval_mass(mu: np.ndarray | float, sigma: np.ndarray | float) -> np.ndarray:
    """``p = Phi(mu + sigma) - Phi(mu - sigma)``, computed in the near tail for accuracy."""
    a = np.abs(np.asarray(mu, float))  # symmetric in mu
    return special.ndtr(-(a - sigma)) - special.ndtr(-(a + sigma))


def exact_failure(mu, sigma, k) -> np.ndarray:
    """docs/method.md §3 exact ``P(|zhat - mu| >= sigma) = (1 - p)^K``, nearest-neighbour rule, i.i.d.
    N(0, 1) codebook of ``k`` points. Broadcasts."""
    return np.exp(np.asarray(k, float) * np.log1p(-interval_mass(mu, sigma)))


def exact_failure_rule(mu: float, sigma: float, k: int, beta: float) -> float:
    """Exact ``P(|zhat - mu| >= sigma)`` for the 1-D GQ score with weight ``beta`` (beta = 0 is
    nearest neighbour) and an i.i.d. N(0, 1) codebook of ``k`` points, by quadrature.

    For ``beta sigma^2 < 1`` the score ``-((c - mu)/sigma)^2 + beta c^2`` is a downward parabola
    with vertex ``c* = mu / (1 - beta sigma^2)``, so ``zhat`` is the codeword nearest to ``c*``;
    its density is ``k phi(c) (1 - G(|c - c*|))^(k-1)`` with ``G(r) = P(|C - c*| < r)``. The
    failure probability is that density integrated outside ``[mu - sigma, mu + sigma]``.
    """
    if beta * sigma * sigma >= 1.0:
        raise GaussquantError(f"theory: beta*sigma^2={beta * sigma**2:g} >= 1: no score maximum")
    center = mu / (1.0 - beta * sigma * sigma)
    lo, hi = mu - sigma, mu + sigma
    far = max(abs(center), abs(mu)) + 40.0  # phi(40) underflows: nothing lies beyond
    # The density has features of width ~1/(k phi) at c* and at the interval's ends (a generic
    # adaptive rule can step over them and return 0): break the line at geometric offsets from
    # those three points, then Gauss-Legendre on every piece outside the interval.
    offsets = np.geomspace(1e-13, 2 * far, 160)
    breaks = np.concatenate([a + sgn * offsets for a in (center, lo, hi) for sgn in (-1, 1)])
    breaks = np.unique(np.concatenate([np.clip(breaks, -far, far), [-far, lo, hi, far]]))
    left, right = breaks[:-1], breaks[1:]
    keep = (right <= lo) | (left >= hi)
    left, right = left[keep], right[keep]
    nodes, weights = np.polynomial.legendre.leggauss(24)
    half = (right - left)[:, None] / 2
    c = (left + right)[:, None] / 2 + half * nodes
    r = np.abs(c - center)
    miss = special.ndtr(center - r) + special.ndtr(-center - r)  # 1 - G(r), no cancellation
    with np.errstate(divide="ignore"):
        log_density = math.log(k) - 0.5 * c * c - 0.5 * math.log(2 * math.pi)
        density = np.exp(log_density + ((k - 1) * np.log(miss) if k > 1 else 0.0))
    return float(min((density * weights * half).sum(), 1.0))


def upper_bound(t, c1) -> np.ndarray:
    """docs/method.md §3 upper bound on the failure probability at ``log K = R + t``."""
    return np.exp(-np.exp(np.asarray(t, float)) * SQRT_2_OVER_PI * np.exp(-np.asarray(c1) - 0.5))


def lower_bound(t, c2) -> np.ndarray:
    """docs/method.md §3 lower bound at ``log K = R + t`` (docs/method.md §3 writes ``log K = R - t'``, ``t' = -t``),
    clipped at 0 (a negative bound says nothing)."""
    c2 = np.asarray(c2, float)
    val = 1.0 - np.exp(np.asarray(t, float)) * SQRT_2_OVER_PI * np.exp(c2 * c2 / 2 - 0.5)
    return np.maximum(val, 0.0)


def clopper_pearson(failures, trials, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact (conservative) binomial confidence interval at ``level`` for ``failures / trials``."""
    from scipy import stats

    x, n = np.asarray(failures, float), np.asarray(trials, float)
    a = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore"):
        lo = np.where(x > 0, stats.beta.ppf(a, x, n - x + 1), 0.0)
        hi = np.where(x < n, stats.beta.ppf(1 - a, x + 1, n - x), 1.0)
    return lo, hi


def event_radius2(m: int) -> float:
    """Squared Mahalanobis radius of the m-D ellipsoid with q-mass 0.6827 (1.0 for m = 1)."""
    from scipy import stats

    return 1.0 if m == 1 else float(stats.chi2.ppf(ONE_SIGMA_MASS, m))


# ----------------------------------------------------------------------------- simulation


@contextlib.contextmanager
def _torch_single_thread() -> Iterator[None]:
    # thousands of tiny Sobol draws: on 2 busy cores intra-op threads cost 8 ms per codebook
    # versus 0.06 ms single-threaded (measured)
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def sobol_codebook(k: int, m: int, seed: int) -> np.ndarray:
    """docs/method.md §2 GQ codebook (k, m) as float64 numpy (values are the float32 codewords)."""
    from gaussquant.quantizers.gaussian_quant import gaussian_codebook

    return gaussian_codebook(k, m, seed).double().numpy()


def _sobol_stack(k: int, n: int, seeds: Iterator[int]) -> np.ndarray:
    """``n`` 1-D GQ codebooks (n, k) from the next seeds. A seed whose codebook has an infinite
    codeword (a float32 Sobol point rounded to 1, about 2^-25 per point) is skipped."""
    out = []
    with _torch_single_thread():
        while len(out) < n:
            with contextlib.suppress(GaussquantError):
                out.append(sobol_codebook(k, 1, next(seeds))[:, 0])
    return np.stack(out)


def failures_1d(codebooks: np.ndarray, mu: float, sigma: float, beta: float) -> np.ndarray:
    """Per-trial failure ``|zhat - mu| >= sigma``; ``codebooks`` (n, K), ``zhat`` the argmax of
    the GQ score ``-((c - mu)/sigma)^2 + beta c^2`` (beta = 0: nearest neighbour). Bool (n,)."""
    score = beta * codebooks * codebooks - ((codebooks - mu) / sigma) ** 2
    zhat = np.take_along_axis(codebooks, score.argmax(axis=1)[:, None], axis=1)[:, 0]
    return np.abs(zhat - mu) >= sigma


def failures_md(codebooks: np.ndarray, mu: np.ndarray, sigma: np.ndarray, beta: float):
    """Per-trial m-D failure (see module doc). ``codebooks`` (n, K, m) or one shared (K, m);
    ``mu``, ``sigma`` (n, m). The score is docs/method.md §2's, as a product of query ``[beta - 1/sigma^2,
    2 mu/sigma^2]`` with codeword features ``[c^2, c]`` (the constant term dropped). Bool (n,)."""
    qa, qb = beta - 1.0 / sigma**2, 2.0 * mu / sigma**2
    if codebooks.ndim == 2:  # one codebook for all trials
        score = (codebooks**2 @ qa.T + codebooks @ qb.T).T
        zhat = codebooks[score.argmax(axis=1)]
    else:
        score = np.matmul(codebooks**2, qa[:, :, None]) + np.matmul(codebooks, qb[:, :, None])
        score = score[..., 0]
        zhat = np.take_along_axis(codebooks, score.argmax(axis=1)[:, None, None], axis=1)[:, 0]
    return (((zhat - mu) / sigma) ** 2).sum(axis=1) >= event_radius2(mu.shape[1])


def sample_posteriors(rng: np.random.Generator, n: int, m: int, rate: float, share_max: float):
    """``n`` diagonal posteriors (mu, sigma), each (n, m), every dim with KL ``rate / m`` nats
    (token KL = ``rate``): per dim a mean share ~ U(0, share_max) (:func:`posterior_for_rate`)
    and a random sign of mu."""
    mu, sigma = posterior_for_rate(rate / m, rng.uniform(0.0, share_max, size=(n, m)))
    return mu * rng.choice([-1.0, 1.0], size=(n, m)), sigma


def _chunks(n: int, per_trial: int, chunk_elements: int) -> Iterator[tuple[int, int]]:
    step = max(1, chunk_elements // per_trial)
    for a in range(0, n, step):
        yield a, min(n, a + step)


def _row(failures: int, trials: int, level: float, **kw) -> dict:
    lo, hi = clopper_pearson(failures, trials, level)
    est = {"failures": failures, "trials": trials, "estimate": failures / trials}
    return {c: np.nan for c in COLUMNS} | est | {"ci_low": float(lo), "ci_high": float(hi)} | kw


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["R_bits"], df["t_bits"] = df.R / LN2, (df.t / LN2).round(12)
    return df


def run_1d(cfg: TheoryConfig, progress: bool = False) -> pd.DataFrame:
    """Rows for every (kind, R, K, mean share, rule): MC estimate with CI, exact value, docs/method.md §3
    bounds. ``K = max(1, round(e^(R + t)))`` over ``t_grid``; the row's ``t`` is ``log K - R``.
    One codebook draw per trial serves every family and rule of the row's (kind, R, K)."""
    from tqdm import tqdm

    cells = []
    for ir, rate in enumerate(cfg.rates):
        ks = sorted({max(1, round(math.exp(rate + t))) for t in cfg.t_grid})
        if ks[-1] > cfg.max_codebook:
            raise GaussquantError(
                f"theory: K={ks[-1]} at R={rate} exceeds theory.max_codebook={cfg.max_codebook}; "
                "lower theory.rates or theory.t_grid"
            )
        cells += [(kind, ir, rate, k) for kind in cfg.kinds for k in ks]
    rows = []
    for kind, ir, rate, k in tqdm(cells, desc="theory 1-D", disable=not progress):
        n = cfg.trials if kind == "iid" else cfg.sobol_trials
        mus, sigmas = posterior_for_rate(rate, cfg.mean_shares)
        cases = [(i, rule) for i in range(len(mus)) for rule in cfg.rules]
        fails = dict.fromkeys(cases, 0)
        rng = np.random.default_rng([cfg.seed, ir, k])
        seeds = itertools.count(cfg.sobol_seed)
        for a, b in _chunks(n, k, cfg.chunk_elements):
            if kind == "iid":
                cb = rng.standard_normal((b - a, k))
            else:
                cb = _sobol_stack(k, b - a, seeds)
            for i, rule in cases:
                beta = 0.0 if rule == "nn" else cfg.beta
                fails[i, rule] += int(failures_1d(cb, mus[i], sigmas[i], beta).sum())
        t = math.log(k) - rate
        for i, rule in cases:
            mu, sigma = float(mus[i]), float(sigmas[i])
            c1, c2 = abs(mu * sigma), abs(mu) + sigma
            if rule == "nn":
                exact = float(exact_failure(mu, sigma, k))
            else:
                exact = exact_failure_rule(mu, sigma, k, cfg.beta)
            row = _row(fails[i, rule], n, cfg.ci_level, experiment="1d", kind=kind, rule=rule)
            row.update(m=1, R=rate, t=t, K=k, mean_share=cfg.mean_shares[i], mu=mu, sigma=sigma)
            row.update(c1=c1, c2=c2, upper=float(upper_bound(t, c1)))
            row.update(lower=float(lower_bound(t, c2)), exact=exact)
            rows.append(row | {"bounds_apply": rule == "nn" and kind == "iid"})
    return _frame(rows)


def run_md(cfg: TheoryConfig, progress: bool = False) -> pd.DataFrame:
    """Rows for every (kind, m, t_bits, rule) of the m-D experiment (module doc). ``exact`` is
    filled only where it is known: m = 1, rule nn, i.i.d. (mean of the 1-D formula over the
    drawn posteriors); the docs/method.md §3 bounds do not cover m-D and are left empty. Both kinds see
    the same posteriors (same seed)."""
    from tqdm import tqdm

    rate = cfg.md_rate_bits * LN2
    cells = [(kind, m, tb) for kind in cfg.kinds for m in cfg.dims for tb in cfg.md_t_bits]
    rows = []
    for kind, m, tb in tqdm(cells, desc="theory m-D", disable=not progress):
        k = 2 ** (cfg.md_rate_bits + tb)
        rng = np.random.default_rng([cfg.seed, 1000 + m, k])
        mu, sigma = sample_posteriors(rng, cfg.md_trials, m, rate, cfg.md_mean_share_max)
        fails = dict.fromkeys(cfg.rules, 0)
        if kind == "sobol":
            with _torch_single_thread():
                shared = sobol_codebook(k, m, cfg.sobol_seed)
        for a, b in _chunks(cfg.md_trials, k * m, cfg.chunk_elements):
            cb = rng.standard_normal((b - a, k, m)) if kind == "iid" else shared
            for rule in cfg.rules:
                beta = 0.0 if rule == "nn" else cfg.beta
                fails[rule] += int(failures_md(cb, mu[a:b], sigma[a:b], beta).sum())
        for rule in cfg.rules:
            exact = np.nan
            if m == 1 and rule == "nn" and kind == "iid":
                exact = float(exact_failure(mu[:, 0], sigma[:, 0], k).mean())
            row = _row(fails[rule], cfg.md_trials, cfg.ci_level, experiment="md", kind=kind)
            row.update(rule=rule, m=m, R=rate, t=tb * LN2, K=k, exact=exact, bounds_apply=False)
            rows.append(row)
    return _frame(rows)


def run_theory(cfg: TheoryConfig, progress: bool = False) -> pd.DataFrame:
    """The whole experiment: :func:`run_1d` rows, then :func:`run_md` rows (columns COLUMNS)."""
    return pd.concat([run_1d(cfg, progress), run_md(cfg, progress)], ignore_index=True)


# ----------------------------------------------------------------------------- figure

MARKERS = {"iid": "o", "sobol": "s"}
SHIFT = {"iid": -0.04, "sobol": 0.04}  # kinds side by side, so the error bars stay readable


def _points(ax, x, rows: pd.DataFrame, color, kind: str, success: bool = False) -> None:
    """MC estimates with CI bars (of ``1 - P`` if ``success``); a zero estimate (off a log
    axis) is drawn as an open triangle at its CI's upper end."""
    est, lo, hi = rows.estimate.to_numpy(), rows.ci_low.to_numpy(), rows.ci_high.to_numpy()
    if success:
        est, lo, hi = 1 - est, 1 - hi, 1 - lo
    x, pos = np.asarray(x) + SHIFT[kind], est > 0
    err = [est[pos] - lo[pos], hi[pos] - est[pos]]
    ax.errorbar(x[pos], est[pos], yerr=err, fmt=MARKERS[kind], color=color, ms=4, capsize=2)
    ax.plot(x[~pos], hi[~pos], "v", color=color, ms=5, mfc="none")


def _family_panels(axes, fam: pd.DataFrame, color) -> None:
    """Panels (a)-(c) for one 1-D posterior family: exact curves (in (a), (b) smooth in K),
    bounds, MC."""
    ax_up, ax_lo, ax_rule = axes
    rate, mu, sigma = fam.R.iloc[0], fam.mu.iloc[0], fam.sigma.iloc[0]
    c1, c2 = abs(mu * sigma), abs(mu) + sigma
    label = f"R={rate:g} nats, mu={mu:.2f}, sigma={sigma:.3g}"
    t = np.linspace(fam.t.min(), fam.t.max(), 200)
    tu, tl = t[t >= -0.5], t[t <= 0.5]
    ax_up.plot(tu, exact_failure(mu, sigma, np.exp(rate + tu)), color=color, label=label)
    ax_up.plot(tu, upper_bound(tu, c1), "--", color=color)
    ax_lo.plot(-tl, -np.expm1(np.log1p(-interval_mass(mu, sigma)) * np.exp(rate + tl)), c=color)
    ax_lo.plot(-tl, np.exp(tl) * SQRT_2_OVER_PI * np.exp(c2**2 / 2 - 0.5), "--", color=color)
    for rule, style in (("nn", "-"), ("gq", "-.")):  # gq's exact is a quadrature: rows only
        rows = fam[fam.rule == rule].drop_duplicates("K")
        ax_rule.plot(rows.t, rows.exact, style, color=color, label=label if rule == "nn" else None)
    for kind, rows in fam.groupby("kind"):
        nn, gq = rows[rows.rule == "nn"], rows[rows.rule == "gq"]
        up, lo = nn[nn.t >= -0.5], nn[nn.t <= 0.5]
        _points(ax_up, up.t, up, color, kind)
        _points(ax_lo, -lo.t, lo, color, kind, success=True)
        _points(ax_rule, gq.t, gq, color, kind)


def plot_theory(df: pd.DataFrame, out) -> None:
    """Four log-y panels, PNG written atomically: (a) failure vs ``t`` (``log K = R + t``) with
    the docs/method.md §3 upper bound; (b) success ``1 - P`` vs ``t' = R - log K`` with ``1 - lower``;
    (c) 1-D nearest neighbour vs GQ score; (d) the m-D experiment (GQ score solid, nn dotted).
    Markers: MC, circles i.i.d., squares Sobol, bars the CI; triangles: upper CI of a zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gaussquant.io import atomic_path

    d1, dm = df[df.experiment == "1d"], df[df.experiment == "md"]
    floor = 0.1 / max(int(df.trials.max()), 1)
    fig, ((ax_up, ax_lo), (ax_rule, ax_md)) = plt.subplots(2, 2, figsize=(13, 10))
    colors = plt.cm.tab10.colors
    for j, (_, fam) in enumerate(d1.groupby(["R", "mean_share"])):
        _family_panels((ax_up, ax_lo, ax_rule), fam, colors[j % 10])
    dims = sorted(dm.m.unique())
    for (m, rule, kind), rows in dm.groupby(["m", "rule", "kind"]):
        color, label = colors[dims.index(m) % 10], f"m={m}, {rule}" if kind == "sobol" else None
        x, est, style = rows.t_bits + SHIFT[kind], rows.estimate.clip(lower=floor), "-"
        ax_md.plot(x, est, style if rule == "gq" else ":", color=color, lw=0.8, label=label)
        _points(ax_md, rows.t_bits, rows, color, kind)
    for kind, marker in MARKERS.items():  # legend entries for the marker shapes
        for ax in (ax_up, ax_md):
            ax.plot([], [], marker, color="0.3", ls="none", label=f"MC, {kind} codebook")
    ax_up.plot([], [], "--", color="0.3", label="docs/method.md §3 upper bound")
    ax_lo.plot([], [], "--", color="0.3", label="1 - docs/method.md §3 lower bound")
    ax_lo.plot([], [], "-", color="0.3", label="exact (i.i.d.)")
    ax_rule.plot([], [], "-.", color="0.3", label="exact, GQ score")
    panels = [
        (ax_up, "(a) log K = R + t: P(|zhat - mu| >= sigma), nearest neighbour", "t (nats)"),
        (ax_lo, "(b) log K = R - t': P(|zhat - mu| < sigma), nearest neighbour", "t' (nats)"),
        (ax_rule, "(c) nearest neighbour (solid) vs GQ score (dash-dot)", "log K - R (nats)"),
        (ax_md, "(d) m dims: P(zhat outside the 68% ellipsoid of q)", "log2 K - R (bits)"),
    ]
    for ax, title, xlabel in panels:
        ax.set_yscale("log")
        ax.set_ylim(floor, 2.0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both", lw=0.4)
        ax.legend(fontsize=7, loc="lower left")
    ax_lo.set_ylim(max(floor, 0.3 * (1 - d1.exact.max())), 2.0)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
