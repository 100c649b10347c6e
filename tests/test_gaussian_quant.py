"""Gaussian Quant: codebook bytes, exact indices (reference vectors and float64 brute force),
layout, round trip, argument checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REFERENCE as REF  # noqa: E402

from gaussquant.errors import GaussquantError
from gaussquant.quantizers.gaussian_quant import (
    GaussianQuant,
    codebook_sha256,
    from_tokens,
    gaussian_codebook,
    gq_search,
    to_tokens,
)


def _reference():
    cases = json.loads((REF / "gq_official_vectors.json").read_text())["cases"]
    return [c for c in cases if c.get("kind") == "gq"], np.load(REF / "gq_official_vectors.npz")


def brute_force(mu, logvar, codebook, beta=1.0):
    """Independent oracle: the official score in float64 for every code, first argmax."""
    c = codebook.double()
    mu, sigma = mu.double(), torch.exp(0.5 * logvar.double())
    out = []
    for r0 in range(0, mu.shape[0], 16):
        m_, s_ = mu[r0 : r0 + 16, None, :], sigma[r0 : r0 + 16, None, :]
        score = beta * (c * c).sum(-1) - ((c[None] - m_) / s_).square().sum(-1)
        out.append(score.argmax(1))
    return torch.cat(out)


def random_posteriors(n, m, seed, collapsed=0.1):
    g = torch.Generator().manual_seed(seed)
    logvar = torch.randn(n, m, generator=g) * 2.0 - 1.5
    mu = torch.randn(n, m, generator=g) * 1.2
    logvar[torch.rand(n, m, generator=g) < collapsed] = -20.0  # sigma ~ 4.5e-5
    logvar[0] = -30.0  # every dim at the clamp
    logvar[1, 0] = -30.0
    logvar[2] = 20.0  # (almost) no information: the largest-norm code wins
    mu[3] = 0.0
    mu[4, 0] = 3.0e30  # float32 features overflow: the float64 tier must take over
    return mu, logvar.clamp(-30, 20)


# ----------------------------------------------------------------------------- codebook
def test_codebook_matches_official_bytes():
    cases, ref = _reference()
    for case in cases:
        cb = gaussian_codebook(case["K"], case["m"], case["sobol_seed"])
        assert cb.dtype == torch.float32 and cb.shape == (case["K"], case["m"])
        assert codebook_sha256(cb) == case["codebook_sha256_float32"], case["key"]
        np.testing.assert_array_equal(cb[:8].numpy(), ref[f"{case['key']}_codebook_head"])


def test_codebook_depends_on_seed_and_is_standard_normal():
    a, b = gaussian_codebook(4096, 4, 42), gaussian_codebook(4096, 4, 43)
    assert codebook_sha256(a) != codebook_sha256(b)
    assert abs(float(a.mean())) < 0.01 and abs(float(a.std()) - 1.0) < 0.01


# ----------------------------------------------------------------------------- exactness
def test_reference_indices_exact():
    cases, ref = _reference()
    for case in cases:
        key = case["key"]
        gq = GaussianQuant(
            case["C"], case["K"], case["m"], seed=case["sobol_seed"], beta=case["beta"]
        )
        assert gq.sha256 == case["codebook_sha256_float32"]
        out = gq.eval()(torch.from_numpy(ref[f"{key}_z"]))
        expected = ref[f"{key}_indices"].astype(np.int64)
        assert out.indices.dtype == torch.int64
        np.testing.assert_array_equal(out.indices.numpy(), expected, err_msg=key)
        np.testing.assert_array_equal(out.z_q.numpy(), ref[f"{key}_zhat"], err_msg=key)


def test_plain_float32_expansion_is_not_exact_on_collapsed_references():
    """The collapsed reference cases really need the exact path (so the test above has teeth)."""
    cases, ref = _reference()
    for case in (c for c in cases if c["key"] in ("gq2", "gq5")):
        c_, m = case["C"], case["m"]
        z = torch.from_numpy(ref[f"{case['key']}_z"])
        mu = to_tokens(z[:, :c_], m).reshape(-1, m)
        w = torch.exp(-to_tokens(z[:, c_:].clamp(-30, 20), m).reshape(-1, m))
        cb = gaussian_codebook(case["K"], m)
        plain = ((0.5 - 0.5 * w) @ (cb * cb).t() + (w * mu) @ cb.t()).argmax(1)
        agree = (
            (plain == torch.from_numpy(ref[f"{case['key']}_indices"]).reshape(-1)).double().mean()
        )
        assert agree < 0.95


@pytest.mark.parametrize(
    "m,k,seed",
    [(m, k, s) for m, k in [(16, 4096), (8, 1024), (4, 256)] for s in (0, 1, 2)]
    + [(16, 65536, 0), (8, 65536, 1), (4, 65536, 2)],
)
def test_matches_float64_brute_force(m, k, seed):
    n = 24 if k == 65536 else 96
    mu, logvar = random_posteriors(n, m, seed)
    cb = gaussian_codebook(k, m)
    info = {}
    got = gq_search(mu, logvar, cb, chunk_size=32, code_block=256, info=info)
    assert torch.equal(got, brute_force(mu, logvar, cb))
    assert info["float64_rows"] >= 1  # the overflow row at least went through float64


@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
def test_beta_matches_brute_force(beta):
    mu, logvar = random_posteriors(64, 8, seed=7)
    cb = gaussian_codebook(1024, 8)
    assert torch.equal(gq_search(mu, logvar, cb, beta), brute_force(mu, logvar, cb, beta))


def test_ties_resolve_to_lowest_index():
    cb = gaussian_codebook(64, 4)
    dup = torch.cat([cb, cb, cb[:1].expand(64, 4)])  # every code appears at least twice
    mu, logvar = random_posteriors(50, 4, seed=3)
    got = gq_search(mu, logvar, dup)
    assert torch.equal(got, brute_force(mu, logvar, dup))  # torch.argmax: first maximum
    assert bool((got < 64).all())
    assert torch.equal(
        gq_search(mu, logvar, torch.zeros(100, 4)), torch.zeros(50, dtype=torch.long)
    )


def test_chunking_does_not_change_indices():
    mu, logvar = random_posteriors(70, 8, seed=5)
    cb = gaussian_codebook(4096, 8)
    base = gq_search(mu, logvar, cb)
    for chunk, block in [(1, 4096), (7, 100), (70, 64), (13, 1)]:
        assert torch.equal(gq_search(mu, logvar, cb, chunk_size=chunk, code_block=block), base)


def test_fewer_than_eight_rows_and_empty_input():
    gq = GaussianQuant(4, 256, 4).eval()  # one token per position
    z = torch.randn(1, 8, 1, 1)  # N = 1 row: the official torch backend crashes here
    out = gq(z)
    mu, logvar = z[:, :4].reshape(1, 4), z[:, 4:].reshape(1, 4)
    assert out.indices.shape == (1, 1, 1, 1)
    assert int(out.indices) == int(brute_force(mu, logvar, gq.codebook)[0])
    assert gq(torch.randn(0, 8, 2, 2)).indices.shape == (0, 1, 2, 2)


# ----------------------------------------------------------------------------- module contract
def test_strided_token_layout():
    x = torch.arange(16.0).view(1, 16, 1, 1)
    tok = to_tokens(x, 4)  # T = 4 tokens of 4 dims
    assert tok.shape == (1, 4, 1, 1, 4)
    assert tok[0, 1, 0, 0].tolist() == [1.0, 5.0, 9.0, 13.0]  # token k: k, k + C/m, ...
    y = torch.randn(2, 12, 3, 5)
    assert torch.equal(from_tokens(to_tokens(y, 3)), y)


def test_forward_round_trip_shapes_and_stats():
    gq = GaussianQuant(8, 1024, 4).eval()
    assert (gq.in_channels, gq.out_channels, gq.tokens_per_position) == (16, 8, 2)
    assert gq.bits_per_position == 20 and gq.codebook_size == 1024
    z = torch.randn(3, 16, 4, 5)
    out = gq(z)
    assert out.z_q.shape == (3, 8, 4, 5) and out.indices.shape == (3, 2, 4, 5)
    assert out.indices.dtype == torch.int64
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < 1024
    assert torch.equal(gq.indices_to_codes(out.indices), out.z_q)
    assert torch.equal(gq.dequant(out.indices), out.z_q)
    # z_q holds codewords: every token of z_q is a row of the codebook
    assert torch.equal(to_tokens(out.z_q, 4).reshape(-1, 4), gq.codebook[out.indices.reshape(-1)])
    mu, logvar = z[:, :8], z[:, 8:]
    kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar) / np.log(2)).sum() / (3 * 2 * 4 * 5)
    assert torch.allclose(out.stats["kl_bits_per_token"], kl, rtol=1e-5)


def test_autocast_does_not_change_indices():
    gq = GaussianQuant(8, 1024, 8).eval()
    z = torch.randn(2, 16, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = gq(z)
    assert inside.z_q.dtype == torch.float32
    assert torch.equal(inside.indices, gq(z).indices)


def test_metadata_and_sha_check():
    gq = GaussianQuant(16, 65536, 16)
    meta = gq.metadata()
    assert meta == {"seed": 42, "codebook_size": 65536, "dim": 16, "beta": 1.0, "sha256": gq.sha256}
    assert "seed=42" in repr(gq)
    gq.check_sha256(gq.sha256)
    with pytest.raises(GaussquantError, match="does not match"):
        gq.check_sha256("0" * 64)
    assert "codebook" not in gq.state_dict()  # regenerated, never stored


def test_training_mode_raises():
    with pytest.raises(GaussquantError, match="eval"):
        GaussianQuant(4, 16, 4).train()(torch.randn(1, 8, 2, 2))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(latent_channels=16, codebook_size=1000, dim=4), "power of two"),
        (dict(latent_channels=16, codebook_size=1, dim=4), "power of two"),
        (dict(latent_channels=16, codebook_size=256, dim=5), "must divide"),
        (dict(latent_channels=0, codebook_size=256, dim=1), "latent_channels"),
        (dict(latent_channels=16, codebook_size=256, dim=4, beta=float("nan")), "beta"),
        (dict(latent_channels=16, codebook_size=256, dim=4, chunk_size=0), "chunk_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(GaussquantError, match=match):
        GaussianQuant(**kwargs)


def test_bad_inputs():
    gq = GaussianQuant(4, 16, 2).eval()
    with pytest.raises(GaussquantError, match=r"\(B, 8, H, W\)"):
        gq(torch.randn(1, 4, 2, 2))
    with pytest.raises(GaussquantError, match="NaN"):
        gq(torch.full((1, 8, 1, 1), float("nan")))
    with pytest.raises(GaussquantError, match=r"\(B, 2, H, W\)"):
        gq.indices_to_codes(torch.zeros(1, 3, 1, 1, dtype=torch.long))


def test_codebook_point_rounded_to_one_stays_finite():
    """Seed 2 at K = 2^16, m = 16: one float32 Sobol coordinate is exactly 1.0 (an infinite
    codeword in the official code). It becomes the largest finite code; nothing else moves."""
    from torch.quasirandom import SobolEngine

    u = SobolEngine(16, scramble=True, seed=2).draw(65536)
    assert (u == 1).sum() == 1
    cb = gaussian_codebook(65536, 16, seed=2)
    assert torch.isfinite(cb).all()
    hit = u == 1
    assert cb[hit].item() == pytest.approx(5.2947, abs=1e-4)  # ndtri(1 - 2^-24)
    assert cb[~hit].max() < cb[hit].item()
    expected = torch.special.ndtri(u[~hit].double()).float()
    assert torch.equal(cb[~hit], expected)
