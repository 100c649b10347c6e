"""Ablation tables and figures from metrics records (no training)."""

import math

import numpy as np
import pandas as pd
import pytest

from gaussquant import ablations as ab


def _record(k, seed, psnr, rfid):
    return {
        "checkpoint": {"quantizer": {"codebook_size": k, "seed": seed}},
        "psnr": psnr,
        "ssim": 0.4,
        "lpips": 0.2,
        "rfid": rfid,
        "codebook_usage": 0.01,
        "code_bits": 6.6,
    }


def test_codebook_table_orders_by_k_and_measures_k_against_rate():
    recs = [_record(2**k, 42, 10.0 + k, 300.0) for k in (18, 14, 16)]
    df = ab.codebook_size_table(recs, rate_bits=15.5)
    assert list(df["K"]) == [2**14, 2**16, 2**18]
    assert list(df["log2K_minus_R"]) == pytest.approx([-1.5, 0.5, 2.5])
    assert list(df["psnr"]) == [24.0, 26.0, 28.0]


@pytest.mark.parametrize("rfid", [310.0, None])
def test_seed_table_summarises_and_plots_without_missing_metrics(rfid, tmp_path):
    recs = [_record(2**16, s, p, rfid) for s, p in ((42, 16.0), (1, 16.2), (2, 15.8))]
    df = ab.seed_table(recs)
    assert list(df["seed"]) == ["1", "2", "42", "mean +- std"]
    assert df["psnr"].iloc[-1] == "16 +- 0.2"
    assert ("rfid" in df) == (rfid is not None)  # not computed (eval.fid off): left out
    ab.plot("seed", df, tmp_path / "seed.png")
    assert (tmp_path / "seed.png").read_bytes()[:4] == b"\x89PNG"


def test_kl_range_table_reports_token_and_dimension_ranges():
    rates = {
        "vanilla": {
            "method": "vanilla",
            "dim": 2,
            "token_bits": np.array([0.5, 9.0]),
            "channel_bits": np.array([0.1, 4.4, 0.3, 0.2]),
        }
    }
    row = ab.kl_range_table(rates).iloc[0]
    assert (row["token_bits_min"], row["token_bits_max"]) == (0.5, 9.0)
    assert (row["dim_bits_min"], row["dim_bits_max"]) == pytest.approx((0.1, 4.4))
    assert row["paper_dim_bits_range"] == "0.26-27.29"
    assert not math.isnan(pd.to_numeric(row["token_bits_max"]))
