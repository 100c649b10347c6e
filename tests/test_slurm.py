"""The SLURM profile through the real executor plugin, non-dry, against stand-in SLURM commands
(tests/data/fake_slurm/fake_slurm.py) that record what is submitted and run each job here:
the paper preset on a tiny ImageNet-like JPEG folder (one method, arch, rate, seed; 2 GPU
processes per model job, as CPU processes)."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_pipeline import ENV, _copy_repo, repo_env

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "data" / "fake_slurm" / "fake_slurm.py"
COMMANDS = ("sbatch", "sacct", "squeue", "scontrol", "srun", "sinfo", "sacctmgr", "sshare")
PROCESSES = 2  # GPUs per training / evaluation job (the paper: 8)


def _jpeg_folder(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("val", 8)):
        for i in range(n):
            path = root / split / f"n{i % 4:08d}" / f"{split}_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            size = (int(rng.integers(40, 64)), int(rng.integers(40, 64)))
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _paper_params(repo: Path, data: Path) -> None:
    """params.yaml on the paper preset, its sizes overridden by the tiny preset's."""
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    paper = raw["presets"]["tiny"]
    paper["data"] = {
        "source": "folder",
        "train_dir": str(data / "train"),
        "val_dir": str(data / "val"),
        "resolution": 32,
        "n_train": 0,
        "n_val": 0,
    }
    paper["train"] |= {
        "processes": PROCESSES,
        "batch_size": {k: 2 for k in paper["train"]["batch_size"]},
    }
    paper["experiment"] |= {"methods": ["tdc"], "archs": ["unet"], "seeds": [0]}
    raw["preset"], raw["presets"] = "paper", {"paper": paper}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def _submissions(state: Path) -> dict[str, list[str]]:
    """Rule name -> the sbatch arguments of its job (the comment names the rule)."""
    out = {}
    for line in (state / "sbatch.jsonl").read_text().splitlines():
        argv = json.loads(line)
        comment = argv[argv.index("--comment") + 1]
        rule = comment.removeprefix("rule_").split("_wildcards_")[0]
        out[rule] = argv
    return out


def _flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name:
            return argv[i + 1]
    return None


@pytest.mark.slow
def test_slurm_profile_submits_every_kind_of_job(tmp_path, weights_dir):
    (tmp_path / "repo").mkdir()
    repo = _copy_repo(tmp_path / "repo", weights_dir)
    _jpeg_folder(tmp_path / "imagenet")
    _paper_params(repo, tmp_path / "imagenet")
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name in COMMANDS:
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {FAKE} {name} "$@"\n')
        script.chmod(0o755)
    env = {
        **repo_env(repo),
        "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}",
        "FAKE_SLURM": str(state),
        "GAUSSQUANT_WEIGHTS": str(weights_dir),
    }
    cmd = ["snakemake", "reproduce_table1", "--profile", "profiles/slurm"]
    cmd += ["--slurm-init-seconds-before-status-checks", "1", "--retries", "0"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
    text = proc.stdout + proc.stderr
    logs = "".join(
        p.read_text()[-1500:] for p in (repo / ".snakemake" / "slurm_logs").rglob("*.log")
    )
    assert proc.returncode == 0, text[-4000:] + logs[-6000:]
    assert "Error" not in text and "not allowed" not in text

    jobs = _submissions(state)
    # experiment.methods [tdc]: its training is the train rule's Gaussian variant
    expected = {"prepare_data", "train_gaussian", "convert", "fid_reference", "evaluate", "table1"}
    assert expected <= set(jobs), sorted(jobs)
    states = {p.read_text() for p in (state / "jobs").iterdir()}
    assert states == {"COMPLETED"}
    # GPUs through the executor's own resource, never GRES; one node; limits per kind
    for rule, argv in jobs.items():
        assert not any(a.startswith("--gres") for a in argv), rule
    kinds = {
        "train_gaussian": ("train", PROCESSES),
        "evaluate": ("evaluate", PROCESSES),
        "fid_reference": ("encode", 1),
    }
    limits = {"train": (4320, 256000, 64), "evaluate": (480, 128000, 32), "encode": (240, 64000, 8)}
    for rule, (kind, gpus) in kinds.items():
        argv = jobs[rule]
        runtime, mem, cpus = limits[kind]
        assert _flag(argv, "--gpus") == str(gpus), (rule, argv)
        assert _flag(argv, "--nodes") == "1"
        assert _flag(argv, "-t") == str(runtime) and _flag(argv, "--mem") == str(mem), argv
        assert _flag(argv, "--cpus-per-task") == str(cpus), argv
    assert "--signal=TERM@600" in jobs["train_gaussian"]
    for rule in ("prepare_data", "convert", "table1"):  # CPU jobs: no GPU
        assert _flag(jobs[rule], "--gpus") is None and _flag(jobs[rule], "--ntasks") == "1"
        assert _flag(jobs[rule], "-t") == "120"
    # each job ran as one srun task with the job's GPUs; the model jobs launched 2 processes
    sruns = [json.loads(line) for line in (state / "srun.jsonl").read_text().splitlines()]
    submitted = (state / "sbatch.jsonl").read_text().splitlines()  # evaluate: two rows
    assert len(sruns) == len(submitted) and all("-n1" in argv for argv in sruns)
    train_log = next((repo / "results" / "paper" / "logs" / "train").glob("*.log")).read_text()
    assert f"x {PROCESSES} processes" in train_log
    metrics = json.loads(
        next((repo / "results" / "paper" / "eval").glob("gq-unet-*/metrics.json")).read_text()
    )
    assert metrics["processes"] == PROCESSES and metrics["n_images"] == 8
    summary = json.loads(
        next((repo / "results" / "paper" / "train").glob("tdc-*/summary.json")).read_text()
    )
    assert summary["processes"] == PROCESSES and summary["tdc"]["val_mean"] > 0


def test_slurm_profile_sets_resources_of_rules_that_exist():
    """A renamed or merged rule leaves no dead key in the profile's set-resources (its jobs
    would silently lose the time-limit signal), and every training rule gets that signal."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    out = subprocess.run(
        ["snakemake", "--list-rules"], cwd=ROOT, capture_output=True, text=True, env=ENV
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rules = set(out.stdout.split())
    assert "train" in rules and set(profile["set-resources"]) <= rules, profile["set-resources"]
    trainings = {r for r in rules if r.startswith("train")}
    for rule in trainings:
        assert "--signal=TERM@600" in profile["set-resources"][rule]["slurm_extra"], rule
