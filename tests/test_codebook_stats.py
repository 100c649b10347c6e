"""Codebook usage / perplexity accumulator against hand-computed histograms."""

from __future__ import annotations

import math

import pytest
import torch

from gaussquant.errors import GaussquantError
from gaussquant.metrics.codebook import CodebookStats


def test_single_group_hand_computed():
    stats = CodebookStats(codebook_size=8)
    stats.update(torch.tensor([0, 0, 1, 3]).view(1, 1, 2, 2))
    stats.update(torch.tensor([3, 3, 3, 3]).view(1, 1, 2, 2))
    assert stats.state()[0].tolist() == [2, 1, 0, 5, 0, 0, 0, 0]
    s = stats.summary()
    p = [2 / 8, 1 / 8, 5 / 8]
    entropy = -sum(q * math.log(q) for q in p)
    assert s["tokens"] == 8 and s["usage"] == 3 / 8
    assert math.isclose(s["perplexity"], math.exp(entropy), rel_tol=1e-12)
    assert s["usage_pooled"] == s["usage"] and s["perplexity_pooled"] == s["perplexity"]


def test_uniform_and_single_code_extremes():
    stats = CodebookStats(4)
    stats.update(torch.arange(4).view(1, 1, 2, 2).repeat(3, 1, 1, 1))
    assert stats.summary()["usage"] == 1.0
    assert math.isclose(stats.summary()["perplexity"], 4.0, rel_tol=1e-12)
    one = CodebookStats(4)
    one.update(torch.full((2, 1, 3, 3), 2))
    assert one.summary()["usage"] == 0.25 and one.summary()["perplexity"] == 1.0


def test_per_group_and_pooled():
    # two token groups: group 0 uses {0, 1} evenly, group 1 only code 1
    idx = torch.tensor([[[[0, 1]], [[1, 1]]]])  # (B=1, T=2, H=1, W=2)
    stats = CodebookStats(4, groups=2)
    stats.update(idx)
    s = stats.summary()
    assert s["usage_per_group"] == [0.5, 0.25]
    assert math.isclose(s["perplexity_per_group"][0], 2.0) and s["perplexity_per_group"][1] == 1.0
    assert s["usage"] == 0.375 and math.isclose(s["perplexity"], 1.5)
    # code entropy per position: log2 2 + log2 1 bits (group 0 one fair bit, group 1 none)
    assert math.isclose(s["code_bits"], 1.0)
    pooled = [1 / 4, 3 / 4]  # code 0 once, code 1 three times
    assert s["usage_pooled"] == 0.5
    assert math.isclose(s["perplexity_pooled"], math.exp(-sum(q * math.log(q) for q in pooled)))


def test_state_merge_equals_one_stream():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 16, (2, 3, 4, 4), generator=g) for _ in range(4)]
    whole, a, b = CodebookStats(16, 3), CodebookStats(16, 3), CodebookStats(16, 3)
    for i, batch in enumerate(batches):
        whole.update(batch)
        (a if i % 2 else b).update(batch)
    a.merge(b.state())  # what an all_reduce(sum) of the states gives
    assert torch.equal(a.state(), whole.state())
    assert a.summary() == whole.summary()
    expected = torch.stack(
        [
            torch.bincount(torch.cat([x[:, t].flatten() for x in batches]), minlength=16)
            for t in range(3)
        ]
    )
    assert torch.equal(whole.state(), expected)


def test_empty_and_errors():
    stats = CodebookStats(8, groups=2)
    assert stats.summary()["usage"] == 0.0 and math.isnan(stats.summary()["perplexity"])
    with pytest.raises(GaussquantError, match="out of range"):
        stats.update(torch.full((1, 2, 1, 1), 8))
    with pytest.raises(GaussquantError, match=r"\(B, 2, \.\.\.\)"):
        stats.update(torch.zeros(1, 3, 1, 1, dtype=torch.long))
    with pytest.raises(GaussquantError, match="merge"):
        stats.merge(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(GaussquantError, match="codebook_size"):
        CodebookStats(2**40)
