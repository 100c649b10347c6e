"""Evaluation protocol of docs/method.md §6, streaming over the validation set.

Reconstruction goes through the quantized path (GQ in eval mode: codewords, no noise), or
``continuous=True`` for a Gaussian VAE's posterior-mean reconstruction (reference row); the
ViT's output is scored unclamped, as the official eval.py (``eval.clamp_output``). Per
image: PSNR on [0, 255] (no clamp, no rounding), SSIM (and MS-SSIM at >= 256 px), LPIPS
AlexNet v0.1; set level: rFID between originals and reconstructions, codebook usage and
perplexity, code entropy in bits per latent position. Every image is evaluated (the official
script drops the last partial batch).

Memory does not grow with the number of images: per-image metrics are summed, Inception
features are accumulated as float64 sums and outer products, networks are built once. Under
several processes each takes a disjoint slice of the images and the sums are reduced.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from gaussquant.config import Config
from gaussquant.encoding import (
    RateStats,
    encoded_batches,
    gather_rows,
    rate_summary,
    shard,
    tdc_target,
)
from gaussquant.errors import GaussquantError
from gaussquant.io import atomic_path
from gaussquant.metrics.codebook import CodebookStats
from gaussquant.metrics.fid import (
    FeatureStats,
    build_inception,
    frechet_distance,
    inception_features,
)
from gaussquant.metrics.image import ms_ssim, psnr, ssim
from gaussquant.metrics.lpips import build_lpips
from gaussquant.metrics.weights import verify_weights
from gaussquant.models.vit import ViTDecoder
from gaussquant.quantizers.tdc import GaussianBottleneck

PROTOCOL = {
    "psnr": "per image on [0, 255] = (x + 1) * 127.5, no clamp, no rounding; mean over images",
    "ssim": "pytorch-msssim, data_range 255, 11x11 Gaussian window (sigma 1.5); mean over images",
    "lpips": "AlexNet v0.1 (lpips package), inputs in [-1, 1], no dropout; mean over images",
    "rfid": "FID Inception (2015-12-05 TF weights), pool3 2048-d, pytorch-fid preprocessing, "
    "originals vs reconstructions, float64 statistics",
    "images": "every validation image (no dropped partial batch)",
}


PER_IMAGE = ("psnr", "ssim", "lpips")  # kept per image in the metrics JSON


class _Sums:
    """Running sums of per-image metrics (float64), reducible across processes."""

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys
        self.total = torch.zeros(len(keys) + 1, dtype=torch.float64)  # last: image count

    def add(self, values: dict[str, torch.Tensor]) -> None:
        n = next(iter(values.values())).numel()
        self.total += torch.tensor(
            [float(values[k].double().sum()) for k in self.keys] + [n], dtype=torch.float64
        )

    def means(self) -> dict[str, float]:
        n = self.total[-1].item()
        return {k: self.total[i].item() / n for i, k in enumerate(self.keys)} | {"n_images": int(n)}


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset,
    cfg: Config,
    weights_dir: Path | None = None,
    continuous: bool = False,
    fid_reference: Path | None = None,
    progress: bool = True,
    accelerator=None,
    grid_path: Path | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` (an :class:`Autoencoder`, or any module with ``encode``/``decode``)
    on ``dataset`` (images in [-1, 1]). For a Gaussian VAE (``continuous``) the same pass
    records the per-token rates of its posteriors (``token_bits``, :func:`rate_summary`)."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else torch.device("cpu")
    _, n_total = shard(dataset, cfg.eval.max_images, rank, world)
    model = model.to(device).eval()
    lpips_net = build_lpips("alex", weights_dir).to(device)
    inception = build_inception(weights_dir).to(device) if cfg.eval.fid else None
    size = dataset[0].shape[-1]
    use_msssim = size >= 256
    keys = ("psnr", "ssim", "lpips", "mse") + (("ms_ssim",) if use_msssim else ())
    sums = _Sums(keys)
    real_stats, fake_stats = FeatureStats(), FeatureStats()
    bottleneck = getattr(model, "bottleneck", None)
    tokens = getattr(bottleneck, "tokens_per_position", None)
    codes = None
    if not continuous and tokens is not None:
        codes = CodebookStats(bottleneck.codebook_size, tokens)
    gaussian = isinstance(bottleneck, GaussianBottleneck)
    rates = RateStats(bottleneck.dim) if gaussian else None
    encode = model.encoder if gaussian else model.encode  # Gaussian: keep the posterior
    grid_pairs, per_image = [], []
    desc = "evaluate" if progress else None
    batches = encoded_batches(
        encode, dataset, cfg.eval.batch_size, cfg.eval.max_images, device, rank, world, desc
    )
    for x, out in batches:
        if gaussian:
            rates.update(out)
        q = bottleneck(out) if gaussian else out
        x_rec = reconstruct(model, q.z_q, cfg.eval.clamp_output)
        if codes is not None and q.indices is not None:
            codes.update(q.indices)
        values = {
            "psnr": psnr(x, x_rec),
            "ssim": ssim(x, x_rec),
            "lpips": lpips_net(x, x_rec).reshape(-1),
            "mse": ((x - x_rec) * 127.5).pow(2).flatten(1).mean(1),
        }
        if use_msssim:
            values["ms_ssim"] = ms_ssim(x, x_rec)
        sums.add({k: v.cpu() for k, v in values.items()})
        per_image.append(torch.stack([values[k].cpu().double() for k in PER_IMAGE], 1))
        if inception is not None:
            if fid_reference is None:
                real_stats.update(inception_features(inception, x))
            fake_stats.update(inception_features(inception, x_rec))
        if len(grid_pairs) < cfg.eval.grid_images and rank == 0:
            grid_pairs.extend(zip(x.cpu(), x_rec.cpu()))
    if accelerator is not None and world > 1:
        sums.total = accelerator.reduce(sums.total.to(device), "sum").cpu()
        for stats in (real_stats, fake_stats):
            stats.reduce(accelerator)
        if codes is not None:
            total = accelerator.reduce(codes.state().to(device), "sum").cpu()
            codes.counts.zero_()
            codes.merge(total)
    if rates is not None:
        rates.gather(accelerator)
    result = sums.means()
    result["processes"] = world
    result["per_image"] = _gather_per_image(per_image, rank, world, accelerator, len(PER_IMAGE))
    if result["n_images"] != n_total:
        raise GaussquantError(f"evaluated {result['n_images']} images, expected {n_total}")
    mse = result.pop("mse")  # pooled over images, for contrast with the per-image mean
    result["psnr_pooled"] = 10 * math.log10(255.0**2 / mse) if mse > 0 else math.inf
    if inception is not None:
        ref = FeatureStats.load(fid_reference) if fid_reference is not None else real_stats
        result["rfid"] = frechet_distance(*ref.mean_cov(), *fake_stats.mean_cov())
    else:
        result["rfid"] = None
    if codes is not None:
        summary = codes.summary()
        result["codebook_usage"], result["perplexity"] = (
            summary.pop("usage"),
            summary.pop("perplexity"),
        )
        result["code_bits"] = summary.pop("code_bits")  # bits per latent position
        result["codebook"] = summary  # per token group and pooled
    if rates is not None:
        target = tdc_target(bottleneck)
        result["token_bits"] = rate_summary(
            rates.result()["token_bits"], target["target"], target["tolerance"]
        )
    if grid_path is not None and rank == 0:
        save_grid(grid_pairs[: cfg.eval.grid_images], grid_path)
    return result


def reconstruct(model: torch.nn.Module, z_q: torch.Tensor, clamp_output: bool) -> torch.Tensor:
    """Decoder output scored by the metrics. The official eval.py reports ``decode()``, which
    does not apply the ViT's [-1, 1] clamp (its ``forward()`` does): ``eval.clamp_output``
    false follows eval.py, true clamps. The UNet has no clamp either way."""
    decoder = getattr(model, "decoder", None)  # any model with encode/decode can be measured
    if isinstance(decoder, ViTDecoder):
        return decoder(z_q, clamp=clamp_output)
    return model.decode(z_q)


def _gather_per_image(parts, rank, world, accelerator, k) -> dict[str, list[float]]:
    """Per-image metrics of every image in dataset order (process r held images r, r + world, ...)
    for the evaluation-sample bootstrap of the tables."""
    local = torch.cat(parts) if parts else torch.zeros(0, k, dtype=torch.float64)
    if world > 1:
        local = gather_rows(local.to(accelerator.device), accelerator).cpu()
    return {name: local[:, j].tolist() for j, name in enumerate(PER_IMAGE)}


def save_grid(pairs, path: Path) -> None:
    """Originals (top row) and reconstructions (bottom row) as one PNG."""
    top = torch.cat([x for x, _ in pairs], dim=-1)
    bottom = torch.cat([r for _, r in pairs], dim=-1)
    img = torch.cat([top, bottom], dim=-2).clamp(-1, 1).add(1).mul(127.5).round().byte()
    arr = img.permute(1, 2, 0).numpy()
    scale = max(1, 96 // pairs[0][0].shape[-1])  # small images are upscaled to be visible
    pil = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG")


def weights_fingerprint(weights_dir: Path | None) -> dict[str, str]:
    """sha256 of the metric weight files used, for the protocol record."""
    manifest = verify_weights(weights_dir)
    files = manifest.get("files", manifest)
    return {
        name: (info["sha256"] if isinstance(info, dict) else str(info))
        for name, info in files.items()
    }


@torch.no_grad()
def reference_stats(
    dataset, cfg: Config, weights_dir: Path | None = None, progress: bool = True, device=None
):
    """Inception feature statistics (float64) of the original images, same subset as evaluation,
    computed as evaluation computes its in-loop statistics: float32 Inception on ``device``
    (default: the GPU when there is one, as an evaluation job has)."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    inception = build_inception(weights_dir).to(device)
    stats = FeatureStats()
    desc = "fid reference" if progress else None
    features = functools.partial(inception_features, inception)
    for _, f in encoded_batches(
        features, dataset, cfg.eval.batch_size, cfg.eval.max_images, device, desc=desc
    ):
        stats.update(f)
    return stats
