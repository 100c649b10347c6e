"""Evaluation throughput and memory: streaming `evaluate_model` vs a keep-everything evaluator.

Model: an untrained ``build_autoencoder(cfg, "fsq", "unet", "4")`` of the ``quick`` preset
(32 px) on prepared bundled-photo crops; rFID against the originals (``fid_reference=None``:
both Inception passes run). Each configuration runs in a fresh child process, which reports
its own peak RSS (``ru_maxrss`` is a per-process high-water mark) and wall and CPU seconds.
Children run single-threaded (``OMP_NUM_THREADS=1``), as the pipeline's rules run evaluation;
CPU seconds are then robust to other load on the machine, wall seconds are not (``load1``).
Children run with glibc's mmap threshold fixed at its default 128 KiB
(``MALLOC_MMAP_THRESHOLD_``): with the dynamic threshold, identical runs peaked anywhere in
1461-1768 MB (``--default-malloc``); fixed, 1413-1414 MB over four runs, at ~15 % more CPU
(page faults of fresh mmaps), the same for every row.

- ``ours``: :func:`gaussquant.evaluate.evaluate_model` (sums, float64 feature moments,
  networks built once). Target: peak RSS at 4N images within 10 % of N images.
- ``naive``: a reference written for this benchmark in the style of the official evaluation:
  keeps every image, reconstruction and Inception feature in lists, computes PSNR/SSIM on the
  stacked set and rFID at the end from the full feature matrices (``np.cov``, scipy ``sqrtm``
  as pytorch-fid), and rebuilds the LPIPS network every batch. Same networks and metrics, so
  its numbers must match ours (checked: largest relative difference in the note).
- ``before``: ours with the Inception forward used before the channels-last/chunk fix
  monkeypatched back in (``patch_before_fix``): the before/after record of that fix.

The ``profile`` rows are cProfile cumulative times of one ``evaluate_model`` call (fresh child)
on ``--profile-images`` images: where evaluation time goes.

Sizes: N = 64 at eval batch 32 (``--quick``: N = 32 at batch 16), profile on 128 (64) images,
and (not with ``--quick``) a pair at 256 px, N = 32 / 128, batch 16: at 32 px what the naive
evaluator keeps (41 KB per image) hides under the Inception activations in peak RSS.
N spans two batches: the allocator's high-water mark settles after the second batch (measured
at batch 16: 1 batch 1253 MB, 2: 1314, 4: 1359, 8: 1378), and N below the batch would shrink
the Inception activations, which dominate peak RSS (~14 MB per image in the batch).

    python benchmarks/bench_eval.py [--quick] [--images N] [--batch B] [--threads T] [--out JSON]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESET = "quick"

# (label, substring of "file:function" in cProfile's keys) of the evaluation's parts
PARTS = (
    ("evaluate_model (total)", "evaluate.py:evaluate_model"),
    ("Inception forward (resize + net)", "fid.py:forward"),
    ("F.interpolate (Inception resize, decoder upsampling)", "functional.py:interpolate"),
    ("LPIPS AlexNet", "lpips.py:forward"),
    ("SSIM", "image.py:ssim"),
    ("PSNR", "image.py:psnr"),
    ("model encode", "autoencoder.py:encode"),
    ("model decode", "autoencoder.py:decode"),
    ("feature moments (FeatureStats.update)", "fid.py:update"),
    ("Frechet distance (eigh)", "fid.py:frechet_distance"),
    ("build Inception", "fid.py:build_inception"),
    ("build LPIPS", "lpips.py:build_lpips"),
    ("codebook stats", "codebook.py:update"),
    ("data loading (DataLoader next)", "dataloader.py:__next__"),
)


# ----------------------------------------------------------------------------- child side


def _setup(args):
    """(cfg, model, dataset, continuous, model label) for a child process."""
    import torch

    from gaussquant.config import load_config
    from gaussquant.data import PreparedDataset
    from gaussquant.models.autoencoder import build_autoencoder

    cfg = load_config(ROOT / "params.yaml", PRESET)
    batch = args.batch or cfg.eval.batch_size
    cfg = dataclasses.replace(
        cfg, eval=dataclasses.replace(cfg.eval, max_images=args.images, batch_size=batch)
    )
    torch.manual_seed(0)
    model = build_autoencoder(cfg, args.method, "unet", str(cfg.experiment.rates[0])).eval()
    continuous = args.method == "tdc"  # fallback Gaussian VAE: posterior-mean reconstruction
    label = f"{args.method}-unet" + (" (mean)" if continuous else "")
    return cfg, model, PreparedDataset(args.data, "val"), continuous, label


def pick_method() -> str:
    """fsq if its quantizer and codebook statistics import, else tdc (a Gaussian VAE)."""
    try:
        import gaussquant.metrics.codebook  # noqa: F401 (evaluate_model needs it for FSQ)
        from gaussquant.quantizers import FSQ  # noqa: F401
    except ImportError:  # parts of the package still under construction
        return "tdc"
    return "fsq"


def patch_before_fix() -> None:
    """Monkeypatch the Inception forward used before the fix (the reference row ``before``):
    NCHW memory format, the whole evaluation batch in one pass."""
    import torch
    import torch.nn.functional as F

    from gaussquant.metrics import fid

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not getattr(self, "_nchw", False):
            self.net.to(memory_format=torch.contiguous_format)
            self._nchw = True
        x = x.to(next(self.net.parameters()).dtype)
        size = (fid.INCEPTION_SIZE, fid.INCEPTION_SIZE)
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return fid.pool3_from_299(self.net, y.contiguous())

    fid.InceptionPool3.forward = forward


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _elapsed(start: tuple[float, float]) -> dict:
    """Wall and CPU (all threads) seconds since ``start``."""
    wall, cpu = _clocks()
    return {"seconds": wall - start[0], "cpu_s": cpu - start[1]}


def run_ours(args) -> dict:
    from gaussquant.evaluate import evaluate_model

    if args.worker == "before":
        patch_before_fix()
    cfg, model, dataset, continuous, label = _setup(args)
    start = _clocks()
    metrics = evaluate_model(
        model, dataset, cfg, args.weights, continuous=continuous, fid_reference=None, progress=False
    )
    return {**_elapsed(start), "metrics": metrics, "model": label}


def naive_evaluate(model, dataset, n: int, batch_size: int, weights: Path) -> dict:
    """Reference evaluator: keep everything, reduce at the end, rebuild LPIPS per batch."""
    import numpy as np
    import torch
    from scipy import linalg
    from torch.utils.data import DataLoader, Subset

    from gaussquant.metrics.fid import build_inception
    from gaussquant.metrics.image import psnr, ssim
    from gaussquant.metrics.lpips import build_lpips

    inception = build_inception(weights)
    originals, recons, lpips_values, real, fake = [], [], [], [], []
    with torch.no_grad():
        for x in DataLoader(Subset(dataset, range(n)), batch_size=batch_size):
            x_rec = model.decode(model.encode(x).z_q)
            lpips_net = build_lpips("alex", weights)  # the official script builds it per batch
            lpips_values.append(lpips_net(x, x_rec))
            originals.append(x)
            recons.append(x_rec)
            real.append(inception(x).numpy())
            fake.append(inception(x_rec).numpy())
    x_all, rec_all = torch.cat(originals), torch.cat(recons)
    feats = [np.concatenate(f).astype(np.float64) for f in (real, fake)]
    (mu1, mu2), (c1, c2) = [f.mean(0) for f in feats], [np.cov(f, rowvar=False) for f in feats]
    with warnings.catch_warnings():  # singular with fewer images than dimensions: expected
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(c1 @ c2)  # pytorch-fid
        if not np.isfinite(covmean).all():
            offset = np.eye(c1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((c1 + offset) @ (c2 + offset))
    fid = float(
        (mu1 - mu2) @ (mu1 - mu2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean.real)
    )
    kept = [*originals, *recons, *lpips_values, *real, *fake]
    return {
        "psnr": float(psnr(x_all, rec_all).mean()),
        "ssim": float(ssim(x_all, rec_all).mean()),
        "lpips": float(torch.cat(lpips_values).mean()),
        "rfid": fid,
        "n_images": len(x_all),
        "kept_mb": sum(t.nbytes for t in kept) / 2**20,  # held until the end, grows with N
    }


def run_naive(args) -> dict:
    cfg, model, dataset, _, label = _setup(args)
    start = _clocks()
    metrics = naive_evaluate(model, dataset, args.images, cfg.eval.batch_size, args.weights)
    return {**_elapsed(start), "metrics": metrics, "model": label}


def run_profile(args) -> dict:
    import cProfile
    import pstats

    from gaussquant.evaluate import evaluate_model

    cfg, model, dataset, continuous, label = _setup(args)
    prof = cProfile.Profile()
    start = _clocks()
    prof.enable()
    evaluate_model(
        model, dataset, cfg, args.weights, continuous=continuous, fid_reference=None, progress=False
    )
    prof.disable()
    stats = pstats.Stats(prof).stats  # (file, line, func) -> (cc, calls, tottime, cumtime, callers)
    parts = []
    for name, key in PARTS:
        file_part, func = key.split(":")
        hits = [v for (f, _, fn), v in stats.items() if f.endswith(file_part) and fn == func]
        if hits:  # the outermost entry: cumtime of recursive calls is already included
            calls, cum = max(h[1] for h in hits), max(h[3] for h in hits)
            parts.append({"part": name, "seconds": cum, "calls": calls})
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:8]
    own = [
        {"part": f"{Path(f).name}:{fn}", "seconds": v[2], "calls": v[1]} for (f, _, fn), v in top
    ]
    return {**_elapsed(start), "parts": parts, "top_own_time": own, "model": label}


def child_main(args) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    run = {"ours": run_ours, "before": run_ours, "naive": run_naive, "profile": run_profile}
    result = run[args.worker](args)
    result["peak_rss_mb"] = _peak_rss_mb()
    result["threads"] = torch.get_num_threads()
    result["load1"] = os.getloadavg()[0]  # other work on the machine skews wall times
    Path(args.json).write_text(json.dumps(result, default=float))


# ----------------------------------------------------------------------------- parent side


def spawn(worker, images, data, weights, method, batch, threads, fixed_malloc=True) -> dict:
    """Run one measurement in a fresh Python process; return its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            worker,
            "--images",
            str(images),
            "--data",
            str(data),
            "--weights",
            str(weights),
            "--json",
            str(out),
            "--method",
            method,
            "--batch",
            str(batch),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # torch and numpy's BLAS
        if fixed_malloc:
            env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # glibc's default, fixed (see the docstring)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"bench_eval child {worker} N={images} failed:\n{proc.stderr[-3000:]}"
            )
        return json.loads(out.read_text())


def _kept_bytes_per_image(resolution: int) -> int:
    """What ``naive_evaluate`` keeps per image: image + reconstruction (float32, 3 channels),
    two 2048-d float32 Inception features, one float32 LPIPS value."""
    return 2 * 3 * resolution**2 * 4 + 2 * 2048 * 4 + 4


def _rel_diff(a: dict, b: dict) -> str:
    diffs = {k: abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in ("psnr", "ssim", "lpips", "rfid")}
    worst = max(diffs, key=diffs.get)
    return f"max rel. diff to ours {diffs[worst]:.1e} ({worst})"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 32, batch 16 (a smoke run)")
    ap.add_argument("--images", type=int, default=None, help="N (default 64, --quick 32)")
    ap.add_argument("--batch", type=int, default=None, help="eval batch (default 32, --quick 16)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the children")
    ap.add_argument(
        "--default-malloc", action="store_true", help="keep glibc's dynamic mmap threshold"
    )
    ap.add_argument("--profile-images", type=int, default=None, help="default 128, --quick 64")
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    ap.add_argument("--no-before", action="store_true", help="skip the before-the-fix row")
    ap.add_argument(
        "--large-res", type=int, default=256, help="px of the N = 32/128 pair (0: skip; --quick: 0)"
    )
    ap.add_argument(
        "--worker", choices=("ours", "before", "naive", "profile"), help=argparse.SUPPRESS
    )
    ap.add_argument("--method", default="fsq", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.images = args.images or 128
        child_main(args)
        return []

    import pandas as pd

    from gaussquant.config import load_config
    from gaussquant.data import prepare

    cfg = load_config(ROOT / "params.yaml", PRESET)
    n = args.images or (32 if args.quick else 64)
    batch = args.batch or (16 if args.quick else 32)  # N spans two batches or more
    n_prof = args.profile_images or (64 if args.quick else 128)
    res, big_res = cfg.data.resolution, (0 if args.quick else args.large_res)
    method = pick_method()
    # (worker, images, px, batch); the large-px pair shows what the naive evaluator keeps
    plan = [(w, k, res, batch) for w in ("ours", "naive") for k in (n, 4 * n)]
    plan += [] if args.no_before else [("before", 4 * n, res, batch)]
    if big_res:
        plan += [(w, k, big_res, 16) for w in ("ours", "naive") for k in (32, 128)]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        data = {}
        for px in sorted({p[2] for p in plan}):
            data[px] = Path(tmp) / f"data{px}"
            n_val = max(k for _, k, r, _ in plan if r == px) if px != res else max(4 * n, n_prof)
            part = dataclasses.replace(cfg.data, resolution=px, n_val=n_val, n_train=1)
            prepare(part, data[px], progress=False)
        for worker, images, px, b in plan + [("profile", n_prof, res, batch)]:
            print(f"bench eval: {worker} N={images} {px} px", flush=True)
            fixed = not args.default_malloc
            runs[worker, images, px] = spawn(
                worker, images, data[px], args.weights, method, b, args.threads, fixed
            )
    rows = []
    for worker, images, px, b in plan:
        r = runs[worker, images, px]
        rows.append(
            {
                "what": worker,
                "px": px,
                "batch": b,
                "images": images,
                "seconds": r["seconds"],
                "cpu_s": r["cpu_s"],
                "images_per_s": images / r["seconds"],
                "images_per_cpu_s": images / r["cpu_s"],
                "peak_rss_mb": r["peak_rss_mb"],
                "load1": r["load1"],
                "note": "",
            }
        )
    rows[0]["note"] = f"model {runs['ours', n, res]['model']}"
    for row in rows:
        worker, px = row["what"], row["px"]
        sizes = sorted(k for w, k, r, _ in plan if w == worker and r == px)
        if row["images"] != sizes[-1]:
            continue
        ours = runs["ours", sizes[-1], px]
        if worker in ("ours", "naive"):
            small, big = runs[worker, sizes[0], px], runs[worker, sizes[-1], px]
            marginal = (sizes[-1] - sizes[0]) / (big["cpu_s"] - small["cpu_s"])
            growth = big["peak_rss_mb"] / small["peak_rss_mb"] - 1
            row["note"] = (
                f"4N vs N: peak RSS {100 * growth:+.1f} %, marginal {marginal:.3g} images/CPU s"
            )
        if worker == "ours":
            row["note"] += f" (target < 10 %: {'met' if abs(growth) < 0.10 else 'MISSED'})"
        elif worker == "naive":
            kept = [runs[worker, k, px]["metrics"]["kept_mb"] for k in sizes]
            row["note"] += f"; keeps {kept[0]:.1f} / {kept[-1]:.1f} MB at N / 4N; " + _rel_diff(
                big["metrics"], ours["metrics"]
            )
        elif worker == "before":
            r = runs[worker, sizes[-1], px]
            row["note"] = (
                f"ours vs before the fix: {r['cpu_s'] / ours['cpu_s']:.2f}x CPU, "
                f"{r['seconds'] / ours['seconds']:.2f}x wall, peak RSS "
                f"{ours['peak_rss_mb'] - r['peak_rss_mb']:+.0f} MB; "
                + _rel_diff(r["metrics"], ours["metrics"])
            )
    at_paper = 50_000 * _kept_bytes_per_image(256) / 2**30
    print(f"naive evaluator on 50,000 images at 256 px would keep {at_paper:.0f} GiB")
    prof = runs["profile", n_prof, res]
    total = next(p["seconds"] for p in prof["parts"] if p["part"].startswith("evaluate_model"))
    for p in prof["parts"] + [dict(q, part="own time: " + q["part"]) for q in prof["top_own_time"]]:
        rows.append(
            {
                "what": "profile: " + p["part"],
                "px": res,
                "batch": batch,
                "images": n_prof,
                "seconds": p["seconds"],
                "cpu_s": "",
                "images_per_s": "",
                "images_per_cpu_s": "",
                "peak_rss_mb": "",
                "load1": "",
                "note": f"{100 * p['seconds'] / total:.0f} % of evaluate_model, {p['calls']} calls",
            }
        )
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2, default=float) + "\n")
    return rows


if __name__ == "__main__":
    main()
