"""The paper preset's whole path at paper size on CPU, on a fake ImageNet folder: prepare (the
index), 2 training steps of the paper-size UNet and ViT at 256 px, batch 1, GAN from step 0,
convert to GQ and evaluate 2 images - so a shape, config or device error at paper scale fails
here, not in a cluster job. Everything else is the top-level (paper) configuration."""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RATE = "16"  # bits per latent position: the paper's 0.25 bpp at f8
# What the test changes from the paper configuration: its size, not its shapes.
SMALL = [
    "train.steps=2",
    "train.batch_size.tdc=1",
    "train.num_workers=0",
    "train.log_every=1",
    "loss.disc_start=0",  # the PatchGAN hinge and the adaptive weight in both steps
    "eval.batch_size=2",
    "eval.max_images=2",
    "eval.grid_images=2",
    "eval.fid=false",  # rFID of 2 images is undefined; test_fid covers the Inception path
]


def _fake_imagenet(root: Path) -> None:
    """ImageNet-like JPEGs (500x375 and 375x500, quality 90): 2 classes x 2 train, 2 val."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            size = (500, 375) if i % 2 == 0 else (375, 500)
            smooth = rng.integers(0, 256, (size[1] // 25, size[0] // 25, 3), np.uint8)
            im = Image.fromarray(smooth).resize(size, Image.Resampling.BICUBIC)
            path = root / split / f"n0{i % 2}" / f"{split}_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            im.save(path, quality=90)


def _gaussquant(*args: str) -> None:
    cmd = [sys.executable, "-m", "gaussquant.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{' '.join(args[:1])} failed:\n{proc.stderr[-4000:]}"


@pytest.mark.slow
def test_paper_preset_whole_path_at_paper_size(tmp_path, weights_dir):
    start = time.perf_counter()
    _fake_imagenet(tmp_path / "imagenet")
    sets = [f"data.train_dir={tmp_path / 'imagenet/train'}"]
    sets += [f"data.val_dir={tmp_path / 'imagenet/val'}", *SMALL]
    common = ["--params", str(ROOT / "params.yaml"), "--preset", "paper"]
    common += [arg for item in sets for arg in ("--set", item)]
    data = tmp_path / "data"
    _gaussquant("prepare-data", *common, "--out", str(data), "--no-progress")
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 4, "val": 2} and manifest["resolution"] == 256
    assert manifest["splits"]["train"]["kind"] == "index"

    weights = ["--weights", str(weights_dir)]
    for arch in ("unet", "vit"):
        run = tmp_path / f"gq-{arch}"
        _gaussquant(
            "train", *common, *weights, "--method", "tdc", "--arch", arch, "--rate", RATE,
            "--data", str(data), "--out", str(run), "--no-progress",
        )  # fmt: skip
        log = (run / "metrics.csv").read_text().splitlines()
        rows = [dict(zip(log[0].split(","), line.split(","))) for line in log[1:]]
        assert [r["step"] for r in rows][-1] == "2" or len(rows) == 2, log
        assert all(float(r["d_loss"]) > 0 for r in rows), log  # the GAN ran in both steps
        gq = tmp_path / f"gq-{arch}.pt"
        _gaussquant(
            "convert", *common, "--ckpt", str(run / "model.pt"), "--to", "gq", "--out", str(gq)
        )
        metrics = tmp_path / f"metrics-{arch}.json"
        _gaussquant(
            "evaluate", *common, "--ckpt", str(gq), "--data", str(data), "--name", "gq",
            "--out", str(metrics), "--grid", str(tmp_path / f"grid-{arch}.png"), *weights,
            "--no-progress",
        )  # fmt: skip
        result = json.loads(metrics.read_text())
        assert result["n_images"] == 2 and 0 < result["psnr"] < 60, result
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    print(f"paper path: {time.perf_counter() - start:.0f} s, peak child RSS {peak:.1f} GiB")
