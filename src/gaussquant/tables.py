"""Comparison tables from metrics JSONs: CSV (raw numbers), Markdown and LaTeX (formatted,
arrows for the better direction), over training seeds.

Each evaluated row exists once per training seed (``experiment.seeds``). A table cell is the
mean over seeds with its 95 % Student-t half width (``± ...``; none with one seed); the CSV
keeps the per-seed values beside it and the evaluation-sample part of the noise (a per-image
bootstrap of each run, ``_boot95``). A value is bold only where it is *significantly* best
among the quantized rows of its (arch, rate): paired by seed, better than every other row
(:func:`gaussquant.stats.significantly_best`); otherwise nothing is bold. The verdict table
(:func:`verdicts`) gives GQ minus each baseline with its interval and a verdict word.

For the ``paper`` preset the published numbers of docs/method.md §7 go in separate ``paper ...``
columns, never mixed with ours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gaussquant import stats
from gaussquant.errors import GaussquantError
from gaussquant.io import write_json, write_text
from gaussquant.methods import ROWS, display_name
from gaussquant.published import published
from gaussquant.records import (  # noqa: F401 (load_metrics re-exported)
    METRICS,
    NOT_COMPARABLE,
    PAPER_METRICS,
    load_metrics,
)

ARROW = {True: "\u2191", False: "\u2193"}
LEVEL = 0.95
_POWER_PCT = f"{stats.POWER * 100:.0f} %"  # "80 %", for the verdict table's text
_MDE_HEAD, _SEEDS_HEAD = f"Detectable at {_POWER_PCT} power", "Seeds for the paper's gap"
_NUMBER_COLUMNS = (
    "Bits",
    "Seeds",
    _MDE_HEAD,
    "Paper's gap",
    _SEEDS_HEAD,
    "Correlation",
    "Methods",
)  # right-aligned


def _arch_title(arch: str) -> str:
    return {"unet": "UNet", "vit": "ViT"}.get(arch, arch)


def build_table(df: pd.DataFrame, with_published: bool = False) -> pd.DataFrame:
    """One row per (arch, rate, evaluated model): per metric the mean over seeds (``m``), its
    95 % half width (``m_ci95``, NaN with one seed), the per-seed values (``m_per_seed``), the
    mean per-run bootstrap half width over images (``m_boot95``, where per-image values exist)
    and whether it is significantly best (``m_best``)."""
    order = {name: i for i, name in enumerate(ROWS)}
    df = df.assign(seed=df["seed"].fillna(0).astype(int))
    dup = df[df.duplicated(["arch", "bits", "name", "seed"])]
    if len(dup):
        raise GaussquantError(
            f"metrics of one run given twice: {dup[['arch', 'bits', 'name', 'seed']].values.tolist()}"
        )
    rows = []
    for (arch, bits, name), g in df.groupby(["arch", "bits", "name"], sort=False):
        g = g.sort_values("seed")
        row = {
            "arch": _arch_title(arch),
            "bits": int(bits),  # the rate: bits per latent position
            "bpp": float(g["bpp"].iloc[0]),
            "method": display_name(name),
            "name": name,
            "tokens": g["tokens_per_image"].iloc[0],
            "images": g["n_images"].iloc[0],
            "seeds": len(g),
            "quantized": bool(g["quantized"].iloc[0]),
            "_order": (arch, bits, order.get(name, len(order))),
        }
        for key in METRICS:
            row.update(_metric_cells(g, key))
        if with_published:
            for key in PAPER_METRICS:
                # the paper's value at the same bits per latent position (its f8 token)
                row[f"paper_{key}"] = (published(arch, name, bits) or {}).get(key, math.nan)
        rows.append(row)
    out = pd.DataFrame(rows).sort_values("_order").drop(columns="_order").reset_index(drop=True)
    return _mark_best(out, df)


def _metric_cells(g: pd.DataFrame, key: str) -> dict:
    values = pd.to_numeric(g[key], errors="coerce") if key in g else pd.Series([math.nan] * len(g))
    cells = {key: float(values.mean()), f"{key}_ci95": math.nan, f"{key}_boot95": math.nan}
    cells[f"{key}_per_seed"] = ";".join(f"{s}:{v:.6g}" for s, v in zip(g["seed"], values) if v == v)
    if values.notna().all() and len(values) >= 2:
        cells[f"{key}_ci95"] = stats.mean_ci(values.to_numpy(), LEVEL).half_width
    per_image = [r.get(key) for r in g["per_image"]] if "per_image" in g else []
    if per_image and all(isinstance(v, list) and len(v) >= 2 for v in per_image):
        halves = [stats.bootstrap_ci(v, LEVEL).half_width for v in per_image]
        cells[f"{key}_boot95"] = float(np.mean(halves))
    return cells


def _mark_best(table: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """``m_best``: the quantized row that is significantly best of its (arch, rate), paired by seed."""
    for key, (_, higher) in METRICS.items():
        table[f"{key}_best"] = False
        if key not in df or key in NOT_COMPARABLE:
            continue
        for (arch, bits), g in df[df["quantized"].astype(bool)].groupby(["arch", "bits"]):
            cells = {
                name: dict(zip(r["seed"], pd.to_numeric(r[key], errors="coerce")))
                for name, r in g.groupby("name")
            }
            if any(math.isnan(v) for c in cells.values() for v in c.values()):
                continue
            best = stats.significantly_best(cells, higher, LEVEL)
            if best is not None:
                hit = (table["arch"] == _arch_title(arch)) & (table["bits"] == bits)
                table.loc[hit & (table["name"] == best), f"{key}_best"] = True
    return table


def _cell(v: float, half: float, d: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{d}f}" if math.isnan(half) else f"{v:.{d}f} \u00b1 {half:.{d}f}"


def format_table(
    table: pd.DataFrame, decimals: dict[str, int], bold: tuple[str, str]
) -> pd.DataFrame:
    """Strings for display: mean ± 95 % CI over seeds, fixed decimals, significantly best
    values wrapped in ``bold``, arrows in headers."""
    shown = pd.DataFrame(index=table.index)
    shown["Arch"] = table["arch"]
    shown["Bits"] = table["bits"].map(str)  # per latent position: the rate
    shown["bpp"] = table["bpp"].map(lambda v: f"{v:g}")  # bits / f^2
    shown["Method"] = table["method"]
    shown["Tokens"] = table["tokens"].map(lambda v: f"{int(v)}" if v else "-")  # 0: continuous row
    shown["Seeds"] = table["seeds"].map(str)
    for key, (title, higher) in METRICS.items():
        if pd.to_numeric(table[key]).isna().all():  # not computed (e.g. eval.fid: false)
            continue
        d = decimals.get(key, 3 if key != "code_bits" else 2)
        cells = []
        for i in table.index:
            text = _cell(table.at[i, key], table.at[i, f"{key}_ci95"], d)
            cells.append(f"{bold[0]}{text}{bold[1]}" if table.at[i, f"{key}_best"] else text)
        shown[f"{title} {ARROW[higher]}"] = cells
    for key in PAPER_METRICS:
        col = f"paper_{key}"
        if col in table:
            title, higher = METRICS[key]
            d = decimals.get(key, 3)
            shown[f"paper {title} {ARROW[higher]}"] = table[col].map(
                lambda v, d=d: "-" if math.isnan(v) else f"{v:.{d}f}"
            )
    return shown


def _note(table: pd.DataFrame) -> str:
    n = sorted(set(table["seeds"]))
    seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
    if max(n) < 2:
        return (
            "One training seed per cell: no confidence interval and no significance, so nothing "
            "is bold (set experiment.seeds to >= 2 seeds)."
        )
    return (
        f"Mean ± 95 % CI (Student t) over {seeds} training seeds. Bold: significantly best "
        "quantized value of its architecture and rate (paired by seed, better than every other "
        "row at 95 %); no bold where no row is. Per-seed values and the evaluation-sample "
        "(per-image bootstrap) half widths are in the CSV."
    )


def write_tables(
    table: pd.DataFrame, prefix: str | Path, decimals: dict[str, int], caption: str
) -> list[Path]:
    """Write ``prefix``.csv (raw), .md and .tex (formatted) and .json (DVC metrics, nested
    arch -> bits per latent position -> method -> metric -> mean, ci95, boot95, per_seed). Returns the paths."""
    prefix = Path(prefix)
    paths = [prefix.with_suffix(s) for s in (".csv", ".md", ".tex", ".json")]
    write_text(paths[0], table.to_csv(index=False, float_format="%.6g"))
    write_json(paths[3], _nested(table))
    md = format_table(table, decimals, ("**", "**")).to_markdown(index=False)
    write_text(paths[1], f"{caption}\n\n{md}\n\n{_note(table)}\n")
    tex_df = format_table(table, decimals, ("\\textbf{", "}"))
    tex_df.columns = [
        c.replace("\u2191", "$\\uparrow$").replace("\u2193", "$\\downarrow$")
        for c in tex_df.columns
    ]
    tex_df = tex_df.map(lambda v: v.replace("\u00b1", "$\\pm$"))
    tex = tex_df.to_latex(index=False, escape=False, caption=caption, label=f"tab:{prefix.name}")
    write_text(paths[2], tex)
    return paths


def _nested(table: pd.DataFrame) -> dict:
    nested: dict = {}
    for _, row in table.iterrows():
        cell = nested.setdefault(row["arch"], {}).setdefault(f"{row['bits']}bits", {})
        cell[row["method"]] = {
            k: {
                "mean": _finite(row[k]),
                "ci95": _finite(row[f"{k}_ci95"]),
                "boot95": _finite(row[f"{k}_boot95"]),
                "per_seed": {
                    s: float(v)
                    for s, v in (p.split(":") for p in row[f"{k}_per_seed"].split(";") if p)
                },
            }
            for k in METRICS
        }
    return nested


def _finite(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


# ----------------------------------------------------------------------------- verdicts


def verdicts(df: pd.DataFrame, baselines: Sequence[str]) -> pd.DataFrame:
    """GQ minus each of ``baselines`` per (arch, rate, metric), paired by seed (needs >= 2
    seeds: with fewer, every row says so instead of a verdict)."""
    metrics = [m for m in PAPER_METRICS if m in df and pd.to_numeric(df[m]).notna().any()]
    keep = df[df["name"].isin(["gq", *baselines])].assign(seed=lambda d: d["seed"].astype(int))
    if keep.groupby(["arch", "bits", "name"])["seed"].nunique().min() < 2:
        rows = [
            {"arch": a, "bits": b, "baseline": n, "metric": m, "n": 1}
            | {"verdict": "needs >= 2 seeds", "paper_agrees": "-"}
            for (a, b), g in keep.groupby(["arch", "bits"])
            for n in baselines
            if n in set(g["name"])
            for m in metrics
        ]  # every other column is NaN
        return pd.DataFrame(rows, columns=stats.VERDICT_COLUMNS)
    return stats.verdict_table(keep, metrics, reference="gq", level=LEVEL)


def shared_noise(df: pd.DataFrame, baselines: Sequence[str]) -> pd.DataFrame:
    """:func:`gaussquant.stats.seed_correlation` of the verdicts' metrics over GQ and
    ``baselines`` (the quantized rows: a continuous row shares its training with GQ's)."""
    df = df[df["name"].isin(["gq", *baselines])]
    metrics = [m for m in PAPER_METRICS if m in df and pd.to_numeric(df[m]).notna().any()]
    return stats.seed_correlation(df.assign(seed=lambda d: d["seed"].astype(int)), metrics)


def _shared_text(shared: pd.DataFrame | None) -> str:
    if shared is None or shared["correlation"].isna().all():
        return ""
    shown = pd.DataFrame(
        {
            "Arch": shared["arch"].map(_arch_title),
            "Bits": shared["bits"].map(str),
            "Metric": shared["metric"].map(lambda m: METRICS[m][0]),
            "Correlation": shared["correlation"].map(lambda x: _number(x, "+.2f")),
            "Methods": shared["methods"].map(str),
            "Seeds": shared["seeds"].map(str),
        }
    )
    return (
        "\nShared seed noise: the mean correlation over training seeds between every two "
        "methods' results (1: every method moves with the seed alike, and the paired "
        "differences above lose that noise; 0: none shared). Each method of a seed starts "
        "from the same backbone initialisation, data order and noise (common random numbers).\n\n"
        f"{_markdown(shown)}\n"
    )


def _number(x: float, spec: str) -> str:
    """``x`` formatted by ``spec``, or "-" when it was not computed (NaN)."""
    return "-" if math.isnan(x) else format(x, spec)


def _verdict_cells(v: pd.DataFrame, column: str, decimals: dict[str, int], sign="") -> list[str]:
    """``v[column]`` as text in each row's metric decimals ("-" where NaN)."""
    return [_number(x, f"{sign}.{decimals.get(m, 3)}f") for x, m in zip(v[column], v["metric"])]


def _seeds_text(n: float) -> str:
    """A seeds-needed cell: the count, "-" (no published gap) or "> cap"."""
    if math.isinf(n):
        return f"> {stats.SEEDS_CAP:,}"
    return _number(n, ".0f")


def _markdown(shown: pd.DataFrame) -> str:
    """Cells as written (no number parsing: "+0.50" stays "+0.50"), numbers right-aligned."""
    align = ["right" if c in _NUMBER_COLUMNS else "left" for c in shown]
    return shown.to_markdown(index=False, disable_numparse=True, colalign=align)


def write_verdicts(
    v: pd.DataFrame,
    prefix: str | Path,
    decimals: dict[str, int],
    shared: pd.DataFrame | None = None,
) -> list[Path]:
    """``v`` as CSV and Markdown; ``shared``: :func:`shared_noise`, drawn below the verdicts."""
    prefix = Path(prefix)
    paths = [prefix.with_suffix(".csv"), prefix.with_suffix(".md")]
    write_text(paths[0], v.to_csv(index=False, float_format="%.6g"))
    shown = pd.DataFrame(
        {
            "Arch": v["arch"].map(_arch_title),
            "Bits": v["bits"].map(str),
            "Baseline": v["baseline"].map(display_name),
            "Metric": v["metric"].map(lambda m: f"{METRICS[m][0]} {ARROW[METRICS[m][1]]}"),
            "GQ − baseline [95 % CI]": [
                "-"
                if math.isnan(r.diff)
                else f"{r.diff:+.{decimals.get(r.metric, 3)}f} [{r.low:+.{decimals.get(r.metric, 3)}f}, "
                f"{r.high:+.{decimals.get(r.metric, 3)}f}]"
                for r in v.itertuples()
            ],
            "Seeds": v["n"],
            _MDE_HEAD: _verdict_cells(v, "mde", decimals),
            "Verdict": v["verdict"],
            "Paper's gap": _verdict_cells(v, "paper_diff", decimals, sign="+"),
            "Paper agrees": v["paper_agrees"],
            _SEEDS_HEAD: v["seeds_needed"].map(_seeds_text),
        }
    )
    counts = v["verdict"].value_counts().to_dict()
    summary = ", ".join(
        f"{counts[k]} {k}" for k in (*stats.VERDICTS, "needs >= 2 seeds") if k in counts
    )
    text = (
        "Paired comparison of GQ with each baseline (difference of means over training seeds, "
        "95 % Student-t interval of the per-seed differences). `GQ better` / `GQ worse` only "
        "where the interval excludes 0. `Paper agrees`: our significant ordering against the "
        "published one (docs/method.md §7) at the same architecture and bits per latent position (the "
        "paper's f8 token of those bits; `n/s`: ours not "
        "significant; `-`: no published value at this rate). "
        f"`{_MDE_HEAD}`: the smallest true difference that this many seeds would find "
        f"significant {_POWER_PCT} of the time, at the measured spread of the per-seed "
        "differences; a `no significant difference` row says little about smaller gaps (they "
        f"would often be missed). `{_SEEDS_HEAD}`: how many seeds would find the published gap "
        f"significant {_POWER_PCT} of the time at that spread (`> {stats.SEEDS_CAP:,}`: more "
        "than that; `-`: no published gap).\n\n"
        f"{_markdown(shown)}\n\nVerdicts: {summary}.\n{_shared_text(shared)}"
    )
    write_text(paths[1], text)
    return paths
