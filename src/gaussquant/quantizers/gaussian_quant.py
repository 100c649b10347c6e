"""Gaussian Quant (GQ): training-free conversion of a Gaussian VAE into a VQ-VAE, docs/method.md §2.

Paper: "Vector Quantization using Gaussian Variational Autoencoder", Xu et al.,
https://arxiv.org/abs/2512.06609 (official code: github.com/tongdaxu/VQ-VAE-from-Gaussian-VAE).

The codebook is ``K`` points of a scrambled Sobol sequence in ``m`` dims pushed through the
standard-normal inverse CDF; it is never trained and never stored, only regenerated from
(seed, K, m) and identified by the sha256 of its float32 bytes. A token with posterior
N(mu, diag sigma^2) is encoded as ``argmax_j -sum_d ((c_jd - mu_d)/sigma_d)^2 + beta sum_d c_jd^2``
(lowest index on ties, like ``torch.argmax``), exactly as the official rule evaluated in float64.

Search (:func:`gq_search`): the score is one matrix product, so a float32 GEMM ranks all codes
fast; a rigorous error bound then tells, per row, whether the float32 winner is certainly the
exact winner. Rows where it is not (near ties, collapsed dims with huge 1/sigma^2) get every code
within the bound re-scored exactly in float64 with the direct formula. Memory is bounded by one
``chunk_size x code_block`` block; the official torch backend instead materialises
``(N/8, K, m)`` tensors (about 6 GB for 4 images at 256 px) and crashes for fewer than 8 rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.quasirandom import SobolEngine

from gaussquant.errors import GaussquantError
from gaussquant.posterior import from_tokens, split_posterior, to_tokens, token_bits
from gaussquant.quantizers.base import QuantizerOutput

_U32, _U64 = 2.0**-24, 2.0**-53  # unit roundoff of float32 / float64
_TINY32 = 2.0**-126  # smallest normal float32: absolute error of flushed/underflowed products
_PAIR_SLICE = 1 << 16  # candidates re-scored per float64 batch (bounds the gather memory)
_GROUP = 64  # codes per group whose float32 maximum the GEMM pass keeps (see gq_search)


# ----------------------------------------------------------------------------- codebook
def gaussian_codebook(codebook_size: int, dim: int, seed: int = 42) -> torch.Tensor:
    """The GQ codebook, (K, m) float32: scrambled Sobol points -> standard-normal inverse CDF.

    Bit-identical to the official ``prior_samples``: the Sobol points are drawn in float32 (the
    engine's default dtype), widened to float64 for the inverse CDF, then rounded to float32.
    (Drawing the points in float64 gives different bytes and a different sha256.)
    """
    u = SobolEngine(dim, scramble=True, seed=seed).draw(codebook_size)  # float32, like official
    # A point rounded to exactly 0 or 1 in float32 would be an infinite codeword, which the
    # official code keeps (seed 2 at K = 2^16, m = 16 has one): move it just inside (0, 1).
    u = torch.where(u == 0, 2.0**-30, torch.where(u == 1, 1 - 2.0**-24, u))
    return torch.special.ndtri(u.double()).float()


def codebook_sha256(codebook: torch.Tensor) -> str:
    """Hex sha256 of the codebook's float32 bytes (row-major), as in the reference vectors."""
    data = codebook.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- exact search
@contextlib.contextmanager
def _ieee_fp32_matmul() -> Iterator[None]:
    """Force IEEE float32 GEMMs (no TF32 / bf16): the error bound below assumes them."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def code_features(codebook: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Codebook features ``[c^2 - M2/2, c]``, (K, 2m) in ``dtype``, for the search GEMM.

    M2_d = max_j c_jd^2. Shifting c^2 by a per-dimension constant adds the same amount to
    every code's score (argmax unchanged) and halves the largest |feature|, hence the bound.
    """
    c = codebook.double()
    c2 = c * c
    return torch.cat([c2 - 0.5 * c2.amax(0), c], dim=1).to(dtype).contiguous()


def _direct_scores(c: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, beta: float):
    """The official score in float64, direct form; all inputs (..., m) float64."""
    return beta * (c * c).sum(-1) - ((c - mu) / sigma).square().sum(-1)


@torch.no_grad()  # indices carry no gradient; the GEMMs write into preallocated blocks
def gq_search(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    codebook: torch.Tensor,
    beta: float = 1.0,
    *,
    chunk_size: int = 1024,
    code_block: int = 512,
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
    info: dict | None = None,
) -> torch.Tensor:
    """Exact GQ indices: ``argmax_j beta ||c_j||^2 - ||(c_j - mu) / sigma||^2`` per row.

    mu, logvar: (N, m) posterior means and (already clamped) log-variances, any float dtype.
    codebook: (K, m) float32. Returns (N,) int64 in [0, K): the first maximiser of the score
    evaluated in float64, identical to brute force. ``features``: the float32 and float64
    :func:`code_features` (cached by :class:`GaussianQuant`). Extra memory: one
    ``chunk_size x code_block`` score block plus ``chunk_size x K/64`` group maxima. ``info``
    (optional dict) receives how many rows went to the float64 tier and to exact re-scoring.

    Why no pass ever loses the exact winner. Write w = 1/sigma^2 = exp(-logvar),
    a = beta/2 - w/2, b = w mu (float64, per dim). Then score_j = 2 h_j + const(row) with
    h_j = sum_d a_d (c_jd^2 - M2_d/2) + b_d c_jd: one dot product of the query [a, b] with the
    code features (M2_d = max_j c_jd^2). Any evaluation h~_j of it in a precision with unit
    roundoff u (GEMM or bmm, any summation order, inputs rounded once each; Higham, Thm 3.5)
    satisfies
        |h~_j - h_j| <= gamma_{2m+2}(u) * sum_d (|a_d| |c_jd^2 - M2_d/2| + |b_d| |c_jd|)
                     <= E := 2 gamma_{2m+2}(u) * sum_d (|a_d| M2_d/2 + |b_d| M1_d) + tiny,
    with M1_d = max_j |c_jd| (factor 2 = safety; tiny covers underflow). The float64 direct
    form, and the float64 rounding of a and b, move scores by at most
    E64 := 2 (m + 16) u64 * sum_d (w_d (M1_d + |mu_d|)^2 + |beta| M2_d). Let j* be the float64
    winner and j' any code. From o_{j*} >= o_{j'}: h_{j*} >= h_{j'} - E64, so
    h~_{j*} >= h~_{j'} - D with D = 2 E + E64. Hence no code with h~_j < max h~ - D can be
    the winner, and if only one code lies within D of the maximum it is the winner.

    Tiers: (1) float32 GEMM over all rows; rows with a rival within D are uncertain (mostly
    rows with collapsed dims, where w ~ 1e9 makes the float32 bound wide). (2) float64 GEMM
    over those rows (D ~ 1e9 x smaller). (3) rows still uncertain (true near-ties) have every
    code within D re-scored with the direct float64 form; the lowest index among the maxima
    wins. Rows whose features overflow float32 skip to tier 2.
    """
    n, m = mu.shape
    device = mu.device
    out = torch.zeros(n, dtype=torch.long, device=device)
    counts = {"rows": n, "float64_rows": 0, "rescored_rows": 0, "rescored_pairs": 0}
    if info is not None:
        info.update(counts)  # filled in below as the tiers run
    if n == 0:
        return out
    if features is None:
        features = (code_features(codebook), code_features(codebook, torch.float64))
    c64 = codebook.double()
    mu64, lv64 = mu.double(), logvar.double()
    w = torch.exp(-lv64)
    a, b = 0.5 * beta - 0.5 * w, w * mu64
    m2, m1 = (c64 * c64).amax(0), c64.abs().amax(0)
    mag = a.abs() @ (0.5 * m2) + b.abs() @ m1  # (N,) bound on |h_j| for every j
    e64 = 2 * (m + 16) * _U64 * ((w * (m1 + mu64.abs()) ** 2).sum(1) + abs(beta) * m2.sum())
    query = torch.cat([a, b], dim=1)
    shape = (chunk_size, code_block)
    with _ieee_fp32_matmul():
        q32, d32 = query.float(), _slack(mag, e64, m, m1, m2, _U32).float()
        usable = torch.isfinite(q32).all(1) & torch.isfinite(d32) & (mag < 1e36)
        q32[~usable] = 0.0
        out, unsure, _, _ = _gemm_pass(q32, d32, features[0], *shape, keep_groups=False)
        rows = (unsure | ~usable).nonzero()[:, 0]
        counts["float64_rows"] = rows.numel()
        if rows.numel():
            q64, d64 = query[rows], _slack(mag[rows], e64[rows], m, m1, m2, _U64)
            out[rows], unsure, thr, gmax = _gemm_pass(q64, d64, features[1], *shape)
            if unsure.any():
                sel = unsure.nonzero()[:, 0]
                counts["rescored_rows"] = sel.numel()
                out[rows[sel]] = _rescore(
                    gmax,
                    thr[sel],
                    q64[sel],
                    features[1],
                    c64,
                    mu64[rows[sel]],
                    torch.exp(0.5 * lv64[rows[sel]]),
                    beta,
                    counts,
                )
    if info is not None:
        info.update(counts)
    return out


def _slack(mag, e64, m, m1, m2, u):
    """Per-row D = 2 E + E64 for a GEMM in unit roundoff ``u`` (see gq_search), widened by the
    rounding of the comparisons themselves (done in that precision on values <= mag)."""
    gamma = (2 * m + 2) * u / (1 - (2 * m + 2) * u)
    tiny = (
        4 * m * (_TINY32 if u == _U32 else 2.0**-1022) * (1.0 + float(torch.maximum(m1, m2).max()))
    )
    d = 2 * (2 * gamma * mag + tiny) + e64
    return (d + 8 * u * (mag + d)) * (1 + 2**-20)


def _gemm_pass(query, slack, feats, chunk, code_block, keep_groups=True):
    """Argmax of ``query @ feats.T`` per row, in the query's dtype, chunked.

    Returns (indices, unsure, threshold, gmax): unsure marks rows with another code whose
    score is >= threshold = max - slack; gmax (n_unsure, K/width) are those rows' group
    maxima (None unless ``keep_groups``). Codes form groups of ``width``; the block pass
    keeps only each group's maximum (``amax`` over contiguous runs vectorises, a row ``max``
    with indices does not: ~2x on CPU), then the winning group is re-evaluated with a tiny
    bmm to find the winner and runner-up. Any evaluation obeys the same bound, so mixing
    them is sound.
    """
    n, k = query.shape[0], feats.shape[0]
    width = math.gcd(k, _GROUP)
    block = max(width, code_block // width * width)
    group_feats = feats.view(k // width, width, -1)
    idx = torch.empty(n, dtype=torch.long, device=query.device)
    thr = torch.empty(n, dtype=query.dtype, device=query.device)
    unsure = torch.zeros(n, dtype=torch.bool, device=query.device)
    kept = []
    buf = torch.empty(min(chunk, n), min(block, k), dtype=query.dtype, device=query.device)
    for r0 in range(0, n, chunk):
        q = query[r0 : r0 + chunk]
        rows = q.shape[0]
        gmax = []
        for k0 in range(0, k, block):
            cols = min(block, k - k0)
            s = torch.mm(q, feats[k0 : k0 + cols].t(), out=buf[:rows, :cols])
            gmax.append(s.view(rows, cols // width, width).amax(2))
        gmax = torch.cat(gmax, dim=1)  # (rows, K / width)
        g = gmax.argmax(1)
        other = gmax.scatter(1, g[:, None], -math.inf).amax(1)
        inside = torch.bmm(group_feats[g], q[:, :, None])[:, :, 0]  # (rows, width)
        v, j = inside.max(1)
        runner = torch.maximum(other, inside.scatter(1, j[:, None], -math.inf).amax(1))
        idx[r0 : r0 + rows] = g * width + j
        thr[r0 : r0 + rows] = v - slack[r0 : r0 + rows]
        flag = runner >= thr[r0 : r0 + rows]
        unsure[r0 : r0 + rows] = flag
        if keep_groups:
            kept.append(gmax[flag])
    return idx, unsure, thr, torch.cat(kept) if keep_groups else None


def _rescore(gmax, thr, query, feats, c64, mu64, sigma64, beta, counts):
    """Float64 direct-form argmax over each row's codes whose GEMM score is >= ``thr``.

    gmax (R, G): the rows' group maxima; only groups reaching ``thr`` are re-evaluated.
    Candidates arrive in increasing code order per row and ties keep the earlier code, so
    the lowest index among equal maxima wins.
    """
    n_rows, k = gmax.shape[0], feats.shape[0]
    width = k // gmax.shape[1]
    group_feats = feats.view(gmax.shape[1], width, -1)
    best_v = torch.full((n_rows,), -math.inf, dtype=torch.float64, device=gmax.device)
    best_i = torch.zeros(n_rows, dtype=torch.long, device=gmax.device)
    r_all, g_all = (gmax >= thr[:, None]).nonzero().unbind(1)  # row-major: codes ascend
    step = max(1, _PAIR_SLICE // width)
    for p0 in range(0, r_all.numel(), step):
        r, g = r_all[p0 : p0 + step], g_all[p0 : p0 + step]
        scores = torch.bmm(group_feats[g], query[r][:, :, None])[:, :, 0]
        p, i = (scores >= thr[r][:, None]).nonzero().unbind(1)
        r, j = r[p], g[p] * width + i
        counts["rescored_pairs"] += r.numel()
        exact = _direct_scores(c64[j], mu64[r], sigma64[r], beta)
        top = torch.full_like(best_v, -math.inf).scatter_reduce(0, r, exact, "amax")
        win = exact == top[r]
        first = torch.zeros_like(best_i).scatter_reduce(
            0, r[win], j[win], "amin", include_self=False
        )
        better = top > best_v  # strict: earlier (lower-index) codes win ties
        best_v, best_i = torch.where(better, top, best_v), torch.where(better, first, best_i)
    return best_i


# ----------------------------------------------------------------------------- module
class GaussianQuant(nn.Module):
    """Eval-time GQ quantizer for a Gaussian VAE latent (docs/method.md §2).

    latent_channels C, codebook_size K (power of two), dim m (divides C): C/m tokens per latent
    position, each a log2 K-bit index. Input z: (B, 2C, H, W) = [mu, logvar]; logvar clamped to
    [-30, 20]. Output: z_q (B, C, H, W) = the codewords (no straight-through), indices
    (B, C/m, H, W) int64 in [0, K). Defaults are the paper's values (seed 42, beta 1).

    Not used in training (the VAE samples there; straight-through "gq2" is not implemented):
    calling it in training mode raises. The codebook is a non-persistent buffer: checkpoints
    store :meth:`metadata` (seed, K, m, sha256) and :meth:`check_sha256` verifies it on load.
    """

    def __init__(
        self,
        latent_channels: int,
        codebook_size: int,
        dim: int,
        seed: int = 42,
        beta: float = 1.0,
        chunk_size: int = 1024,
        code_block: int = 512,
    ):
        super().__init__()
        _check_int("latent_channels", latent_channels, 1)
        _check_int("dim", dim, 1)
        _check_int("chunk_size", chunk_size, 1)
        _check_int("code_block", code_block, 1)
        if (
            not isinstance(codebook_size, int)
            or codebook_size < 2
            or codebook_size & (codebook_size - 1)
        ):
            raise GaussquantError(
                f"gq: codebook_size K={codebook_size!r} must be a power of two >= 2"
            )
        if latent_channels % dim:
            raise GaussquantError(
                f"gq: dim m={dim} must divide latent_channels C={latent_channels}"
            )
        if dim > SobolEngine.MAXDIM:
            raise GaussquantError(
                f"gq: dim m={dim} exceeds the Sobol engine's {SobolEngine.MAXDIM}"
            )
        if not math.isfinite(beta):
            raise GaussquantError(f"gq: beta={beta!r} must be a finite number (paper: 1.0)")
        self.latent_channels, self.dim, self.codebook_size = latent_channels, dim, codebook_size
        self.seed, self.beta = int(seed), float(beta)
        self.chunk_size, self.code_block = chunk_size, code_block
        self.in_channels, self.out_channels = 2 * latent_channels, latent_channels
        self.tokens_per_position = latent_channels // dim
        self.bits_per_position = self.tokens_per_position * int(math.log2(codebook_size))
        codebook = gaussian_codebook(codebook_size, dim, self.seed)
        self.sha256 = codebook_sha256(codebook)
        self.register_buffer("codebook", codebook, persistent=False)
        self.register_buffer("features", code_features(codebook), persistent=False)
        self.register_buffer("features64", code_features(codebook, torch.float64), persistent=False)

    def metadata(self) -> dict:
        """What identifies the codebook (for checkpoints): seed, K, m, beta, sha256."""
        return {
            "seed": self.seed,
            "codebook_size": self.codebook_size,
            "dim": self.dim,
            "beta": self.beta,
            "sha256": self.sha256,
        }

    def check_sha256(self, expected: str) -> None:
        """Raise if the regenerated codebook differs from the one a checkpoint was made with."""
        if expected != self.sha256:
            raise GaussquantError(
                f"gq codebook sha256 {self.sha256} (seed={self.seed}, K={self.codebook_size}, "
                f"m={self.dim}) does not match the checkpoint's {expected}; the torch Sobol "
                "engine or the codebook parameters changed"
            )

    def extra_repr(self) -> str:
        return (
            f"C={self.latent_channels}, K={self.codebook_size}, m={self.dim}, "
            f"seed={self.seed}, beta={self.beta}, sha256={self.sha256[:12]}"
        )

    def encode(self, z: torch.Tensor, info: dict | None = None) -> torch.Tensor:
        """Indices (B, C/m, H, W) int64 for the encoder output z (B, 2C, H, W)."""
        if z.ndim != 4 or z.shape[1] != self.in_channels:
            raise GaussquantError(
                f"gq: expected z of shape (B, {self.in_channels}, H, W) = [mu, logvar], "
                f"got {tuple(z.shape)}"
            )
        if not torch.isfinite(z).all():
            raise GaussquantError("gq: encoder output contains NaN or inf; cannot quantize it")
        with torch.autocast(z.device.type, enabled=False):
            mu, logvar = split_posterior(z)
            mu_t, lv_t = to_tokens(mu, self.dim), to_tokens(logvar, self.dim)
            b, t, h, w, m = mu_t.shape
            idx = gq_search(
                mu_t.reshape(-1, m),
                lv_t.reshape(-1, m),
                self.codebook,
                self.beta,
                chunk_size=self.chunk_size,
                code_block=self.code_block,
                features=(self.features, self.features64),
                info=info,
            )
        return idx.reshape(b, t, h, w)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if self.training:
            raise GaussquantError(
                "GaussianQuant is eval-only (training uses the Gaussian VAE bottleneck); "
                "call .eval() before quantizing"
            )
        info: dict = {}
        indices = self.encode(z, info)
        with torch.autocast(z.device.type, enabled=False):
            bits = token_bits(z, self.dim)
        stats = {
            "kl_bits_per_token": bits.mean().detach(),
            "float64_fraction": torch.tensor(info["float64_rows"] / max(info["rows"], 1)),
        }
        return QuantizerOutput(z_q=self.indices_to_codes(indices), indices=indices, stats=stats)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Dequantize: indices (B, C/m, H, W) -> codewords in the latent layout (B, C, H, W)."""
        if indices.ndim != 4 or indices.shape[1] != self.tokens_per_position:
            raise GaussquantError(
                f"gq: expected indices of shape (B, {self.tokens_per_position}, H, W), "
                f"got {tuple(indices.shape)}"
            )
        return from_tokens(self.codebook[indices.long()])

    dequant = indices_to_codes  # the official name


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise GaussquantError(f"gq: {name}={value!r} must be an integer >= {minimum}")
