"""``gaussquant train`` with a probe: after every step, this process's view of the run (TDC
multipliers and the batch statistics it used, and a sha256 of every parameter and buffer of
the autoencoder) is kept and written to ``<out>/probe-rank<r>.json``. The multi-process
training tests run it under torchrun and compare the ranks step by step.

Usage: python tests/helpers/train_probe.py <gaussquant train arguments>
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from gaussquant import train as training
from gaussquant.cli import main

RECORDS: list[dict] = []
_train_step = training.train_step
TDC_KEYS = ("bits_mean", "bits_min", "bits_max", "lam", "lam_min", "lam_max")


def _digest(module) -> str:
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def probed_step(parts, x, step, lr):
    terms = _train_step(parts, x, step, lr)
    model = getattr(parts.model, "module", parts.model)  # DDP wraps the model
    tdc = getattr(model.bottleneck, "tdc", None)
    record = {"step": step, "weights": _digest(model)}
    record |= {k: float(terms[k]) for k in TDC_KEYS if terms.get(k) is not None}
    if tdc is not None:  # the multipliers after this step's update
        record |= {f"{k}_after": float(getattr(tdc, k)) for k in ("lam", "lam_min", "lam_max")}
    RECORDS.append(record)
    return terms


if __name__ == "__main__":
    training.train_step = probed_step  # train() looks the step up at call time
    argv = sys.argv[1:]
    rc = main(argv)
    out = Path(argv[argv.index("--out") + 1])
    rank = int(os.environ.get("RANK", "0"))
    (out / f"probe-rank{rank}.json").write_text(json.dumps(RECORDS))
    sys.exit(rc)
