"""Tables over training seeds: mean ± 95 % CI, bold only where significantly best, arrows,
metrics that were not computed, per-seed values in the CSV/JSON, and the verdict table."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from gaussquant.stats import VERDICT_COLUMNS
from gaussquant.tables import build_table, format_table, verdicts, write_tables, write_verdicts

DECIMALS = {"psnr": 2, "ssim": 3, "lpips": 3, "rfid": 2}
T2 = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom


def _records(per_seed: dict[str, list[float]], rfid=True, lpips=None):
    """Runs of fsq and gq (one per seed) with the given PSNR per seed."""
    rows = []
    for name, values in per_seed.items():
        for seed, psnr in enumerate(values):
            rows.append(
                {
                    "name": name,
                    "arch": "unet",
                    "bits": 16,
                    "bpp": 0.25,
                    "seed": seed,
                    "tokens_per_image": 64,
                    "n_images": 4,
                    "quantized": True,
                    "psnr": psnr,
                    "ssim": 0.4,
                    "lpips": (lpips or {}).get(name, [0.2] * len(values))[seed],
                    "rfid": 300.0 + seed if rfid else None,
                    "codebook_usage": 0.01,
                    "code_bits": 7.6,
                    "per_image": {"psnr": [psnr - 1, psnr + 1, psnr, psnr]},
                }
            )
    return pd.DataFrame(rows)


def test_one_seed_gives_plain_values_and_nothing_bold():
    shown = format_table(
        build_table(_records({"fsq": [15.0], "gq": [16.0]})), DECIMALS, ("**", "**")
    )
    assert list(shown["PSNR \u2191"]) == ["15.00", "16.00"]  # no CI, no significance
    assert not shown.map(lambda v: "**" in str(v)).any().any()


def test_mean_ci_over_seeds_and_bold_only_when_significantly_best():
    clear = {"fsq": [15.0, 15.2, 15.1], "gq": [16.0, 16.3, 16.2]}  # gq ahead on every seed
    table = build_table(_records(clear))
    gq = table[table["name"] == "gq"].iloc[0]
    assert gq["psnr"] == pytest.approx(48.5 / 3)
    sd = pd.Series(clear["gq"]).std(ddof=1)
    assert gq["psnr_ci95"] == pytest.approx(T2 * sd / math.sqrt(3))
    assert gq["psnr_per_seed"] == "0:16;1:16.3;2:16.2"
    shown = format_table(table, DECIMALS, ("**", "**"))
    assert shown["PSNR \u2191"].tolist() == [
        f"15.10 \u00b1 {T2 * 0.1 / math.sqrt(3):.2f}",
        f"**16.17 \u00b1 {T2 * sd / math.sqrt(3):.2f}**",
    ]
    # SSIM is tied on every seed: nobody is significantly best, nothing bold (not "both")
    assert not shown["SSIM \u2191"].str.contains(r"\*\*").any()
    # LPIPS: lower is better; gq lower on every seed by a steady margin
    lp = {"fsq": [0.30, 0.31, 0.32], "gq": [0.20, 0.205, 0.215]}
    shown = format_table(build_table(_records(clear, lpips=lp)), DECIMALS, ("**", "**"))
    assert shown["LPIPS \u2193"].iloc[1].startswith("**0.207")


def test_overlapping_seeds_are_not_bold():
    noisy = {"fsq": [15.0, 16.5, 15.4], "gq": [16.0, 15.2, 16.1]}
    shown = format_table(build_table(_records(noisy)), DECIMALS, ("**", "**"))
    assert not shown["PSNR \u2191"].str.contains(r"\*\*").any()


def test_a_metric_not_computed_is_left_out():
    table = build_table(_records({"fsq": [15.0, 15.1], "gq": [16.0, 16.1]}, rfid=False))
    assert table["rfid"].isna().all()
    shown = format_table(table, DECIMALS, ("**", "**"))
    assert not any(c.startswith("rFID") for c in shown.columns)
    assert "PSNR \u2191" in shown.columns and "LPIPS \u2193" in shown.columns


def test_bootstrap_half_width_of_the_evaluation_sample():
    table = build_table(_records({"fsq": [15.0, 15.1], "gq": [16.0, 16.1]}))
    # per-image PSNR (v-1, v+1, v, v): every resampled mean lies within [v - 1, v + 1]
    assert 0 < table["psnr_boot95"].iloc[0] <= 1.0
    assert table["ssim_boot95"].isna().all()  # no per-image SSIM given


def test_written_csv_and_json_keep_per_seed_values(tmp_path):
    table = build_table(_records({"fsq": [15.0, 15.2, 15.1], "gq": [16.0, 16.3, 16.2]}))
    paths = write_tables(table, tmp_path / "t1", DECIMALS, "caption")
    nested = json.loads(paths[3].read_text())
    cell = nested["UNet"]["16bits"]["GQ (ours)"]["psnr"]
    assert cell["per_seed"] == {"0": 16.0, "1": 16.3, "2": 16.2}
    assert cell["mean"] == pytest.approx(16.1666667) and cell["ci95"] > 0
    assert "Mean ± 95 % CI (Student t) over 3 training seeds" in paths[1].read_text()
    assert "$\\pm$" in paths[2].read_text()
    csv = pd.read_csv(paths[0])
    assert {"psnr", "psnr_ci95", "psnr_per_seed", "psnr_boot95", "psnr_best"} <= set(csv.columns)


def test_verdicts_need_two_seeds_and_follow_the_paired_differences(tmp_path):
    one = verdicts(_records({"fsq": [15.0], "gq": [16.0]}), ["fsq"])
    assert set(one["verdict"]) == {"needs >= 2 seeds"}
    assert list(one.columns) == VERDICT_COLUMNS
    assert one[["diff", "mde", "paper_diff", "seeds_needed"]].isna().all().all()
    runs = _records({"fsq": [15.0, 15.2, 15.1], "gq": [16.0, 16.3, 16.2]})
    v = verdicts(runs, ["fsq"]).set_index("metric")
    assert v.at["psnr", "verdict"] == "GQ better"
    assert v.at["psnr", "diff"] == pytest.approx((1.0 + 1.1 + 1.1) / 3)
    assert (
        v.at["psnr", "paper_agrees"] == "yes"
    )  # docs/method.md §7: UNet 0.25 bpp GQ 27.61 > FSQ 26.34
    assert v.at["ssim", "verdict"] == "no significant difference"  # identical on every seed
    assert v.at["rfid", "verdict"] == "no significant difference"  # same per-seed values
    md = write_verdicts(v.reset_index(), tmp_path / "verdicts", DECIMALS)[1].read_text()
    assert "| UNet   |     16 | FSQ        | PSNR ↑   | +1.07 [+0.92, +1.21]" in md
    assert "Verdicts: 1 GQ better, 3 no significant difference." in md
    # psnr diffs 1.0, 1.1, 1.1 (sd 0.0577): MDE 3.264 sd; the paper's +1.27 dB needs 2 seeds
    assert v.at["psnr", "mde"] == pytest.approx(0.1884, abs=1e-4)
    head, psnr = _md_cells(md, 2), _md_cells(md, 4)
    assert head[5:] == [
        "Seeds",
        "Detectable at 80 % power",
        "Verdict",
        "Paper's gap",
        "Paper agrees",
        "Seeds for the paper's gap",
    ]
    assert psnr[5:] == ["3", "0.19", "GQ better", "+1.27", "yes", "2"]
    far = v.reset_index().assign(seeds_needed=math.inf, mde=math.nan)
    md = write_verdicts(far, tmp_path / "far", DECIMALS)[1].read_text()
    assert _md_cells(md, 4)[5:] == ["3", "-", "GQ better", "+1.27", "yes", "> 10,000"]


def _md_cells(md: str, line: int) -> list[str]:
    """The stripped cells of one line of a written Markdown table."""
    return [c.strip() for c in md.splitlines()[line].strip("|").split("|")]


def test_figure_points_are_seed_means_with_t_intervals_and_say_how_many_seeds():
    """Figure 1's points: the mean over seeds, the Student-t 95 % half width (t_{0.975,2} =
    4.303 for 3 seeds), and a caption that says there are no error bars with one seed."""
    from gaussquant.figures import _seeds_caption, seed_summary

    df = pd.DataFrame(
        {"arch": "unet", "bits": 16, "bpp": 0.25, "name": "gq", "seed": [0, 1, 2]}
        | {"psnr": [16.0, 17.0, 18.0]}
    )
    got = seed_summary(df, ["psnr"]).iloc[0]
    assert got["psnr"] == 17.0 and got["n_seeds"] == 3
    assert got["psnr_ci"] == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert _seeds_caption(seed_summary(df, ["psnr"])) == (
        "mean over 3 training seeds, error bars 95 % CI"
    )
    one = seed_summary(df[df["seed"] == 0], ["psnr"])
    assert one.iloc[0]["psnr_ci"] == 0.0
    assert _seeds_caption(one) == "one training seed per point: no error bars"


def test_figure1_draws_a_point_per_rate_labelled_with_its_bits_per_position(tmp_path, monkeypatch):
    """Over several rates Figure 1 draws curves whose x ticks are the rates' bits per pixel with
    their bits per latent position under them, and writes the PNG and PDF."""
    from gaussquant import figures

    df = pd.concat([_records({"fsq": [17.0, 18.0], "gq": [18.0, 19.5]}).assign(bits=b, bpp=b / 16)
                    for b in (16, 32, 64)])  # fmt: skip
    drawn = []
    monkeypatch.setattr(figures.plt, "close", drawn.append)  # keep the figure to inspect it
    figures.rate_distortion(df, tmp_path / "f.png", pdf=tmp_path / "f.pdf")
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1\n(16)", "2\n(32)", "4\n(64)"]
    assert ax.get_xlabel() == "bits per pixel (bits per latent position)"
    assert len(ax.lines) >= 2 and (tmp_path / "f.png").stat().st_size > 0
    assert (tmp_path / "f.pdf").stat().st_size > 0


def test_tdc_dynamics_draws_each_runs_shares_below_within_and_above(tmp_path, monkeypatch):
    """The TDC figure's third panel: one stacked bar per run whose pieces are the check's
    shares of validation tokens below, within and above target +- alpha (in that order, summing
    to 1), the check's least share within marked; a run without a check gets no bar."""
    from gaussquant import figures

    steps = np.arange(10, 40, 10)
    log = pd.DataFrame({"step": steps, "bits_mean": 16.0, "bits_min": 10.0, "bits_max": 22.0,
                        "lam": 0.1, "lam_min": 0.001, "lam_max": 1000.0})  # fmt: skip
    pinned = {"lam_max": True, "lam_min": False}
    checks = {
        "a": {"val_p05": 6.0, "val_p95": 28.0, "holds": False, "pinned_last_20pct": pinned,
              "min_within": 0.7, "val_below_tolerance": 0.6, "val_within_tolerance": 0.1,
              "val_above_tolerance": 0.3},
        "b": {"val_p05": 15.5, "val_p95": 16.5, "holds": True, "pinned_last_20pct": pinned,
              "min_within": 0.7, "val_below_tolerance": 0.05, "val_within_tolerance": 0.9,
              "val_above_tolerance": 0.05},
        "c": None,
    }  # fmt: skip
    drawn = []
    monkeypatch.setattr(figures.plt, "close", drawn.append)  # keep the figure to inspect it
    figures.tdc_dynamics({k: log for k in checks}, 16.0, 0.5, tmp_path / "t.png", checks)
    ax = drawn[0].axes[2]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    bars = sorted((r.get_y() + r.get_height() / 2, r.get_x(), r.get_width()) for r in ax.patches)
    assert np.array(bars) == pytest.approx(np.array(
        [(0, 0.0, 0.6), (0, 0.6, 0.1), (0, 0.7, 0.3), (1, 0.0, 0.05), (1, 0.05, 0.9),
         (1, 0.95, 0.05)]
    ))  # fmt: skip
    assert [line.get_xdata()[0] for line in ax.lines] == [0.7]
    assert "a mean: val p05-p95 6.0-28.0, 10% within, TDC fails" in drawn[0].axes[0].get_legend(
    ).get_texts()[0].get_text()  # fmt: skip


def test_usage_is_never_bold_code_bits_are():
    """Usage depends on the alphabet (bounded by tokens / K): never bold, even when one row is
    clearly higher on every seed; code bits per position compare across token shapes."""
    runs = _records({"fsq": [15.0, 15.2, 15.1], "gq": [16.0, 16.3, 16.2]})
    gq = runs["name"] == "gq"
    runs.loc[gq, "codebook_usage"] = [0.50, 0.51, 0.52]
    runs.loc[gq, "code_bits"] = [9.0, 9.2, 9.1]
    table = build_table(runs)
    assert not table["codebook_usage_best"].any()
    assert table.loc[table["name"] == "gq", "code_bits_best"].item()


def test_verdicts_show_the_noise_methods_share(tmp_path):
    """Below the verdicts: the mean correlation over seeds of the quantized methods' results
    (a continuous row, which shares GQ's training, is left out)."""
    from gaussquant.tables import shared_noise

    runs = _records(
        {"fsq": [15.0, 15.2, 15.1], "gq": [16.0, 16.3, 16.2], "gq-continuous": [9.0, 1.0, 5.0]}
    )
    shared = shared_noise(runs, ["fsq"]).set_index("metric")
    # psnr: fsq and gq both peak at seed 1 and dip at seed 0: r = 0.9820
    assert shared.at["psnr", "correlation"] == pytest.approx(0.98198, abs=1e-4)
    assert shared.at["psnr", "methods"] == 2 and shared.at["psnr", "seeds"] == 3
    v = verdicts(runs, ["fsq"])
    md = write_verdicts(v, tmp_path / "v", DECIMALS, shared.reset_index())[1].read_text()
    assert "Shared seed noise" in md and "+0.98" in md
