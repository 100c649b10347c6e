"""Evaluation protocol (docs/method.md §6): every image, closed-form PSNR, multi-process agreement,
clear errors."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gaussquant.data import PreparedDataset
from gaussquant.errors import GaussquantError
from gaussquant.evaluate import evaluate_model
from gaussquant.quantizers.base import QuantizerOutput

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class ShiftModel(nn.Module):
    """x_rec = x + shift: PSNR is known in closed form."""

    def __init__(self, shift: float):
        super().__init__()
        self.shift = shift
        self.bottleneck = nn.Identity()

    def encode(self, x):
        return QuantizerOutput(z_q=x)

    def decode(self, z):
        return z + self.shift


def _cfg(cfg, **eval_kw):
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, **eval_kw))


def test_every_image_and_closed_form_psnr(tiny_cfg, tiny_data, weights_dir):
    data = PreparedDataset(tiny_data, "val")
    cfg = _cfg(tiny_cfg, batch_size=6, fid=False)  # 16 images: batches of 6, 6, 4
    shift = 0.1
    m = evaluate_model(ShiftModel(shift), data, cfg, weights_dir, continuous=True, progress=False)
    assert m["n_images"] == len(data) == 16
    expected = 10 * math.log10(255.0**2 / (shift * 127.5) ** 2)
    assert m["psnr"] == pytest.approx(expected, abs=1e-4)
    assert m["psnr_pooled"] == pytest.approx(expected, abs=1e-4)
    assert 0 < m["lpips"] < 1 and 0 < m["ssim"] < 1
    assert m["rfid"] is None


def test_per_image_mean_differs_from_pooled_psnr(tiny_cfg, tiny_data, weights_dir):
    """Half the images reconstructed almost perfectly, half badly: the mean of per-image PSNRs
    (the protocol) is far above the PSNR of the pooled MSE."""

    class HalfBad(ShiftModel):
        def decode(self, z):
            out = z.clone()
            out[::2] += 0.5
            out[1::2] += 0.001
            return out

    data = PreparedDataset(tiny_data, "val")
    m = evaluate_model(
        HalfBad(0),
        data,
        _cfg(tiny_cfg, batch_size=16, fid=False),
        weights_dir,
        continuous=True,
        progress=False,
    )
    per_image = [10 * math.log10(255**2 / (d * 127.5) ** 2) for d in (0.5, 0.001)]
    pooled = 10 * math.log10(255**2 / (((0.5 * 127.5) ** 2 + (0.001 * 127.5) ** 2) / 2))
    assert m["psnr"] == pytest.approx(sum(per_image) / 2, abs=1e-3)
    assert m["psnr_pooled"] == pytest.approx(pooled, abs=1e-3)
    assert m["psnr"] - m["psnr_pooled"] > 20


def test_fid_of_identity_reconstruction_is_zero(tiny_cfg, tiny_data, weights_dir):
    data = PreparedDataset(tiny_data, "val")
    m = evaluate_model(
        ShiftModel(0.0),
        data,
        _cfg(tiny_cfg, batch_size=5),
        weights_dir,
        continuous=True,
        progress=False,
    )
    assert abs(m["rfid"]) < 1e-3
    assert m["lpips"] == pytest.approx(0.0, abs=1e-6)


def test_missing_weights_name_the_fetch_command(tiny_cfg, tiny_data, tmp_path):
    data = PreparedDataset(tiny_data, "val")
    with pytest.raises(GaussquantError, match="gaussquant fetch-weights"):
        evaluate_model(ShiftModel(0.1), data, tiny_cfg, tmp_path, continuous=True, progress=False)


def _tiny_checkpoint(tiny_cfg, tmp_path):
    from gaussquant.checkpoint import save_checkpoint
    from gaussquant.models.autoencoder import build_autoencoder

    torch.manual_seed(0)
    model = build_autoencoder(tiny_cfg, "fsq", "unet", "8")
    save_checkpoint(tmp_path / "fsq.pt", model, tiny_cfg, "fsq", "unet", "8", 0)
    return tmp_path / "fsq.pt"


def _evaluate_cli(args, launcher=()):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env["ACCELERATE_USE_CPU"] = "1"  # multi-process runs on the CPU even where CUDA exists
    cmd = [
        *launcher,
        *(["-m", "gaussquant.cli"] if launcher else [sys.executable, "-m", "gaussquant.cli"]),
        "evaluate",
        "--params",
        str(ROOT / "params.yaml"),
        "--preset",
        "tiny",
        "--no-progress",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)


def test_architecture_mismatch_names_both(tiny_cfg, tiny_data, weights_dir, tmp_path):
    ckpt = _tiny_checkpoint(tiny_cfg, tmp_path)
    proc = _evaluate_cli(
        [
            "--ckpt",
            str(ckpt),
            "--data",
            str(tiny_data),
            "--out",
            str(tmp_path / "m.json"),
            "--arch",
            "vit",
            "--weights",
            str(weights_dir),
        ]
    )
    assert proc.returncode == 2
    assert "checkpoint architecture is 'unet' but 'vit' was requested" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_two_processes_agree_with_one(
    tiny_cfg, tiny_data, weights_dir, tmp_path, two_process_launcher
):
    """With 2 CPU processes (Accelerate under torchrun) each image is evaluated exactly once and
    the metrics equal the single-process run."""
    ckpt = _tiny_checkpoint(tiny_cfg, tmp_path)
    common = ["--ckpt", str(ckpt), "--data", str(tiny_data), "--weights", str(weights_dir)]
    one = _evaluate_cli([*common, "--out", str(tmp_path / "one.json")])
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = two_process_launcher
    two = _evaluate_cli([*common, "--out", str(tmp_path / "two.json")], launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert a["n_images"] == b["n_images"] == 16
    assert (a["processes"], b["processes"]) == (1, 2)
    for key in ("psnr", "ssim", "lpips", "rfid", "codebook_usage", "perplexity", "code_bits"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    # per image in dataset order: process r held images r, r + 2, ...; gathered back in order
    for key in ("psnr", "ssim", "lpips"):
        assert len(b["per_image"][key]) == 16
        assert b["per_image"][key] == pytest.approx(a["per_image"][key], rel=1e-5), key
