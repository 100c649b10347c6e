"""FID: Fréchet distance closed forms, streaming statistics, and the real Inception network."""

import warnings
from unittest import mock

import numpy as np
import pytest
import torch

from gaussquant.metrics.fid import (
    FeatureStats,
    build_inception,
    fid_from_stats,
    frechet_distance,
    inception_features,
    load_fidelity_inception,
)
from gaussquant.metrics.weights import WEIGHT_FILES


def _random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fid_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(0)
    stats = FeatureStats(64)
    stats.update(rng.standard_normal((500, 64)) * 3 + 1)
    mu, cov = stats.mean_cov()
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-3


def test_fid_closed_form_diagonal():
    rng = np.random.default_rng(1)
    d = 32
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(
        expected, rel=1e-10
    )


def test_fid_closed_form_shared_eigenbasis():
    # cov_i = Q diag(s_i) Q^T commute, so tr sqrt(cov1 cov2) = sum sqrt(s1 s2)
    rng = np.random.default_rng(2)
    d = 24
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s1, s2 = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    cov1, cov2 = q @ np.diag(s1) @ q.T, q @ np.diag(s2) @ q.T
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    expected = 0.25 * d + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-8)


def test_fid_is_symmetric_and_handles_singular_covariances():
    rng = np.random.default_rng(3)
    a, b = _random_spd(rng, 16), _random_spd(rng, 16)
    mu = rng.standard_normal(16)
    assert frechet_distance(mu, a, 0 * mu, b) == pytest.approx(
        frechet_distance(0 * mu, b, mu, a), rel=1e-8
    )
    # rank-3 covariances (fewer samples than dimensions, as in tiny evaluations): finite, >= 0
    x, y = rng.standard_normal((4, 16)), rng.standard_normal((4, 16)) + 0.3
    fd = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert np.isfinite(fd) and fd > 0


def test_streaming_equals_one_shot_and_numpy():
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((301, 20)) @ rng.standard_normal((20, 20)) + 2.0
    one = FeatureStats(20)
    one.update(feats)
    parts = [FeatureStats(20) for _ in range(3)]
    for i, chunk in enumerate(np.array_split(feats, 7)):
        parts[i % 3].update(torch.from_numpy(chunk).float() if i == 0 else chunk)
    parts[0].update(feats[:0])  # an empty batch changes nothing
    merged = parts[0]
    merged.merge(parts[1])
    merged.merge(parts[2])
    assert merged.count == one.count == 301
    mu, cov = one.mean_cov()
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(feats, rowvar=False), rtol=1e-10, atol=1e-12)
    # chunk 0 went through float32: equal to the one-shot statistics up to float32 rounding
    np.testing.assert_allclose(merged.mean_cov()[1], cov, rtol=1e-5, atol=1e-6)
    ref = FeatureStats(20)
    ref.update(feats[: len(feats) // 2])
    assert fid_from_stats(merged, ref) == pytest.approx(fid_from_stats(one, ref), rel=1e-5)


def test_stats_save_load_roundtrip(tmp_path):
    stats = FeatureStats(8)
    stats.update(np.random.default_rng(5).standard_normal((10, 8)))
    stats.save(tmp_path / "ref.npz")
    back = FeatureStats.load(tmp_path / "ref.npz")
    assert back.count == 10 and np.array_equal(back.sum_outer, stats.sum_outer)
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats(8).mean_cov()


@pytest.fixture(scope="module")
def inception(weights_dir):
    return build_inception(weights_dir)


def test_weights_reproduce_torchmetrics_documented_fid64(weights_dir):
    """torchmetrics documents FrechetInceptionDistance(feature=64) = 12.6388 for two uint8
    sets drawn after torch.manual_seed(42) (its doctest seed) and building the network (whose
    random init consumes the generator). Uses torch-fidelity's own (TF-style) forward."""
    torch.manual_seed(42)
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3(
        "inception-v3-compat",
        ["64"],
        feature_extractor_weights_path=str(weights_dir / WEIGHT_FILES["fid_inception"]),
    )
    a = torch.randint(0, 200, (100, 3, 299, 299), dtype=torch.uint8)
    b = torch.randint(100, 255, (100, 3, 299, 299), dtype=torch.uint8)
    sa, sb = FeatureStats(64), FeatureStats(64)
    with torch.no_grad():
        for i in range(0, 100, 50):
            sa.update(net(a[i : i + 50])[0])
            sb.update(net(b[i : i + 50])[0])
    assert fid_from_stats(sa, sb) == pytest.approx(12.6388, abs=1e-3)


def test_pytorch_fid_preprocessing(weights_dir, inception):
    tf_net = load_fidelity_inception(weights_dir / WEIGHT_FILES["fid_inception"])
    g = torch.Generator().manual_seed(1)
    # at 299 px neither resizes: the only difference is the scaling, (v - 128) / 128 given here
    u = torch.randint(0, 256, (1, 3, 299, 299), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        ref = tf_net(u)[0]
    ours = inception_features(inception, (u.float() - 128) / 128)
    # channels-last kernels sum in another order: equal up to float32 round-off
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    # at 256 px the half-pixel (PyTorch) and TF1 bilinear resizes differ, by about 0.5 %
    small = torch.randint(0, 256, (1, 3, 8, 8), generator=g).float()
    u = (
        torch.nn.functional.interpolate(small, size=(256, 256), mode="bilinear")
        .round()
        .to(torch.uint8)
    )
    with torch.no_grad():
        ref = tf_net(u)[0]
    ours = inception_features(inception, u.float() / 127.5 - 1)
    rel = ((ours - ref).norm() / ref.norm()).item()
    assert 1e-3 < rel < 2e-2


def test_inception_is_frozen_eval_and_pool3(inception):
    torch.nn.Sequential(inception).train()
    assert not any(m.training for m in inception.modules())
    assert all(not p.requires_grad for p in inception.parameters())


@pytest.fixture(scope="module")
def pytorch_fid_net(weights_dir):
    """The oracle: pytorch-fid's own InceptionV3 (its network definition, bilinear resize to
    299 and [0, 1] -> [-1, 1] scaling, what the paper's numbers used) given the same
    2015-12-05 weights file (identical keys) in place of its download."""
    from pytorch_fid import inception as pf

    path = weights_dir / WEIGHT_FILES["fid_inception"]
    state = torch.load(path, map_location="cpu", weights_only=True)
    with mock.patch.object(pf, "load_state_dict_from_url", lambda *a, **k: state):
        net = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    assert net.resize_input and net.normalize_input
    return net.eval()


def _oracle_features(net, x):
    """pytorch-fid's pool3 features of images ``x`` in [-1, 1] (it takes [0, 1])."""
    with torch.no_grad():
        return net((x + 1) / 2)[0].flatten(1)


def _test_images(n, size, seed):
    """Smooth random images with some fine detail, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")
    return (0.8 * x + 0.2 * (torch.rand(n, 3, size, size, generator=g) * 2 - 1)).clamp(-1, 1)


@pytest.mark.parametrize("size", [32, 64, 256])
def test_features_equal_pytorch_fid_at_evaluation_sizes(size, inception, pytorch_fid_net):
    """At the sizes evaluation runs (32 px tiny/quick, 256 px paper; 64 px in between) our
    pool3 features equal pytorch-fid's forward: same resize, same scaling, same network."""
    x = _test_images(3, size, seed=size)
    ours = inception_features(inception, x)
    ref = _oracle_features(pytorch_fid_net, x)
    assert ours.shape == ref.shape == (3, 2048)
    # channels-last kernels sum in another order: equal up to float32 round-off
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=2e-5)


@pytest.mark.slow  # ~10 s: scipy's sqrtm of a 2048 x 2048 matrix on 2 CPU cores
def test_fid_equals_pytorch_fid_at_evaluation_sizes(inception, pytorch_fid_net):
    """rFID as evaluation computes it (our features, float64 streaming statistics, eigh trace)
    against pytorch-fid end to end (its features, np.cov, its calculate_frechet_distance),
    for 32 and 256 px reconstructions-like pairs."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    for size in (32, 256):
        x = _test_images(12, size, seed=1)
        y = (x + 0.1 * _test_images(12, size, seed=2)).clamp(-1, 1)  # a perturbed copy
        stats = [FeatureStats(), FeatureStats()]
        for s, imgs in zip(stats, (x, y)):
            for part in imgs.split(5):  # streamed in uneven batches, as evaluation does
                s.update(inception_features(inception, part))
        ours = fid_from_stats(*stats)
        fa, fb = (_oracle_features(pytorch_fid_net, v).double().numpy() for v in (x, y))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's deprecation of sqrtm(disp=...)
            ref = calculate_frechet_distance(
                fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False)
            )
        assert ref > 1.0
        assert ours == pytest.approx(ref, rel=1e-3), size


@pytest.mark.parametrize("n", [50, 400])
def test_fast_trace_term_equals_pytorch_fid_sqrtm(n):
    """The eigh form of tr((C1 C2)^(1/2)) equals scipy sqrtm's (pytorch-fid), singular or not."""
    from gaussquant.metrics.fid import trace_sqrt_product

    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, 256))
    b = rng.standard_normal((n, 256)) * 1.5 + 0.3 * a
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    fast = trace_sqrt_product(c1, c2)
    ref = trace_sqrt_product(c1, c2, method="sqrtm")
    assert fast == pytest.approx(ref, rel=1e-6)
