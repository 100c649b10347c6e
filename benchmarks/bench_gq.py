"""Benchmark of the GQ index search (docs/method.md §2): ours vs the official torch backend vs a plain GEMM.

    python benchmarks/bench_gq.py [--quick] [--out results.json] [--threads N]

Shape (paper): 4 images at 256 px -> 32 x 32 latent, C = 16, K = 2^16, m = 16 / 8 / 4, i.e.
N = 4 * 32 * 32 * C/m rows. For each m, each method runs in a fresh process (so its peak
resident memory can be measured: VmHWM after resetting it, minus the resident size before):

- ``official``: a faithful re-implementation of the official torch backend
  (``GaussianQuantRegularizer``, backend="torch"): ``Normal(mu, std).log_prob`` broadcast over
  ``(N/8, K, m)`` minus ``beta * log N(c; 0, I)``, summed, argmax, in 8 chunks.
- ``ours``: :class:`gaussquant.quantizers.GaussianQuant` ``encode`` (exact).
- ``gemm``: one plain float32 ``(N x 2m) @ (2m x K)`` product + row argmax, chunked exactly
  like ours (blocks of 1024 rows x 512 codes): the matrix form without the exactness tiers, a
  reference point, not a lower bound (ours, which skips code blocks, can beat it).

Every method runs once untimed (warm-up: first touch of its buffers, ~6 GB for the official
backend), then ``--official-repeats`` (official, default 3) or ``--repeats`` (ours, gemm)
timed runs; the report gives the best and the median of each and the official spread (min,
max), and the speed-up as official median / ours median.

Posteriors: "trained" mimics a TDC-trained VAE (per-dim KL ~ log2(K)/m bits: logvar ~
N(-2 ln2 log2(K)/m, 0.5^2), mu ~ N(0, 1 - sigma^2)); "collapsed" is the same with 10 % of dims
at logvar = -20 (sigma ~ 5e-5), the hard case for exactness. Exactness is checked against a
float64 brute force on a subsample of rows. ``--quick`` uses 1 image at 16 x 16 (N / 16), one
repeat and fewer brute-force rows: a fast smoke run, not the reported numbers.
Timings on a shared machine vary; the load average is recorded with the results.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import math
import multiprocessing as mp
import os
import platform
import re
import statistics
import sys
import time

import torch

from gaussquant.posterior import to_tokens
from gaussquant.quantizers.gaussian_quant import GaussianQuant


# ----------------------------------------------------------------------------- inputs
def make_latents(images, size, channels, m, k, regime, seed=0):
    """Encoder output z (B, 2C, H, W) = [mu, logvar] of the given posterior regime."""
    g = torch.Generator().manual_seed(seed + m)
    shape = (images, channels, size, size)
    logvar = -2 * math.log(2) * math.log2(k) / m + 0.5 * torch.randn(shape, generator=g)
    mu = torch.randn(shape, generator=g) * (1 - logvar.exp()).clamp_min(0).sqrt()
    if regime == "collapsed":
        logvar[torch.rand(shape, generator=g) < 0.1] = -20.0
    return torch.cat([mu, logvar], dim=1)


def rows_of(z, m):
    """(N, m) mu and clamped logvar in the index order of (B, C/m, H, W)."""
    c = z.shape[1] // 2
    mu, logvar = z[:, :c], z[:, c:].clamp(-30, 20)
    return to_tokens(mu, m).reshape(-1, m), to_tokens(logvar, m).reshape(-1, m)


# ----------------------------------------------------------------------------- methods
def official_torch_backend(z, prior_samples, normal_log_prob, group, beta=1.0):
    """The official torch backend's eval path (same tensor operations), indices (B, C/m, H, W)."""
    z = z.float()
    b, c, h, w = z.shape
    c, length = c // 2, h * w
    zhat = z.permute(0, 2, 3, 1).reshape(b, length, 2 * c)  # "b c h w -> b (h w) c"
    mu, logvar = zhat.chunk(2, 2)
    logvar = torch.clamp(logvar, -30.0, 20.0)
    std = torch.exp(0.5 * logvar)
    mu = mu.reshape(b, length, group, c // group).permute(0, 1, 3, 2).reshape(-1, group)
    std = std.reshape(b, length, group, c // group).permute(0, 1, 3, 2).reshape(-1, group)
    bs = mu.shape[0] // 8  # the official chunking: crashes (step 0) for fewer than 8 rows
    indices = torch.zeros([mu.shape[0]], dtype=torch.long)
    zq = torch.zeros_like(mu)
    for i in range(0, mu.shape[0], bs):
        q = torch.distributions.Normal(mu[i : i + bs, None, :], std[i : i + bs, None, :])
        log_ratios = q.log_prob(prior_samples[None]) - normal_log_prob[None] * beta
        best = torch.argmax(torch.sum(log_ratios, dim=2), dim=1)
        zq[i : i + bs] = torch.index_select(prior_samples, 0, best)
        indices[i : i + bs] = best
    indices = indices.reshape(b, length, c // group)
    return indices.permute(0, 2, 1).reshape(b, c // group, h, w)


def matmul_gemm(query, features, chunk, block):
    """Plain chunked float32 GEMM + row argmax (running best over code blocks)."""
    n, k = query.shape[0], features.shape[0]
    out = torch.empty(n, dtype=torch.long)
    buf = torch.empty(min(chunk, n), min(block, k))
    for r0 in range(0, n, chunk):
        q = query[r0 : r0 + chunk]
        best_v = torch.full((q.shape[0],), -math.inf)
        best_i = torch.zeros(q.shape[0], dtype=torch.long)
        for k0 in range(0, k, block):
            cols = min(block, k - k0)
            v, i = torch.mm(q, features[k0 : k0 + cols].t(), out=buf[: q.shape[0], :cols]).max(1)
            better = v > best_v
            best_v, best_i = torch.where(better, v, best_v), torch.where(better, i + k0, best_i)
        out[r0 : r0 + q.shape[0]] = best_i
    return out


def brute_force(mu, logvar, codebook, beta=1.0):
    """float64 direct evaluation of the official score for every code; first argmax."""
    c = codebook.double()
    out = []
    for r0 in range(0, mu.shape[0], 8):
        m_ = mu[r0 : r0 + 8, None].double()
        s_ = torch.exp(0.5 * logvar[r0 : r0 + 8, None].double())
        out.append((beta * (c * c).sum(-1) - ((c[None] - m_) / s_).square().sum(-1)).argmax(1))
    return torch.cat(out)


# ----------------------------------------------------------------------------- workers
def _kb(key):
    text = open("/proc/self/status").read()
    return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1))


def _malloc_trim():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: peaks may then be under-counted
        pass


def _worker(method, cfg, queue):
    """Runs in a fresh process: set up (untimed), then time ``method``; report peak RSS."""
    try:
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        m, k = cfg["m"], cfg["codebook_size"]
        z = make_latents(cfg["images"], cfg["size"], cfg["channels"], m, k, cfg["regime"])
        gq = GaussianQuant(cfg["channels"], k, m).eval()
        if method == "official":
            prior = gq.codebook.clone()  # bit-identical to the official prior_samples
            normal = torch.distributions.Normal(torch.zeros([1, m]), torch.ones([1, m]))
            normal_log_prob = normal.log_prob(prior).float()
            run = functools.partial(official_torch_backend, z, prior, normal_log_prob, m)
            repeats = cfg["official_repeats"]
        elif method == "ours":
            info = {}
            run, repeats = (lambda: gq.encode(z, info)), cfg["repeats"]
        else:
            mu, logvar = rows_of(z, m)
            w = torch.exp(-logvar.double())
            query = torch.cat([0.5 - 0.5 * w, w * mu], dim=1).float()
            run = functools.partial(matmul_gemm, query, gq.features, gq.chunk_size, gq.code_block)
            repeats = cfg["repeats"]
        _malloc_trim()  # hand freed set-up memory back, so reusing it counts as growth
        rss_before = _kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
        run()  # warm-up, untimed: first touch of the buffers
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = run()
            times.append(time.perf_counter() - t0)
        peak = (_kb("VmHWM") - rss_before) / 1024
        result = {"times": times, "peak_mb": peak, "indices": result.reshape(-1).numpy()}
        if method == "ours":
            result["info"] = info
        queue.put(result)
    except BaseException as err:  # report instead of hanging the parent
        queue.put({"error": f"{type(err).__name__}: {err}"})


def measure(method, cfg):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(method, cfg, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RuntimeError(f"{method} (m={cfg['m']}) failed: {result['error']}")
    return result


# ----------------------------------------------------------------------------- main
def bench_dim(m, args, regime, with_official):
    cfg = dict(m=m, regime=regime, threads=args.threads, repeats=args.repeats,
               official_repeats=args.official_repeats,
               images=args.images, size=args.size, channels=args.channels,
               codebook_size=args.codebook_size)  # fmt: skip
    ours = measure("ours", cfg)
    gemm = measure("gemm", cfg)
    official = measure("official", cfg) if with_official else None
    z = make_latents(args.images, args.size, args.channels, m, args.codebook_size, regime)
    mu, logvar = rows_of(z, m)
    n = mu.shape[0]
    check = torch.linspace(0, n - 1, min(args.check_rows, n)).round().long().unique()
    codebook = GaussianQuant(args.channels, args.codebook_size, m).codebook
    exact = brute_force(mu[check], logvar[check], codebook)
    ours_idx = torch.from_numpy(ours["indices"])
    row = {
        "m": m, "regime": regime, "rows": n, "tokens_per_position": args.channels // m,
        "ours_s": min(ours["times"]), "ours_median_s": statistics.median(ours["times"]),
        "gemm_s": min(gemm["times"]), "gemm_median_s": statistics.median(gemm["times"]),
        "ours_peak_mb": ours["peak_mb"], "gemm_peak_mb": gemm["peak_mb"],
        "ours_vs_gemm": min(ours["times"]) / min(gemm["times"]),
        "float64_tier_rows": ours["info"]["float64_rows"],
        "rescored_rows": ours["info"]["rescored_rows"],
        "checked_rows": int(check.numel()),
        "ours_exact_on_checked": int((ours_idx[check] == exact).sum()),
        "gemm_agree_pct": 100.0 * float((torch.from_numpy(gemm["indices"]) == ours_idx).double().mean()),  # noqa: E501
    }  # fmt: skip
    row["load_avg_1min"] = os.getloadavg()[0]  # a shared machine: timings vary with its load
    if official is not None:
        off_idx = torch.from_numpy(official["indices"])
        row.update({
            "official_s": min(official["times"]),
            "official_median_s": statistics.median(official["times"]),
            "official_max_s": max(official["times"]), "official_runs": len(official["times"]),
            "official_peak_mb": official["peak_mb"],
            "speedup_vs_official": statistics.median(official["times"])
            / statistics.median(ours["times"]),
            "agree_with_official_pct": 100.0 * float((off_idx == ours_idx).double().mean()),
            "official_exact_on_checked": int((off_idx[check] == exact).sum()),
        })  # fmt: skip
    return row


def _cell(row, key, spec):
    return format(row[key], spec) if key in row else "—"


def markdown(rows):
    """The results as a Markdown table (— where the official backend was not run)."""
    head = [
        "m", "regime", "rows N", "official median (min-max) s", "ours (s)", "gemm (s)",
        "speed-up vs official (medians)", "ours / gemm", "peak MB official / ours / gemm",
        "ours = official",
        "= fp64 brute force: ours, official", "rows to fp64 tier",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        n_check = r["checked_rows"]
        official_exact = r.get("official_exact_on_checked")
        cells = [
            r["m"], r["regime"], r["rows"],
            f"{_cell(r, 'official_median_s', '.1f')} ({_cell(r, 'official_s', '.1f')}-"
            f"{_cell(r, 'official_max_s', '.1f')})",
            f"{r['ours_s']:.3f}", f"{r['gemm_s']:.3f}", _cell(r, "speedup_vs_official", ".0f"),
            f"{r['ours_vs_gemm']:.2f}",
            f"{_cell(r, 'official_peak_mb', '.0f')} / {r['ours_peak_mb']:.0f} / "
            f"{r['gemm_peak_mb']:.0f}",
            _cell(r, "agree_with_official_pct", ".2f"),
            f"{r['ours_exact_on_checked']}/{n_check}, "
            + (f"{official_exact}/{n_check}" if official_exact is not None else "—"),
            f"{100 * r['float64_tier_rows'] / r['rows']:.1f} %",
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="N/16 rows, 1 repeat: smoke run")
    p.add_argument("--out", help="write results (JSON) to this path")
    p.add_argument("--dims", type=int, nargs="+", default=[16, 8, 4], help="codebook dims m")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of ours / gemm")
    p.add_argument(
        "--official-repeats", type=int, default=3, help="timed repeats of the official backend"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--check-rows", type=int, default=512, help="rows checked by brute force")
    p.add_argument("--no-collapsed", action="store_true", help="skip the collapsed regime")
    p.add_argument(
        "--official-collapsed", action="store_true", help="run the official backend there too"
    )
    args = p.parse_args(argv)
    args.images, args.size, args.channels, args.codebook_size = 4, 32, 16, 65536
    if args.quick:
        args.images, args.size, args.repeats, args.check_rows = 1, 16, 1, 64
        args.official_repeats = 1
    env = {
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "threads": args.threads or torch.get_num_threads(), "quick": args.quick,
        "shape": f"{args.images} images, {args.size}x{args.size} latent, C={args.channels}, "
                 f"K={args.codebook_size}",
        "loadavg_start": os.getloadavg(),
    }  # fmt: skip
    rows = []
    for m in args.dims:
        rows.append(bench_dim(m, args, "trained", with_official=True))
        print(markdown(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        if not args.no_collapsed:
            rows.append(bench_dim(m, args, "collapsed", with_official=args.official_collapsed))
            print(markdown(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    env["loadavg_end"] = os.getloadavg()
    table = markdown(rows)
    print(f"GQ search, {env['shape']}, {env['threads']} threads, torch {env['torch']}"
          f"{' (QUICK)' if args.quick else ''}; load avg {env['loadavg_start'][0]:.1f} -> "
          f"{env['loadavg_end'][0]:.1f}\n")  # fmt: skip
    print(table)
    if args.out:
        from gaussquant.io import write_json

        write_json(args.out, {"environment": env, "rows": rows, "markdown": table})
    return rows


if __name__ == "__main__":
    main()
