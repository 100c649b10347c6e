"""train.log_with: the same rows as metrics.csv reach Accelerate's tensorboard tracker (offline),
and `dvc plots` is pointed at the training logs only."""

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gaussquant.config import ConfigError, config_from_dict, config_to_dict

ROOT = Path(__file__).resolve().parents[1]


def test_tensorboard_tracker_logs_the_metrics_rows(tiny_cfg, tiny_data, weights_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gaussquant.runstate import LOG_FILE, TRACKING_DIR
    from gaussquant.train import train

    cfg = dataclasses.replace(
        tiny_cfg, train=dataclasses.replace(tiny_cfg.train, log_with="tensorboard")
    )
    train(cfg, "fsq", "unet", "8", tiny_data, tmp_path, weights_dir, progress=False)
    log = pd.read_csv(tmp_path / LOG_FILE)
    runs = list((tmp_path / TRACKING_DIR).glob("*/events.out.tfevents.*"))
    assert len(runs) == 1 and runs[0].parent.name == "fsq-unet-8"
    events = EventAccumulator(str(runs[0].parent)).Reload()
    for key in ("loss", "l1", "lpips"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == list(log["step"])
        assert [s.value for s in scalars] == pytest.approx(list(log[key]), rel=1e-6)


def test_log_with_is_checked(tiny_cfg):
    data = config_to_dict(tiny_cfg)
    data["train"]["log_with"] = "mlflow"
    with pytest.raises(ConfigError, match="train.log_with"):
        config_from_dict(data)


def test_dvc_plots_show_draws_each_run_without_errors(tmp_path):
    """dvc.yaml's plots read the curves folder (one CSV per run, rule curves): `dvc plots show`
    draws every run and reports no file it failed to load (the old definition pointed at the
    train folder, whose model.pt, optimizer.bin and run.json failed)."""
    import shutil
    import subprocess
    import sys

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copyfile(ROOT / name, tmp_path / name)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    preset = yaml.safe_load((ROOT / "params.yaml").read_text())["preset"]
    curves = tmp_path / "results" / preset / "curves"
    curves.mkdir(parents=True)
    runs = ("gq-unet-0.25-s0", "fsq-vit-0.25-s0")
    for run in runs:
        (curves / f"{run}.csv").write_text(
            "step,loss,l1,lpips,bits_mean\n2,1.0,0.5,0.3,4.1\n4,0.8,0.4,0.2,nan\n"
        )
    done = subprocess.run(
        [*dvc, "plots", "show", "--json"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0 and "failed" not in done.stdout + done.stderr, done.stderr
    shown = json.loads(done.stdout)
    assert not shown.get("errors"), shown.get("errors")
    text = json.dumps(shown["data"])
    assert all(run in text for run in runs)
