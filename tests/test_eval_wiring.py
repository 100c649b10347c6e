"""How evaluation feeds the metrics (docs/method.md §6): for reconstructions that are not the
identity, every evaluated number equals a direct call of the metric code on the same image
pairs, per image in dataset order; the rFID reference statistics equal the in-loop ones."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gaussquant.data import PreparedDataset
from gaussquant.evaluate import evaluate_model, reference_stats
from gaussquant.metrics.fid import (
    FeatureStats,
    build_inception,
    fid_from_stats,
    inception_features,
)
from gaussquant.metrics.image import psnr, ssim
from gaussquant.metrics.lpips import build_lpips
from gaussquant.quantizers.base import QuantizerOutput


class BlurShift(nn.Module):
    """x_rec = 3x3 box blur of x, brightened by 0.05 and darkened by 0.02 per image index
    (so that no two images share an error): neither the identity nor a constant error."""

    def __init__(self):
        super().__init__()
        self.bottleneck = nn.Identity()

    def encode(self, x):
        return QuantizerOutput(z_q=x)

    def decode(self, z):
        blurred = F.avg_pool2d(F.pad(z, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        # the image's own mean makes the shift depend on the image, not on its batch position
        return blurred + 0.05 - 0.3 * z.mean((1, 2, 3), keepdim=True).clamp(-1, 1) ** 2


def _cfg(cfg, **eval_kw):
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, **eval_kw))


@pytest.fixture(scope="module")
def direct(tiny_data, weights_dir):
    """The metrics called directly on every (original, reconstruction) pair of the tiny
    validation set, one image at a time."""
    data = PreparedDataset(tiny_data, "val")
    model = BlurShift()
    x = torch.stack([data[i] for i in range(len(data))])
    rec = torch.cat([model.decode(x[i : i + 1]) for i in range(len(x))])
    lpips = build_lpips("alex", weights_dir)
    inception = build_inception(weights_dir)
    return {
        "x": x,
        "psnr": psnr(x, rec),
        "ssim": ssim(x, rec),
        "lpips": torch.cat([lpips(x[i : i + 1], rec[i : i + 1]) for i in range(len(x))]),
        "real": inception_features(inception, x).double(),
        "fake": inception_features(inception, rec).double(),
    }


def _stats(features):
    s = FeatureStats()
    s.update(features)
    return s


def test_evaluated_metrics_equal_direct_calls_in_dataset_order(
    tiny_cfg, tiny_data, weights_dir, direct
):
    data = PreparedDataset(tiny_data, "val")
    cfg = _cfg(tiny_cfg, batch_size=6, fid=True)  # 16 images: batches of 6, 6, 4
    m = evaluate_model(BlurShift(), data, cfg, weights_dir, continuous=True, progress=False)
    assert m["n_images"] == 16
    for key in ("psnr", "ssim", "lpips"):
        want = direct[key].double()
        assert m[key] == pytest.approx(want.mean().item(), rel=1e-6), key
        # per image, in dataset order (the evaluation-sample bootstrap pairs images by index)
        np.testing.assert_allclose(m["per_image"][key], want.numpy(), rtol=1e-5, err_msg=key)
    assert len(set(np.round(m["per_image"]["psnr"], 6))) == 16  # order is observable
    want = fid_from_stats(_stats(direct["real"]), _stats(direct["fake"]))
    assert want > 1.0  # a real difference, not the identity's 0
    # float32 features summed in another order (batches of 6 vs one at a time)
    assert m["rfid"] == pytest.approx(want, rel=1e-4)


def test_reference_stats_equal_the_in_loop_real_statistics(
    tiny_cfg, tiny_data, weights_dir, direct, tmp_path
):
    """``reference_stats`` (what the pipeline gives rFID) on the same images as evaluation:
    the first ``max_images`` originals."""
    data = PreparedDataset(tiny_data, "val")
    cfg = _cfg(tiny_cfg, batch_size=4, max_images=10)
    ref = reference_stats(data, cfg, weights_dir, progress=False)
    assert ref.count == 10
    want_mu, want_cov = _stats(direct["real"][:10]).mean_cov()
    mu, cov = ref.mean_cov()
    np.testing.assert_allclose(mu, want_mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cov, want_cov, rtol=1e-4, atol=1e-6)
    ref.save(tmp_path / "ref.npz")
    m = evaluate_model(
        BlurShift(),
        data,
        cfg,
        weights_dir,
        continuous=True,
        fid_reference=tmp_path / "ref.npz",
        progress=False,
    )
    assert m["n_images"] == 10
    want = fid_from_stats(_stats(direct["real"][:10]), _stats(direct["fake"][:10]))
    assert m["rfid"] == pytest.approx(want, rel=1e-4)


def _loud_vit(tiny_cfg):
    """A tiny ViT autoencoder whose raw decoder output leaves [-1, 1] (last layer scaled)."""
    from gaussquant.models.autoencoder import build_autoencoder

    torch.manual_seed(0)
    model = build_autoencoder(tiny_cfg, "vanilla", "vit", "8").eval()
    with torch.no_grad():
        model.last_layer().mul_(40.0)
    return model


@pytest.mark.parametrize("clamp", [False, True])
def test_vit_output_is_scored_clamped_only_when_asked(tiny_cfg, tiny_data, weights_dir, clamp):
    data = PreparedDataset(tiny_data, "val")
    model = _loud_vit(tiny_cfg)
    x = torch.stack([data[i] for i in range(len(data))])
    with torch.no_grad():
        z = model.encode(x).z_q
        raw = model.decoder(z, clamp=False)
    assert raw.abs().max() > 1.5  # the clamp matters for this model
    want = raw.clamp(-1, 1) if clamp else raw
    cfg = _cfg(tiny_cfg, batch_size=8, fid=False, clamp_output=clamp)
    m = evaluate_model(model, data, cfg, weights_dir, continuous=True, progress=False)
    np.testing.assert_allclose(m["per_image"]["psnr"], psnr(x, want).numpy(), rtol=1e-5)
