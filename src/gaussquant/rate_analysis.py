"""Bits-back rate of a Gaussian VAE's posterior and which GQ codebook (K, m) it fits (docs/method.md §1-§3).

GQ turns a Gaussian VAE into a VQ-VAE with no training when ``log2 K`` exceeds each token's
rate ``R = KL(q || N(0, I))`` in bits (docs/method.md §3: ``log2 K ~ R``; below it reconstruction breaks).
Given the posteriors (mu, logvar) of a dataset's images this module reports per-dimension and
per-token rates, for every codebook dimension ``m`` dividing ``C`` the token-rate distribution
against ``log2 K``, and a recommendation for a requested bits per pixel,
``bpp = (C/m) * log2 K / f^2`` (f the VAE's downsampling factor; K a power of two, at most
2^20): among the (K, m) giving that bpp, the fewest tokens above ``log2 K``, then the lowest
mean failure bound, then the smaller K. A codebook *fits* when at most 1 % of tokens exceed
it. Tokens use the official strided layout (:func:`gaussquant.posterior.to_tokens`).

Failure bound. For each token the docs/method.md §3 upper bound ``exp(-e^t sqrt(2/pi) e^(-c1 - 1/2))``
is evaluated at ``t = ln K - R`` (nats) with ``c1`` the largest ``|mu_d sigma_d|`` of the
token's dims (:func:`gaussquant.theory.upper_bound`); its mean over tokens bounds the expected
share of tokens whose codeword misses the 1-sigma interval. The theorem is 1-D: for m = 1 it
holds (nearest-neighbour rule, i.i.d. codebook); for m > 1 it is a guide, flagged as such.
Tokens above ``log2 K`` have ``t < 0`` and a bound near 1: nothing guarantees them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from gaussquant.posterior import (
    bits_per_pixel,
    divisors,
    kl_nats,
    nats_to_bits,
    to_tokens,
    token_rates,
)

PERCENTILES = (0, 1, 5, 25, 50, 75, 95, 99, 100)
MAX_LOG2K = 20  # K = 2^20 (1M codes, 4 MB per float32 dim) is the largest sane codebook
FIT_SHARE = 0.01  # a codebook "fits" when at most this share of tokens exceeds log2 K
LATENT_SPACE = (
    "raw latent of the VAE (before scaling_factor / shift_factor): where its KL prior N(0, I) "
    "and so the bits-back rate and the GQ codebook live"
)


# ----------------------------------------------------------------------------- rates
def dim_bits(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-dimension KL(N(mu, e^logvar) || N(0, 1)) in bits, float64, shape of ``mu``
    (:mod:`gaussquant.posterior`'s KL, exact nats-to-bits). ``logvar`` as the encoder gives it,
    clamped."""
    return nats_to_bits(kl_nats(mu.double(), logvar.double()))


def token_max(per_dim: torch.Tensor, dim: int) -> torch.Tensor:
    """Max of a (B, C, H, W) map over each token's channels -> (B, C/dim, H, W)."""
    return to_tokens(per_dim, dim).amax(-1)


def _percentiles(x: np.ndarray) -> dict[str, float]:
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(x, PERCENTILES))}


def _summary(x: np.ndarray) -> dict[str, Any]:
    return {"mean": float(x.mean()), "std": float(x.std())} | _percentiles(x)


# ----------------------------------------------------------------------------- analysis
@dataclasses.dataclass
class RateAnalysis:
    """``report``: JSON-able dict (see :func:`analyse`); ``token_bits[m]``: every token's rate in
    bits (flat float64) for each candidate m, for the histogram."""

    report: dict[str, Any]
    token_bits: dict[int, np.ndarray]


def _candidate(bits: np.ndarray, c1: np.ndarray, dim: int, log2k: int, channels: int, factor):
    from gaussquant.theory import upper_bound  # pandas/scipy: imported only when needed

    t = (log2k - bits) * math.log(2.0)  # ln K - R, nats
    bound = np.minimum(upper_bound(t, c1), 1.0)
    over = bits > log2k
    share = float(over.mean())
    return {
        "m": dim,
        "codebook_size": 2**log2k,
        "log2k": log2k,
        "tokens_per_position": channels // dim,
        "bpp": bits_per_pixel(channels, dim, log2k, factor),
        "exceed_share": share,
        "fits": share <= FIT_SHARE,
        "failure_bound_mean": float(bound.mean()),
        "failure_bound_exceeding_mean": float(bound[over].mean()) if over.any() else None,
        "bound_is_theorem": dim == 1,
    }


def analyse(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    factor: int,
    bpp: float = 0.25,
    max_log2k: int = MAX_LOG2K,
) -> RateAnalysis:
    """Rates of the posteriors ``mu``, ``logvar`` (N, C, h, w) of a VAE with downsampling factor
    ``factor``, and the codebook (K, m) recommended at ``bpp`` bits per pixel."""
    if mu.ndim != 4 or mu.shape != logvar.shape:
        raise ValueError(f"mu, logvar must both be (N, C, h, w), got {mu.shape}, {logvar.shape}")
    n, c, h, w = mu.shape
    per_dim = dim_bits(mu, logvar)
    musig = (mu.double() * (0.5 * logvar.double()).exp()).abs()
    bits_per_position = bpp * factor**2
    report: dict[str, Any] = {
        "latent_space": LATENT_SPACE,
        "latent_channels": c,
        "factor": factor,
        "latent_shape": [h, w],
        "images": n,
        "requested_bpp": bpp,
        "bits_per_position": bits_per_position,
        "max_log2k": max_log2k,
        "fit_share": FIT_SHARE,
        "per_dim": _summary(per_dim.flatten().numpy())
        | {"channel_mean": per_dim.mean(dim=(0, 2, 3)).tolist()},
        "per_position": _summary(per_dim.sum(1).flatten().numpy()),
    }
    dims, token_bits, candidates, reachable = [], {}, [], set()
    for m in divisors(c):
        bits = token_rates(per_dim, m).flatten().numpy()
        c1 = token_max(musig, m).flatten().numpy()
        token_bits[m] = bits
        exceed = [float((bits > k).mean()) for k in range(1, max_log2k + 1)]
        needed = next((k for k, s in enumerate(exceed, 1) if s <= FIT_SHARE), None)
        dims.append(
            {"m": m, "tokens_per_position": c // m, "tokens": int(bits.size)}
            | _summary(bits)
            | {
                "exceed_share_by_log2k": exceed,
                "log2k_needed": needed,
                "bpp_needed": None if needed is None else bits_per_pixel(c, m, needed, factor),
            }
        )
        reachable |= {bits_per_pixel(c, m, k, factor) for k in range(1, max_log2k + 1)}
        log2k = bits_per_position * m / c
        if abs(log2k - round(log2k)) < 1e-9 and 1 <= round(log2k) <= max_log2k:
            candidates.append(_candidate(bits, c1, m, round(log2k), c, factor))
    report["dims"] = dims
    report["candidates"] = candidates
    report["reachable_bpp"] = sorted(reachable)
    # fewest tokens over budget; then the most slack (at a fixed bpp a larger m gives each token
    # m times the spare bits, hence the lower bound); then the smaller codebook
    rank = lambda r: (r["exceed_share"], r["failure_bound_mean"], r["log2k"])  # noqa: E731
    best = min(candidates, key=rank, default=None)
    report["recommendation"] = best
    report["fits"] = bool(best and best["fits"])
    report["statement"] = _statement(report)
    return RateAnalysis(report, token_bits)


def _statement(r: dict[str, Any]) -> str:
    """One paragraph for the reader: does GQ fit at the requested rate, and if not, what then."""
    best, bpp, cap = r["recommendation"], r["requested_bpp"], r["max_log2k"]
    fitting = [d for d in r["dims"] if d["bpp_needed"] is not None]
    cheapest = min(fitting, key=lambda d: (d["bpp_needed"], d["log2k_needed"]), default=None)
    if cheapest is None:
        worst = min(r["dims"], key=lambda d: d["exceed_share_by_log2k"][-1])
        return (
            f"No codebook of sane size fits this VAE's posterior: even at K = 2^{cap} with "
            f"m = {worst['m']}, {100 * worst['exceed_share_by_log2k'][-1]:.1f}% of tokens exceed "
            f"log2 K (token rate p99 {worst['p99']:.1f} bits, mean {worst['mean']:.1f}). This is "
            "expected for VAEs trained with a tiny KL weight (the Stable Diffusion VAEs); the "
            "remedy is TDC fine-tuning (docs/method.md §1) at the target log2 K, then GQ."
        )
    need = (
        f"Without fine-tuning GQ needs at least {cheapest['bpp_needed']:g} bpp "
        f"(K = 2^{cheapest['log2k_needed']}, m = {cheapest['m']})."
    )
    if best is None:
        below = [b for b in r["reachable_bpp"] if b < bpp]
        above = [b for b in r["reachable_bpp"] if b > bpp]
        near = ", ".join(f"{b:g}" for b in (below[-1:] + above[:1]))
        return (
            f"{bpp:g} bpp is not reachable with K = 2^1 .. 2^{cap} and m dividing "
            f"C = {r['latent_channels']} at f = {r['factor']} (nearest: {near}). {need}"
        )
    head = (
        f"K = 2^{best['log2k']}, m = {best['m']} ({best['tokens_per_position']} tokens per "
        f"position): {100 * best['exceed_share']:.2f}% of tokens exceed log2 K = {best['log2k']} "
        f"bits; mean docs/method.md §3 failure bound {best['failure_bound_mean']:.3g}"
        + ("" if best["bound_is_theorem"] else " (1-D theorem applied per token: a guide)")
    )
    if best["fits"]:
        return f"GQ fits at {bpp:g} bpp: {head}."
    return (
        f"At {bpp:g} bpp no codebook fits (more than {100 * r['fit_share']:g}% of tokens above "
        f"log2 K); the best is {head}. {need} To reach {bpp:g} bpp, fine-tune the VAE with TDC "
        f"(docs/method.md §1) at target log2 K = {best['log2k']} bits per {best['m']}-dim token, then GQ."
    )


# ----------------------------------------------------------------------------- rendering
def render_markdown(report: dict[str, Any], title: str = "Bits-back rate analysis") -> str:
    """The report as Markdown: summary, one row per m, the candidates at the requested bpp."""
    r = report
    pd, pp = r["per_dim"], r["per_position"]
    lines = [
        f"# {title}",
        "",
        f"- latent: C = {r['latent_channels']}, f = {r['factor']}, {r['latent_shape'][0]}x"
        f"{r['latent_shape'][1]} positions, {r['images']} images; {r['latent_space']}",
        f"- per-dimension rate (bits): mean {pd['mean']:.3f}, p1 {pd['p1']:.3f}, "
        f"p50 {pd['p50']:.3f}, p99 {pd['p99']:.3f}, max {pd['p100']:.3f}",
        f"- per-position rate (bits, sum over C): mean {pp['mean']:.2f}, p99 {pp['p99']:.2f}; "
        f"the requested {r['requested_bpp']:g} bpp gives {r['bits_per_position']:g} bits per "
        "position",
        "",
        "| m | tokens/position | mean R | p50 | p99 | max | log2 K needed | bpp needed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in r["dims"]:
        need = "-" if d["log2k_needed"] is None else str(d["log2k_needed"])
        bpp = "-" if d["bpp_needed"] is None else f"{d['bpp_needed']:g}"
        lines.append(
            f"| {d['m']} | {d['tokens_per_position']} | {d['mean']:.2f} | {d['p50']:.2f} | "
            f"{d['p99']:.2f} | {d['p100']:.2f} | {need} | {bpp} |"
        )
    lines += [
        "",
        f"log2 K needed: smallest log2 K <= {r['max_log2k']} with at most "
        f"{100 * r['fit_share']:g}% of tokens above it.",
        "",
        f"## At {r['requested_bpp']:g} bpp",
        "",
    ]
    if r["candidates"]:
        lines += [
            "| K | m | tokens/position | exceed share | mean failure bound | fits |",
            "|---|---|---|---|---|---|",
        ]
        for cnd in r["candidates"]:
            note = "" if cnd["bound_is_theorem"] else " (guide)"
            lines.append(
                f"| 2^{cnd['log2k']} | {cnd['m']} | {cnd['tokens_per_position']} | "
                f"{100 * cnd['exceed_share']:.2f}% | {cnd['failure_bound_mean']:.3g}{note} | "
                f"{'yes' if cnd['fits'] else 'no'} |"
            )
        lines.append("")
    lines += [r["statement"], ""]
    return "\n".join(lines)


def plot_histograms(analysis: RateAnalysis, out) -> None:
    """One panel per m: histogram of token rates (bits) with ``log2 K`` of the requested bpp
    (solid) and the smallest fitting ``log2 K`` (dashed). PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gaussquant.io import atomic_path

    r = analysis.report
    at_bpp = {cnd["m"]: cnd["log2k"] for cnd in r["candidates"]}
    dims = r["dims"]
    fig, axes = plt.subplots(1, len(dims), figsize=(3.2 * len(dims), 3.0), squeeze=False)
    for ax, d in zip(axes[0], dims):
        bits = analysis.token_bits[d["m"]]
        ax.hist(bits, bins=60, color="0.55")
        if d["m"] in at_bpp:
            k = at_bpp[d["m"]]
            ax.axvline(k, color="tab:red", label=f"log2 K = {k} ({r['requested_bpp']:g} bpp)")
        if d["log2k_needed"] is not None:
            k = d["log2k_needed"]
            ax.axvline(k, color="tab:blue", ls="--", label=f"fits from log2 K = {k}")
        ax.set_yscale("log")
        ax.set_title(f"m = {d['m']} ({d['tokens_per_position']} tokens/pos)", fontsize=9)
        ax.set_xlabel("token rate (bits)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("tokens")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
