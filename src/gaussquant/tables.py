"""Comparison tables from metrics JSONs: CSV (raw numbers), Markdown and LaTeX (formatted,
arrows for the better direction, best quantized value per (arch, rate) group in bold).

For the ``paper`` profile the published numbers of SPEC 7 go in separate ``paper ...``
columns, never mixed with ours.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gaussquant.errors import GaussquantError
from gaussquant.io import write_json, write_text
from gaussquant.methods import ROWS, display_name
from gaussquant.published import published

# metric key -> (column title, higher is better)
METRICS = {
    "psnr": ("PSNR", True),
    "ssim": ("SSIM", True),
    "lpips": ("LPIPS", False),
    "rfid": ("rFID", False),
    "codebook_usage": ("Usage", True),
    "perplexity": ("Perplexity", True),
}
ARROW = {True: "\u2191", False: "\u2193"}


def load_metrics(paths: Sequence[str | Path]) -> pd.DataFrame:
    rows = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise GaussquantError(
                f"metrics file {str(p)!r} not found (run gaussquant evaluate first)"
            )
        rows.append(json.loads(p.read_text()))
    if not rows:
        raise GaussquantError("no metrics files given")
    return pd.DataFrame(rows)


def build_table(df: pd.DataFrame, with_published: bool = False) -> pd.DataFrame:
    """One row per (arch, rate, evaluated model), numeric columns, ordered for reading."""
    order = {name: i for i, name in enumerate(ROWS)}
    df = df.assign(_order=df["name"].map(lambda n: order.get(n, len(order))))
    df = df.sort_values(["arch", "bpp", "_order"]).reset_index(drop=True)
    out = pd.DataFrame(
        {
            "arch": df["arch"].str.upper().str.replace("VIT", "ViT").str.replace("UNET", "UNet"),
            "bpp": df["bpp"],
            "method": df["name"].map(display_name),
            "tokens": df["tokens_per_image"],
            "images": df["n_images"],
        }
    )
    for key in METRICS:
        out[key] = df[key] if key in df else math.nan
    out["quantized"] = df["quantized"]
    if with_published:
        for key in ("psnr", "ssim", "lpips", "rfid"):
            out[f"paper_{key}"] = [
                (published(a, n, b) or {}).get(key, math.nan)
                for a, n, b in zip(df["arch"], df["name"], df["bpp"])
            ]
    return out


def _best_mask(table: pd.DataFrame) -> pd.DataFrame:
    """True where a value is the best of its column among quantized rows of its (arch, bpp)."""
    mask = pd.DataFrame(False, index=table.index, columns=table.columns)
    for _, group in table[table["quantized"]].groupby(["arch", "bpp"]):
        for key, (_, higher) in METRICS.items():
            col = group[key].dropna()
            if len(col) > 1:
                best = col.max() if higher else col.min()
                mask.loc[col.index[col == best], key] = True
    return mask


def format_table(
    table: pd.DataFrame, decimals: dict[str, int], bold: tuple[str, str]
) -> pd.DataFrame:
    """Strings for display: fixed decimals, best values wrapped in ``bold``, arrows in headers."""
    mask = _best_mask(table)
    shown = pd.DataFrame(index=table.index)
    shown["Arch"] = table["arch"]
    shown["bpp"] = table["bpp"].map(lambda v: f"{v:g}")
    shown["Method"] = table["method"]
    shown["Tokens"] = table["tokens"].map(lambda v: f"{int(v)}" if v else "-")  # 0: continuous row
    for key, (title, higher) in METRICS.items():
        if pd.to_numeric(table[key]).isna().all():  # not computed (e.g. eval.fid: false)
            continue
        d = decimals.get(key, 3 if key not in ("perplexity",) else 1)
        cells = []
        for i, v in table[key].items():
            text = "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"
            cells.append(f"{bold[0]}{text}{bold[1]}" if mask.at[i, key] else text)
        shown[f"{title} {ARROW[higher]}"] = cells
    for key in ("psnr", "ssim", "lpips", "rfid"):
        col = f"paper_{key}"
        if col in table:
            title, higher = METRICS[key]
            d = decimals.get(key, 3)
            shown[f"paper {title} {ARROW[higher]}"] = table[col].map(
                lambda v, d=d: "-" if math.isnan(v) else f"{v:.{d}f}"
            )
    return shown


def write_tables(
    table: pd.DataFrame, prefix: str | Path, decimals: dict[str, int], caption: str
) -> list[Path]:
    """Write ``prefix``.csv (raw), .md and .tex (formatted) and .json (DVC metrics, nested
    arch -> bpp -> method -> metric). Returns the paths."""
    prefix = Path(prefix)
    paths = [prefix.with_suffix(s) for s in (".csv", ".md", ".tex", ".json")]
    write_text(paths[0], table.to_csv(index=False, float_format="%.6g"))
    nested: dict = {}
    for _, row in table.iterrows():
        cell = nested.setdefault(row["arch"], {}).setdefault(f"{row['bpp']:g}bpp", {})
        cell[row["method"]] = {k: _finite(row[k]) for k in METRICS}
    write_json(paths[3], nested)
    md = format_table(table, decimals, ("**", "**")).to_markdown(index=False)
    write_text(
        paths[1], f"{caption}\n\n{md}\n\nBest quantized value per architecture and rate in bold.\n"
    )
    tex_df = format_table(table, decimals, ("\\textbf{", "}"))
    tex_df.columns = [
        c.replace("\u2191", "$\\uparrow$").replace("\u2193", "$\\downarrow$")
        for c in tex_df.columns
    ]
    tex = tex_df.to_latex(index=False, escape=False, caption=caption, label=f"tab:{prefix.name}")
    write_text(paths[2], tex)
    return paths


def _finite(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
