"""Ablations of docs/method.md §3 and §7 on a trained TDC VAE: codebook size K vs rate, TDC tolerance,
codebook seed, and the per-token / per-dimension KL range of vanilla vs TDC.

Each function takes metrics records (``gaussquant evaluate`` JSONs) and/or posterior rate
arrays, and returns a DataFrame; :func:`write_ablation` writes it as CSV + Markdown and draws
its figure.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gaussquant.io import atomic_path, write_text  # noqa: E402

METRIC_COLS = ["psnr", "ssim", "lpips", "rfid", "codebook_usage", "code_bits"]
PAPER_KL = {"vanilla": (0.26, 27.29), "tdc": (2.93, 5.63)}  # bits per dimension (docs/method.md §7)


def _metrics(records: list[dict], **cols) -> pd.DataFrame:
    """Metric columns of the records; one not computed for any (rFID with eval.fid off) left out."""
    df = pd.DataFrame([{k: r.get(k) for k in METRIC_COLS} for r in records])
    df = df[[k for k in METRIC_COLS if df[k].notna().any()]]
    for name, values in cols.items():
        df.insert(0, name, values)
    return df


def codebook_size_table(records: list[dict], rate_bits: float) -> pd.DataFrame:
    """Reconstruction vs log2 K - R, R = the VAE's mean per-token KL in bits."""
    ks = [r["checkpoint"]["quantizer"]["codebook_size"] for r in records]
    df = _metrics(records, log2K=[int(math.log2(k)) for k in ks], K=ks)
    df.insert(2, "log2K_minus_R", df["log2K"] - rate_bits)
    return df.sort_values("K").reset_index(drop=True)


def seed_table(records: list[dict]) -> pd.DataFrame:
    seeds = [r["checkpoint"]["quantizer"]["seed"] for r in records]
    df = _metrics(records, seed=seeds).sort_values("seed").reset_index(drop=True)
    summary = {"seed": "mean +- std"}
    metric_cols = [c for c in METRIC_COLS if c in df]
    for col in metric_cols:
        v = pd.to_numeric(df[col], errors="coerce")
        summary[col] = f"{v.mean():.4g} +- {v.std(ddof=1):.2g}" if v.notna().sum() > 1 else "-"
    shown = df.astype(object)
    for col in metric_cols:
        shown[col] = [
            f"{v:.4g}" if isinstance(v, (int, float)) and v == v else "-" for v in df[col]
        ]
    shown["seed"] = df["seed"].astype(str)
    return pd.concat([shown, pd.DataFrame([summary])], ignore_index=True)


def tolerance_table(
    records: list[dict], tolerances: list[float], rates: list[dict]
) -> pd.DataFrame:
    df = _metrics(records, tolerance=tolerances)
    df["token_bits_min"] = [float(r["token_bits"].min()) for r in rates]
    df["token_bits_max"] = [float(r["token_bits"].max()) for r in rates]
    df["token_bits_std"] = [float(r["token_bits"].std()) for r in rates]
    return df.sort_values("tolerance").reset_index(drop=True)


def kl_range_table(rates: dict[str, dict]) -> pd.DataFrame:
    """Per-token and per-dimension KL ranges (bits) of each VAE, next to the paper's ranges."""
    rows = []
    for label, r in rates.items():
        tb, cb = r["token_bits"], r["channel_bits"]
        paper = PAPER_KL["tdc" if r["method"] != "vanilla" else "vanilla"]
        rows.append(
            {
                "model": label,
                "m": r["dim"],
                "token_bits_min": float(tb.min()),
                "token_bits_max": float(tb.max()),
                "dim_bits_min": float(cb.min()),
                "dim_bits_max": float(cb.max()),
                "paper_dim_bits_range": f"{paper[0]}-{paper[1]}",
            }
        )
    return pd.DataFrame(rows)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png")
    plt.close(fig)


def plot(kind: str, df: pd.DataFrame, out: Path, rates: dict[str, dict] | None = None) -> None:
    if kind == "kl":
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for label, r in (rates or {}).items():
            axes[0].hist(r["token_bits"], bins=60, alpha=0.55, density=True, label=label)
            axes[1].bar(
                [f"{label}\n{i}" for i in range(len(r["channel_bits"]))],
                r["channel_bits"],
                alpha=0.7,
            )
        axes[0].set_xlabel("KL per token (bits)")
        axes[0].legend()
        axes[1].set_ylabel("mean KL per latent dimension (bits)")
        axes[1].tick_params(axis="x", labelsize=5, rotation=90)
        _save(fig, out)
        return
    num = df[pd.to_numeric(df["psnr"], errors="coerce").notna()]
    x = {"codebook": "log2K_minus_R", "tolerance": "tolerance", "seed": "seed"}[kind]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))

    def values(col):  # seed tables hold formatted text ("-" where a metric was not computed)
        missing = pd.Series(math.nan, index=num.index)
        return pd.to_numeric(num[col], errors="coerce") if col in num else missing

    third = "rfid" if values("rfid").notna().any() else "ssim"  # eval.fid: false
    for ax, col in zip(axes, ("psnr", "lpips", third)):
        xs = num[x].astype(float) if kind != "seed" else num[x].astype(str)
        ax.plot(xs, values(col), marker="o")
        ax.set_xlabel({"log2K_minus_R": "log2 K - R (bits)"}.get(x, x))
        ax.set_title({"rfid": "rFID"}.get(col, col.upper()))
        ax.grid(alpha=0.3)
        if kind == "codebook":
            ax.axvline(0, color="k", linestyle=":")
    _save(fig, out)


def write_ablation(df: pd.DataFrame, prefix: Path, caption: str) -> None:
    write_text(prefix.with_suffix(".csv"), df.to_csv(index=False, float_format="%.6g"))
    write_text(
        prefix.with_suffix(".md"), f"{caption}\n\n{df.to_markdown(index=False, floatfmt='.4g')}\n"
    )


def mean_bits(rates: dict) -> float:
    return float(np.mean(rates["token_bits"]))
