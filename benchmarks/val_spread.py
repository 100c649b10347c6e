"""How much of the seed-to-seed spread of Table 1 the validation sample makes: per row, the
standard deviation over training seeds of the mean PSNR over (a) every validation crop, (b) the
crops of two photos only (the earlier validation set's coffee and grace_hopper, here from their
held-out strips) and (c) random subsets of (b)'s size (mean over 200 draws).

    python benchmarks/val_spread.py [WORKSPACE] [--preset quick]

WORKSPACE: where `make reproduce` ran (default: this checkout). Reads the evaluations'
per-image values (``per_image``, in dataset order) and the validation index.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

TWO_PHOTOS = ("coffee", "grace_hopper")


def seed_values(root: Path) -> dict[tuple[str, str], list[np.ndarray]]:
    """(arch, row) -> per-image PSNR of each seed."""
    rows: dict[tuple[str, str], list[np.ndarray]] = {}
    for f in sorted(root.glob("eval/*/metrics.json")):
        d = json.loads(f.read_text())
        rows.setdefault((d["arch"], d["name"]), []).append(np.asarray(d["per_image"]["psnr"]))
    return {k: v for k, v in rows.items() if len(v) >= 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workspace", type=Path, nargs="?", default=Path("."))
    ap.add_argument("--preset", default="quick")
    args = ap.parse_args()
    root = args.workspace / "results" / args.preset
    photos = [line.split()[0] for line in (root / "data/val/index.txt").read_text().splitlines()]
    two = np.isin(photos, TWO_PHOTOS)
    print(
        f"{len(photos)} validation crops of {len(set(photos))} photos; {two.sum()} of {TWO_PHOTOS}"
    )
    rng = np.random.default_rng(0)
    sds = {"all": [], "two photos": [], "random subsets": []}
    for (arch, name), seeds in sorted(seed_values(root).items()):
        subsets = [rng.choice(len(photos), two.sum(), replace=False) for _ in range(200)]
        row = {
            "all": np.std([s.mean() for s in seeds], ddof=1),
            "two photos": np.std([s[two].mean() for s in seeds], ddof=1),
            "random subsets": np.mean(
                [np.std([s[i].mean() for s in seeds], ddof=1) for i in subsets]
            ),
        }
        for k, v in row.items():
            sds[k].append(v)
        print(f"{arch:5s} {name:14s} " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()))
    print("median over rows: " + ", ".join(f"{k} {np.median(v):.2f} dB" for k, v in sds.items()))


if __name__ == "__main__":
    main()
