"""PSNR / SSIM / MS-SSIM: closed-form cases and scikit-image as an independent oracle."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from gaussquant.metrics.image import MS_SSIM_MIN_SIDE, ms_ssim, psnr, ssim


def _images(b=3, h=48, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, w, generator=g) * 2 - 1
    noise = torch.randn(b, 3, h, w, generator=g) * torch.tensor([0.02, 0.1, 0.3])[:b].view(
        b, 1, 1, 1
    )
    return x, x + noise  # y may leave [-1, 1]: no clamping in the protocol


def test_psnr_known_mse():
    x = torch.zeros(2, 3, 8, 8, dtype=torch.float64)  # exact offsets; float32 input rounds them
    y = x.clone()
    y[0] += 10 / 127.5  # every pixel off by exactly 10 levels: MSE = 100
    y[1, :, :4] += 2 * 30 / 127.5  # half the pixels off by 60 levels: MSE = 1800
    got = psnr(x, y)
    assert got.dtype == torch.float64 and got.shape == (2,)
    assert got.tolist() == pytest.approx(
        [10 * math.log10(255**2 / 100), 10 * math.log10(255**2 / 1800)], abs=1e-9
    )


def test_psnr_is_unclamped_and_unrounded():
    x = torch.full((1, 3, 4, 4), 1.0)
    y = torch.full((1, 3, 4, 4), 1.0 + 0.3 / 127.5)  # outside [-1, 1], a 0.3-level error
    assert psnr(x, y).item() == pytest.approx(10 * math.log10(255**2 / 0.09), rel=1e-6)
    assert psnr(x, x).item() == math.inf


def test_per_image_mean_differs_from_pooled_psnr():
    x, y = _images()
    per_image = psnr(x, y)
    mse = ((x - y).double() * 127.5).pow(2).flatten(1).mean(1)
    pooled = 10 * math.log10(255**2 / mse.mean().item())
    assert torch.allclose(per_image, 10 * torch.log10(255**2 / mse))
    # log is concave: the mean of per-image PSNRs exceeds the PSNR of the mean MSE (docs/method.md §6.2: per image)
    assert per_image.mean().item() > pooled + 1.0


def test_ssim_closed_form_constant_images():
    # constant images: no variance, SSIM = luminance term (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    m1, m2 = 100.0, 140.0
    x = torch.full((1, 3, 32, 32), m1 / 127.5 - 1, dtype=torch.float64)
    y = torch.full((1, 3, 32, 32), m2 / 127.5 - 1, dtype=torch.float64)
    c1 = (0.01 * 255) ** 2
    assert ssim(x, y).item() == pytest.approx((2 * m1 * m2 + c1) / (m1**2 + m2**2 + c1), abs=1e-9)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_scikit_image():
    x, y = _images()
    ours = ssim(x, y)
    for i in range(x.shape[0]):
        a = ((x[i].double() + 1) * 127.5).permute(1, 2, 0).numpy()
        b = ((y[i].double() + 1) * 127.5).permute(1, 2, 0).numpy()
        ref = structural_similarity(
            a,
            b,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=2,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-5)
    assert ours[0] > ours[1] > ours[2]  # more noise, lower SSIM


def test_ms_ssim_needs_161_px():
    assert MS_SSIM_MIN_SIDE == 161
    x, y = _images(b=2, h=160, w=200)
    with pytest.raises(ValueError, match="at least 161 px"):
        ms_ssim(x, y)
    x, y = _images(b=2, h=161, w=170)
    got = ms_ssim(x, y)
    assert got.shape == (2,) and torch.all((got > 0) & (got < 1)) and got[0] > got[1]
    assert ms_ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


def test_shape_mismatch_is_an_error():
    x, y = _images()
    with pytest.raises(ValueError, match="equal shape"):
        psnr(x, y[:, :, :-1])
    with pytest.raises(ValueError):
        ssim(x[0], y[0])
    assert np.isfinite(psnr(x, y).numpy()).all()
