"""Records later stages read: the metrics JSONs ``gaussquant evaluate`` writes and the metrics
they hold (title, better direction), and the posterior rates a Gaussian VAE's training writes
(``rates.npz``). Tables, figures, ablations and statistics read them through here
(torch-free)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gaussquant.errors import GaussquantError
from gaussquant.io import atomic_path

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
RATES_FILE = "rates.npz"  # beside a Gaussian VAE's model.pt: its validation posterior rates


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


def save_rates(path: Path, rates: dict[str, Any]) -> None:
    """Write :func:`gaussquant.encoding.posterior_rates` (plus ``method``) as plain arrays,
    atomically."""
    target = rates["target"]
    arrays = {
        "token_bits": np.asarray(rates["token_bits"], dtype=np.float32),
        "channel_bits": np.asarray(rates["channel_bits"], dtype=np.float32),
        "dim": np.asarray(rates["dim"], dtype=np.int64),
        "target": np.asarray(np.nan if target is None else target, dtype=np.float64),
        "tolerance": np.asarray(np.nan if target is None else rates["tolerance"]),
        "method": np.asarray(rates["method"]),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_rates(path: Path) -> dict[str, Any]:
    """What :func:`save_rates` wrote (numbers and strings only: no pickle is read)."""
    if Path(path).suffix != ".npz":
        raise GaussquantError(
            f"{path}: expected the {RATES_FILE} a Gaussian VAE's training writes beside model.pt"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        target = float(arrays["target"])
        return {
            "token_bits": arrays["token_bits"],
            "channel_bits": arrays["channel_bits"],
            "dim": int(arrays["dim"]),
            "target": None if np.isnan(target) else target,
            "tolerance": None if np.isnan(target) else float(arrays["tolerance"]),
            "method": str(arrays["method"]),
        }
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise GaussquantError(
            f"{path} is not a rates file written by training ({type(err).__name__}: {err})"
        ) from None
