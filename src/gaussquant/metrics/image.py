"""Per-image PSNR, SSIM and MS-SSIM on the [0, 255] scale (docs/method.md §6).

Inputs are model-space images ``x`` in [-1, 1], (B, 3, H, W); they are mapped to [0, 255] with
``(x + 1) * 127.5`` without clamping or rounding (the paper's protocol) and compared in float64
(SSIM's ``E[x^2] - E[x]^2`` loses ~1e-4 in float32 at this scale). Every function returns one
value per image, shape (B,), float64; the dataset score is the mean over images.
"""

from __future__ import annotations

import torch

DATA_RANGE = 255.0
SSIM_WIN_SIZE = 11  # Gaussian window, sigma 1.5 (pytorch-msssim defaults, docs/method.md §6)
SSIM_WIN_SIGMA = 1.5
# pytorch-msssim downsamples 4 times and needs the smaller side > (win_size - 1) * 2**4 = 160.
MS_SSIM_MIN_SIDE = (SSIM_WIN_SIZE - 1) * 2**4 + 1


def to_uint8_scale(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 255] as float64, no clamp, no rounding."""
    return (x.detach().double() + 1.0) * 127.5


def _gauss_window(channels: int) -> torch.Tensor:
    """pytorch-msssim's 1-D Gaussian window, built in float64 (its own is float32, whose sum
    differs from 1 by ~1e-7 and biases SSIM by ~1e-6), shaped (C, 1, 1, win) as it expects."""
    coords = torch.arange(SSIM_WIN_SIZE, dtype=torch.float64) - SSIM_WIN_SIZE // 2
    g = torch.exp(-(coords**2) / (2 * SSIM_WIN_SIGMA**2))
    return (g / g.sum()).view(1, 1, 1, -1).repeat(channels, 1, 1, 1)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        shapes = f"{tuple(x.shape)}, {tuple(y.shape)}"
        raise ValueError(f"expected two (B, C, H, W) images of equal shape, got {shapes}")


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image: ``10 log10(255^2 / MSE)``, MSE over (C, H, W) on [0, 255].

    Identical images give ``inf``. Returns (B,) float64.
    """
    _check_pair(x, y)
    mse = (to_uint8_scale(x) - to_uint8_scale(y)).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(DATA_RANGE**2 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM per image (pytorch-msssim: 11x11 Gaussian window, sigma 1.5, valid region only,
    K = (0.01, 0.03), data range 255, mean over channels). Returns (B,) float64.
    """
    from pytorch_msssim import ssim as _ssim

    _check_pair(x, y)
    return _ssim(
        to_uint8_scale(x),
        to_uint8_scale(y),
        data_range=DATA_RANGE,
        size_average=False,
        win=_gauss_window(x.shape[1]).to(x.device),
    )


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MS-SSIM per image (pytorch-msssim, 5 scales, standard weights). Returns (B,) float64.

    Raises ValueError if the smaller image side is below ``MS_SSIM_MIN_SIDE`` (161 px): the
    four 2x downsamplings would leave less than an 11-px window (docs/method.md §6 reports it at 256 px).
    """
    from pytorch_msssim import ms_ssim as _ms_ssim

    _check_pair(x, y)
    if min(x.shape[-2:]) < MS_SSIM_MIN_SIDE:
        raise ValueError(
            f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIDE} px on the smaller side, "
            f"got {tuple(x.shape[-2:])}; report SSIM only at this size"
        )
    return _ms_ssim(
        to_uint8_scale(x),
        to_uint8_scale(y),
        data_range=DATA_RANGE,
        size_average=False,
        win=_gauss_window(x.shape[1]).to(x.device),
    )
