"""Codebook usage and perplexity of token indices, streamed batch by batch (docs/method.md §6).

usage      = fraction of the K codes used at least once;
perplexity = exp(entropy in nats of the code histogram) (K for a uniform histogram, 1 when
             a single code is used);
code bits  = sum over the T token groups of log2 perplexity: the code entropy in bits per
             latent position, comparable across token shapes (one 16-bit token, two 8-bit
             sub-codes, 16 one-bit channels) and bounded by the rate's bits per position.
Usage and perplexity per token group (GQ: the T = C/m tokens of a position each have their own histogram)
and pooled over groups. Counts are plain int64 tensors, so several processes can sum their
:meth:`CodebookStats.state` (e.g. ``all_reduce``) and :meth:`CodebookStats.merge` the result.
"""

from __future__ import annotations

import math

import torch

from gaussquant.errors import GaussquantError

MAX_CODEBOOK = 2**26  # histograms are dense: (groups, K) int64


class CodebookStats:
    """Histogram accumulator for indices of shape (B, T, H, W) (or (B, T, ...)) in [0, K)."""

    def __init__(self, codebook_size: int, groups: int = 1):
        if not isinstance(codebook_size, int) or not 1 <= codebook_size <= MAX_CODEBOOK:
            raise GaussquantError(
                f"codebook stats: codebook_size={codebook_size!r} must be an integer in "
                f"[1, {MAX_CODEBOOK}]"
            )
        if not isinstance(groups, int) or groups < 1:
            raise GaussquantError(f"codebook stats: groups={groups!r} must be an integer >= 1")
        self.codebook_size, self.groups = codebook_size, groups
        self.counts = torch.zeros(groups, codebook_size, dtype=torch.long)

    def update(self, indices: torch.Tensor) -> None:
        """Add a batch of indices (B, T, ...) with T == groups."""
        if indices.ndim < 2 or indices.shape[1] != self.groups:
            raise GaussquantError(
                f"codebook stats: expected indices (B, {self.groups}, ...), "
                f"got {tuple(indices.shape)}"
            )
        idx = indices.detach().to("cpu", torch.long).transpose(0, 1).reshape(self.groups, -1)
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.codebook_size):
            raise GaussquantError(
                f"codebook stats: index out of range [0, {self.codebook_size}): "
                f"min {int(idx.min())}, max {int(idx.max())}"
            )
        offsets = torch.arange(self.groups)[:, None] * self.codebook_size
        flat = torch.bincount(
            (idx + offsets).reshape(-1), minlength=self.groups * self.codebook_size
        )
        self.counts += flat.view(self.groups, self.codebook_size)

    def state(self) -> torch.Tensor:
        """The (groups, K) int64 counts (a copy): sum these across processes."""
        return self.counts.clone()

    def merge(self, counts: torch.Tensor) -> None:
        """Add counts from another accumulator (its :meth:`state`)."""
        if tuple(counts.shape) != tuple(self.counts.shape):
            raise GaussquantError(
                f"codebook stats: cannot merge counts of shape {tuple(counts.shape)} into "
                f"{tuple(self.counts.shape)}"
            )
        self.counts += counts.to("cpu", torch.long)

    @staticmethod
    def _usage_perplexity(counts: torch.Tensor) -> tuple[float, float]:
        total = int(counts.sum())
        if total == 0:
            return 0.0, float("nan")
        p = counts.double() / total
        entropy = -float(torch.xlogy(p, p).sum())
        return float((counts > 0).double().mean()), math.exp(entropy)

    def summary(self) -> dict:
        """usage / perplexity per group, their means over groups, and of the pooled histogram."""
        per_group = [self._usage_perplexity(c) for c in self.counts]
        pooled = self._usage_perplexity(self.counts.sum(0))
        return {
            "tokens": int(self.counts.sum()),
            "codebook_size": self.codebook_size,
            "usage_per_group": [u for u, _ in per_group],
            "perplexity_per_group": [p for _, p in per_group],
            "usage": sum(u for u, _ in per_group) / self.groups,
            "perplexity": sum(p for _, p in per_group) / self.groups,
            "usage_pooled": pooled[0],
            "perplexity_pooled": pooled[1],
            "code_bits": sum(math.log2(p) for _, p in per_group),
        }
