"""No file we read can run code: every command that loads a pickle is handed one whose payload
would create a marker file; it must be refused with a one-line error and the marker must not
exist. Also: a realistic Lightning checkpoint (OmegaConf hyperparameters, optimizer and
callback states) still imports through the named allowlist."""

import os
from pathlib import Path

import pytest
import torch

from gaussquant.checkpoint import CHECKPOINT_FORMAT
from gaussquant.cli import main as cli_main
from gaussquant.errors import GaussquantError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--params", str(ROOT / "params.yaml"), "--preset", "tiny"]


class _RunsCode:
    """Pickles as ``os.system("touch MARKER")``: loading it unrestricted runs the command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted(path: Path, marker: Path, wrap=None) -> Path:
    payload = _RunsCode(marker)
    torch.save(wrap(payload) if wrap else payload, path)
    return path


def checkpoint_like(payload):
    return {"format": CHECKPOINT_FORMAT, "method": "gq", "model": {}, "extra": payload}


def assert_refused(capsys, argv, marker: Path, command: str):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gaussquant {command}: error:") and "\n" not in err, err
    assert "refused" in err and "system" in err, err
    assert not marker.exists()


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists()


def test_crafted_sanity(tmp_path, marker):
    """The crafted file does run its payload when loaded unrestricted (so the tests can fail)."""
    import pickle

    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(_RunsCode(tmp_path / "ran")))
    pickle.loads(path.read_bytes())  # noqa: S301 - the point of this test
    assert (tmp_path / "ran").exists()


def test_convert_refuses(tmp_path, marker, capsys):
    ckpt = crafted(tmp_path / "evil.pt", marker, checkpoint_like)
    argv = ["convert", *TINY, "--ckpt", str(ckpt), "--to", "gq", "--out", str(tmp_path / "o.pt")]
    assert_refused(capsys, argv, marker, "convert")


def test_evaluate_refuses(tmp_path, marker, capsys, tiny_data, weights_dir):
    ckpt = crafted(tmp_path / "evil.pt", marker, checkpoint_like)
    argv = ["evaluate", *TINY, "--ckpt", str(ckpt), "--data", str(tiny_data)]
    argv += ["--weights", str(weights_dir), "--out", str(tmp_path / "m.json")]
    assert_refused(capsys, argv, marker, "evaluate")


def test_import_official_refuses(tmp_path, marker, capsys):
    ckpt = crafted(tmp_path / "evil.ckpt", marker, lambda p: {"state_dict": {}, "callbacks": p})
    argv = ["import-official", *TINY, str(ckpt), "--out", str(tmp_path / "o.pt")]
    assert_refused(capsys, argv, marker, "import-official")


def test_reconstruct_and_load_tokenizer_refuse(tmp_path, marker, capsys):
    from gaussquant import load_tokenizer

    ckpt = crafted(tmp_path / "evil.pt", marker, checkpoint_like)
    with pytest.raises(GaussquantError, match="refused: .*posix.system|refused: .*nt.system"):
        load_tokenizer(ckpt)
    argv = ["reconstruct", str(tmp_path / "x.png"), "--ckpt", str(ckpt), "--out", str(tmp_path)]
    assert_refused(capsys, argv, marker, "reconstruct")


def test_rate_refuses_a_crafted_vae(tmp_path, marker, capsys, tiny_data):
    """`rate --vae FOLDER`: a diffusers folder whose weights are a crafted .bin pickle."""
    pytest.importorskip("diffusers")
    from test_diffusers_vae import tiny_vae

    vae = tmp_path / "vae"
    tiny_vae(4).save_pretrained(vae)
    (vae / "diffusion_pytorch_model.safetensors").unlink()
    crafted(vae / "diffusion_pytorch_model.bin", marker)
    argv = ["rate", "--vae", str(vae), "--data", str(tiny_data), "--out", str(tmp_path / "r")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()  # diffusers logs a warning first
    assert err[-1].startswith("gaussquant rate: error:") and "cannot load the weights" in err[-1]
    assert not marker.exists()


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl"])
def test_train_resume_refuses_a_crafted_state(tmp_path, marker, name):
    """Resuming loads the newest saved state; Accelerate unpickles custom and RNG states
    unrestricted, so ours checks every pickle of the state first."""
    from accelerate import Accelerator

    from gaussquant import runstate

    run = {"method": "tdc", "settings": 1, "processes": 1, "global_batch": 8}
    runstate.discard_stale_states(tmp_path / "state", run)  # records run.json
    state = tmp_path / "state" / "step-00000004"
    state.mkdir()
    (state / runstate.COMPLETE).write_text("4\n")
    crafted(state / name, marker)
    with pytest.raises(GaussquantError, match="saved training state .* refused") as info:
        runstate.resume(Accelerator(cpu=True), tmp_path, run)
    assert "\n" not in str(info.value)


def test_lightning_checkpoint_imports_through_the_allowlist(tmp_path):
    """A Lightning checkpoint as Lightning writes it (OmegaConf hyperparameters, numpy
    scalars, paths, optimizer and scheduler states) is read with weights_only=True."""
    import pathlib

    import numpy as np

    omegaconf = pytest.importorskip("omegaconf")
    from gaussquant.official import read_official

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    ckpt = {
        "epoch": 3,
        "global_step": 10,
        "state_dict": {f"encoder.{k}": v for k, v in model.state_dict().items()},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0).state_dict()],
        "callbacks": {"ModelCheckpoint": {"best_model_score": np.float64(0.5), "dirpath": "x"}},
        "hyper_parameters": omegaconf.OmegaConf.create({"lr": 1e-4, "ch_mult": [1, 2]}),
        "path": pathlib.PosixPath("/x"),
    }
    torch.save(ckpt, tmp_path / "l.ckpt")
    state, info = read_official(tmp_path / "l.ckpt")
    assert info == {"global_step": 10, "epoch": 3}
    assert all(torch.equal(state[f"encoder.{k}"], v) for k, v in model.state_dict().items())
