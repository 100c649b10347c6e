"""Bring your own diffusers VAE through our own pipeline code: the byo config, `convert
--from-diffusers` (GQ, TokenBridge, the VAE itself) loaded by our checkpoint loader, `evaluate`
on it, and TDC fine-tuning (`train --init-from-diffusers`) that resumes after a kill."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import diffusers  # noqa: F401 (extra [diffusers], installed by make test: fails if missing)
import pytest
import torch
from test_diffusers_vae import tiny_vae  # noqa: E402

from gaussquant.checkpoint import load_autoencoder, read_checkpoint  # noqa: E402
from gaussquant.cli import main as cli_main  # noqa: E402
from gaussquant.errors import GaussquantError  # noqa: E402
from gaussquant.models import diffusers_vae as dv  # noqa: E402
from gaussquant.posterior import dim_for_bpp  # noqa: E402
from gaussquant.quantizers import GaussianQuant, TokenBridge  # noqa: E402
from gaussquant.runstate import KILL_ENV  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--params", str(ROOT / "params.yaml"), "--preset", "tiny"]  # tdc.codebook_size 256


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A tiny 4-channel AutoencoderKL (f = 2) saved with save_pretrained."""
    path = tmp_path_factory.mktemp("byo") / "vae"
    tiny_vae(4).save_pretrained(path)
    return path


def _images(data, n=16):
    from gaussquant.data import PreparedDataset

    ds = PreparedDataset(data, "val")
    return torch.stack([ds[i] for i in range(n)])


def _posterior(vae_dir, x):
    vae = dv.load_vae(str(vae_dir))
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
    return vae, dist


# ----------------------------------------------------------------------------- config
def test_byo_config_follows_the_vae(tiny_cfg):
    sd = {"latent_channels": 4, "block_out_channels": [128, 256, 512, 512]}  # SD 1.x: f8
    cfg = dv.byo_config(tiny_cfg, sd, 2**16, 4)
    r = cfg.rate(dv.byo_rate(cfg))
    assert (cfg.model.latent_channels, cfg.model.downsample, cfg.tdc.codebook_size) == (4, 8, 2**16)
    assert (r.name, r.bpp) == ("16", 0.25)  # 1 token x 16 bits per f8 position
    shapes = cfg.derived()["rates"]["16"]["shapes"]
    assert (shapes["tdc"], shapes["tbtdc"]) == (4, 4)  # m = 4, 4 bits per channel
    sd3 = {"latent_channels": 16, "block_out_channels": [128, 256, 512, 512]}
    for m, bpp, tb in (
        (16, 0.25, 1),
        (8, 0.5, 2),
        (4, 1.0, 4),
    ):  # the paper's rates (docs/method.md §2)
        cfg = dv.byo_config(tiny_cfg, sd3, 2**16, m)
        r = cfg.rate(dv.byo_rate(cfg))
        shapes = cfg.derived()["rates"][r.name]["shapes"]
        assert (r.bpp, shapes["tdc"], shapes["tbtdc"]) == (bpp, m, tb)
        assert dim_for_bpp(16, 8, 16, bpp) == m
    assert dim_for_bpp(4, 8, 16, 0.25) == 4 and dim_for_bpp(4, 2, 8, 2.0) == 4
    with pytest.raises(GaussquantError, match=r"--bpp 0.3: not reachable .* allowed: 8, 4, 2 "):
        dim_for_bpp(4, 2, 8, 0.3)
    with pytest.raises(GaussquantError, match="m = 3 must divide C = 4") as err:
        dv.byo_config(tiny_cfg, sd, 2**16, 3)
    assert "\n" not in str(err.value) and "allowed: 1, 2, 4" in str(err.value)
    with pytest.raises(GaussquantError, match="not a power of two"):
        dv.byo_config(tiny_cfg, sd, 1000, 4)
    f64 = {"latent_channels": 4, "block_out_channels": [8] * 7}  # f = 64 > 32 px data
    with pytest.raises(GaussquantError, match="not a multiple of the VAE's downsampling"):
        dv.byo_config(tiny_cfg, f64, 2**8, 4)


# ----------------------------------------------------------------------------- convert
def _convert(vae_dir, out, *args):
    argv = ["convert", *TINY, "--from-diffusers", str(vae_dir), "--out", str(out), *args]
    assert cli_main(argv) == 0


def test_convert_from_diffusers_is_our_checkpoint(vae_dir, tiny_data, tmp_path):
    x = _images(tiny_data, 4)
    vae, dist = _posterior(vae_dir, x)
    post = torch.cat([dist.mean, dist.logvar], 1)
    _convert(vae_dir, tmp_path / "gq.pt", "--to", "gq", "--bpp", "2")  # K = 2^8: m = 4
    model, payload = load_autoencoder(tmp_path / "gq.pt")  # our loader, nothing else
    assert (payload["method"], payload["arch"], payload["rate"]) == ("gq", "diffusers", "8")
    assert payload["extra"]["quantizer"]["dim"] == 4 and payload["extra"]["source_method"] == (
        "vanilla"
    )
    gq = GaussianQuant(4, 2**8, 4, seed=42)
    with torch.no_grad():
        q = model.encode(x)
        assert torch.equal(q.indices, gq.encode(post))
        assert torch.equal(
            model.decode_indices(q.indices), vae.decode(gq.indices_to_codes(q.indices)).sample
        )
    # the same conversion through an imported Gaussian VAE checkpoint: identical weights
    _convert(vae_dir, tmp_path / "vae.pt", "--to", "vae", "--dim", "4")
    argv = ["convert", *TINY, "--ckpt", str(tmp_path / "vae.pt"), "--to", "gq"]
    assert cli_main(argv + ["--out", str(tmp_path / "gq2.pt")]) == 0
    a, b = read_checkpoint(tmp_path / "gq.pt"), read_checkpoint(tmp_path / "gq2.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["extra"]["quantizer"] == b["extra"]["quantizer"]
    assert b["extra"]["diffusers"] == a["extra"]["diffusers"]  # what rebuilds the VAE
    # the continuous VAE: posterior mean through vae.decode
    vae_model, vae_payload = load_autoencoder(tmp_path / "vae.pt")
    assert vae_payload["method"] == "vanilla" and "quantizer" not in vae_payload["extra"]
    with torch.no_grad():
        assert torch.equal(vae_model(x)[0], vae.decode(dist.mean).sample)
    # TokenBridge at the same bits per pixel: log2 K / m = 2 bits per channel
    _convert(vae_dir, tmp_path / "tb.pt", "--to", "tokenbridge", "--dim", "4")
    tb_model, tb_payload = load_autoencoder(tmp_path / "tb.pt")
    assert tb_payload["extra"]["quantizer"]["bits"] == 2
    with torch.no_grad():
        assert torch.equal(tb_model.encode(x).indices, TokenBridge(4, 2).eval()(post).indices)


def test_convert_errors_are_one_line(vae_dir, tmp_path, capsys):
    cases = [
        (["--from-diffusers", str(vae_dir), "--to", "gq", "--dim", "3"], "m = 3 must divide"),
        (["--from-diffusers", str(vae_dir), "--to", "gq"], "exactly one of --dim m or --bpp"),
        (["--from-diffusers", str(tmp_path / "none"), "--dim", "4"], "not found"),
        (["--ckpt", str(tmp_path / "x.pt"), "--to", "vae"], "--from-diffusers only"),
    ]
    for args, words in cases:
        argv = ["convert", *TINY, *args, "--out", str(tmp_path / "out.pt")]
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("gaussquant convert: error:") and words in err and "\n" not in err
    assert not (tmp_path / "out.pt").exists()


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_measures_it_like_ours(vae_dir, tiny_data, weights_dir, tmp_path):
    _convert(vae_dir, tmp_path / "gq.pt", "--to", "gq", "--dim", "4")
    _convert(vae_dir, tmp_path / "vae.pt", "--to", "vae", "--dim", "4")
    x = _images(tiny_data)
    vae, dist = _posterior(vae_dir, x)
    gq = GaussianQuant(4, 2**8, 4, seed=42)
    with torch.no_grad():
        indices = gq.encode(torch.cat([dist.mean, dist.logvar], 1))
        expected = {
            "gq": vae.decode(gq.indices_to_codes(indices)).sample,
            "vae": vae.decode(dist.mean).sample,
        }
    # no rFID: Inception at 299 px is ~30 s here, and its code is the same for every row
    for name, extra in (("gq", []), ("vae", ["--continuous"])):
        out = tmp_path / f"{name}.json"
        argv = ["evaluate", *TINY, "--ckpt", str(tmp_path / f"{name}.pt"), "--data", str(tiny_data)]
        argv += ["--out", str(out), "--weights", str(weights_dir), "--no-progress", *extra]
        argv += ["--set", "eval.fid=false"]
        assert cli_main(argv) == 0
        r = json.loads(out.read_text())
        mse = ((x.double() - expected[name].double()) * 127.5).pow(2).flatten(1).mean(1)
        psnr = (10 * torch.log10(255.0**2 / mse)).mean().item()
        assert r["n_images"] == 16 and r["psnr"] == pytest.approx(psnr, rel=1e-5)
        assert (r["arch"], r["rate"], r["bpp"]) == ("diffusers", "8", 2.0)
        lpips = r["lpips"]
        assert r["rfid"] is None and math.isfinite(lpips) and 0 < lpips < 1
    assert r["quantized"] is False and r["token_bits"]["tokens"] == 16 * 16 * 16
    gq_r = json.loads((tmp_path / "gq.json").read_text())
    assert gq_r["bits_per_pixel"] == 2.0 and gq_r["tokens_per_image"] == 16 * 16
    counts = torch.bincount(indices.flatten(), minlength=256).double()
    assert gq_r["codebook_usage"] == pytest.approx((counts > 0).double().mean().item())


# ----------------------------------------------------------------------------- fine-tuning
def _train(vae_dir, data, out, weights, kill_at=None):
    cmd = [sys.executable, "-m", "gaussquant.cli", "train", *TINY, "--method", "tdc"]
    cmd += ["--init-from-diffusers", str(vae_dir), "--bpp", "2", "--data", str(data)]
    cmd += ["--out", str(out), "--weights", str(weights), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(KILL_ENV, None)
    if kill_at is not None:
        env[KILL_ENV] = str(kill_at)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)


def test_initial_model_is_the_pretrained_vae(vae_dir, tiny_cfg):
    from gaussquant.train import initial_model

    vae = dv.load_vae(str(vae_dir))
    cfg = dv.byo_config(tiny_cfg, dv.plain_config(vae), 2**8, 4)
    model, extra = initial_model(cfg, "tdc", "diffusers", dv.byo_rate(cfg), str(vae_dir))
    ours = {k.split(".", 1)[1]: v for k, v in model.state_dict().items() if "bottleneck" not in k}
    assert ours.keys() == vae.state_dict().keys()
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in ours.items())
    assert extra["diffusers"]["weights_sha256"] == dv.weights_sha256(vae)
    assert model.bottleneck.tdc.target == 8 and model.bottleneck.dim == 4
    with pytest.raises(GaussquantError, match="trains arch 'diffusers', not 'unet'"):
        initial_model(cfg, "tdc", "unet", dv.byo_rate(cfg), str(vae_dir))


@pytest.mark.slow
def test_finetune_resumes_after_kill_and_converts(vae_dir, tiny_data, weights_dir, tmp_path):
    """TDC fine-tuning from the pretrained VAE, killed after step 4 (state at step 3) and
    re-run: the same final checkpoint bit for bit; then GQ converts it like ours."""
    full = _train(vae_dir, tiny_data, tmp_path / "full", weights_dir)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _train(vae_dir, tiny_data, tmp_path / "resumed", weights_dir, kill_at=4)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _train(vae_dir, tiny_data, tmp_path / "resumed", weights_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    a = read_checkpoint(tmp_path / "full" / "model.pt")
    b = read_checkpoint(tmp_path / "resumed" / "model.pt")
    assert a["step"] == b["step"] == 6 and a["extra"] == b["extra"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert float(a["model"]["bottleneck.tdc.lam"]) != 1.0  # TDC ran
    vae = dv.load_vae(str(vae_dir))
    moved = a["model"]["decoder.decoder.conv_out.weight"]
    assert not torch.equal(moved, vae.decoder.conv_out.weight)  # the weights were trained
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["tdc"]["target_bits"] == 8.0
    argv = ["convert", *TINY, "--ckpt", str(tmp_path / "full" / "model.pt"), "--to", "gq"]
    assert cli_main(argv + ["--out", str(tmp_path / "gq.pt")]) == 0
    model, payload = load_autoencoder(tmp_path / "gq.pt")
    assert payload["extra"]["source_method"] == "tdc" and payload["extra"]["source_step"] == 6
    x = _images(tiny_data, 2)
    tuned, _ = load_autoencoder(tmp_path / "full" / "model.pt")
    with torch.no_grad():
        post = tuned.encoder(x)
        assert torch.equal(model.encode(x).indices, GaussianQuant(4, 2**8, 4).encode(post))


def _snakemake_byo(vae: str) -> subprocess.CompletedProcess:
    """Dry-run the byo target on the tiny preset (rules only; nothing runs)."""
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(bindir / "snakemake"), "byo", "-n", "--quiet", "rules", "--directory", str(ROOT)]
    cmd += ["--config", "preset=tiny", f'byo={{"vae": "{vae}"}}']
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)


def test_byo_target_plans_the_whole_path(tmp_path):
    """rate -> pretrained GQ/TokenBridge/continuous -> TDC fine-tune -> GQ/TokenBridge -> six
    evaluations -> one table; off (a one-line message) while byo.vae is empty."""
    out = _snakemake_byo(str(tmp_path / "vae"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    jobs = r"^(byo\w*|train\w*|convert|evaluate)\s+(\d+)\s*$"
    counts = {k: int(v) for k, v in re.findall(jobs, log, flags=re.M)}
    assert counts == {
        "byo": 1,
        "byo_rate": 1,
        "convert": 5,  # 3 of the pretrained VAE (vae, gq, tokenbridge), 2 after fine-tuning
        "train_gaussian": 1,  # the TDC fine-tune: the train rule of a Gaussian VAE
        "evaluate": 6,
        "byo_table": 1,
    }, log[-3000:]
    off = _snakemake_byo("")
    assert off.returncode != 0 and "byo.vae is empty" in off.stdout + off.stderr
