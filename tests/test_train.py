"""Training loop: tiny-profile runs, exact resume after SIGKILL, failure messages."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from gaussquant.errors import GaussquantError
from gaussquant.runstate import KILL_ENV, SIGNAL_ENV, latest_state

ROOT = Path(__file__).resolve().parents[1]


def _train(method, arch, data, out, weights, *extra, kill_at=None, signal_at=None):
    cmd = [
        sys.executable,
        "-m",
        "gaussquant.cli",
        "train",
        "--params",
        str(ROOT / "params.yaml"),
        "--profile",
        "tiny",
        "--method",
        method,
        "--arch",
        arch,
        "--rate",
        "8",
        "--data",
        str(data),
        "--out",
        str(out),
        "--weights",
        str(weights),
        "--no-progress",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(KILL_ENV, None)
    if kill_at is not None:  # the training's test hook: SIGKILL after that step
        env[KILL_ENV] = str(kill_at)
    env.pop(SIGNAL_ENV, None)
    if signal_at is not None:  # "STEP:NAME": the signal after that step
        env[SIGNAL_ENV] = signal_at
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_sigkill_resume_is_bitwise_identical(tiny_data, weights_dir, tmp_path):
    """Killed after step 4 (state saved at step 3), re-run: same final checkpoint, bit for bit.
    The tiny profile starts the discriminator at step 3, so GAN steps are covered too."""
    full = _train("gq", "unet", tiny_data, tmp_path / "full", weights_dir)
    assert full.returncode == 0, full.stderr[-3000:]

    killed = _train("gq", "unet", tiny_data, tmp_path / "resumed", weights_dir, kill_at=4)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL
    assert not (tmp_path / "resumed" / "model.pt").exists()
    # Snakemake deletes a rerun job's declared outputs (metrics.csv) first: the saved state
    # carries the log up to its step, so the resumed log is still complete
    (tmp_path / "resumed" / "metrics.csv").unlink()
    resumed = _train("gq", "unet", tiny_data, tmp_path / "resumed", weights_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr

    a, b = _state(tmp_path / "full" / "model.pt"), _state(tmp_path / "resumed" / "model.pt")
    assert a["step"] == b["step"] == 6
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["extra"] == b["extra"]
    # TDC multipliers are part of the state and moved away from 1 during training
    assert float(a["model"]["bottleneck.tdc.lam"]) != 1.0
    log_a = pd.read_csv(tmp_path / "full" / "metrics.csv")
    log_b = pd.read_csv(tmp_path / "resumed" / "metrics.csv")
    pd.testing.assert_frame_equal(log_a.drop(columns="time_s"), log_b.drop(columns="time_s"))


@pytest.mark.slow
def test_sigterm_saves_exits_and_rerun_matches_uninterrupted(tiny_data, weights_dir, tmp_path):
    """SIGTERM (SLURM preemption) after step 4, between the saved states of steps 3 and 6: the
    handler saves step 4 and exits 143; the re-run resumes there and ends with the same
    checkpoint and log as an uninterrupted run, GAN steps included."""
    full = _train("gq", "unet", tiny_data, tmp_path / "full", weights_dir)
    assert full.returncode == 0, full.stderr[-3000:]
    stopped = _train("gq", "unet", tiny_data, tmp_path / "run", weights_dir, signal_at="4:TERM")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "state saved at step 4" in stopped.stdout + stopped.stderr
    assert latest_state(tmp_path / "run" / "state").name == "step-00000004"
    assert not (tmp_path / "run" / "model.pt").exists()
    resumed = _train("gq", "unet", tiny_data, tmp_path / "run", weights_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    a, b = _state(tmp_path / "full" / "model.pt"), _state(tmp_path / "run" / "model.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    log_a = pd.read_csv(tmp_path / "full" / "metrics.csv")
    log_b = pd.read_csv(tmp_path / "run" / "metrics.csv")
    pd.testing.assert_frame_equal(log_a.drop(columns="time_s"), log_b.drop(columns="time_s"))


@pytest.mark.parametrize(
    "method,arch",
    [
        ("vq", "vit"),
        ("fsq", "unet"),
        ("lfq", "unet"),
        ("bsq", "vit"),
        ("vanilla", "unet"),
        ("tbtdc", "vit"),
    ],
)
def test_every_method_trains(method, arch, tiny_cfg, tiny_data, weights_dir, tmp_path):
    from gaussquant.checkpoint import load_autoencoder
    from gaussquant.train import train

    ckpt = train(tiny_cfg, method, arch, "8", tiny_data, tmp_path, weights_dir, progress=False)
    model, payload = load_autoencoder(ckpt)
    assert payload["method"] == method and payload["step"] == tiny_cfg.train.steps
    log = pd.read_csv(tmp_path / "metrics.csv")
    assert list(log["step"]) == [2, 4, 6]
    assert log["loss"].notna().all() and log["aux"].notna().all()
    x = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        x_rec, q = model(x)
    assert x_rec.shape == x.shape


@pytest.mark.slow
def test_two_processes_train_like_one_large_batch(
    tiny_data, weights_dir, tmp_path, two_process_launcher
):
    """Two CPU processes (Accelerate under torchrun) x batch 4 see the same global batch as one
    process x batch 8: the first step's TDC statistics (before any update; no sampling noise
    in them) reduced across processes equal the single-process ones, and the run completes."""
    launcher = two_process_launcher

    def run(out, batch, prefix=()):
        sets = ["--set", "train.log_every=1", "--set", f"train.batch_size.gq={batch}"]
        cmd = (
            [*prefix, "-m", "gaussquant.cli"]
            if prefix
            else [sys.executable, "-m", "gaussquant.cli"]
        )
        args = ["train", "--params", str(ROOT / "params.yaml"), "--profile", "tiny", *sets]
        args += ["--method", "gq", "--arch", "unet", "--rate", "8", "--data", str(tiny_data)]
        args += ["--out", str(out), "--weights", str(weights_dir), "--no-progress"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
        proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return pd.read_csv(out / "metrics.csv")

    one = run(tmp_path / "one", 8)
    two = run(tmp_path / "two", 4, launcher)
    for key in ("bits_mean", "bits_min", "bits_max", "lam", "lam_min", "lam_max"):
        assert two[key].iloc[0] == pytest.approx(one[key].iloc[0], rel=1e-5), key
    assert list(two["step"]) == list(range(1, 7))
    assert _state(tmp_path / "two" / "model.pt")["step"] == 6
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2


def test_nan_loss_names_step_and_term(tiny_cfg, tiny_data, weights_dir, tmp_path, monkeypatch):
    from gaussquant import losses
    from gaussquant.train import train

    original = losses.ReconstructionNLL.forward

    def poisoned(self, x, x_rec, p=None):
        nll, stats = original(self, x, x_rec, p)
        return nll * float("nan"), stats

    monkeypatch.setattr(losses.ReconstructionNLL, "forward", poisoned)
    with pytest.raises(GaussquantError, match=r"non-finite loss at step 0: term 'nll'"):
        train(tiny_cfg, "gq", "unet", "8", tiny_data, tmp_path, weights_dir, progress=False)


def test_missing_lpips_weights_names_fetch_command(tiny_cfg, tiny_data, tmp_path):
    from gaussquant.train import train

    with pytest.raises(GaussquantError, match="gaussquant fetch-weights"):
        train(
            tiny_cfg,
            "gq",
            "unet",
            "8",
            tiny_data,
            tmp_path / "run",
            tmp_path / "no-weights",
            progress=False,
        )


def test_lr_factor_constant_then_linear_to_zero():
    from gaussquant.train import lr_factor

    assert [lr_factor(s, 10, 0.0) for s in range(10)] == [1.0] * 10  # the paper's constant lr
    got = [lr_factor(s, 10, 0.3) for s in range(10)]
    assert got[:7] == [1.0] * 7
    assert got[7:] == pytest.approx([1.0, 2 / 3, 1 / 3])  # the last update still moves
    assert lr_factor(0, 4, 1.0) == 1.0 and lr_factor(3, 4, 1.0) == pytest.approx(0.25)


def test_final_window_averages_the_last_fifth(tmp_path):
    from gaussquant.runstate import LOG_KEYS, append_log, final_window

    log = tmp_path / "metrics.csv"
    for step, bits, lo, hi in [
        (10, 99.0, 0.0, 500.0),
        (90, 15.0, 3.0, 20.0),
        (100, 17.0, 4.0, 30.0),
    ]:
        row = dict.fromkeys(LOG_KEYS, float("nan"))
        append_log(log, row | {"step": step, "bits_mean": bits, "bits_min": lo, "bits_max": hi})
    w = final_window(log, 100)
    assert w["from_step"] == 90 and w["bits_mean"] == 16.0  # step 10 is outside the window
    assert w["bits_min"] == 3.0 and w["bits_max"] == 30.0
    assert "l1" not in w  # never logged: left out, not NaN
    assert final_window(tmp_path / "absent.csv", 100) == {}


@pytest.mark.slow
def test_states_of_other_settings_are_not_resumed(tiny_data, weights_dir, tmp_path):
    """A run killed midway, then params changed (lr): the re-run must start over, giving the
    same checkpoint as a fresh run with the new settings, not continue the old trajectory."""
    killed = _train("gq", "vit", tiny_data, tmp_path / "run", weights_dir, kill_at=4)
    assert killed.returncode == -9, killed.stderr[-3000:]
    new_lr = ("--set", "train.lr.gq=2.0e-3")
    rerun = _train("gq", "vit", tiny_data, tmp_path / "run", weights_dir, *new_lr)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    text = rerun.stdout + rerun.stderr
    assert "differs in: train" in text and "starting from step 0" in text
    assert "resuming from" not in text
    fresh = _train("gq", "vit", tiny_data, tmp_path / "fresh", weights_dir, *new_lr)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    a, b = _state(tmp_path / "run" / "model.pt"), _state(tmp_path / "fresh" / "model.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # settings that do not change the trajectory keep the saved states
    again = _train(
        "gq",
        "vit",
        tiny_data,
        tmp_path / "fresh",
        weights_dir,
        *new_lr,
        "--set",
        "train.log_every=3",
    )
    assert again.returncode == 0 and "starting from step 0" not in again.stdout + again.stderr
