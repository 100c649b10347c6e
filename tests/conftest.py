"""Shared fixtures: the tiny preset, its prepared data, and the metric weights."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
# Inputs and outputs of the official implementation (a copy of shared/reference, 3.5 MB).
REFERENCE = ROOT / "tests" / "data" / "reference"


@pytest.fixture(scope="session")
def tiny_cfg():
    from gaussquant.config import load_config

    return load_config(PARAMS, "tiny")


@pytest.fixture(scope="session")
def tiny_data(tiny_cfg, tmp_path_factory):
    """The tiny preset's prepared bundled-photo data (prepared once per session)."""
    from gaussquant.data import prepare

    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare(tiny_cfg.data, out)
    return out


@pytest.fixture(scope="session")
def weights_dir():
    """Metric weights fetched by `make test` (gaussquant fetch-weights) before pytest runs."""
    path = Path(os.environ.get("GAUSSQUANT_WEIGHTS", ROOT / "weights"))
    if not (path / "manifest.json").exists():
        pytest.fail(
            f"metric weights missing in {path}: run `gaussquant fetch-weights --out {path}` (make test does)"
        )
    return path


@pytest.fixture(scope="session")
def two_process_launcher():
    """Command prefix that runs ``-m module ...`` as 2 CPU processes under Accelerate (with
    ACCELERATE_USE_CPU=1 in the environment). torchrun starts them and Accelerate reads its
    environment; `accelerate launch --cpu` starts a single process whatever --num_processes says."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
