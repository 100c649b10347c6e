"""Gaussian Quant (GQ): training-free conversion of a Gaussian VAE into a VQ-VAE, SPEC section 2.

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
from gaussquant.quantizers.base import QuantizerOutput

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # SPEC 1 clamp (same values as quantizers.tdc)
_U32, _U64 = 2.0**-24, 2.0**-53  # unit roundoff of float32 / float64
_TINY32 = 2.0**-126  # smallest normal float32: absolute error of flushed/underflowed products
_PAIR_SLICE = 1 << 16  # candidates re-scored per float64 batch (bounds the gather memory)
_GROUP = 64  # codes per group in the block maxima (see _group_width)


# ----------------------------------------------------------------------------- token layout
def to_tokens(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C/dim, H, W, dim) in the official strided layout (SPEC 1).

    Token ``k`` holds channels ``k, k + C/dim, k + 2C/dim, ...``: channels are read as a
    ``(dim, C/dim)`` grid and transposed. This is the one place the layout is stated;
    :func:`from_tokens` is its inverse.
    """
    b, c, h, w = x.shape
    return x.reshape(b, dim, c // dim, h, w).permute(0, 2, 3, 4, 1)


def from_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, dim) -> (B, T * dim, H, W); inverse of :func:`to_tokens`."""
    b, t, h, w, dim = tokens.shape
    return tokens.permute(0, 4, 1, 2, 3).reshape(b, dim * t, h, w)


# ----------------------------------------------------------------------------- codebook
def gaussian_codebook(codebook_size: int, dim: int, seed: int = 42) -> torch.Tensor:
    """The GQ codebook, (K, m) float32: scrambled Sobol points -> standard-normal inverse CDF.

    Bit-identical to the official ``prior_samples``: the Sobol points are drawn in float32 (the
    engine's default dtype), widened to float64 for the inverse CDF, then rounded to float32.
    (Drawing the points in float64 gives different bytes and a different sha256.)
    """
    u = SobolEngine(dim, scramble=True, seed=seed).draw(codebook_size)  # float32, like official
    codebook = torch.special.ndtri(u.double()).float()
    if not torch.isfinite(codebook).all():  # a point rounded to 0 or 1 in float32
        raise GaussquantError(
            f"gq codebook K={codebook_size}, m={dim}, seed={seed} has an infinite codeword; "
            "use a smaller codebook_size"
        )
    return codebook


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


def code_features(codebook: torch.Tensor) -> torch.Tensor:
    """Codebook features ``[c^2 - M2/2, c]`` as a (2m, K) float32 matrix for the search GEMM.

    M2_d = max_j c_jd^2. Shifting c^2 by a per-dimension constant adds the same amount to
    every code's score (argmax unchanged) and halves the largest |feature|, hence the bound.
    """
    c = codebook.double()
    c2 = c * c
    return torch.cat([c2 - 0.5 * c2.amax(0), c], dim=1).float().t().contiguous()


def _direct_scores(c: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, beta: float):
    """The official score in float64, direct form; all inputs (..., m) float64."""
    return beta * (c * c).sum(-1) - ((c - mu) / sigma).square().sum(-1)


def _group_width(cols: int) -> int:
    # Row maxima are taken as max over groups of 64 contiguous codes of the group maxima:
    # ``amax`` over short contiguous runs vectorises, ``max`` with indices over a row does not
    # (measured ~2x faster on CPU). Falls back to width 1 (plain max) for odd block sizes.
    return _GROUP if cols % _GROUP == 0 else 1


def _block_best(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of a score block (R, cols): max value, its column, and the runner-up value."""
    rows, cols = s.shape
    width = _group_width(cols)
    groups = s.view(rows, cols // width, width)
    gmax = groups.amax(2)
    v, g = gmax.max(1)
    runner = gmax.scatter(1, g[:, None], -math.inf).amax(1)  # best of the other groups
    inside = groups[torch.arange(rows, device=s.device), g]  # (R, width) winning group
    i = inside.argmax(1)
    runner = torch.maximum(runner, inside.scatter(1, i[:, None], -math.inf).amax(1))
    return v, g * width + i, runner


def _candidates(s: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every entry of the block s (R, cols) with s >= threshold[row], in
    row-major order; entire groups below the threshold are skipped cheaply."""
    rows, cols = s.shape
    width = _group_width(cols)
    groups = s.view(rows, cols // width, width)
    thr = threshold[:, None]
    r, g = (groups.amax(2) >= thr).nonzero().unbind(1)
    p, i = (groups[r, g] >= thr[r]).nonzero().unbind(1)
    return r[p], g[p] * width + i


def gq_search(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    codebook: torch.Tensor,
    beta: float = 1.0,
    *,
    chunk_size: int = 1024,
    code_block: int = 1024,
    features: torch.Tensor | None = None,
    info: dict | None = None,
) -> torch.Tensor:
    """Exact GQ indices: ``argmax_j beta ||c_j||^2 - ||(c_j - mu) / sigma||^2`` per row.

    mu, logvar: (N, m) posterior means and (already clamped) log-variances, any float dtype.
    codebook: (K, m) float32. Returns (N,) int64 in [0, K): the first maximiser of the score
    evaluated in float64, identical to brute force. ``features`` = :func:`code_features`
    (cached by :class:`GaussianQuant`). Peak extra memory is one ``chunk_size x code_block``
    float32 block plus O(N m). ``info`` (optional dict) receives counts of rows re-scored.

    Why the float32 pass never loses the exact winner. Write w = 1/sigma^2 = exp(-logvar),
    a = beta/2 - w/2, b = w mu (float64, per dim). Then score_j = 2 h_j + const(row) with
    h_j = sum_d a_d (c_jd^2 - M2_d/2) + b_d c_jd: one dot product of the query [a, b] with the
    code features (M2_d = max_j c_jd^2). The GEMM evaluates h_j in float32 from inputs rounded
    once each; for any summation order (Higham, Thm 3.5)
        |h32_j - h_j| <= gamma_{2m+2} * sum_d (|a_d| |c_jd^2 - M2_d/2| + |b_d| |c_jd|)
                      <= E32 := 2 gamma_{2m+2} * sum_d (|a_d| M2_d/2 + |b_d| M1_d) + tiny,
    with M1_d = max_j |c_jd| (factor 2 = safety; tiny covers underflow). The float64 direct
    form itself differs from the exact score by at most 2 E64 with
    E64 := 2 (m + 16) u64 * sum_d (w_d (M1_d + |mu_d|)^2 + |beta| M2_d). Let j* be the float64
    winner and j' the float32 winner. Then h32_{j*} >= h_{j*} - E32 >= h_{j'} - E64 - E32
    >= h32_{j'} - D with D = 2 E32 + E64. Hence every code with h32_j < max h32 - D is not the
    winner; if only one code lies within D of the maximum, it is the exact winner (no
    re-scoring); otherwise all codes within D are re-scored in float64 (direct form) and the
    lowest index among the maxima wins. Rows whose features overflow float32 re-score all codes.
    """
    n, m = mu.shape
    k = codebook.shape[0]
    device = mu.device
    cf = code_features(codebook) if features is None else features
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    c64 = codebook.double()
    mu64, lv64 = mu.double(), logvar.double()
    w = torch.exp(-lv64)
    a, b = 0.5 * beta - 0.5 * w, w * mu64
    m2, m1 = (c64 * c64).amax(0), c64.abs().amax(0)
    mag = a.abs() @ (0.5 * m2) + b.abs() @ m1  # (N,) bound on |h_j| for every j
    g32 = (2 * m + 2) * _U32 / (1 - (2 * m + 2) * _U32)
    e32 = 2 * g32 * mag + 4 * m * _TINY32 * (1.0 + float(torch.maximum(m1, m2).max()))
    e64 = 2 * (m + 16) * _U64 * ((w * (m1 + mu64.abs()) ** 2).sum(1) + abs(beta) * m2.sum())
    slack = 2 * e32 + e64
    # Comparisons below are done in float32 on values of size <= mag: widen D by their
    # rounding (a few ulp of mag) so the tests stay conservative, then round up.
    slack32 = ((slack + 8 * _U32 * (mag + slack)) * (1 + 2**-20)).float()
    query = torch.cat([a, b], dim=1).float()
    usable = torch.isfinite(query).all(1) & torch.isfinite(slack32) & (mag < 1e36)
    query[~usable] = 0.0

    best_v = torch.empty(n, device=device)
    best_i = torch.empty(n, dtype=torch.long, device=device)
    unsure = ~usable
    buf = torch.empty(min(chunk_size, n), min(code_block, k), device=device)
    with _ieee_fp32_matmul():
        for r0 in range(0, n, chunk_size):
            q, d = query[r0 : r0 + chunk_size], slack32[r0 : r0 + chunk_size]
            rows = q.shape[0]
            bv = torch.full((rows,), -math.inf, device=device)
            bi = torch.zeros(rows, dtype=torch.long, device=device)
            flag = torch.zeros(rows, dtype=torch.bool, device=device)
            for k0 in range(0, k, code_block):
                cols = min(code_block, k - k0)
                v, i, runner = _block_best(torch.mm(q, cf[:, k0 : k0 + cols], out=buf[:rows, :cols]))
                flag |= (runner >= v - d) | ((v - bv).abs() <= d)  # a rival within D
                better = v > bv  # strict: an equal later block keeps the lower index
                bv, bi = torch.where(better, v, bv), torch.where(better, i + k0, bi)
            best_v[r0 : r0 + rows], best_i[r0 : r0 + rows] = bv, bi
            unsure[r0 : r0 + rows] |= flag
        rows = unsure.nonzero()[:, 0]
        if info is not None:
            info.update(rows=n, rescored_rows=int(rows.numel()), all_codes_rows=int((~usable).sum()))
        if rows.numel():
            threshold = torch.where(usable, best_v - slack32, -math.inf)  # all codes if unusable
            best_i[rows] = _rescore(
                rows, query, cf, threshold, mu64, lv64, c64, beta, chunk_size, code_block, info
            )
    return best_i


def _rescore(rows, query, cf, threshold, mu64, lv64, c64, beta, chunk, block, info):
    """Float64 direct-form argmax over the float32 candidates (h32 >= threshold) of ``rows``.

    Codes are visited in increasing index order, and within a block the lowest index among
    equal maxima is kept, so ties resolve to the lowest index overall.
    """
    k = c64.shape[0]
    out = torch.empty(rows.numel(), dtype=torch.long, device=rows.device)
    pairs_total = 0
    for r0 in range(0, rows.numel(), chunk):
        sel = rows[r0 : r0 + chunk]
        q, thr = query[sel], threshold[sel]
        mu, sigma = mu64[sel], torch.exp(0.5 * lv64[sel])
        bv = torch.full((sel.numel(),), -math.inf, dtype=torch.float64, device=rows.device)
        bi = torch.zeros(sel.numel(), dtype=torch.long, device=rows.device)
        for k0 in range(0, k, block):
            # rows whose features overflowed float32 have threshold -inf: every code competes
            r_all, j_all = _candidates(q @ cf[:, k0 : k0 + block], thr)
            pairs_total += r_all.numel()
            for p0 in range(0, r_all.numel(), _PAIR_SLICE):
                r, j = r_all[p0 : p0 + _PAIR_SLICE], j_all[p0 : p0 + _PAIR_SLICE] + k0
                score = _direct_scores(c64[j], mu[r], sigma[r], beta)
                top = torch.full_like(bv, -math.inf).scatter_reduce(0, r, score, "amax")
                win = score == top[r]
                first = torch.full_like(bi, k).scatter_reduce(0, r[win], j[win], "amin")
                better = top > bv  # strict: earlier (lower-index) codes win ties
                bv, bi = torch.where(better, top, bv), torch.where(better, first, bi)
        out[r0 : r0 + sel.numel()] = bi
    if info is not None:
        info["rescored_pairs"] = pairs_total
    return out


# ----------------------------------------------------------------------------- module
class GaussianQuant(nn.Module):
    """Eval-time GQ quantizer for a Gaussian VAE latent (SPEC 2).

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
        code_block: int = 1024,
    ):
        super().__init__()
        _check_int("latent_channels", latent_channels, 1)
        _check_int("dim", dim, 1)
        _check_int("chunk_size", chunk_size, 1)
        _check_int("code_block", code_block, 1)
        if not isinstance(codebook_size, int) or codebook_size < 2 or codebook_size & (codebook_size - 1):
            raise GaussquantError(f"gq: codebook_size K={codebook_size!r} must be a power of two >= 2")
        if latent_channels % dim:
            raise GaussquantError(f"gq: dim m={dim} must divide latent_channels C={latent_channels}")
        if dim > SobolEngine.MAXDIM:
            raise GaussquantError(f"gq: dim m={dim} exceeds the Sobol engine's {SobolEngine.MAXDIM}")
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

    def metadata(self) -> dict:
        """What identifies the codebook (for checkpoints): seed, K, m, beta, sha256."""
        return {"seed": self.seed, "codebook_size": self.codebook_size, "dim": self.dim,
                "beta": self.beta, "sha256": self.sha256}  # fmt: skip

    def check_sha256(self, expected: str) -> None:
        """Raise if the regenerated codebook differs from the one a checkpoint was made with."""
        if expected != self.sha256:
            raise GaussquantError(
                f"gq codebook sha256 {self.sha256} (seed={self.seed}, K={self.codebook_size}, "
                f"m={self.dim}) does not match the checkpoint's {expected}; the torch Sobol "
                "engine or the codebook parameters changed"
            )

    def extra_repr(self) -> str:
        return (f"C={self.latent_channels}, K={self.codebook_size}, m={self.dim}, "
                f"seed={self.seed}, beta={self.beta}, sha256={self.sha256[:12]}")  # fmt: skip

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
            mu, logvar = z.float().chunk(2, dim=1)
            logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
            mu_t, lv_t = to_tokens(mu, self.dim), to_tokens(logvar, self.dim)
            b, t, h, w, m = mu_t.shape
            idx = gq_search(
                mu_t.reshape(-1, m), lv_t.reshape(-1, m), self.codebook, self.beta,
                chunk_size=self.chunk_size, code_block=self.code_block,
                features=self.features, info=info,
            )  # fmt: skip
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
            mu, logvar = z.float().chunk(2, dim=1)
            logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
            kl_bits = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar) / math.log(2)
            token_bits = to_tokens(kl_bits, self.dim).sum(-1)
        stats = {
            "kl_bits_per_token": token_bits.mean().detach(),
            "rescored_fraction": torch.tensor(info["rescored_rows"] / max(info["rows"], 1)),
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
