"""TokenBridge: equiprobable Gaussian-quantile bins, truncated-normal decoding, round trip."""

from __future__ import annotations

import math

import pytest
import torch

from gaussquant.errors import GaussquantError
from gaussquant.quantizers.tokenbridge import TokenBridge, gaussian_bins


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_bins_equiprobable_under_standard_normal(bits):
    edges, centers = gaussian_bins(bits)
    n = 2**bits
    assert edges.shape == (n - 1,) and centers.shape == (n,)
    expected = torch.arange(1, n, dtype=torch.float64) / n
    assert torch.allclose(torch.special.ndtr(edges), expected, rtol=0, atol=1e-14)
    assert torch.allclose(edges, -edges.flip(0), atol=1e-12)  # symmetric
    assert bool((edges[1:] > edges[:-1]).all())


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_centers_are_truncated_normal_means(bits):
    import scipy.stats as scipy_stats  # a core dependency: never skipped

    edges, centers = gaussian_bins(bits)
    lo = [-math.inf] + edges.tolist()
    hi = edges.tolist() + [math.inf]
    expected = torch.tensor([scipy_stats.truncnorm.mean(a, b) for a, b in zip(lo, hi)])
    assert torch.allclose(centers, expected.double(), rtol=1e-9, atol=1e-12)
    # closed form with equal masses: 2^B (phi(a) - phi(b))
    phi = [0.0] + [math.exp(-0.5 * e * e) / math.sqrt(2 * math.pi) for e in edges.tolist()] + [0.0]
    closed = [2**bits * (phi[i] - phi[i + 1]) for i in range(2**bits)]
    assert torch.allclose(centers, torch.tensor(closed, dtype=torch.float64), atol=1e-12)
    if bits == 1:  # the two half-normal means: +-sqrt(2/pi)
        assert math.isclose(float(centers[1]), math.sqrt(2 / math.pi), rel_tol=1e-12)


def test_quantize_round_trip_and_edges():
    tb = TokenBridge(latent_channels=3, bits=2).eval()
    assert (tb.in_channels, tb.out_channels, tb.tokens_per_position) == (6, 3, 3)
    assert tb.bits_per_position == 6 and tb.codebook_size == 4
    mu = torch.randn(5, 3, 4, 4) * 2
    z = torch.cat([mu, torch.randn_like(mu)], dim=1)  # logvar is ignored
    out = tb(z)
    assert out.indices.shape == (5, 3, 4, 4) and out.indices.dtype == torch.int64
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < 4
    assert torch.equal(tb.indices_to_codes(out.indices), out.z_q)
    # each value lies in its bin, and the bin's center too
    edges = torch.cat([torch.tensor([-math.inf]), tb.edges.float(), torch.tensor([math.inf])])
    assert bool((mu >= edges[out.indices]).all() and (mu < edges[out.indices + 1]).all())
    assert torch.equal(tb(torch.cat([out.z_q, torch.zeros_like(mu)], 1)).indices, out.indices)
    # a value exactly on an edge (0 for B = 2) goes to the upper bin
    on_edge = torch.zeros(1, 6, 1, 1)
    assert tb(on_edge).indices.flatten().tolist() == [2, 2, 2]


def test_standard_normal_samples_fill_bins_evenly():
    tb = TokenBridge(latent_channels=1, bits=3).eval()
    mu = torch.randn(1, 1, 400, 400, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(tb(torch.cat([mu, mu], 1)).indices.flatten(), minlength=8).double()
    assert torch.allclose(
        counts / counts.sum(), torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.005
    )


def test_training_mode_and_bad_arguments():
    with pytest.raises(GaussquantError, match="eval"):
        TokenBridge(2, 1).train()(torch.zeros(1, 4, 1, 1))
    with pytest.raises(GaussquantError, match="bits"):
        TokenBridge(2, 0)
    with pytest.raises(GaussquantError, match="latent_channels"):
        TokenBridge(0, 2)
    with pytest.raises(GaussquantError, match=r"\(B, 4, H, W\)"):
        TokenBridge(2, 1).eval()(torch.zeros(1, 2, 1, 1))
