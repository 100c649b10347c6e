"""Speed settings of the `train` section (docs/method.md §5): gradient accumulation, activation
checkpointing, bf16 autocast, torch.compile, TF32/cuDNN flags, the generator step without
discriminator gradients, and the process count in the resume record."""

import dataclasses
import json

import pandas as pd
import pytest
import torch

from gaussquant.checkpoint import load_autoencoder
from gaussquant.errors import GaussquantError


def _cfg(cfg, **train):
    """The tiny preset with a batch of 16 and the given `train` keys."""
    batch = {k: 16 for k in cfg.train.batch_size}
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch, **train))


def _run(cfg, data, out, weights, arch="unet"):
    from gaussquant.train import train

    ckpt = train(cfg, "tdc", arch, "8", data, out, weights, progress=False)
    return load_autoencoder(ckpt)[0].state_dict(), pd.read_csv(out / "metrics.csv")


def _step(cfg, weights, x, grad_accum):
    """One real train_step (UNet GQ, L1 + LPIPS-VGG + TDC) from a fixed start; plain SGD at
    lr 0 leaves the weights, so the gradients and the multipliers can be compared."""
    from gaussquant.losses import ReconstructionNLL
    from gaussquant.metrics.lpips import build_lpips
    from gaussquant.models.autoencoder import build_autoencoder
    from gaussquant.models.discriminator import NLayerDiscriminator
    from gaussquant.train import TrainParts, train_step

    torch.manual_seed(0)
    model = build_autoencoder(cfg, "tdc", "unet", "8")
    model.bottleneck.tdc.defer_update = True
    nll = ReconstructionNLL(cfg.loss)
    opt = torch.optim.SGD(list(model.parameters()) + [nll.logvar], lr=0.0)
    disc = NLayerDiscriminator(cfg.model.discriminator)
    parts = TrainParts(
        model, disc, nll, build_lpips("vgg", weights), opt, torch.optim.SGD(disc.parameters(), lr=0.0),
        cfg.loss, lambda loss: loss.backward(), model.last_layer,
        tdc=model.bottleneck.tdc, grad_accum=grad_accum,
    )  # fmt: skip
    terms = train_step(parts, x, step=0, lr=0.0)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return grads, model.bottleneck.tdc.state_dict(), terms


def test_two_micro_batches_of_8_equal_one_batch_of_16(tiny_cfg, weights_dir):
    """Before the GAN starts, 2 x 8 accumulated equals 1 x 16: every gradient to float
    tolerance, the TDC statistics, and the multipliers (updated once, from the whole batch)."""
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    g1, tdc1, t1 = _step(tiny_cfg, weights_dir, x, 1)
    g2, tdc2, t2 = _step(tiny_cfg, weights_dir, x, 2)
    for name in g1:
        scale = float(
            g1[name].abs().max()
        )  # float32 sums in another order: relative to the largest
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-3, atol=1e-4 * scale)
    assert tdc1 == tdc2 or all(torch.equal(tdc1[k], tdc2[k]) for k in tdc1)
    assert float(tdc1["lam"]) != 1.0  # the multipliers did move, once
    assert float(tdc1["lam"]) in (tiny_cfg.tdc.factor, 1 / tiny_cfg.tdc.factor)
    for key in ("loss", "nll", "lpips", "bits_mean", "bits_min", "bits_max"):
        torch.testing.assert_close(t2[key].double(), t1[key].double(), rtol=1e-5, atol=1e-6)


def test_accumulated_training_runs_and_records_the_global_batch(
    tiny_cfg, tiny_data, weights_dir, tmp_path
):
    """End to end with grad_accum 2 (GAN steps 3-5 included): the run completes, its first
    logged step has the 1 x 16 run's TDC statistics and multipliers."""
    one, log_one = _run(_cfg(tiny_cfg, log_every=1), tiny_data, tmp_path / "a", weights_dir)
    two, log_two = _run(
        _cfg(tiny_cfg, grad_accum=2, log_every=1), tiny_data, tmp_path / "b", weights_dir
    )
    assert log_two["d_loss"].notna().iloc[3:].all()
    for key in ("lam", "lam_min", "lam_max"):
        assert log_one[key].iloc[0] == log_two[key].iloc[0]
    for key in ("bits_mean", "bits_min", "bits_max"):
        assert abs(log_one[key].iloc[0] - log_two[key].iloc[0]) < 1e-4
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["grad_accum"] == 2 and summary["global_batch"] == 16


def test_activation_checkpointing_trains_the_same_weights(
    tiny_cfg, tiny_data, weights_dir, tmp_path
):
    """Recomputing the blocks' activations in the backward is the same arithmetic, GAN steps
    included (steps 3-5 of the tiny preset): the weights agree bit for bit."""
    plain, _ = _run(tiny_cfg, tiny_data, tmp_path / "a", weights_dir, "vit")
    ckpt_cfg = dataclasses.replace(
        tiny_cfg, train=dataclasses.replace(tiny_cfg.train, activation_checkpointing=True)
    )
    recomputed, _ = _run(ckpt_cfg, tiny_data, tmp_path / "b", weights_dir, "vit")
    for key in plain:
        assert torch.equal(plain[key], recomputed[key]), key


def test_checkpoint_blocks_wraps_every_block(tiny_cfg):
    from gaussquant.models.autoencoder import build_autoencoder
    from gaussquant.train import checkpoint_blocks

    unet = build_autoencoder(tiny_cfg, "tdc", "unet", "8")
    vit = build_autoencoder(tiny_cfg, "tdc", "vit", "8")
    m = tiny_cfg.model
    levels = len(m.unet.ch_mult)
    res_blocks = levels * m.unet.num_res_blocks + levels * (m.unet.num_res_blocks + 1) + 2
    assert checkpoint_blocks(unet) >= res_blocks
    assert checkpoint_blocks(vit) == 2 * m.vit.layers


@pytest.mark.parametrize(
    "train_keys,loss_keys",
    [
        ({"mixed_precision": "bf16"}, {"lpips_precision": "bf16"}),  # bf16 autocast + LPIPS
        ({"compile": "aot_eager", "steps": 2}, {}),  # torch.compile's tracing, no C++ build
    ],
)
def test_speed_settings_run(tiny_cfg, tiny_data, weights_dir, tmp_path, train_keys, loss_keys):
    cfg = dataclasses.replace(
        tiny_cfg,
        train=dataclasses.replace(tiny_cfg.train, **train_keys),
        loss=dataclasses.replace(tiny_cfg.loss, **loss_keys),
    )
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # the process-wide state fixes the precision once
    try:
        state, log = _run(cfg, tiny_data, tmp_path, weights_dir)
    finally:
        AcceleratorState._reset_state(True)
    assert log["loss"].notna().all()
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_backend_flags_follow_the_config(tiny_cfg):
    from gaussquant.train import backend_settings

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    bench = torch.backends.cudnn.benchmark
    try:
        for tf32, benchmark in ((True, False), (False, True)):
            tc = dataclasses.replace(tiny_cfg.train, tf32=tf32, cudnn_benchmark=benchmark)
            assert backend_settings(tc) == {"tf32": tf32, "cudnn_benchmark": benchmark}
            assert torch.backends.cuda.matmul.allow_tf32 is tf32
            assert torch.backends.cudnn.allow_tf32 is tf32
            assert torch.backends.cudnn.benchmark is benchmark
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        torch.backends.cudnn.benchmark = bench


def test_generator_step_computes_no_discriminator_gradients(tiny_cfg):
    """The adversarial term reaches the decoder only: the discriminator's weights get no
    gradient in the generator step (they were discarded before; now never computed)."""
    from gaussquant.losses import ReconstructionNLL
    from gaussquant.models.autoencoder import build_autoencoder
    from gaussquant.models.discriminator import NLayerDiscriminator
    from gaussquant.train import TrainParts, _generator_terms

    torch.manual_seed(0)
    model = build_autoencoder(tiny_cfg, "tdc", "unet", "8")
    disc = NLayerDiscriminator(tiny_cfg.model.discriminator)
    opt = torch.optim.Adam(model.parameters())
    parts = TrainParts(
        model, disc, ReconstructionNLL(tiny_cfg.loss), None, opt, opt, tiny_cfg.loss,
        lambda loss: loss.backward(), model.last_layer,
    )  # fmt: skip
    terms, _ = _generator_terms(parts, torch.rand(2, 3, 32, 32) * 2 - 1, 5, use_gan=True)
    terms["loss"].backward()
    assert terms["g_loss"] is not None
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters())  # unfrozen again
    assert model.last_layer().grad is not None and model.last_layer().grad.abs().sum() > 0


def _run_record(processes, global_batch):
    return {"method": "tdc", "global_batch": global_batch, "processes": processes}


def test_resume_on_another_process_count_keeps_the_global_batch_or_stops(tmp_path):
    from gaussquant.runstate import discard_stale_states

    state = tmp_path / "state"
    discard_stale_states(state, _run_record(8, 128))
    (state / "step-00002000").mkdir()
    discard_stale_states(state, _run_record(4, 128))  # 4 x 32: the same global batch
    assert (state / "step-00002000").exists()
    with pytest.raises(GaussquantError, match="4 processes with global batch 128.*has 2 processes"):
        discard_stale_states(state, _run_record(2, 64))  # 2 x 32: the global batch would halve
    assert (state / "step-00002000").exists()  # nothing discarded


def test_batch_must_split_into_micro_batches(tiny_cfg):
    from gaussquant.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of train.grad_accum=3"):
        dataclasses.replace(tiny_cfg.train, grad_accum=3)
