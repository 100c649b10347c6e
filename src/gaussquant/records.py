"""Evaluation records: the metrics JSONs ``gaussquant evaluate`` writes, and the metrics they
hold (title, better direction). Tables, figures and statistics read them through here
(torch-free)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gaussquant.errors import GaussquantError

# metric key -> (column title, higher is better)
METRICS = {
    "psnr": ("PSNR", True),
    "ssim": ("SSIM", True),
    "lpips": ("LPIPS", False),
    "rfid": ("rFID", False),
    "codebook_usage": ("Usage", True),
    "code_bits": ("Code bits/position", True),  # log2 perplexity x tokens per position
}
# Shown but never bold: the share of codes used is bounded by tokens / K, so it compares only
# methods with the same alphabet (one 16-bit token vs two 8-bit sub-codes, say)
NOT_COMPARABLE = ("codebook_usage",)
PAPER_METRICS = ("psnr", "ssim", "lpips", "rfid")  # what docs/method.md §7 reports


def load_metrics(paths: Sequence[str | Path]) -> pd.DataFrame:
    """One row per metrics JSON (one evaluated run); ``seed`` 0 where a record has none."""
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
    df = pd.DataFrame(rows)
    if "seed" not in df:
        df["seed"] = 0
    return df
