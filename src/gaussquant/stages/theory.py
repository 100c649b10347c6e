"""`gaussquant theory`: Monte-Carlo experiment of the 1-D GQ theorems (docs/method.md §3) and an m-D
analogue; writes the results table (CSV) and the figure (PNG). See :mod:`gaussquant.theory`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gaussquant.stages.common import add_params_args, load_stage_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "theory", help="Monte-Carlo check of the docs/method.md §3 theorems (CSV + figure)"
    )
    add_params_args(p)
    p.add_argument("--out-csv", required=True, type=Path, help="results table (CSV)")
    p.add_argument("--out-fig", required=True, type=Path, help="figure (PNG)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gaussquant import theory
    from gaussquant.io import atomic_path

    cfg = load_stage_config(args).theory
    start = time.perf_counter()
    df = theory.run_theory(cfg, progress=not args.no_progress)
    with atomic_path(args.out_csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    theory.plot_theory(df, args.out_fig)
    print(summary(df))
    print(f"theory: {len(df)} rows in {time.perf_counter() - start:.1f} s")
    print(f"wrote {args.out_csv}\nwrote {args.out_fig}")
    return 0


def summary(df) -> str:
    """One line per check: how many i.i.d. nearest-neighbour rows have the exact value inside
    their CI, and how many CIs reach the docs/method.md §3 bounds (both should be all)."""
    rows = df[df.bounds_apply.astype(bool)]
    in_ci = ((rows.exact >= rows.ci_low) & (rows.exact <= rows.ci_high)).sum()
    exact_ok = ((rows.lower <= rows.exact) & (rows.exact <= rows.upper)).sum()
    mc_ok = ((rows.ci_high >= rows.lower) & (rows.ci_low <= rows.upper)).sum()
    return (
        f"theory: exact inside the MC CI: {in_ci}/{len(rows)}; exact within bounds: "
        f"{exact_ok}/{len(rows)}; MC CI meets bounds: {mc_ok}/{len(rows)}"
    )
