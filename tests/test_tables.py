"""Tables: best-value marking, arrows, and metrics that were not computed."""

import math

import pandas as pd

from gaussquant.tables import build_table, format_table

DECIMALS = {"psnr": 2, "ssim": 3, "lpips": 3, "rfid": 2}


def _records(rfid):
    rows = []
    for name, psnr, lpips, fid in (("fsq", 15.0, 0.25, 300.0), ("gq", 16.0, 0.20, 310.0)):
        rows.append(
            {
                "name": name,
                "arch": "unet",
                "bpp": 0.25,
                "tokens_per_image": 16,
                "n_images": 128,
                "quantized": True,
                "psnr": psnr,
                "ssim": 0.4,
                "lpips": lpips,
                "rfid": fid if rfid else None,
                "codebook_usage": 0.01,
                "perplexity": 200.0,
            }
        )
    return pd.DataFrame(rows)


def test_best_values_are_bold_in_their_better_direction():
    shown = format_table(build_table(_records(rfid=True)), DECIMALS, ("**", "**"))
    assert list(shown["PSNR \u2191"]) == ["15.00", "**16.00**"]  # higher is better
    assert list(shown["LPIPS \u2193"]) == ["0.250", "**0.200**"]  # lower is better
    assert list(shown["rFID \u2193"]) == ["**300.00**", "310.00"]
    assert list(shown["SSIM \u2191"]) == ["**0.400**", "**0.400**"]  # a tie marks both


def test_a_metric_not_computed_is_left_out():
    table = build_table(_records(rfid=False))
    assert table["rfid"].map(lambda v: v is None or math.isnan(v)).all()
    shown = format_table(table, DECIMALS, ("**", "**"))
    assert not any(c.startswith("rFID") for c in shown.columns)
    assert "PSNR \u2191" in shown.columns and "LPIPS \u2193" in shown.columns
