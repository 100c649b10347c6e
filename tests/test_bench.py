"""Benchmark report assembly: a partial rerun (`gaussquant bench --only ...`) keeps the rest."""

import json
import subprocess
from pathlib import Path

import pytest

from gaussquant.stages.bench import SUITES, _sections

ROOT = Path(__file__).resolve().parents[1]


def load_tdc_probe():
    """benchmarks/tdc_probe.py as a module (the benchmarks folder is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tdc_probe", ROOT / "benchmarks/tdc_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe


def test_sections_are_split_by_suite_name():
    report = (
        "# Benchmarks\n\nMachine: x\n\n"
        "## gq: GQ search\n\n| a |\n|---|\n| 1 |\n\n"
        "## data: Loading\n\ntext\n## e2e: End to end\n\nlast\n"
    )
    got = _sections(report)
    assert list(got) == ["gq", "data", "e2e"] and set(got) <= set(SUITES)
    assert got["gq"].startswith("## gq: GQ search") and "| 1 |" in got["gq"]
    assert "## data" not in got["gq"] and got["e2e"].endswith("last\n")


def test_e2e_reports_a_finished_run_with_its_tdc_checks(tmp_path):
    """`bench_e2e.py --finished DIR --wall-s S` reports a `make reproduce` timed elsewhere: the
    limit/goal verdict of S, the rule split from Snakemake's benchmark files, Table 1, the
    verdicts and one TDC-check row per TDC training (non-TDC trainings have no check)."""
    import json
    import shutil
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    import bench_e2e

    ws = tmp_path / "ws"
    shutil.copytree(root / "workflow", ws / "workflow")
    res = ws / "results" / "quick"
    (res / "tables").mkdir(parents=True)
    (res / "tables" / "table1.md").write_text("| table 1 |\n")
    (res / "tables" / "verdicts.md").write_text("| verdicts |\n")
    check = {
        "target_bits": 4.0,
        "val_p05": 3.1,
        "val_p95": 5.2,
        "val_mean": 4.1,
        "val_within_tolerance": 0.625,
        "lam_min_end": 0.001,
        "lam_max_end": 1000.0,
        "pinned_last_20pct": {"lam_max": True, "lam_min": False},
        "holds": False,
    }
    for run, tdc in (("gq-unet-0.25-s0", check), ("fsq-unet-0.25-s0", None)):
        (res / "train" / run).mkdir(parents=True)
        (res / "train" / run / "summary.json").write_text(json.dumps({"tdc": tdc}))
        bench = res / "benchmarks" / "train" / f"{run}.tsv"
        bench.parent.mkdir(parents=True, exist_ok=True)
        bench.write_text("s\tcpu_time\tmax_rss\n200.0\t190.0\t900\n")

    out = bench_e2e.main(["--finished", str(ws), "--wall-s", "900"])
    total, *split = out["rows"]
    assert total["seconds"] == 900 and total["note"].endswith(": limit met")
    assert [(r["what"], r["runs"], r["seconds"]) for r in split] == [("rule train", 2, 400.0)]
    table, verdicts, tdc = out["notes"]
    assert "| table 1 |" in table and "| verdicts |" in verdicts
    lines = tdc.splitlines()[2:]
    assert len(lines) == 3 and "gq-unet-0.25-s0" in lines[2] and "lam_max" in lines[2]
    assert "0.625" in lines[2]  # the share of validation tokens within +-tolerance
    missed = bench_e2e.main(["--finished", str(ws), "--wall-s", "1201"])["rows"][0]["note"]
    assert missed.endswith(": MISSED")
    assert bench_e2e.main(["--finished", str(ws), "--wall-s", "600"])["rows"][0]["note"].endswith(
        ": met"
    )


def test_train_floor_counts_at_least_the_lpips_loss_in_closed_form(
    tiny_cfg, tiny_data, weights_dir
):
    """bench_train's `floor` row: the step's counted operations are at least the LPIPS-VGG loss
    in closed form (2 MACs per conv weight per output pixel, forward on the 2B images, input
    gradient of the B reconstructions), and its seconds are those operations at the measured
    GEMM throughput."""
    import sys
    from pathlib import Path

    from torch import nn

    from gaussquant.metrics.lpips import build_lpips

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_train

    rate = tiny_cfg.experiment.rates[0]
    got = bench_train.floor_step(tiny_cfg, "tdc", "unet", rate, tiny_data, weights_dir)
    size, batch = tiny_cfg.data.resolution, tiny_cfg.train.batch_size["tdc"]
    per_image = 0
    for layer in build_lpips("vgg", weights_dir).net.modules():
        if isinstance(layer, nn.MaxPool2d):
            size //= 2
        elif isinstance(layer, nn.Conv2d):
            per_image += 2 * layer.weight.numel() * size * size  # stride 1, padding 1
    lpips_flop = 3 * batch * per_image
    assert got["gflop_per_step"] * 1e9 > lpips_flop
    assert got["gflop_per_step"] * 1e9 < 2 * lpips_flop  # the tiny autoencoder is smaller
    assert got["seconds_per_step"] == pytest.approx(
        got["gflop_per_step"] / got["gemm_gflop_per_s"], rel=1e-9
    )


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_section(tmp_path):
    """benchmarks/gpu_check.sh --dry: the GPU check's code on the CPU (tiny sizes); its README
    section is written between the markers, the search agrees with the CPU, the models too."""
    out = tmp_path / "README.md"
    out.write_text("# Benchmarks\n\nkept\n")
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n") and text.count("<!-- gpu-check:start -->") == 1
    report = json.loads(out.with_name("gpu_check.json").read_text())
    assert {(r["arch"], r["precision"]) for r in report["train"]} == {
        (a, p) for a in ("unet", "vit") for p in ("fp32", "tf32", "bf16")
    }
    assert report["gq"]["identical_to_cpu"] and report["gq"]["official_agreement"] > 0.99
    assert all(r["max_abs_diff"] == 0 for r in report["forward"])  # the CPU against itself


def test_tdc_probe_takes_a_trained_vae_apart(tiny_data, weights_dir, tmp_path):
    """benchmarks/tdc_probe.py trains a tiny TDC VAE and writes its rate decomposition: the
    rate is the sum of its mean and variance parts, the shares add up, the map is drawn."""
    import os
    import sys

    env = os.environ | {"GAUSSQUANT_WEIGHTS": str(weights_dir), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "benchmarks/tdc_probe.py", "t", "unet", "--preset", "tiny"]
    cmd += ["--rate", "8", "--data", str(tiny_data), "--out", str(tmp_path), "--map"]
    cmd += ["--set", "train.steps=4"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    row = json.loads((tmp_path / "probe.jsonl").read_text().splitlines()[-1])
    tdc, post = row["tdc"], row["posterior"]
    shares = tdc["below_tolerance"] + tdc["within_tolerance"] + tdc["above_tolerance"]
    assert abs(shares - 1) < 1e-9 and tdc["target"] == 8
    # bits per position = mean part + variance part (tiny: one token per position, m = C)
    assert abs(post["mean_part"] + post["var_part"] - tdc["mean"]) < 1e-3
    assert -1 <= post["corr_mean_var_parts"] <= 1 and post["sd_within_images"] >= 0
    assert (tmp_path / "t.png").stat().st_size > 0 and row["train_s"] >= 0
    assert 0 < post["l1_mean"] < 2 and 0 < post["l1_sampled"] < 2


def test_tdc_probe_starts_logvar_where_asked(monkeypatch):
    """--logvar-bias: the encoders built afterwards start their logvar half at the bias, the mu
    half and the weights as a plain build (same seed)."""
    import torch

    from gaussquant.config import load_config
    from gaussquant.models import unet, vit
    from gaussquant.train import initial_model

    probe = load_tdc_probe()
    cfg = load_config(ROOT / "params.yaml", "tiny", [])
    plain = {}
    for arch in ("unet", "vit"):
        torch.manual_seed(0)
        plain[arch] = initial_model(cfg, "tdc", arch, "8")[0].encoder
    for cls in (unet.UNetEncoder, vit.ViTEncoder):
        monkeypatch.setattr(cls, "__init__", cls.__init__)  # undone after the test
    probe.start_logvar_at(-2.3)
    for arch, attr in (("unet", "conv_out"), ("vit", "proj_out")):
        torch.manual_seed(0)
        new, old = (
            getattr(initial_model(cfg, "tdc", arch, "8")[0].encoder, attr),
            getattr(plain[arch], attr),
        )
        half = old.bias.numel() // 2
        assert torch.equal(new.weight, old.weight) and torch.equal(new.bias[:half], old.bias[:half])
        assert (new.bias[half:] == -2.3).all() and not (old.bias[half:] == -2.3).any()


def test_tdc_probe_lower_target_gives_one_token_of_that_many_bits(monkeypatch):
    """--target-bits 12: the quick config validates with K = 2^12 and 12 bits per position,
    the TDC VAE's token is all C = 16 channels (m = 16, target 12 bits), the VQ codebook and LFQ
    sub-codes follow; without dropping TokenBridge's shape (bits >= C) it does not validate."""
    from gaussquant.config import load_config
    from gaussquant.errors import ConfigError
    from gaussquant.methods import METHODS, rate_shapes

    probe = load_tdc_probe()
    overrides = probe.target_overrides(12)
    with pytest.raises(ConfigError, match="tbtdc"):
        load_config(ROOT / "params.yaml", "quick", overrides)
    monkeypatch.delitem(METHODS, "tbtdc")  # what drop_tokenbridge does, undone after the test
    cfg = load_config(ROOT / "params.yaml", "quick", overrides)
    assert cfg.tdc.codebook_size == cfg.vq.codebook_size == 4096
    assert cfg.rates == cfg.experiment.rates == [12]
    shapes = rate_shapes(cfg, 12)
    assert shapes["tdc"] == cfg.model.latent_channels == 16
    assert shapes["vq"] == 1 and shapes["lfq"] == 12 and cfg.lfq.sub_codebook_bits == 4


def test_tdc_probe_token_slots_follow_the_strided_layout_and_see_a_trade():
    """Two tokens per position (C = 4, m = 2): slot 0 holds channels 0 and 2, slot 1 channels 1
    and 3 (the official strided layout); slots that trade rate at a fixed total correlate -1, and
    one token per position gives no slot statistics."""
    import torch

    probe = load_tdc_probe()
    share = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    # slot 0 (channels 0, 2) carries 4 s, slot 1 (channels 1, 3) 4 (1 - s)
    kl = torch.cat([share, 1 - share, 3 * share, 3 * (1 - share)], 1)
    out = probe.token_slots(kl, 2)
    assert out["slot_means"] == pytest.approx(
        [4 * share.mean().item(), 4 - 4 * share.mean().item()], abs=1e-3
    )
    assert out["corr_between_slots"] == pytest.approx(-1.0, abs=1e-6)
    expected_sd = torch.stack([4 * share, 4 * (1 - share)], 1).std(1).mean().item()
    assert out["sd_within_positions"] == pytest.approx(expected_sd, rel=1e-6)
    assert probe.token_slots(kl, 4) == {}
