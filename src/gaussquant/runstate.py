"""Bookkeeping of a training run: saved states, the resume record, the metrics log.

A run directory holds ``model.pt`` (final), ``metrics.csv`` (one row per log step),
``summary.json`` and ``state/step-XXXXXXXX/`` (``accelerator.save_state`` plus the log up to
that step and a ``COMPLETE`` marker written last). ``state/run.json`` records the settings the
states were written with: a run with other settings never continues them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import torch

from gaussquant.config import Config, run_determinants
from gaussquant.errors import GaussquantError
from gaussquant.io import write_json
from gaussquant.methods import current_method
from gaussquant.safeload import accelerate_globals, check_pickles

COMPLETE = "COMPLETE"  # marker written after a state directory is fully saved
LOG_FILE = "metrics.csv"
RUN_FILE = "run.json"
TRACKING_DIR = "tracking"  # train.log_with's tracker files (tensorboard event files)
LOG_KEYS = (
    "step",
    "loss",
    "nll",
    "l1",
    "lpips",
    "logvar",
    "aux",
    "g_loss",
    "d_weight",
    "d_loss",
    "bits_mean",
    "bits_min",
    "bits_max",
    "lam",
    "lam_min",
    "lam_max",
    "time_s",
)
KILL_ENV = "GAUSSQUANT_TEST_KILL_AT_STEP"  # tests: SIGKILL the run after this step
SIGNAL_ENV = "GAUSSQUANT_TEST_SIGNAL_AT_STEP"  # tests: "STEP:NAME" sends SIGNAME after STEP
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # SLURM preemption / `sbatch --signal`


@dataclass
class LoopState:
    """Counters saved with the accelerate state."""

    step: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def tracker_args(log_with: str, out: Path) -> dict:
    """Accelerator arguments for ``train.log_with``: its tracker, writing under ``out/tracking``."""
    if log_with == "none":
        return {}
    return {"log_with": log_with, "project_dir": str(Path(out) / TRACKING_DIR)}


def start_tracking(accelerator, name: str, run: dict) -> None:
    """Start the trackers (if any) with the run's flat settings as their hyperparameters; every
    logged metrics.csv row then also goes to them (``accelerator.log``)."""
    if accelerator.trackers or not accelerator.log_with:
        return
    keys = ("method", "arch", "rate", "data_sha256")
    flat = {k: run[k] for k in keys if run.get(k) is not None}
    flat |= {k: v for k, v in run["train"].items() if isinstance(v, int | float | str | bool)}
    accelerator.init_trackers(name, config=flat)


def latest_state(state_dir: Path) -> Path | None:
    """Newest fully written state directory (one with the COMPLETE marker), if any."""
    done = [p for p in state_dir.glob("step-*") if (p / COMPLETE).exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def prepared_sha256(data_dir: Path) -> str | None:
    """The prepared data's content hash from its manifest (``gaussquant prepare-data``)."""
    manifest = Path(data_dir) / "manifest.json"
    return json.loads(manifest.read_text()).get("sha256") if manifest.exists() else None


def run_settings(
    cfg: Config,
    method: str,
    arch: str,
    rate: str,
    data_sha256: str | None = None,
    processes: int = 1,
) -> dict:
    """What a saved state must share with this launch to be resumed: the run's determinants
    (:func:`gaussquant.config.run_determinants`, global batch included), the prepared data's
    hash, and the process count (another count with the same global batch may resume, see
    :func:`discard_stale_states`)."""
    run = run_determinants(cfg, method, arch, rate, processes)
    return run | {"processes": processes, "data_sha256": data_sha256}


def discard_stale_states(state_dir: Path, run: dict) -> None:
    """Delete saved states written under other settings (e.g. params.yaml was edited since),
    so that a re-run never continues a different training; record the current settings."""
    record = state_dir / RUN_FILE
    saved = json.loads(record.read_text()) if record.exists() else None
    if saved and "method" in saved:  # recorded when the TDC VAE was named gq
        saved["method"] = current_method(saved["method"])
    if saved and any(state_dir.glob("step-*")):
        _check_process_count(saved, run, state_dir)
        saved = {**saved, "processes": run["processes"]}  # same global batch: resumable
    if saved != run and any(state_dir.glob("step-*")):
        changed = sorted(
            k for k in set(run) | set(saved or {}) if (saved or {}).get(k) != run.get(k)
        )
        print(
            f"{state_dir}: saved states were written with other settings "
            f"(differs in: {', '.join(changed) or 'unrecorded'}); starting from step 0"
        )
        for old in state_dir.glob("step-*"):
            shutil.rmtree(old, ignore_errors=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    write_json(record, run)


def _check_process_count(saved: dict, run: dict, state_dir: Path) -> None:
    """Resuming on another process count keeps the global batch, or stops here: a silent
    change of the global batch would change the training (docs/method.md §5)."""
    if saved.get("processes", run["processes"]) == run["processes"]:
        return
    if saved.get("global_batch") == run["global_batch"]:
        return
    p, g = saved.get("processes"), saved.get("global_batch")
    raise GaussquantError(
        f"{state_dir}: the saved states were written by {p} processes with global batch {g}; "
        f"this launch has {run['processes']} processes, global batch {run['global_batch']}. "
        f"Relaunch with {p} processes, or keep the global batch: per-process train.batch_size "
        f"{g} / {run['processes']} (with train.grad_accum splitting it to fit memory)"
    )


class StopSignals:
    """SIGTERM / SIGUSR1 (SLURM preemption, ``sbatch --signal``) set a flag instead of ending
    the process; the training loop asks :meth:`requested` after each step, saves a state and
    exits (:data:`PREEMPTED_EXIT` + signal number), and the re-run resumes from that step."""

    def __init__(self):
        self.signum = 0
        self.previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def requested(self, accelerator) -> int:
        """The signal any process received (0 if none): every process stops at the same step."""
        if accelerator.num_processes == 1:
            return self.signum
        flag = torch.tensor([self.signum], device=accelerator.device)
        return int(accelerator.reduce(flag, reduction="max").item())

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


PREEMPTED_EXIT = 128  # exit status base, as a shell reports a signal: 143 for SIGTERM


def resume(accelerator, out: Path, run: dict) -> None:
    """Load the newest complete state of these very settings (if any) into the registered
    objects, and bring ``out/metrics.csv`` back to that step."""
    state_dir = out / "state"
    if accelerator.is_main_process:
        discard_stale_states(state_dir, run)
    accelerator.wait_for_everyone()
    last = latest_state(state_dir)
    step = 0
    if last is not None:  # Accelerate unpickles some state files unrestricted: check them first
        check_pickles(last, "saved training state", accelerate_globals())
        accelerator.load_state(str(last))
        step = int((last / COMPLETE).read_text())
        accelerator.print(f"resuming from {last} (step {step})")
        if accelerator.is_main_process and (last / LOG_FILE).exists():
            shutil.copyfile(last / LOG_FILE, out / LOG_FILE)
    if accelerator.is_main_process:
        truncate_log(out / LOG_FILE, step)
    accelerator.wait_for_everyone()


def save_state(accelerator, out: Path, step: int, keep: int = 2) -> None:
    state_dir, log = out / "state", out / LOG_FILE
    target = state_dir / f"step-{step:08d}"
    if accelerator.is_main_process and target.exists():
        shutil.rmtree(target)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(target))
    if accelerator.is_main_process:
        if log.exists():  # the log is part of the state: Snakemake deletes the outputs of a
            shutil.copyfile(log, target / LOG_FILE)  # job it reruns, metrics.csv included
        (target / COMPLETE).write_text(f"{step}\n")
        done = sorted(p for p in state_dir.glob("step-*") if (p / COMPLETE).exists())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def kill_if_asked(step: int) -> None:
    """Test hook: a hard interruption (SIGKILL) after ``step`` when ``$GAUSSQUANT_TEST_KILL_AT_STEP``
    says so; the resume tests use it."""
    if os.environ.get(KILL_ENV) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
    at, _, name = os.environ.get(SIGNAL_ENV, "").partition(":")
    if at == str(step):
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


# ----------------------------------------------------------------------------- metrics log


def log_row(step: int, values: dict) -> dict[str, float]:
    """One metrics.csv row: every LOG_KEYS column, NaN where a value was not computed."""
    return {k: _scalar(values.get(k)) for k in LOG_KEYS} | {"step": step}


def _scalar(v) -> float:
    if v is None:
        return math.nan
    return float(v.detach().float().mean()) if torch.is_tensor(v) else float(v)


def append_log(path: Path, row: dict[str, float]) -> None:
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_KEYS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def truncate_log(path: Path, step: int) -> None:
    """Drop log rows written after the state we resume from (they will be written again)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    if step == 0 or not rows:
        path.unlink()
        return
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_KEYS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def final_window(path: Path, steps: int, share: float = 0.2) -> dict[str, float]:
    """Logged values over the last ``share`` of training: the mean of each logged quantity
    (one batch per row is noisy), and the extremes of the per-token KL bounds."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) > (1 - share) * steps]
    out: dict[str, float] = {"from_step": min((int(r["step"]) for r in rows), default=0)}

    def values(key: str) -> list[float]:
        vals = [float(r[key]) for r in rows if r.get(key) not in (None, "", "nan")]
        return [v for v in vals if v == v]

    for key in ("loss", "l1", "lpips", "bits_mean", "lam"):
        if vals := values(key):
            out[key] = sum(vals) / len(vals)
    for key, pick in (("bits_min", min), ("bits_max", max)):
        if vals := values(key):
            out[key] = pick(vals)
    return out
