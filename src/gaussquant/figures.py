"""Figures: rate-distortion curves (paper Figure 1 style), per-token KL histograms (vanilla vs
TDC), TDC training dynamics, reconstruction grids. All written atomically as PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gaussquant.io import atomic_path  # noqa: E402
from gaussquant.methods import ROWS, color, display_name  # noqa: E402
from gaussquant.published import published  # noqa: E402
from gaussquant.records import METRICS  # noqa: E402


def _save(fig: plt.Figure, path: str | Path, pdf: str | Path | None = None) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png")
    if pdf is not None:
        with atomic_path(pdf) as tmp:
            fig.savefig(tmp, bbox_inches="tight", format="pdf")
    plt.close(fig)


def seed_summary(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Mean and 95 % half width over training seeds (0 with one seed) per (arch, rate, name);
    the rate is ``bits`` per latent position and its ``bpp``."""
    from gaussquant.stats import mean_ci

    rows = []
    for (arch, bits, bpp, name), g in df.groupby(["arch", "bits", "bpp", "name"]):
        row = {"arch": arch, "bits": int(bits), "bpp": float(bpp), "name": name}
        for key in keys:
            v = pd.to_numeric(g[key], errors="coerce").dropna().to_numpy()
            row[key] = float(v.mean()) if v.size else np.nan
            row[f"{key}_ci"] = mean_ci(v).half_width if v.size >= 2 else 0.0
        row["n_seeds"] = len(g)
        rows.append(row)
    return pd.DataFrame(rows)


def _seeds_caption(summary: pd.DataFrame) -> str:
    """What a point and its error bar are, from the seed counts behind ``summary``."""
    lo, hi = int(summary["n_seeds"].min()), int(summary["n_seeds"].max())
    if hi == 1:
        return "one training seed per point: no error bars"
    seeds = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"mean over {seeds} training seeds, error bars 95 % CI"


def rate_distortion(
    df: pd.DataFrame, out: str | Path, with_published: bool = False, pdf: str | Path | None = None
) -> None:
    """Metrics vs bits per pixel (Figure 1 of the paper): one panel row per backbone, one
    column per metric, one curve per evaluated row, points = means over training seeds with
    95 % CI error bars. Published numbers (paper preset) are drawn dashed beside ours,
    labelled "paper", never joined to our data. With one rate: grouped bars instead."""
    keys = [k for k in ("psnr", "ssim", "lpips") if pd.to_numeric(df[k]).notna().any()]
    if "rfid" in df and pd.to_numeric(df["rfid"]).notna().any():
        keys.append("rfid")  # absent where evaluation ran with eval.fid: false (quick preset)
    summary = seed_summary(df, keys)
    if summary["bpp"].nunique() == 1:  # a curve has no x-extent: compare as bars
        _metric_bars(summary, keys, out, pdf)
        return
    archs = [a for a in ("unet", "vit") if a in set(summary["arch"])]
    fig, axes = plt.subplots(
        len(archs),
        len(keys),
        figsize=(4.2 * len(keys) + 2.2, 3.6 * len(archs)),
        squeeze=False,
        layout="constrained",  # keeps x labels off the next row's titles
    )
    for i, arch in enumerate(archs):
        sub = summary[summary["arch"] == arch]
        for ax, key in zip(axes[i], keys):
            title, higher = METRICS[key]
            for name in [n for n in ROWS if n in set(sub["name"])]:
                g = sub[sub["name"] == name].sort_values("bpp")
                ax.errorbar(
                    g["bpp"], g[key], yerr=g[f"{key}_ci"], marker="o", capsize=3,
                    color=color(name), label=display_name(name),
                )  # fmt: skip
                if with_published:
                    # the paper's point of the same bits per latent position (its f8 token)
                    pts = [
                        (b, (published(arch, name, n) or {}).get(key))
                        for b, n in zip(g["bpp"], g["bits"])
                    ]
                    pts = [(b, v) for b, v in pts if v is not None]
                    if pts:
                        ax.plot(*zip(*pts), "--", marker="s", mfc="none", color=color(name),
                                label=f"{display_name(name)}, paper")  # fmt: skip
            ax.set_xscale("log", base=2)
            ticks = sub.groupby("bpp")["bits"].first().sort_index()  # a rate is one bits value
            ax.set_xticks(ticks.index, [f"{b:g}\n({n:g})" for b, n in ticks.items()])
            ax.set_xlabel("bits per pixel (bits per latent position)")
            ax.set_title(f"{_ARCH[arch]}: {title} ({'higher' if higher else 'lower'} is better)")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.suptitle(f"Rate-distortion: {_seeds_caption(summary)}")
    _save(fig, out, pdf)


_ARCH = {"unet": "UNet", "vit": "ViT"}


def _metric_bars(
    summary: pd.DataFrame, keys: list[str], out: str | Path, pdf: str | Path | None = None
) -> None:
    names = [n for n in ROWS if n in set(summary["name"])]
    archs = [a for a in ("unet", "vit") if a in set(summary["arch"])]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8))
    width = 0.8 / len(archs)
    for ax, key in zip(axes, keys):
        title, higher = METRICS[key]
        for j, arch in enumerate(archs):
            sub = summary[summary["arch"] == arch].set_index("name")
            vals = [float(sub.at[n, key]) if n in sub.index else np.nan for n in names]
            errs = [float(sub.at[n, f"{key}_ci"]) if n in sub.index else 0.0 for n in names]
            ax.bar(
                np.arange(len(names)) + j * width,
                vals,
                width,
                yerr=errs,
                capsize=2,
                color=[color(n) for n in names],
                hatch="" if arch == "unet" else "//",
                edgecolor="white",
                label=_ARCH[arch],
            )
        ax.set_xticks(np.arange(len(names)) + width * (len(archs) - 1) / 2)
        ax.set_xticklabels(
            [display_name(n).replace(", ", "\n") for n in names],
            rotation=60,
            ha="right",
            fontsize=7,
        )
        ax.set_title(f"{title} ({'higher' if higher else 'lower'} is better)")
        ax.grid(alpha=0.3, axis="y")
        if key == "psnr":  # dB: differences matter, not the distance from 0
            lo = np.nanmin(summary[key].astype(float))
            ax.set_ylim(bottom=max(0.0, lo - 2.0))
    axes[0].legend(fontsize=8, title="hatched: ViT")
    fig.suptitle(
        f"Reconstruction at {summary['bpp'].iloc[0]:g} bits per pixel ({_seeds_caption(summary)})"
    )
    _save(fig, out, pdf)


def kl_histograms(
    rates: dict[str, np.ndarray], target: float, out: str | Path
) -> dict[str, list[float]]:
    """Histogram of per-token KL (bits) for each model; ``rates[label]`` is a flat array.
    Returns the [min, max] range of each."""
    fig, ax = plt.subplots(figsize=(7, 4))
    allv = np.concatenate([v for v in rates.values() if v.size])
    bins = np.linspace(0, max(float(np.percentile(allv, 99.5)), target * 1.5), 80)
    ranges = {}
    for label, v in rates.items():
        ranges[label] = [float(v.min()), float(v.max())]
        ax.hist(
            np.clip(v, 0, bins[-1]),
            bins=bins,
            alpha=0.55,
            density=True,
            label=f"{label}: {v.min():.2f}-{v.max():.2f} bits",
        )
    ax.axvline(target, color="k", linestyle=":", label=f"target log2 K = {target:g}")
    ax.set_xlabel("KL per token (bits)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("Per-token KL on validation images: vanilla vs TDC")
    _save(fig, out)
    return ranges


def tdc_dynamics(
    logs: dict[str, pd.DataFrame],
    target: float,
    tolerance: float,
    out: str | Path,
    checks: dict[str, dict | None] | None = None,
) -> None:
    """Bits per token (mean, min, max) and the three multipliers over training steps; the
    end-of-training TDC check of each run (validation p05-p95, share within +-alpha, the
    verdict; multipliers at a bound are named, not judged) in its label, and its shares of
    validation tokens below, within and above target +- alpha in a third panel."""
    fig, (ax1, ax2, ax3) = plt.subplots(
        1, 3, figsize=(20, 4.5), gridspec_kw={"wspace": 0.35, "width_ratios": [1, 1, 0.8]}
    )
    for i, (label, log) in enumerate(logs.items()):
        c = f"C{i}"
        check = (checks or {}).get(label)
        note = ""
        if check:
            pinned = [k for k, v in check["pinned_last_20pct"].items() if v]
            verdict = "holds" if check["holds"] else "fails"
            verdict += f" ({', '.join(pinned)} at bound, not judged)" if pinned else ""
            note = f": val p05-p95 {check['val_p05']:.1f}-{check['val_p95']:.1f}"
            if "val_within_tolerance" in check:  # summaries written before it lack the share
                note += f", {check['val_within_tolerance']:.0%} within"
            note += f", TDC {verdict}"
        ax1.plot(log["step"], log["bits_mean"], color=c, label=f"{label} mean{note}")
        ax1.fill_between(log["step"], log["bits_min"], log["bits_max"], color=c, alpha=0.15)
        for key, ls in (("lam", "-"), ("lam_min", ":"), ("lam_max", "--")):
            ax2.plot(log["step"], log[key], ls, color=c, label=f"{label} {key}")
    ax1.axhspan(
        target - tolerance, target + tolerance, color="k", alpha=0.1, label="target +- alpha"
    )
    ax1.set_xlabel("step")
    ax1.set_ylabel("bits per token (band: min-max)")
    below = dict(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # off the curves
    ax1.legend(**below)
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    ax2.set_ylabel("multiplier")
    ax2.legend(ncol=3, **below)
    _tdc_shares(ax3, checks or {})
    fig.suptitle("TDC training dynamics")
    _save(fig, out)


TDC_SHARES = (("below", "#6baed6"), ("within", "#2ca25f"), ("above", "#e34a33"))  # not run colours


def _tdc_shares(ax, checks: dict[str, dict | None]) -> None:
    """One stacked bar per run: the shares of its validation tokens below, within and above
    target +- alpha (what the TDC check judges), with the share the check asks of ``within``."""
    runs = {k: c for k, c in checks.items() if c and "val_within_tolerance" in c}
    y = np.arange(len(runs))
    left = np.zeros(len(runs))
    for side, shade in TDC_SHARES:
        share = np.array([c[f"val_{side}_tolerance"] for c in runs.values()])
        ax.barh(y, share, left=left, color=shade, label=f"{side} target +- alpha")
        left += share
    for c in {c["min_within"] for c in runs.values() if "min_within" in c}:
        ax.axvline(c, color="k", linestyle=":", label=f"the check's least share within: {c:.0%}")
    ax.set_yticks(y, list(runs), fontsize=7)
    ax.invert_yaxis()  # first run on top, as in the legends
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of validation tokens")
    ax.set_title("per-token bits at the end of training", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))


def stack_grids(paths: Sequence[str | Path], out: str | Path) -> None:
    """Reconstructions side by side: one row per validation image, the original first, then
    one column per evaluated model (the same images for all). Each input is an evaluation's
    ``grid.png`` (originals on top, reconstructions below, in ``eval.grid_images`` tiles)."""
    grids = [plt.imread(str(p)) for p in paths]
    h = grids[0].shape[0] // 2
    n = max(1, grids[0].shape[1] // h)  # square tiles
    if any(g.shape != grids[0].shape for g in grids):
        raise ValueError(
            "reconstruction grids differ in size: evaluate them with the same eval.grid_images"
        )
    names = [Path(p).parent.name for p in paths]
    columns = [("original", grids[0][:h])] + [
        (_grid_title(name), g[h : 2 * h]) for name, g in zip(names, grids)
    ]
    size = 1.25
    fig, axes = plt.subplots(
        n, len(columns), figsize=(size * len(columns), size * n + 0.4), squeeze=False
    )
    for j, (title, strip) in enumerate(columns):
        for i in range(n):
            ax = axes[i][j]
            ax.imshow(strip[:, i * h : (i + 1) * h], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.35 / (size * n + 0.4),
                        wspace=0.04, hspace=0.04)  # fmt: skip
    _save(fig, out)


def _grid_title(folder: str) -> str:
    """``gq-continuous-unet-16-s0`` -> "TDC VAE, continuous (reference)" and "UNet" on two lines."""
    for name in sorted(ROWS, key=len, reverse=True):
        if folder.startswith(name + "-"):
            arch = folder[len(name) + 1 :].split("-")[0]
            return f"{display_name(name)}\n{_ARCH.get(arch, arch)}".replace(", ", ",\n", 1)
    return folder
