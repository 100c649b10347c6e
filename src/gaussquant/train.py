"""Training loop (SPEC 5) with Accelerate: the same code on CPU, one GPU or many.

Reads top to bottom: seed, model, losses, optimisers, data, resume, loop (generator step, then
discriminator step, written out), periodic ``save_state``, final checkpoint.

Exact resume: the data order is a pure function of (seed, step) (:class:`StepBatchSampler`),
and the full state (weights, Adam moments, TDC multipliers, ActNorm init, RNG states, step)
goes through ``accelerator.save_state``; re-running the same command after an interruption
continues from the last complete state and produces a bitwise identical final checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from gaussquant.config import NON_TRAJECTORY_KEYS, Config, config_to_dict
from gaussquant.data import PreparedDataset
from gaussquant.errors import GaussquantError
from gaussquant.io import write_json
from gaussquant.losses import ReconstructionNLL, adaptive_weight, generator_adv_loss, hinge_d_loss
from gaussquant.models.autoencoder import TRAINED_METHODS, build_autoencoder, save_checkpoint
from gaussquant.models.discriminator import NLayerDiscriminator

COMPLETE = "COMPLETE"  # marker written after a state directory is fully saved
LOG_FILE = "metrics.csv"
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


class StepBatchSampler(Sampler[list[int]]):
    """Index batches for steps ``start_step, start_step + 1, ...`` of this process.

    Global batch ``b * world`` at step ``s`` comes from the permutation of epoch
    ``s * b * world // n``, seeded with ``seed + epoch``; process ``rank`` takes its slice. The
    order depends only on (seed, step), never on how many times the run was resumed.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        steps: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        if n < batch_size * world:
            raise GaussquantError(
                f"the training set has {n} images but one step needs {batch_size * world} "
                "(train.batch_size x processes); prepare more data (data.n_train) or lower the batch"
            )
        self.n, self.b, self.steps, self.seed = n, batch_size, steps, seed
        self.start, self.rank, self.world = start_step, rank, world
        self.per_epoch = n // (batch_size * world)  # drop the ragged end of each epoch

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[int]]:
        perm, epoch = None, -1
        for step in range(self.start, self.steps):
            e, k = divmod(step, self.per_epoch)
            if e != epoch:
                g = torch.Generator().manual_seed(self.seed + e)
                perm, epoch = torch.randperm(self.n, generator=g), e
            g0 = (k * self.world + self.rank) * self.b
            yield perm[g0 : g0 + self.b].tolist()


@dataclass
class LoopState:
    """Counters saved with the accelerate state."""

    step: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def latest_state(state_dir: Path) -> Path | None:
    """Newest fully written state directory (one with the COMPLETE marker), if any."""
    done = [p for p in state_dir.glob("step-*") if (p / COMPLETE).exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


RUN_FILE = "run.json"


def prepared_sha256(data_dir: Path) -> str | None:
    """The prepared data's content hash from its manifest (``gaussquant prepare-data``)."""
    manifest = Path(data_dir) / "manifest.json"
    return json.loads(manifest.read_text()).get("sha256") if manifest.exists() else None


def run_settings(
    cfg: Config, method: str, arch: str, rate: str, data_sha256: str | None = None
) -> dict:
    """Everything that determines a training's trajectory, as plain data: the settings and
    the prepared data's hash. Saved states are resumed only by a run with equal settings."""
    d = config_to_dict(cfg)
    train = {k: v for k, v in d["train"].items() if k not in NON_TRAJECTORY_KEYS}
    sections = ("data", "model", "loss", "tdc", "vanilla", "vq", "lfq", "bsq")
    run = {
        "method": method,
        "arch": arch,
        "rate": rate,
        "rate_config": d["rates"][rate],
        "train": train,
        "data_sha256": data_sha256,
        **{k: d[k] for k in sections},
    }
    return json.loads(json.dumps(run))  # as read back from run.json (tuples -> lists)


def _discard_stale_states(state_dir: Path, run: dict) -> None:
    """Delete saved states written under other settings (e.g. params.yaml was edited since),
    so that a re-run never continues a different training; record the current settings."""
    record = state_dir / RUN_FILE
    saved = json.loads(record.read_text()) if record.exists() else None
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


def _save_state(accelerator, state_dir: Path, step: int, log: Path, keep: int = 2) -> None:
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


def _check_finite(terms: dict[str, torch.Tensor], step: int, state_dir: Path) -> None:
    for name, value in terms.items():
        if not torch.isfinite(value).all():
            last = latest_state(state_dir)
            kept = f"last good state kept at {last}" if last else "no state was saved yet"
            raise GaussquantError(
                f"non-finite loss at step {step}: term {name!r} = {value.item()}; {kept}. "
                "Lower train.lr or check the data."
            )


def _reduce_fn(accelerator):
    def reduce(x: torch.Tensor, op: str) -> torch.Tensor:
        if accelerator.num_processes == 1:
            return x
        if op == "mean":
            return accelerator.reduce(x.clone(), reduction="mean")
        gathered = accelerator.gather(x.reshape(1))
        return gathered.min() if op == "min" else gathered.max()

    return reduce


def train(
    cfg: Config,
    method: str,
    arch: str,
    rate: str,
    data_dir: Path,
    out: Path,
    weights_dir: Path | None = None,
    kill_at_step: int | None = None,
    progress: bool = True,
) -> Path:
    """Train (method, arch, rate) on the prepared data in ``data_dir``.

    Writes ``out/model.pt`` (final checkpoint), ``out/metrics.csv`` (one row per log step),
    ``out/summary.json``, and keeps resumable states in ``out/state/``. Returns the
    checkpoint path.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from gaussquant.metrics.lpips import build_lpips, lpips_compute_dtype

    if method not in TRAINED_METHODS:
        raise GaussquantError(f"unknown method {method!r}; allowed: {', '.join(TRAINED_METHODS)}")
    tc, lc = cfg.train, cfg.loss
    out = Path(out)
    state_dir = out / "state"
    # params.yaml says fp32, not Accelerate's "no": DVC rewrites params.yaml without the quotes
    # (`dvc exp run -S`), and YAML 1.1 (PyYAML, Snakemake) reads a bare no as False
    accelerator = Accelerator(
        mixed_precision={"fp32": "no"}.get(tc.mixed_precision, tc.mixed_precision)
    )
    set_seed(tc.seed)  # the same on every process: identical initial weights

    # ---- model, losses, optimisers
    model = build_autoencoder(cfg, method, arch, rate)
    model.bottleneck.reduce_fn = _reduce_fn(accelerator)
    # oneDNN's convolutions and GroupNorm are faster channels-last on CPU (quick UNet fwd+bwd,
    # 1 thread: 0.198 -> 0.166 s); the arithmetic is the same, only the memory layout differs
    channels_last = accelerator.device.type == "cpu" and arch == "unet"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    disc = NLayerDiscriminator(cfg.model.discriminator)
    perceptual = build_lpips("vgg", weights_dir) if lc.lpips_weight > 0 else None
    lpips_dtype = lpips_compute_dtype(lc.lpips_precision, accelerator.device)
    if perceptual is not None:
        perceptual = perceptual.to(accelerator.device, lpips_dtype)
    nll_loss = ReconstructionNLL(lc)
    hp = "gq" if method == "tbtdc" else method  # the TokenBridge TDC VAE trains like the GQ one
    lr, betas = tc.lr[hp], tuple(tc.betas)
    g_params = list(model.parameters()) + [nll_loss.logvar]
    opt_g = torch.optim.Adam(g_params, lr=lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=betas)
    model, disc, nll_loss, opt_g, opt_d = accelerator.prepare(model, disc, nll_loss, opt_g, opt_d)
    loop = LoopState()
    accelerator.register_for_checkpointing(loop)

    # ---- resume (only states of these very settings: a changed parameter starts over)
    run = run_settings(cfg, method, arch, rate, prepared_sha256(data_dir))
    run["lpips_dtype"] = str(lpips_dtype)  # `auto` resolves per machine: resume only the same
    if accelerator.is_main_process:
        _discard_stale_states(state_dir, run)
    accelerator.wait_for_everyone()
    resume = latest_state(state_dir)
    if resume is not None:
        accelerator.load_state(str(resume))
        accelerator.print(f"resuming from {resume} (step {loop.step})")
        if accelerator.is_main_process and (resume / LOG_FILE).exists():
            shutil.copyfile(resume / LOG_FILE, out / LOG_FILE)
    if accelerator.is_main_process:
        _truncate_log(out / LOG_FILE, loop.step)
    accelerator.wait_for_everyone()

    # ---- data: order is a function of (seed, step) only
    dataset = PreparedDataset(data_dir, "train")
    batch = tc.batch_size[hp]
    sampler = StepBatchSampler(
        len(dataset),
        batch,
        tc.steps,
        tc.seed,
        loop.step,
        accelerator.process_index,
        accelerator.num_processes,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=tc.num_workers,
        pin_memory=accelerator.device.type == "cuda",
        # own generator: creating the iterator must not draw from the global RNG, whose state
        # the resumed run restores (else the noise of every later step differs)
        generator=torch.Generator().manual_seed(tc.seed),
    )

    raw_model = accelerator.unwrap_model(model)
    accelerator.print(
        f"train {method}/{arch}/{rate}: {sum(p.numel() for p in raw_model.parameters()):,} "
        f"params, lr {lr}, batch {batch} x {accelerator.num_processes} processes, "
        f"steps {tc.steps}, LPIPS loss in {str(lpips_dtype).removeprefix('torch.')}, "
        f"derived {cfg.derived()['rates'].get(rate)}"
    )
    bar = tqdm(
        total=tc.steps,
        initial=loop.step,
        disable=not (progress and accelerator.is_main_process),
        desc=f"{method}/{arch}",
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()
    for x in loader:
        step = loop.step
        x = x.to(accelerator.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        use_gan = step >= lc.disc_start and lc.disc_factor > 0
        model.train()

        # ---- generator step
        x_rec, q = model(x)
        p = perceptual(x, x_rec) if perceptual is not None else None
        nll, rec_stats = nll_loss(x, x_rec, p)
        aux = q.loss
        loss = nll + aux
        terms = {"nll": nll, "aux": aux}
        g_loss = d_weight = None
        if use_gan:
            g_loss = generator_adv_loss(disc(x_rec))
            d_weight = lc.disc_weight * adaptive_weight(
                nll, g_loss, raw_model.last_layer(), lc.adaptive_weight_max
            )
            loss = loss + d_weight * lc.disc_factor * g_loss
            terms["g_loss"] = g_loss
        _check_finite({**terms, "loss": loss, **q.losses}, step, state_dir)
        step_lr = lr * lr_factor(step, tc.steps, tc.lr_decay)  # of the step only: not saved
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = step_lr
        opt_g.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt_g.step()

        # ---- discriminator step (reuses x_rec: one autoencoder forward per update)
        d_loss = None
        if use_gan:
            d_loss = lc.disc_factor * hinge_d_loss(disc(x.detach()), disc(x_rec.detach()))
            _check_finite({"d_loss": d_loss}, step, state_dir)
            opt_d.zero_grad(set_to_none=True)
            accelerator.backward(d_loss)
            opt_d.step()

        loop.step = step + 1
        bar.update(1)
        if loop.step % tc.log_every == 0 or loop.step == tc.steps:
            row = {
                "step": loop.step,
                "loss": loss,
                "nll": nll,
                "aux": aux,
                "g_loss": g_loss,
                "d_weight": d_weight,
                "d_loss": d_loss,
                **rec_stats,
                **q.stats,
                "time_s": time.perf_counter() - t0,
            }
            row = {k: _scalar(row.get(k)) for k in LOG_KEYS} | {"step": loop.step}
            if accelerator.is_main_process:
                _append_log(out / "metrics.csv", row)
            bar.set_postfix(
                {k: f"{row[k]:.4g}" for k in ("loss", "bits_mean", "lam") if row[k] == row[k]}
            )
        if loop.step % tc.save_every == 0 and loop.step < tc.steps:
            _save_state(accelerator, state_dir, loop.step, out / LOG_FILE)
        if kill_at_step is not None and loop.step == kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: a hard interruption
    bar.close()

    # ---- final checkpoint (atomic), summary
    ckpt = out / "model.pt"
    if accelerator.is_main_process:
        save_checkpoint(
            ckpt,
            raw_model.cpu(),
            cfg,
            method,
            arch,
            rate,
            loop.step,
            extra={"logvar": accelerator.unwrap_model(nll_loss).logvar.item()},
        )
        write_json(
            out / "summary.json",
            {
                "method": method,
                "arch": arch,
                "rate": rate,
                "steps": loop.step,
                "processes": accelerator.num_processes,
                "batch_per_process": batch,
                "train_images": len(dataset),
                "lpips_dtype": str(lpips_dtype).removeprefix("torch."),  # auto resolves per machine
                "final_window": final_window(out / "metrics.csv", loop.step),
                "config": config_to_dict(cfg.train),
            },
        )
    accelerator.wait_for_everyone()
    return ckpt


def lr_factor(step: int, steps: int, decay: float) -> float:
    """Learning-rate multiplier at 0-based ``step``: 1, then over the final ``decay`` share of
    the ``steps`` a linear fall to 0 (the last update still moves, at 1 / decay_steps)."""
    decay_steps = decay * steps
    if decay_steps <= 0 or step < steps - decay_steps:
        return 1.0
    return max(0.0, (steps - step) / decay_steps)


def _scalar(v) -> float:
    if v is None:
        return math.nan
    return float(v.detach().float().mean()) if torch.is_tensor(v) else float(v)


def final_window(path: Path, steps: int, share: float = 0.2) -> dict[str, float]:
    """Logged values over the last ``share`` of training: the mean of each logged quantity
    (one batch per row is noisy), and the extremes of the per-token KL bounds."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) > (1 - share) * steps]
    out: dict[str, float] = {"from_step": min((int(r["step"]) for r in rows), default=0)}
    for key in ("loss", "l1", "lpips", "bits_mean", "lam"):
        vals = [float(r[key]) for r in rows if r.get(key) not in (None, "", "nan")]
        vals = [v for v in vals if v == v]
        if vals:
            out[key] = sum(vals) / len(vals)
    for key, pick in (("bits_min", min), ("bits_max", max)):
        vals = [float(r[key]) for r in rows if r.get(key) not in (None, "", "nan")]
        vals = [v for v in vals if v == v]
        if vals:
            out[key] = pick(vals)
    return out


def _append_log(path: Path, row: dict[str, float]) -> None:
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_KEYS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_log(path: Path, step: int) -> None:
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
