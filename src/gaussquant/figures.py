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
from gaussquant.tables import METRICS  # noqa: E402


def _save(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png")
    plt.close(fig)


def rate_distortion(df: pd.DataFrame, out: str | Path, with_published: bool = False) -> None:
    """PSNR, SSIM, LPIPS, rFID vs bits per pixel; one panel per (metric), UNet solid, ViT dashed.
    Published numbers (paper profile) are drawn as hollow markers, never joined to ours."""
    # rFID is absent where evaluation ran with eval.fid: false (quick profile)
    keys = [k for k in ("psnr", "ssim", "lpips", "rfid") if pd.to_numeric(df[k]).notna().any()]
    if df["bpp"].nunique() == 1:  # one rate: a curve has no x-extent, compare as bars
        _metric_bars(df, keys, out)
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4.25 * len(keys), 3.8))
    for ax, key in zip(axes, keys):
        title, higher = METRICS[key]
        for (arch, name), g in df.groupby(["arch", "name"]):
            g = g.sort_values("bpp")
            style = "-" if arch == "unet" else "--"
            label = f"{display_name(name)} ({'UNet' if arch == 'unet' else 'ViT'})"
            ax.plot(g["bpp"], g[key], style, marker="o", color=color(name), label=label)
            if with_published:
                pts = [(b, published(arch, name, b)) for b in g["bpp"]]
                pts = [(b, p[key]) for b, p in pts if p]
                if pts:
                    ax.plot(
                        *zip(*pts),
                        linestyle="none",
                        marker="s",
                        mfc="none",
                        color=color(name),
                    )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits per pixel")
        ax.set_title(f"{title} ({'higher' if higher else 'lower'} is better)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    if with_published:
        fig.text(0.5, -0.04, "hollow squares: published numbers (SPEC 7)", ha="center", fontsize=8)
    _save(fig, out)


def _metric_bars(df: pd.DataFrame, keys: list[str], out: str | Path) -> None:
    names = [n for n in ROWS if n in set(df["name"])]
    archs = [a for a in ("unet", "vit") if a in set(df["arch"])]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8))
    width = 0.8 / len(archs)
    for ax, key in zip(axes, keys):
        title, higher = METRICS[key]
        for j, arch in enumerate(archs):
            sub = df[df["arch"] == arch].set_index("name")
            vals = [
                float(sub.at[n, key]) if n in sub.index and sub.at[n, key] is not None else np.nan
                for n in names
            ]
            ax.bar(
                np.arange(len(names)) + j * width,
                vals,
                width,
                color=[color(n) for n in names],
                hatch="" if arch == "unet" else "//",
                edgecolor="white",
                label="UNet" if arch == "unet" else "ViT",
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
            lo = np.nanmin(df[key].astype(float))
            ax.set_ylim(bottom=max(0.0, lo - 2.0))
    axes[0].legend(fontsize=8, title="hatched: ViT")
    fig.suptitle(f"Reconstruction at {df['bpp'].iloc[0]:g} bits per pixel")
    _save(fig, out)


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
    logs: dict[str, pd.DataFrame], target: float, tolerance: float, out: str | Path
) -> None:
    """Bits per token (mean, min, max) and the three multipliers over training steps."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    for i, (label, log) in enumerate(logs.items()):
        c = f"C{i}"
        ax1.plot(log["step"], log["bits_mean"], color=c, label=f"{label} mean")
        ax1.fill_between(log["step"], log["bits_min"], log["bits_max"], color=c, alpha=0.15)
        for key, ls in (("lam", "-"), ("lam_min", ":"), ("lam_max", "--")):
            ax2.plot(log["step"], log[key], ls, color=c, label=f"{label} {key}")
    ax1.axhspan(
        target - tolerance, target + tolerance, color="k", alpha=0.1, label="target +- alpha"
    )
    ax1.set_xlabel("step")
    ax1.set_ylabel("bits per token (band: min-max)")
    ax1.legend(fontsize=7)
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    ax2.set_ylabel("multiplier")
    ax2.legend(fontsize=7, ncol=2)
    fig.suptitle("TDC training dynamics")
    _save(fig, out)


def stack_grids(paths: Sequence[str | Path], out: str | Path) -> None:
    """Stack per-model reconstruction grids vertically, each labelled by its folder name."""
    images = [plt.imread(str(p)) for p in paths]
    fig, axes = plt.subplots(len(images), 1, figsize=(10, 1.6 * len(images) + 0.5), squeeze=False)
    for ax, img, p in zip(axes[:, 0], images, paths):
        ax.imshow(img)
        ax.set_axis_off()
        ax.set_title(Path(p).parent.name, fontsize=8, loc="left")
    fig.suptitle("Top row of each: originals; bottom: reconstructions", fontsize=9)
    _save(fig, out)
