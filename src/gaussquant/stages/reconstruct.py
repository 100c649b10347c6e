"""`gaussquant reconstruct IMAGE... --ckpt CKPT --out DIR`: a first look at one's own photos.

Each image is resized (short side) and center-cropped to the tokenizer's training resolution
(or ``--resolution``), encoded to token indices and decoded; ``DIR`` receives
``NAME.original.png``, ``NAME.reconstruction.png``, ``NAME.pair.png`` (side by side) and
``NAME.indices.npy`` (int64, (T, h, w)). ``--ckpt`` is anything :func:`gaussquant.load_tokenizer`
takes: a checkpoint, a tokenizer folder or a Hub id.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct", help="encode and decode your own images; originals beside reconstructions"
    )
    p.add_argument("images", nargs="+", type=Path, help="image files (any format PIL reads)")
    p.add_argument("--ckpt", required=True, help="checkpoint, tokenizer folder or Hub id")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--resolution", type=int, default=None, help="crop size (default: the training one)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from gaussquant.api import load_tokenizer
    from gaussquant.data import load_center_crop
    from gaussquant.errors import GaussquantError
    from gaussquant.io import atomic_path

    tok = load_tokenizer(args.ckpt)
    res = args.resolution or tok.info["config"]["data"]["resolution"]
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        try:
            pixels = load_center_crop(path, res)
        except Exception as err:  # noqa: BLE001 - PIL raises many kinds on a bad file
            raise GaussquantError(f"{path}: cannot be read as an image ({err})") from None
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
        indices = tok.encode(x)
        rec = tok.decode(indices)
        out = {"original": x[0], "reconstruction": rec[0]}
        out["pair"] = torch.cat([x[0], rec[0]], dim=-1)
        for kind, image in out.items():
            _save_png(image, args.out / f"{path.stem}.{kind}.png")
        with atomic_path(args.out / f"{path.stem}.indices.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, indices[0].cpu().numpy())
        mse = float((x - rec.clamp(-1, 1)).square().mean()) / 4  # on [0, 1] pixels
        psnr = 10 * np.log10(1 / mse) if mse > 0 else float("inf")
        print(f"{path}: {tuple(indices.shape[1:])} tokens, PSNR {psnr:.2f} dB -> {args.out}")
    return 0


def _save_png(image, path: Path) -> None:
    from PIL import Image

    from gaussquant.io import atomic_path

    arr = image.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
