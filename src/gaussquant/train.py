"""Training loop (docs/method.md §5) with Accelerate: the same code on CPU, one GPU or many.

:func:`train` reads top to bottom: accelerator and seed, model and losses, optimisers, resume,
data, loop (:func:`train_step`: the generator block, then the discriminator block, written
out), periodic ``save_state``, final checkpoint. Saved states and the metrics log are kept by
:mod:`gaussquant.runstate`.

Exact resume: the data order is a pure function of (seed, step)
(:class:`gaussquant.data.StepBatchSampler`), and the full state (weights, Adam moments, TDC
multipliers, ActNorm init, RNG states, step) goes through ``accelerator.save_state``; re-running
the same command after an interruption continues from the last complete state and produces a
bitwise identical final checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from gaussquant import runstate
from gaussquant.checkpoint import save_checkpoint
from gaussquant.config import Config, LossConfig, at_rate_steps, config_to_dict
from gaussquant.data import PreparedDataset, StepBatchSampler
from gaussquant.encoding import RATE_IMAGES, posterior_rates, rate_summary
from gaussquant.errors import GaussquantError
from gaussquant.io import write_json
from gaussquant.losses import ReconstructionNLL, adaptive_weight, generator_adv_loss, hinge_d_loss
from gaussquant.methods import METHODS, TRAINED_METHODS
from gaussquant.metrics.lpips import build_lpips, lpips_compute_dtype
from gaussquant.models.autoencoder import build_autoencoder
from gaussquant.models.diffusers_vae import BYO_ARCH, pretrained_autoencoder
from gaussquant.models.discriminator import NLayerDiscriminator
from gaussquant.records import RATES_FILE, save_rates


class NonFiniteLoss(GaussquantError):
    pass


@dataclass
class TrainParts:
    """What one training step updates. ``backward`` is ``accelerator.backward`` (or plain
    ``Tensor.backward``); ``last_layer`` gives the decoder's output weight (adaptive GAN weight);
    ``raw_disc`` the discriminator outside any DDP wrapper (the generator step's pass through
    it, which must not all-reduce its gradients); ``no_sync`` a context that skips the gradient
    all-reduce of a module (all but the last micro-batch of a step)."""

    model: nn.Module
    disc: nn.Module
    nll_loss: nn.Module
    perceptual: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    loss: LossConfig
    backward: Callable[[torch.Tensor], None]
    last_layer: Callable[[], torch.Tensor]
    raw_disc: nn.Module | None = None
    tdc: nn.Module | None = None  # the TDC regulariser, whose multipliers move once per step
    grad_accum: int = 1
    no_sync: Callable[[nn.Module], AbstractContextManager] = lambda module: nullcontext()


def train_step(p: TrainParts, x: torch.Tensor, step: int, lr: float) -> dict:
    """One update of the autoencoder, then (from ``loss.disc_start``) of the discriminator,
    reusing the same reconstruction (one autoencoder forward per update). Returns the terms.

    With ``grad_accum`` = a, the batch runs as a equal micro-batches whose losses are summed
    with weight 1/a (every loss is a batch mean, so the gradient is the batch's), the TDC
    multipliers move once from the whole batch's statistics, each optimiser steps once: the
    update equals the one of the whole batch up to float rounding. The adaptive GAN weight is
    computed per micro-batch from its own gradients (as per process under DDP), ActNorm
    initialises from the first micro-batch (of every process)."""
    lc = p.loss
    use_gan = step >= lc.disc_start and lc.disc_factor > 0
    p.model.train()
    for opt in (p.opt_g, p.opt_d):
        for group in opt.param_groups:
            group["lr"] = lr
    micro = x.chunk(p.grad_accum)

    # ---- generator step
    p.opt_g.zero_grad(set_to_none=True)
    parts, recs = [], []
    for i, xm in enumerate(micro):
        with p.no_sync(p.model) if i < len(micro) - 1 else nullcontext():
            terms, x_rec = _generator_terms(p, xm, step, use_gan)
            p.backward(terms["loss"] / len(micro))
        parts.append(terms)
        recs.append(x_rec.detach())
    if p.tdc is not None:
        p.tdc.update_from(parts)
    p.opt_g.step()

    # ---- discriminator step
    d_loss = None
    if use_gan:
        p.opt_d.zero_grad(set_to_none=True)
        d_parts = []
        for i, (xm, x_rec) in enumerate(zip(micro, recs)):
            with p.no_sync(p.disc) if i < len(micro) - 1 else nullcontext():
                d = lc.disc_factor * hinge_d_loss(p.disc(xm), p.disc(x_rec))
                _check_finite({"d_loss": d}, step)
                p.backward(d / len(micro))
            d_parts.append(d.detach())
        d_loss = torch.stack(d_parts).mean()
        p.opt_d.step()
    return _merge_terms(parts) | {"d_loss": d_loss}


def _generator_terms(p: TrainParts, x: torch.Tensor, step: int, use_gan: bool):
    """The generator loss of one (micro-)batch and its terms; the reconstruction."""
    lc = p.loss
    x_rec, q = p.model(x)
    perceptual = p.perceptual(x, x_rec) if p.perceptual is not None else None
    nll, rec_stats = p.nll_loss(x, x_rec, perceptual)
    loss = nll + q.loss
    terms = {"nll": nll, "aux": q.loss}
    g_loss = d_weight = None
    if use_gan:
        disc = p.raw_disc if p.raw_disc is not None else p.disc
        with _frozen(disc):  # gradients reach x_rec only: none for the discriminator's weights
            g_loss = generator_adv_loss(disc(x_rec))
        d_weight = lc.disc_weight * adaptive_weight(
            nll, g_loss, p.last_layer(), lc.adaptive_weight_max
        )
        loss = loss + d_weight * lc.disc_factor * g_loss
        terms["g_loss"] = g_loss
    _check_finite({**terms, "loss": loss, **q.losses}, step)
    out = {"loss": loss, "g_loss": g_loss, "d_weight": d_weight, **terms}
    return out | rec_stats | q.stats, x_rec


@contextmanager
def _frozen(module: nn.Module):
    params = [q for q in module.parameters() if q.requires_grad]
    for q in params:
        q.requires_grad_(False)
    try:
        yield
    finally:
        for q in params:
            q.requires_grad_(True)


_PICK = {"bits_min": torch.min, "bits_max": torch.max}  # else the micro-batches' mean


def _merge_terms(parts: list[dict]) -> dict:
    """A step's logged terms from its micro-batches' (one micro-batch: unchanged)."""
    if len(parts) == 1:
        return parts[0]
    out = {}
    for key, value in parts[0].items():
        if value is None or not torch.is_tensor(value):
            out[key] = value
            continue
        stacked = torch.stack([part[key].detach().float().mean() for part in parts])
        out[key] = _PICK.get(key, torch.mean)(stacked)
    return out


def train(
    cfg: Config,
    method: str,
    arch: str,
    rate: str,
    data_dir: Path,
    out: Path,
    weights_dir: Path | None = None,
    progress: bool = True,
    init_from_diffusers: str | None = None,
) -> Path:
    """Train (method, arch, rate) on the prepared data in ``data_dir``.

    Writes ``out/model.pt`` (final checkpoint), ``out/metrics.csv`` (one row per log step),
    ``out/summary.json``, for a Gaussian VAE ``out/rates.npz`` (its validation posterior rates,
    :func:`end_of_training_rates`), and keeps resumable states in ``out/state/``. Returns the
    checkpoint path. ``init_from_diffusers``: start from a pretrained diffusers VAE (folder or
    hub id) instead of our backbone; ``cfg`` is then its ``diffusers_vae.byo_config``.
    """
    if method not in TRAINED_METHODS:
        raise GaussquantError(f"unknown method {method!r}; allowed: {', '.join(TRAINED_METHODS)}")
    cfg = at_rate_steps(cfg, rate)
    tc, out = cfg.train, Path(out)
    # params.yaml says fp32, not Accelerate's "no": DVC rewrites params.yaml without the quotes
    # (`dvc exp run -S`), and YAML 1.1 (PyYAML, Snakemake) reads a bare no as False
    accelerator = Accelerator(
        mixed_precision={"fp32": "no"}.get(tc.mixed_precision, tc.mixed_precision),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=tc.dist_timeout_s))],
        **runstate.tracker_args(tc.log_with, out),
    )
    backend_settings(tc)
    set_seed(tc.seed)  # the same on every process: identical initial weights
    model, init = initial_model(cfg, method, arch, rate, init_from_diffusers)
    parts, lpips_dtype, channels_last = _build_parts(
        cfg, model, method, arch, accelerator, weights_dir
    )
    hp = METHODS[method].hyper
    lr, batch = tc.lr[hp], tc.batch_size[hp]
    loop = runstate.LoopState()
    accelerator.register_for_checkpointing(loop)
    run = runstate.run_settings(
        cfg, method, arch, rate, runstate.prepared_sha256(data_dir), accelerator.num_processes
    )
    run["lpips_dtype"] = str(lpips_dtype)  # `auto` resolves per machine: resume only the same
    if init:  # a pretrained start: resume only a run that started from the same weights
        run["init"] = {k: init["diffusers"][k] for k in ("config", "weights_sha256")}
    runstate.resume(accelerator, out, run)
    runstate.start_tracking(accelerator, f"{method}-{arch}-{rate}", run)

    dataset = PreparedDataset(data_dir, "train")
    loader = _step_loader(dataset, batch, tc, loop.step, accelerator)
    raw_model = accelerator.unwrap_model(parts.model)
    accelerator.print(
        f"train {method}/{arch}/{rate}: {sum(p.numel() for p in raw_model.parameters()):,} "
        f"params, lr {lr}, batch {batch} x {accelerator.num_processes} processes "
        f"(micro-batch {batch // tc.grad_accum}), "
        f"steps {tc.steps}, LPIPS loss in {str(lpips_dtype).removeprefix('torch.')}, "
        f"derived {cfg.derived()['rates'].get(rate)}"
    )
    bar = _Progress(tc.steps, loop.step, f"{method}/{arch}", progress, accelerator)
    t0 = time.perf_counter()
    stop = runstate.StopSignals()
    for x in loader:
        x = x.to(accelerator.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        step_lr = lr * lr_factor(loop.step, tc.steps, tc.lr_decay)  # of the step only: not saved
        try:
            terms = train_step(parts, x, loop.step, step_lr)
        except NonFiniteLoss as err:
            last = runstate.latest_state(out / "state")
            kept = f"last good state kept at {last}" if last else "no state was saved yet"
            raise GaussquantError(f"{err}; {kept}. Lower train.lr or check the data.") from None
        loop.step += 1
        if loop.step % tc.log_every == 0 or loop.step == tc.steps:
            row = runstate.log_row(loop.step, terms | {"time_s": time.perf_counter() - t0})
            if accelerator.is_main_process:
                runstate.append_log(out / runstate.LOG_FILE, row)
            accelerator.log({k: v for k, v in row.items() if k != "step"}, step=loop.step)
            bar.log(row)
        bar.update()
        if loop.step % tc.save_every == 0 and loop.step < tc.steps:
            runstate.save_state(accelerator, out, loop.step)
        runstate.kill_if_asked(loop.step)
        if (signum := stop.requested(accelerator)) and loop.step < tc.steps:
            _stop_for_requeue(accelerator, out, loop.step, signum, tc.save_every)
    stop.restore()
    bar.close()

    ckpt = out / "model.pt"
    val = PreparedDataset(data_dir, "val")
    rates = end_of_training_rates(method, raw_model, val, cfg.eval.batch_size, accelerator)
    check = None
    if METHODS[method].section == "tdc":
        bits, target, tol = rates["token_bits"], rates["target"], rates["tolerance"]
        check = tdc_check(cfg, bits, target, tol, out / runstate.LOG_FILE, loop.step)
    if accelerator.is_main_process:
        logvar = accelerator.unwrap_model(parts.nll_loss).logvar.item()
        extra = {"logvar": logvar} | init  # init: what rebuilds a pretrained architecture
        save_checkpoint(ckpt, raw_model.cpu(), cfg, method, arch, rate, loop.step, extra)
        summary = {
            "method": method,
            "arch": arch,
            "rate": rate,
            "steps": loop.step,
            "processes": accelerator.num_processes,
            "batch_per_process": batch,
            "grad_accum": tc.grad_accum,
            "global_batch": batch * accelerator.num_processes,
            "train_images": len(dataset),
            "lpips_dtype": str(lpips_dtype).removeprefix("torch."),  # auto resolves per machine
            "final_window": runstate.final_window(out / runstate.LOG_FILE, loop.step),
            "tdc": check,
            "config": config_to_dict(cfg.train),
        }
        if rates is not None:
            save_rates(out / RATES_FILE, rates)
        write_json(out / "summary.json", summary)
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:  # train.log_with: flush and close (none: no trackers)
        tracker.finish()
    return ckpt


def backend_settings(tc) -> dict[str, bool]:
    """CUDA speed flags of the ``train`` section (no effect on CPU); returns what was set."""
    flags = {"tf32": tc.tf32, "cudnn_benchmark": tc.cudnn_benchmark}
    torch.backends.cuda.matmul.allow_tf32 = tc.tf32
    torch.backends.cudnn.allow_tf32 = tc.tf32
    torch.backends.cudnn.benchmark = tc.cudnn_benchmark
    return flags


def _stop_for_requeue(accelerator, out: Path, step: int, signum: int, save_every: int) -> None:
    """A stop signal arrived: save this step's state (unless just saved) and exit; the same
    command run again resumes from it."""
    if step % save_every:
        runstate.save_state(accelerator, out, step)
    accelerator.print(
        f"received signal {signum}: state saved at step {step} in {out / 'state'}; "
        "run the same command again to continue",
        flush=True,
    )
    accelerator.end_training()
    raise SystemExit(runstate.PREEMPTED_EXIT + signum)


def end_of_training_rates(method, model, dataset, batch_size, accelerator) -> dict | None:
    """Posterior rates of the trained Gaussian VAE ``model`` in memory
    (:func:`gaussquant.encoding.posterior_rates` plus ``method``), encoded by every process on
    its device, each a slice of the first ``RATE_IMAGES`` validation images, before the final
    barrier (all processes call it and get the result); None for a method without a Gaussian
    posterior. The TDC check judges them; training writes them to ``rates.npz``, where the KL
    figure and the ablations read them instead of loading the checkpoint and encoding again."""
    if not METHODS[method].gaussian:
        return None
    was_training = model.training
    rates = posterior_rates(model.eval(), dataset, batch_size, RATE_IMAGES, accelerator)
    model.train(was_training)
    return rates | {"method": method}


def tdc_check(cfg, bits, target: float, tolerance: float, log: Path, steps: int) -> dict:
    """Does TDC hold at the end of training? Judged by the rate distribution ``bits`` (every
    validation token's KL) alone (:func:`gaussquant.encoding.rate_summary`). The multipliers'
    end values and whether they sat at a bound through the last 20 % of logged steps are shown,
    not judged: TDC's min/max rule moves them whenever one token of a batch lies outside
    +-alpha (docs/method.md §1)."""
    s = rate_summary(np.asarray(bits), target, tolerance)
    rows = pd.read_csv(log)
    rows = rows[rows["step"] > 0.8 * steps]
    hi, lo = cfg.tdc.lam_max_range[1], cfg.tdc.lam_min_range[0]
    pinned = {
        "lam_max": bool(len(rows) and np.isclose(rows["lam_max"], hi, rtol=1e-6).all()),
        "lam_min": bool(len(rows) and np.isclose(rows["lam_min"], lo, rtol=1e-6).all()),
    }
    return {
        "target_bits": s["target"],
        "val_p05": s["p05"],
        "val_p95": s["p95"],
        "val_mean": s["mean"],
        "band_bits": s["band_bits"],
        "val_below_tolerance": s["below_tolerance"],
        "val_within_tolerance": s["within_tolerance"],
        "val_above_tolerance": s["above_tolerance"],
        "min_within": s["min_within"],
        "lam_min_end": float(rows["lam_min"].iloc[-1]) if len(rows) else math.nan,
        "lam_max_end": float(rows["lam_max"].iloc[-1]) if len(rows) else math.nan,
        "pinned_last_20pct": pinned,  # shown, not judged
        "holds": s["holds"],
    }


def initial_model(cfg, method, arch, rate, init_from_diffusers=None) -> tuple[nn.Module, dict]:
    """Our backbone freshly initialised, or a pretrained diffusers VAE with a fresh bottleneck
    (:mod:`gaussquant.models.diffusers_vae`); and the checkpoint extra describing the latter."""
    if init_from_diffusers is None:
        return build_autoencoder(cfg, method, arch, rate), {}
    if arch != BYO_ARCH:
        raise GaussquantError(f"--init-from-diffusers trains arch {BYO_ARCH!r}, not {arch!r}")
    return pretrained_autoencoder(init_from_diffusers, cfg, method, rate)


def _build_parts(cfg, model, method, arch, accelerator, weights_dir):
    """Discriminator, losses and optimisers for ``model``, all prepared by Accelerate."""
    lc = cfg.loss
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
        if accelerator.device.type == "cpu":  # layout only: the same arithmetic, ~10 % faster
            perceptual = perceptual.to(memory_format=torch.channels_last)
    nll_loss = ReconstructionNLL(lc)
    tc = cfg.train
    lr, betas = tc.lr[METHODS[method].hyper], tuple(tc.betas)
    opt_g = torch.optim.Adam(list(model.parameters()) + [nll_loss.logvar], lr=lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=betas)
    if tc.activation_checkpointing:
        checkpoint_blocks(model)
    if tc.compile != "none":
        model.compile(backend=tc.compile)  # in place: state_dict keys unchanged
    model, disc, nll_loss, opt_g, opt_d = accelerator.prepare(model, disc, nll_loss, opt_g, opt_d)
    raw = accelerator.unwrap_model(model)
    tdc = getattr(raw.bottleneck, "tdc", None)
    if tdc is not None:
        tdc.defer_update = True  # moved once per step by train_step
    parts = TrainParts(
        model,
        disc,
        nll_loss,
        perceptual,
        opt_g,
        opt_d,
        lc,
        accelerator.backward,
        raw.last_layer,
        raw_disc=accelerator.unwrap_model(disc),
        tdc=tdc,
        grad_accum=tc.grad_accum,
        no_sync=accelerator.no_sync,
    )
    return parts, lpips_dtype, channels_last


def checkpoint_blocks(model: nn.Module) -> int:
    """Activation checkpointing: the residual, attention and transformer blocks of ``model``
    keep only their inputs in the forward and recompute the rest in the backward (the same
    arithmetic, RNG state preserved). Returns how many blocks were wrapped."""
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    from gaussquant.models.unet import AttnBlock, ResnetBlock
    from gaussquant.models.vit import Block

    blocks = [m for m in model.modules() if isinstance(m, (ResnetBlock, AttnBlock, Block))]
    for block in blocks:
        block.forward = partial(checkpoint, block.forward, use_reentrant=False)
    return len(blocks)


def _step_loader(dataset, batch: int, tc, start_step: int, accelerator) -> DataLoader:
    """Batches of steps ``start_step ..`` of this process; the order depends on (seed, step) only."""
    sampler = StepBatchSampler(
        len(dataset),
        batch,
        tc.steps,
        tc.seed,
        start_step,
        accelerator.process_index,
        accelerator.num_processes,
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=tc.num_workers,
        pin_memory=accelerator.device.type == "cuda",
        # own generator: creating the iterator must not draw from the global RNG, whose state
        # the resumed run restores (else the noise of every later step differs)
        generator=torch.Generator().manual_seed(tc.seed),
    )


class _Progress:
    """A tqdm bar when ``progress``; else one line per log step (what a rule's log shows)."""

    def __init__(self, total: int, initial: int, desc: str, progress: bool, accelerator):
        self.total, self.desc, self.accelerator = total, desc, accelerator
        self.lines = not progress
        self.bar = tqdm(
            total=total,
            initial=initial,
            disable=not (progress and accelerator.is_main_process),
            desc=desc,
            dynamic_ncols=True,
        )

    def log(self, row: dict[str, float]) -> None:
        shown = {k: f"{row[k]:.4g}" for k in ("loss", "bits_mean", "lam") if row[k] == row[k]}
        self.bar.set_postfix(shown)
        if self.lines:
            text = " ".join(f"{k} {v}" for k, v in shown.items())
            self.accelerator.print(
                f"{self.desc} step {row['step']}/{self.total} {text} ({row['time_s']:.0f} s)",
                flush=True,
            )

    def update(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _check_finite(terms: dict[str, torch.Tensor], step: int) -> None:
    for name, value in terms.items():
        if not torch.isfinite(value).all():
            raise NonFiniteLoss(f"non-finite loss at step {step}: term {name!r} = {value.item()}")


def _reduce_fn(accelerator):
    def reduce(x: torch.Tensor, op: str) -> torch.Tensor:
        if accelerator.num_processes == 1:
            return x
        if op == "mean":
            return accelerator.reduce(x.clone(), reduction="mean")
        gathered = accelerator.gather(x.reshape(1))
        return gathered.min() if op == "min" else gathered.max()

    return reduce


def lr_factor(step: int, steps: int, decay: float) -> float:
    """Learning-rate multiplier at 0-based ``step``: 1, then over the final ``decay`` share of
    the ``steps`` a linear fall to 0 (the last update still moves, at 1 / decay_steps)."""
    decay_steps = decay * steps
    if decay_steps <= 0 or step < steps - decay_steps:
        return 1.0
    return max(0.0, (steps - step) / decay_steps)
