"""Loading throughput: prepared shards (PreparedDataset) vs decoding JPEG files every step.

Builds a folder of ImageNet-like JPEGs (random views of the bundled photos at ~500x375,
quality 90), prepares it at 32 and 256 px with `gaussquant.data.prepare`, then times one
pass of a DataLoader at batch 16 over

- ``prepared``: :class:`gaussquant.data.PreparedDataset` (memory-mapped uint8 shards),
- ``jpeg``: a reference dataset that opens, resizes (short side, bicubic) and center-crops
  each JPEG on the fly, as a loader without a preparation step would,

for ``num_workers`` 0 and 2. Shards sit in the page cache here (small files); a full
ImageNet at 256 px (~250 GB of shards) is bounded by disk reads instead: ~196 KB per image.

    python benchmarks/bench_data.py [--images 512] [--out results/bench_data.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from gaussquant.data import (
    DataConfig,
    PreparedDataset,
    bundled_photos,
    list_images,
    load_center_crop,
    prepare,
)

BATCH = 16


class JpegFolder(Dataset):
    """Reference loader: decode + resize + center-crop every image at every step."""

    def __init__(self, root: Path, resolution: int):
        self.paths, self.resolution = list_images(root), resolution

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(load_center_crop(self.paths[i], self.resolution)).permute(2, 0, 1)
        return x.float().div_(127.5).sub_(1.0)


def make_jpegs(root: Path, n: int, seed: int = 0) -> None:
    """``n`` JPEGs of about ImageNet's median size (500x375 or 375x500), quality 90."""
    photos = list(bundled_photos().values())
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = Image.fromarray(photos[i % len(photos)])
        size = (500, 375) if rng.random() < 0.75 else (375, 500)
        w, h = photo.size
        s = rng.uniform(0.6, 1.0) * min(w / size[0], h / size[1])
        x0, y0 = rng.uniform(0, w - s * size[0]), rng.uniform(0, h - s * size[1])
        box = (x0, y0, x0 + s * size[0], y0 + s * size[1])
        view = photo.resize(size, Image.Resampling.BICUBIC, box=box)
        path = root / f"n{i % 10:02d}" / f"img_{i:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        view.save(path, quality=90)


def images_per_second(dataset: Dataset, workers: int, min_seconds: float) -> float:
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=workers > 0,
    )
    for _ in loader:  # warm-up: worker start, page cache, first-touch of the maps
        break
    seen, start = 0, time.perf_counter()
    while True:
        for x in loader:
            seen += x.shape[0]
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return seen / elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="JPEGs in the test folder")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--min-seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the loader's cost alone, as in a DataLoader worker

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpeg"
        make_jpegs(folder, args.images)
        for res in args.resolutions:
            cfg = DataConfig(
                source="folder",
                train_dir=str(folder),
                val_dir=str(folder),
                resolution=res,
                n_val=BATCH,
                shard_size=4096,
            )
            start = time.perf_counter()
            prepare(cfg, Path(tmp) / f"prep{res}", progress=False)
            prep_rate = (args.images + BATCH) / (time.perf_counter() - start)
            datasets = {
                "prepared": PreparedDataset(Path(tmp) / f"prep{res}", "train"),
                "jpeg": JpegFolder(folder, res),
            }
            for workers in args.workers:
                rate = {
                    k: images_per_second(d, workers, args.min_seconds) for k, d in datasets.items()
                }
                rows.append(
                    {
                        "resolution": res,
                        "num_workers": workers,
                        "prepared": rate["prepared"],
                        "jpeg": rate["jpeg"],
                        "speedup": rate["prepared"] / rate["jpeg"],
                        "prepare_images_per_s": prep_rate,
                    }
                )

    result = {
        "benchmark": "data loading, images/s, DataLoader batch 16, shuffled",
        "images": args.images,
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch": torch.__version__,
        "rows": rows,
    }
    print(
        f"Loading throughput, images/s (batch {BATCH}; {args.images} JPEGs ~500x375 q90; "
        f"{result['cores']} cores)\n"
    )
    print("| px | num_workers | prepared shards | JPEG per step | speedup | prepare (one-off) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['resolution']} | {r['num_workers']} | {r['prepared']:.0f} | {r['jpeg']:.0f} | "
            f"{r['speedup']:.1f}x | {r['prepare_images_per_s']:.0f} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
