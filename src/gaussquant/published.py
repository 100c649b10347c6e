"""Published anchor numbers (docs/method.md §7): ImageNet 256, the paper's rate-distortion figure,
from the authors' plotting data. They go in separate `paper` columns of our tables, never into
our results.

``PUBLISHED[(arch, method, bits)] = (psnr, lpips, ssim, rfid)``, keyed by the rate's bits per
latent position: the paper's 0.25 / 0.5 / 1.0 bpp at f8 are 16 / 32 / 64 bits per position, so a
run at another downsampling (the quick preset's f4) meets the paper's token of the same bits.
"""

from __future__ import annotations

_ROWS = """
unet vq   26.51 0.125 0.748 5.71  29.21 0.053 0.831 1.60  32.06 0.027 0.896 0.580
unet fsq  26.34 0.075 0.756 1.125 29.29 0.047 0.845 0.871 32.38 0.025 0.905 0.636
unet lfq  24.74 0.164 0.722 16.34 26.90 0.107 0.800 8.04  28.31 0.074 0.840 3.62
unet bsq  25.62 0.086 0.754 1.080 27.88 0.059 0.836 0.788 30.50 0.032 0.900 0.346
unet gq   27.61 0.059 0.807 0.529 30.17 0.039 0.875 0.492 32.47 0.023 0.907 0.322
vit  vq   25.39 0.103 0.740 3.52  27.86 0.062 0.823 1.29  31.32 0.032 0.899 0.716
vit  fsq  25.87 0.109 0.751 3.86  28.83 0.055 0.842 1.07  31.58 0.026 0.905 0.544
vit  lfq  24.81 0.143 0.725 15.72 27.87 0.068 0.829 2.44  26.67 0.105 0.790 8.29
vit  bsq  26.52 0.083 0.793 1.64  28.44 0.051 0.852 0.700 31.60 0.027 0.914 0.379
vit  gq   27.88 0.061 0.823 0.932 30.42 0.037 0.882 0.592 31.71 0.024 0.903 0.349
"""

PAPER_DOWNSAMPLE = 8  # f8 (docs/method.md §5)
BPPS = (0.25, 0.5, 1.0)  # the columns of _ROWS
BITS = tuple(int(b * PAPER_DOWNSAMPLE**2) for b in BPPS)  # 16, 32, 64 bits per latent position


def _parse() -> dict[tuple[str, str, float], tuple[float, float, float, float]]:
    table = {}
    for line in _ROWS.strip().splitlines():
        arch, method, *vals = line.split()
        nums = [float(v) for v in vals]
        for i, bits in enumerate(BITS):
            table[(arch, method, bits)] = tuple(nums[4 * i : 4 * i + 4])
    return table


PUBLISHED = _parse()


def published(arch: str, method: str, bits: int) -> dict[str, float] | None:
    """Published PSNR / LPIPS / SSIM / rFID for (arch, method) at ``bits`` per latent position,
    or None if not reported."""
    row = PUBLISHED.get((arch, method, int(bits)))
    if row is None:
        return None
    return dict(zip(("psnr", "lpips", "ssim", "rfid"), row))
