"""VQ, FSQ, LFQ, BSQ: official reference vectors, oracle, round trips, gradients, arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import REFERENCE as REF  # noqa: E402

from gaussquant.errors import GaussquantError
from gaussquant.methods import METHODS
from gaussquant.quantizers import BSQ, BUILDERS, FSQ, LFQ, VectorQuantizer
from gaussquant.quantizers.bsq import bsq_entropies


@pytest.fixture(scope="module")
def ref():
    return np.load(REF / "gq_official_vectors.npz")


def t(a):
    return torch.from_numpy(np.asarray(a))


# ----------------------------------------------------------------------------- references
def test_vq_reference(ref):
    vq = VectorQuantizer(16, 1024).train()
    with torch.no_grad():
        vq.embedding.weight.copy_(t(ref["vq_codebook"]))
    out = vq(t(ref["vq_x"]))
    np.testing.assert_array_equal(out.indices.numpy(), ref["vq_indices"].astype(np.int64))
    np.testing.assert_allclose(out.z_q.detach().numpy(), ref["vq_zhat"], atol=1e-6)
    np.testing.assert_allclose(
        out.stats["codebook_loss"].item(), ref["vq_codebook_loss"], rtol=1e-5
    )
    np.testing.assert_allclose(out.losses["vq"].item(), ref["vq_codebook_loss"], rtol=1e-5)


@pytest.mark.parametrize("key,levels", [("fsq16x4", [16] * 4), ("fsq865", [8, 8, 8, 5, 5, 5])])
def test_fsq_reference(ref, key, levels):
    out = FSQ(levels)(t(ref[f"{key}_x"]))
    np.testing.assert_array_equal(out.z_q.detach().numpy(), ref[f"{key}_zhat"])
    np.testing.assert_array_equal(out.indices.numpy(), ref[f"{key}_indices"].astype(np.int64))


def test_lfq_reference(ref):
    out = LFQ(16).train()(t(ref["lfq_x"]))
    np.testing.assert_array_equal(out.z_q.detach().numpy(), ref["lfq_zhat"])
    np.testing.assert_array_equal(out.indices.numpy(), ref["lfq_indices"])
    for name in ("entropy_aux_loss", "per_sample_entropy", "codebook_entropy", "commit_loss"):
        np.testing.assert_allclose(
            out.stats[name].item(), ref[f"lfq_{name}"], rtol=1e-5, err_msg=name
        )
    np.testing.assert_allclose(
        out.losses["entropy"].item(), 0.1 * ref["lfq_entropy_aux_loss"], rtol=1e-5
    )
    np.testing.assert_allclose(
        out.losses["commit"].item(), 0.025 * ref["lfq_commit_loss"], rtol=1e-5
    )


def test_bsq_reference_repo_rule(ref):
    out = BSQ(16).train()(t(ref["bsq_x"]))
    np.testing.assert_allclose(out.z_q.detach().numpy(), ref["bsq_zhat"], atol=1e-7)
    np.testing.assert_array_equal(out.indices.numpy(), ref["bsq_indices"])
    for name in ("entropy_aux_loss", "per_sample_entropy", "codebook_entropy"):
        np.testing.assert_allclose(
            out.stats[name].item(), ref[f"bsq_{name}"], rtol=1e-5, err_msg=name
        )
    np.testing.assert_allclose(
        out.losses["entropy"].item(), 0.1 * ref["bsq_entropy_aux_loss"], rtol=1e-5
    )


# ----------------------------------------------------------------------------- FSQ oracle
@pytest.mark.parametrize("levels", [[16, 16, 16, 16], [8, 8, 8, 5, 5, 5], [7, 5, 3], [4, 4, 4, 4]])
def test_fsq_matches_vector_quantize_pytorch(levels):
    from vector_quantize_pytorch import FSQ as oracle_cls  # dev extra: fails if missing

    x = torch.randn(3, len(levels), 5, 4, generator=torch.Generator().manual_seed(0)) * 2
    ours = FSQ(levels)(x)
    codes, _ = oracle_cls(levels)(x)
    assert torch.equal(ours.z_q, codes)
    # the oracle's digits run least-significant-first: reversing the channels maps it onto ours
    _, idx = oracle_cls(levels[::-1])(x.flip(1))
    assert torch.equal(ours.indices[:, 0], idx.long())


# ----------------------------------------------------------------------------- shared contract
CASES = {
    "vq1": lambda: VectorQuantizer(16, 256, 1),
    "vq4": lambda: VectorQuantizer(16, 256, 4),
    "fsq16x4": lambda: FSQ([16] * 4),
    "fsq16x8": lambda: FSQ([16] * 8),
    "fsq16x16": lambda: FSQ([16] * 16),
    "fsq865": lambda: FSQ([8, 8, 8, 5, 5, 5]),
    "lfq16": lambda: LFQ(16),
    "lfq64": lambda: LFQ(64),
    "lfq8": lambda: LFQ(8),
    "bsq16": lambda: BSQ(16),
    "bsq32": lambda: BSQ(32, entropy_rule="faithful"),
}


@pytest.mark.parametrize("name", CASES)
def test_round_trip_and_index_range(name):
    q = CASES[name]().eval()
    z = torch.randn(2, q.in_channels, 3, 4, generator=torch.Generator().manual_seed(1)) * 1.5
    out = q(z)
    assert out.z_q.shape == (2, q.out_channels, 3, 4) and out.z_q.dtype == torch.float32
    assert (
        out.indices.shape == (2, q.tokens_per_position, 3, 4) and out.indices.dtype == torch.int64
    )
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < q.codebook_size
    assert torch.equal(q.indices_to_codes(out.indices), out.z_q)
    assert math.isclose(q.bits_per_position, q.tokens_per_position * math.log2(q.codebook_size))


@pytest.mark.parametrize("name", CASES)
def test_straight_through_gradient_reaches_input(name):
    q = CASES[name]().train()
    z = torch.randn(2, q.in_channels, 3, 3, generator=torch.Generator().manual_seed(2))
    z.requires_grad_(True)
    out = q(z)
    (out.z_q * torch.randn_like(out.z_q)).sum().backward()  # reconstruction-like gradient only
    assert z.grad is not None and bool(z.grad.abs().sum() > 0)


def test_split_tokens_layout():
    # FSQ 16 x 8 levels: tokens of 4 consecutive channels, each the official 16-bit index
    q8, q4 = FSQ([16] * 8), FSQ([16] * 4)
    assert (q8.tokens_per_position, q8.codebook_size, q8.bits_per_position) == (2, 65536, 32)
    z = torch.randn(2, 8, 3, 3)
    idx = q8(z).indices
    assert torch.equal(idx[:, 1], q4(z[:, 4:]).indices[:, 0])
    # LFQ 32 bits: token t = bits 16t..16t+15, first channel most significant
    lfq = LFQ(32)
    bits = torch.zeros(1, 32, 1, 1)
    bits[0, 16] = 1.0  # MSB of token 1
    bits[0, 15] = 1.0  # LSB of token 0
    assert lfq(bits - 0.5).indices.flatten().tolist() == [1, 2**15]
    assert (
        lfq(bits - 0.5).indices.flatten().tolist() == BSQ(32)(bits - 0.5).indices.flatten().tolist()
    )


def test_registry_and_attributes():
    assert set(BUILDERS) == set(METHODS)  # every trained method builds its bottleneck by name
    assert BUILDERS["vq"].__self__ is VectorQuantizer
    vq = VectorQuantizer(16, 65536, 2)
    assert (vq.in_channels, vq.out_channels, vq.dim, vq.bits_per_position) == (16, 16, 8, 32)


# ----------------------------------------------------------------------------- VQ
def test_vq_nearest_neighbour_and_init():
    vq = VectorQuantizer(8, 64, 2)
    w = vq.embedding.weight
    assert float(w.detach().abs().max()) <= 1 / 64
    with torch.no_grad():
        w.normal_()
    z = torch.randn(3, 8, 2, 2)
    tok = z.reshape(3, 4, 2, 2, 2).permute(0, 2, 3, 4, 1)  # strided: token k = channels k, k+2, ...
    expected = torch.cdist(tok.reshape(-1, 4).double(), w.double()).argmin(1).view(3, 2, 2, 2)
    assert torch.equal(vq.eval()(z).indices, expected)


def test_vq_nearest_across_code_blocks(monkeypatch):
    """The blockwise search equals a float64 argmin over all codes, and a code repeated in a
    later block never wins over its first copy (argmin's first-index rule)."""
    import gaussquant.quantizers.vq as vq_mod

    monkeypatch.setattr(vq_mod, "NEAREST_BLOCK", 24)  # 256 codes: 10 full blocks + a partial
    vq = VectorQuantizer(4, 256, 1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.randn(256, 4, generator=g))
        vq.embedding.weight[200] = vq.embedding.weight[30]  # duplicate in a later block
    flat = torch.randn(500, 4, generator=g)
    flat[:7] = vq.embedding.weight[30].detach()  # exactly on the duplicated code
    expected = torch.cdist(flat.double(), vq.embedding.weight.double()).argmin(1)
    got = vq.nearest(flat)
    assert torch.equal(got[:7], torch.full((7,), 30))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("legacy", [True, False])
def test_vq_loss_beta_placement(legacy):
    """Same forward value; beta scales the codebook gradient (legacy) or the encoder's (not)."""
    vq = VectorQuantizer(4, 16, 1, beta=0.25, legacy_loss=legacy).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    zq = vq.indices_to_codes(out.indices).detach()
    mse = (zq - z.detach()).square().mean()
    assert torch.allclose(out.losses["vq"], 1.25 * mse)
    out.losses["vq"].backward()
    n = z.numel()
    enc_scale, code_scale = (1.0, 0.25) if legacy else (0.25, 1.0)
    assert torch.allclose(z.grad, enc_scale * 2 * (z.detach() - zq) / n, atol=1e-7)
    expected = torch.zeros_like(vq.embedding.weight)
    tok = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    expected.index_add_(
        0,
        out.indices.reshape(-1),
        code_scale * 2 * (zq.permute(0, 2, 3, 1).reshape(-1, 4) - tok) / n,
    )
    assert torch.allclose(vq.embedding.weight.grad, expected, atol=1e-7)


# ----------------------------------------------------------------------------- LFQ / BSQ losses
def test_lfq_eval_has_no_losses_and_entropy_bounds():
    lfq = LFQ(16)
    z = torch.randn(4, 16, 4, 4)
    assert lfq.eval()(z).losses == {}
    per_sample, codebook = lfq.entropy_terms(z)
    assert 0 <= float(per_sample) <= math.log(256) + 1e-4
    assert 0 <= float(codebook) <= math.log(256) + 1e-4


def test_bsq_faithful_rule_closed_form():
    # two positions, two bits, temperature 1: p = sigmoid(4 u / sqrt(2))
    u = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64)
    p = 1 / (1 + torch.exp(-4 * u / math.sqrt(2)))

    def h(q):
        return -(q * math.log(q) + (1 - q) * math.log(1 - q))

    per_sample = (
        sum(h(float(p[0, i])) for i in range(2)) + sum(h(float(p[1, i])) for i in range(2))
    ) / 2
    codebook = h(float(p[:, 0].mean())) + h(float(p[:, 1].mean()))
    got = bsq_entropies(u, temperature=1.0, rule="faithful")
    assert math.isclose(float(got[0]), per_sample, rel_tol=1e-12)
    assert math.isclose(float(got[1]), codebook, rel_tol=1e-12)


def test_bsq_faithful_rule_sees_collapsed_bits_repo_rule_does_not():
    # bit 0 always +1, bit 1 always -1: half of all bits are +1, so the pooled coin is fair
    u = torch.tensor([[1.0, -1.0]] * 8) / math.sqrt(2)
    _, repo = bsq_entropies(u, 0.01, "repo")
    _, faithful = bsq_entropies(u, 0.01, "faithful")
    assert float(repo) > 0.69  # ~ln 2: the maximum, no penalty for the collapse
    assert float(faithful) < 1e-6  # both bits carry no information
    # and a healthy code (both bits balanced) gets the maximum under both rules
    v = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]]) / math.sqrt(2)
    assert math.isclose(float(bsq_entropies(v, 0.01, "faithful")[1]), 2 * math.log(2), rel_tol=1e-4)


# ----------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: VectorQuantizer(16, 1000), "power of two"),
        (lambda: VectorQuantizer(16, 256, 3), "must divide"),
        (lambda: VectorQuantizer(16, 256, beta=-1), "beta"),
        (lambda: FSQ([16, 1]), "levels"),
        (lambda: FSQ([]), "levels"),
        (lambda: FSQ([16] * 6, channels_per_token=4), "must divide"),
        (lambda: FSQ([8, 8, 4, 4], channels_per_token=2), "same number of codes"),
        (lambda: FSQ([16] * 16, channels_per_token=16), "overflow"),
        (lambda: LFQ(20), "multiple of token_bits"),
        (lambda: LFQ(16, sub_codebook_bits=5), "sub_codebook_bits"),
        (lambda: LFQ(16, temperature=0), "temperature"),
        (lambda: BSQ(0), "bits"),
        (lambda: BSQ(16, entropy_rule="paper"), "entropy_rule"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(GaussquantError, match=match):
        make()


@pytest.mark.parametrize("name", ["vq1", "fsq16x4", "lfq16", "bsq16"])
def test_bad_input_shapes(name):
    q = CASES[name]()
    with pytest.raises(GaussquantError, match="expected z"):
        q(torch.randn(1, q.in_channels + 1, 2, 2))
    with pytest.raises(GaussquantError, match="expected indices"):
        q.indices_to_codes(torch.zeros(1, q.tokens_per_position + 1, 2, 2, dtype=torch.long))
