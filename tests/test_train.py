"""Training loop: tiny-preset runs, exact resume after SIGKILL, failure messages."""

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


PROBE = ROOT / "tests" / "helpers" / "train_probe.py"


def _train(
    method, arch, data, out, weights, *extra, kill_at=None, launcher=(), probe=False, signal_at=None
):
    """``gaussquant train`` on the tiny preset in a subprocess; ``launcher``: a torchrun
    prefix (2 CPU processes); ``probe``: through tests/helpers/train_probe.py, which records
    every rank's weights and TDC state after every step."""
    entry = [str(PROBE)] if probe else ["-m", "gaussquant.cli"]
    cmd = [*(launcher or [sys.executable]), *entry, "train", "--params", str(ROOT / "params.yaml")]
    cmd += ["--preset", "tiny", "--method", method, "--arch", arch, "--rate", "8"]
    cmd += ["--data", str(data), "--out", str(out), "--weights", str(weights), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    env.pop(KILL_ENV, None)
    if kill_at is not None:  # the training's test hook: SIGKILL after that step
        env[KILL_ENV] = str(kill_at)
    env.pop(SIGNAL_ENV, None)
    if signal_at is not None:  # "STEP:NAME": the signal after that step
        env[SIGNAL_ENV] = signal_at
    return subprocess.run([*cmd, *extra], capture_output=True, text=True, env=env, cwd=ROOT)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


RESUME_CASES = [
    ("tdc", "unet", 1),
    ("tdc", "vit", 1),
    ("vq", "unet", 1),  # a learned codebook (and its commitment loss)
    ("lfq", "vit", 1),  # an entropy loss
    ("tdc", "unet", 2),  # two processes: every rank's RNG and TDC state
]


@pytest.mark.slow
@pytest.mark.parametrize("method,arch,procs", RESUME_CASES)
def test_sigkill_resume_is_bitwise_identical(
    method, arch, procs, tiny_data, weights_dir, tmp_path, two_process_launcher
):
    """Killed after step 4 (state saved at step 3), re-run: same final checkpoint, bit for bit.
    The tiny preset starts the discriminator at step 3, so GAN steps are covered too."""
    launcher = two_process_launcher if procs == 2 else ()
    full = _train(method, arch, tiny_data, tmp_path / "full", weights_dir, launcher=launcher)
    assert full.returncode == 0, full.stderr[-3000:]

    out = tmp_path / "resumed"
    killed = _train(method, arch, tiny_data, out, weights_dir, kill_at=4, launcher=launcher)
    # one process: killed by SIGKILL; two: torchrun reports its killed workers as a failure
    assert killed.returncode == (-9 if procs == 1 else 1), killed.stderr[-3000:]
    assert not (out / "model.pt").exists()
    # Snakemake deletes a rerun job's declared outputs (metrics.csv) first: the saved state
    # carries the log up to its step, so the resumed log is still complete
    (out / "metrics.csv").unlink()
    resumed = _train(method, arch, tiny_data, out, weights_dir, launcher=launcher)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr

    a, b = _state(tmp_path / "full" / "model.pt"), _state(out / "model.pt")
    assert a["step"] == b["step"] == 6
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["extra"] == b["extra"] and "logvar" in a["extra"]
    if method == "tdc":  # TDC multipliers are part of the state and moved during training
        assert float(a["model"]["bottleneck.tdc.lam"]) != 1.0
    log_a = pd.read_csv(tmp_path / "full" / "metrics.csv")
    log_b = pd.read_csv(out / "metrics.csv")
    assert list(log_a["step"]) == [2, 4, 6]
    pd.testing.assert_frame_equal(log_a.drop(columns="time_s"), log_b.drop(columns="time_s"))


@pytest.mark.slow
def test_sigterm_saves_exits_and_rerun_matches_uninterrupted(tiny_data, weights_dir, tmp_path):
    """SIGTERM (SLURM preemption) after step 4, between the saved states of steps 3 and 6: the
    handler saves step 4 and exits 143; the re-run resumes there and ends with the same
    checkpoint and log as an uninterrupted run, GAN steps included."""
    full = _train("tdc", "unet", tiny_data, tmp_path / "full", weights_dir)
    assert full.returncode == 0, full.stderr[-3000:]
    stopped = _train("tdc", "unet", tiny_data, tmp_path / "run", weights_dir, signal_at="4:TERM")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "state saved at step 4" in stopped.stdout + stopped.stderr
    assert latest_state(tmp_path / "run" / "state").name == "step-00000004"
    assert not (tmp_path / "run" / "model.pt").exists()
    resumed = _train("tdc", "unet", tiny_data, tmp_path / "run", weights_dir)
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
    assert isinstance(payload["extra"]["logvar"], float)  # the NLL's learned log-variance
    log = pd.read_csv(tmp_path / "metrics.csv")
    assert list(log["step"]) == [2, 4, 6]
    assert log["loss"].notna().all() and log["aux"].notna().all()
    x = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        x_rec, q = model(x)
    assert x_rec.shape == x.shape


def test_a_rates_own_steps_are_what_it_trains(tiny_cfg, tiny_data, weights_dir, tmp_path):
    """train.steps_by_rate: the tiny rate's 4 steps in place of train.steps (6), in the log, the
    checkpoint and the saved config."""
    from dataclasses import replace

    from gaussquant.checkpoint import load_autoencoder
    from gaussquant.train import train

    cfg = replace(tiny_cfg, train=replace(tiny_cfg.train, steps_by_rate={"8": 4}))
    ckpt = train(cfg, "tdc", "vit", "8", tiny_data, tmp_path, weights_dir, progress=False)
    _, payload = load_autoencoder(ckpt)
    assert payload["step"] == 4 and payload["config"]["train"]["steps"] == 4
    assert list(pd.read_csv(tmp_path / "metrics.csv")["step"]) == [2, 4]


def _probe(out, steps=6):
    ranks = [json.loads((out / f"probe-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["step"] for r in ranks[0]] == [r["step"] for r in ranks[1]] == list(range(steps))
    return ranks


@pytest.mark.slow
def test_two_processes_train_like_one_large_batch(
    tiny_data, weights_dir, tmp_path, two_process_launcher
):
    """Two CPU processes (Accelerate under torchrun) x batch 4 see the same global batch as one
    process x batch 8: the first step's TDC statistics (before any update; no sampling noise
    in them) reduced across processes equal the single-process ones; at every step both ranks
    hold the same reduced statistics, multipliers and weights (bit for bit)."""
    log1 = ("--set", "train.log_every=1")
    one = _train("tdc", "unet", tiny_data, tmp_path / "one", weights_dir, *log1, "--set",
                 "train.batch_size.tdc=8")  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = _train("tdc", "unet", tiny_data, tmp_path / "two", weights_dir, *log1,
                 launcher=two_process_launcher, probe=True)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    log_one, log_two = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("one", "two"))
    for key in ("bits_mean", "bits_min", "bits_max", "lam", "lam_min", "lam_max"):
        assert log_two[key].iloc[0] == pytest.approx(log_one[key].iloc[0], rel=1e-5), key
    assert list(log_two["step"]) == list(range(1, 7))
    rank0, rank1 = _probe(tmp_path / "two")
    assert rank0 == rank1  # reduced statistics, multipliers and weight digests, every step
    assert len({(r["lam_min_after"], r["lam_max_after"]) for r in rank0}) > 1
    assert _state(tmp_path / "two" / "model.pt")["step"] == 6
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["unet", "vit"])
def test_two_processes_end_with_the_weights_of_one(
    arch, tiny_data, weights_dir, tmp_path, two_process_launcher
):
    """A deterministic method (FSQ: no sampling) with the adversarial loss off (its adaptive
    weight is a per-process ratio of gradient norms): 2 processes x batch 4 end with the
    weights of 1 process x batch 8 up to float round-off, and both ranks hold identical
    weights after every step (gradients averaged across processes). Two steps: from the
    third on, round-off flips FSQ roundings and Adam signs and grows ~5x a step (UNet median
    after 3/4/6 steps: 1.5e-6/8e-6/5e-5), so later weights test the chaos, not the averaging."""
    off = ("--set", "loss.disc_start=1000", "--set", "train.steps=2")
    one = _train("fsq", arch, tiny_data, tmp_path / "one", weights_dir, *off, "--set",
                 "train.batch_size.fsq=8")  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = _train("fsq", arch, tiny_data, tmp_path / "two", weights_dir, *off,
                 launcher=two_process_launcher, probe=True)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    rank0, rank1 = _probe(tmp_path / "two", steps=2)
    assert [r["weights"] for r in rank0] == [r["weights"] for r in rank1]
    assert len({r["weights"] for r in rank0}) == 2  # the weights moved at every step
    a, b = _state(tmp_path / "one" / "model.pt"), _state(tmp_path / "two" / "model.pt")
    diff = torch.cat(
        [
            (v - b["model"][k]).abs().flatten()
            for k, v in a["model"].items()
            if v.is_floating_point()
        ]
    )
    # Measured (UNet, 2 steps): median 3e-8, 99th percentile 1e-6, 0.05 % above 1e-4 on an
    # AVX-512F Xeon; median 3.3e-7, 99th percentile 1.04e-5 on an AVX2 AMD EPYC (other kernels,
    # other round-off; Adam moves a weight whose gradient is round-off, e.g. an attention key
    # bias, by ~lr = 1e-3). Without averaging (rank 0's half batch alone): median 8e-4, 85 %
    # above 1e-4.
    assert diff.median() < 1e-5 and torch.quantile(diff[:100_000], 0.99) < 1e-4
    assert (diff > 1e-4).double().mean() < 0.01


def test_nan_loss_names_step_and_term(tiny_cfg, tiny_data, weights_dir, tmp_path, monkeypatch):
    from gaussquant import losses
    from gaussquant.train import train

    original = losses.ReconstructionNLL.forward

    def poisoned(self, x, x_rec, p=None):
        nll, stats = original(self, x, x_rec, p)
        return nll * float("nan"), stats

    monkeypatch.setattr(losses.ReconstructionNLL, "forward", poisoned)
    with pytest.raises(GaussquantError, match=r"non-finite loss at step 0: term 'nll'"):
        train(tiny_cfg, "tdc", "unet", "8", tiny_data, tmp_path, weights_dir, progress=False)


def test_missing_lpips_weights_names_fetch_command(tiny_cfg, tiny_data, tmp_path):
    from gaussquant.train import train

    with pytest.raises(GaussquantError, match="gaussquant fetch-weights"):
        train(
            tiny_cfg,
            "tdc",
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
    killed = _train("tdc", "vit", tiny_data, tmp_path / "run", weights_dir, kill_at=4)
    assert killed.returncode == -9, killed.stderr[-3000:]
    new_lr = ("--set", "train.lr.tdc=2.0e-3")
    rerun = _train("tdc", "vit", tiny_data, tmp_path / "run", weights_dir, *new_lr)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    text = rerun.stdout + rerun.stderr
    assert "differs in: train" in text and "starting from step 0" in text
    assert "resuming from" not in text
    fresh = _train("tdc", "vit", tiny_data, tmp_path / "fresh", weights_dir, *new_lr)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    a, b = _state(tmp_path / "run" / "model.pt"), _state(tmp_path / "fresh" / "model.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # settings that do not change the trajectory keep the saved states
    again = _train(
        "tdc",
        "vit",
        tiny_data,
        tmp_path / "fresh",
        weights_dir,
        *new_lr,
        "--set",
        "train.log_every=3",
    )
    assert again.returncode == 0 and "starting from step 0" not in again.stdout + again.stderr
