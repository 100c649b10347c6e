"""Loading throughput of an image folder read in place: index, then decode on the fly.

Builds a folder of ImageNet-like JPEGs (random views of the bundled photos at 500x375 or
375x500, quality 90, ImageNet-style class folders and names), indexes it with
`gaussquant.data.prepare` (``data.verify`` decode and header, one process), then times a
DataLoader at batch 16 over :class:`gaussquant.data.PreparedDataset`, which reads, decodes,
resizes (bilinear, short side) and center-crops every image as the official code does, for
``num_workers`` 0 (one process: the cost of one worker) and 2. ``per_worker`` = images/s of
one process (num_workers 0); the ``num_workers 2`` row shows how it scales on this machine.

The notes extrapolate: the index of ImageNet's 1,281,167 training images (synthetic names
and sizes of the same form, written by the same code) and the workers 8 GPUs need, from a
stated estimate of the GPU step time (not measured here).

    python benchmarks/bench_data.py [--images 512] [--out results/bench_data.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from gaussquant.config import DataConfig
from gaussquant.data import PreparedDataset, bundled_photos, prepare, write_index

BATCH = 16
IMAGENET_TRAIN = 1_281_167
GPUS = 8
# Estimated GPU step times (s) at the paper's per-GPU batch 16, not measured here: the ViT
# on an A100 in fp32 (~36 h per 100k steps), with TF32 (~3x less), and a faster H100 step.
STEP_ESTIMATES = {"A100 fp32 (est.)": 1.3, "A100 TF32 (est.)": 0.43, "H100 bf16 (est.)": 0.2}


def imagenet_name(i: int) -> str:
    cls = f"n{1440764 + 7919 * (i % 1000):08d}"
    return f"{cls}/{cls}_{10026 + i}.JPEG"


def make_jpegs(root: Path, n: int, seed: int = 0) -> int:
    """``n`` JPEGs of ImageNet's median size (500x375 or 375x500), quality 90; their bytes."""
    photos = list(bundled_photos().values())
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = Image.fromarray(photos[i % len(photos)])
        size = (500, 375) if rng.random() < 0.75 else (375, 500)
        w, h = photo.size
        s = rng.uniform(0.6, 1.0) * min(w / size[0], h / size[1])
        x0, y0 = rng.uniform(0, w - s * size[0]), rng.uniform(0, h - s * size[1])
        box = (x0, y0, x0 + s * size[0], y0 + s * size[1])
        path = root / imagenet_name(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        photo.resize(size, Image.Resampling.BICUBIC, box=box).save(path, quality=90)
    return sum(p.stat().st_size for p in root.rglob("*.JPEG"))


def images_per_second(dataset: Dataset, workers: int, min_seconds: float) -> float:
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=workers > 0,
    )
    for _ in loader:  # warm-up: worker start, page cache
        break
    seen, start = 0, time.perf_counter()
    while True:
        for x in loader:
            seen += x.shape[0]
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return seen / elapsed


def imagenet_index_mb(tmp: Path, mean_bytes: float) -> float:
    """Size of an index of ImageNet's training set: synthetic names and byte sizes."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(int(mean_bytes * 0.3), int(mean_bytes * 1.7), IMAGENET_TRAIN)
    items = ((imagenet_name(i), (int(s), 500, 375, "")) for i, s in enumerate(sizes))
    write_index(tmp / "imagenet-index", items, 256)
    return (tmp / "imagenet-index" / "index.tsv.gz").stat().st_size / 1e6


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="JPEGs in the test folder")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="0 first")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpeg"
        jpeg_bytes = make_jpegs(folder, args.images)
        for res in args.resolutions:
            rates = {}
            for verify in ("decode", "header"):
                cfg = DataConfig(
                    source="folder",
                    train_dir=str(folder),
                    val_dir=str(folder),
                    resolution=res,
                    n_val=BATCH,
                    verify=verify,
                )
                out = Path(tmp) / f"prep{res}-{verify}"
                start = time.perf_counter()
                prepare(cfg, out, workers=1, progress=False)
                rates[verify] = (args.images + BATCH) / (time.perf_counter() - start)
            index_bytes = (out / "train" / "index.tsv.gz").stat().st_size
            dataset = PreparedDataset(out, "train")
            for workers in args.workers:
                rate = images_per_second(dataset, workers, args.min_seconds)
                rows.append(
                    {
                        "resolution": res,
                        "num_workers": workers,
                        "images_per_s": rate,
                        "per_worker": rate / max(1, workers),
                        "ms_per_image_per_worker": 1000 * max(1, workers) / rate,
                        "index_decode_images_per_s": rates["decode"],
                        "index_header_images_per_s": rates["header"],
                        "index_bytes_per_image": index_bytes / args.images,
                        "jpeg_kb_per_image": jpeg_bytes / args.images / 1e3,
                    }
                )
        index_mb = imagenet_index_mb(Path(tmp), jpeg_bytes / args.images)

    top = max(args.resolutions)  # the cost of one worker: the in-process (num_workers 0) row
    per_worker = next(r["per_worker"] for r in rows if r["resolution"] == top)
    notes = [
        f"Index of ImageNet's {IMAGENET_TRAIN:,} training images (synthetic names of the "
        f"same form, sizes around this folder's mean): {index_mb:.1f} MB; the uint8 shards it "
        "replaces were ~252 GB (train) + ~10 GB (val).",
        f"One worker (one process, num_workers 0) reads ~{per_worker:.0f} images/s at {top} px "
        f"here, {os.getloadavg()[0]:.1f} load average over {len(os.sched_getaffinity(0))} cores "
        "at the end of the run (a shared machine: more load, fewer images/s).",
    ]
    for label, step_s in STEP_ESTIMATES.items():
        need = GPUS * BATCH / step_s
        notes.append(
            f"{label}: {step_s} s per step of batch {BATCH} -> {need:.0f} images/s for {GPUS} "
            f"GPUs -> ~{math.ceil(need / per_worker)} loader workers in all, "
            f"~{math.ceil(need / per_worker / GPUS)} per GPU (train.num_workers); an estimate "
            "from an estimated step time, on this CPU's speed per core."
        )
    result = {
        "benchmark": "image folder read in place: index + decode on the fly, images/s",
        "images": args.images,
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch": torch.__version__,
        "rows": rows,
        "notes": notes,
        "imagenet_index_mb": index_mb,
    }
    print(json.dumps(rows, indent=1))
    print("\n".join(notes))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
