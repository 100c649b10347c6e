"""The public API: GaussianQuant on raw posteriors, load_tokenizer on every kind of source, the
save_pretrained -> load round trip (folder, Hub cache), push_to_hub, from_gaussian_vae, and the
README example run as written."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gaussquant
from gaussquant import GaussianQuant, Tokenizer, from_gaussian_vae, load_tokenizer
from gaussquant.checkpoint import load_autoencoder, save_checkpoint
from gaussquant.errors import GaussquantError
from gaussquant.models.autoencoder import build_autoencoder
from gaussquant.pretrained import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE
from gaussquant.quantizers.gaussian_quant import GaussianQuant as GQModule
from gaussquant.stages.convert import convert_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RATE = "8"  # the tiny preset's rate: K = 256, m = 8, C = 8


def _images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def trained(tiny_cfg, tmp_path_factory):
    """A tiny Gaussian VAE checkpoint (random weights, as `gaussquant train` writes it) and
    its `gaussquant convert --to gq` conversion."""
    d = tmp_path_factory.mktemp("api")
    torch.manual_seed(0)
    model = build_autoencoder(tiny_cfg, "tdc", "unet", RATE)
    save_checkpoint(d / "vae.pt", model, tiny_cfg, "tdc", "unet", RATE, 5)
    convert_checkpoint(d / "vae.pt", "gq", d / "gq.pt")
    return d


# ----------------------------------------------------------------------------- GaussianQuant
def test_gaussian_quant_is_the_internal_rule_with_gradients_on():
    """Public (K, m) GQ on (B, C, H, W) posteriors = the rule of our converted checkpoints,
    bit for bit, also on tensors that require grad (which used to fail inside the search)."""
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(2, 8, 3, 5, generator=g).requires_grad_()
    logvar = torch.randn(2, 8, 3, 5, generator=g) * 3 - 2
    logvar[0, 0] = -60.0  # below the clamp: the collapsed dims' float64 tier
    gq = GaussianQuant(256, 4, seed=7, beta=0.5)
    indices = gq.encode(mu, logvar)
    ref = GQModule(8, 256, 4, seed=7, beta=0.5).eval()
    expected = ref.encode(torch.cat([mu, logvar], 1).detach())
    assert indices.shape == (2, 2, 3, 5) and indices.dtype == torch.int64
    assert torch.equal(indices, expected)
    assert torch.equal(gq.decode(indices), ref.indices_to_codes(expected))
    assert gq.sha256 == ref.sha256 and gq.codebook.shape == (256, 4)


def test_gaussian_quant_token_layout_is_strided():
    """Token t of a position holds channels t, t + C/m, ...: decoding puts codeword d of token t
    in channel d * C/m + t."""
    gq = GaussianQuant(16, 2)
    indices = torch.tensor([[[[3]], [[9]], [[14]]]])  # B=1, T=3, 1x1
    out = gq.decode(indices)[0, :, 0, 0]
    for t, k in enumerate((3, 9, 14)):
        assert torch.equal(out[[t, t + 3]], gq.codebook[k])


def test_gaussian_quant_shape_errors():
    gq = GaussianQuant(16, 4)
    with pytest.raises(GaussquantError, match="multiple of dim=4"):
        gq.encode(torch.zeros(1, 6, 2, 2), torch.zeros(1, 6, 2, 2))
    with pytest.raises(GaussquantError, match="power of two"):
        GaussianQuant(100, 4)


# ----------------------------------------------------------------------------- load_tokenizer
def test_load_tokenizer_trained_equals_converted(trained):
    """A trained Gaussian VAE loads as its GQ conversion, exactly what `convert` writes."""
    x = _images()
    tok = load_tokenizer(trained / "vae.pt")
    model, _ = load_autoencoder(trained / "gq.pt")
    with torch.no_grad():
        ref = model.encode(x)
        ref_images = model.decode(ref.z_q)
    indices = tok.encode(x)
    assert tok.info["method"] == "gq" and tok.info["extra"]["source_method"] == "tdc"
    assert indices.shape == (2, 1, 4, 4) and torch.equal(indices, ref.indices)
    assert torch.equal(tok.decode(indices), ref_images)
    assert torch.equal(load_tokenizer(trained / "gq.pt").encode(x), indices)


def test_save_pretrained_round_trip_folder_and_hub_cache(trained, tmp_path, monkeypatch):
    """save_pretrained -> load_tokenizer is bit-exact (indices and images) from the folder and
    from a pre-filled Hugging Face cache read offline; the folder holds no pickle."""
    x = _images(seed=1)
    tok = load_tokenizer(trained / "vae.pt")
    indices, images = tok.encode(x), tok.decode(tok.encode(x))
    record = {"psnr": 21.5, "ssim": 0.61, "lpips": 0.25, "rfid": 40.0, "images": 16}
    folder = tok.save_pretrained(tmp_path / "tok", metrics=record)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [CARD_FILE, CONFIG_FILE, WEIGHTS_FILE]
    )
    assert not (folder / WEIGHTS_FILE).read_bytes().startswith(b"PK")  # safetensors, no zip/pickle
    card = (folder / CARD_FILE).read_text()
    assert "| PSNR | SSIM | LPIPS | rFID |" in card and "| 21.5 | 0.61 | 0.25 | 40 |" in card
    assert tok.info["extra"]["quantizer"]["codebook_sha256"] in card

    back = load_tokenizer(folder)
    assert torch.equal(back.encode(x), indices) and torch.equal(back.decode(indices), images)
    assert back.info["metrics"] == record

    # the Hub cache layout: models--owner--name/{refs/main, snapshots/<commit>/files}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-gq"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = load_tokenizer("someone/tiny-gq", cache_dir=tmp_path / "hub")
    assert torch.equal(hub.encode(x), indices) and torch.equal(hub.decode(indices), images)
    _reconstruct_from_hub_cache(tmp_path, tok)
    with pytest.raises(GaussquantError, match="Hub model 'someone/other'"):
        load_tokenizer("someone/other")
    with pytest.raises(GaussquantError, match="not a Hub id"):
        load_tokenizer(tmp_path / "missing" / "x.pt")


def _reconstruct_from_hub_cache(tmp_path, tok):
    """`gaussquant reconstruct` on a Hub id, in a fresh process whose HF_HUB_CACHE is the
    pre-filled cache and HF_HUB_OFFLINE=1: its indices are the tokenizer's on the same crop."""
    import numpy as np
    from PIL import Image

    from gaussquant.data import bundled_photos, load_center_crop

    photo = tmp_path / "photo.png"
    Image.fromarray(next(iter(bundled_photos().values()))).save(photo)
    env = os.environ | {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    argv = ["reconstruct", str(photo), "--ckpt", "someone/tiny-gq", "--out", str(tmp_path / "look")]
    done = subprocess.run(
        [sys.executable, "-m", "gaussquant.cli", *argv],
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "look"
    assert sorted(p.name for p in out.iterdir()) == [
        f"photo.{k}" for k in ("indices.npy", "original.png", "pair.png", "reconstruction.png")
    ]
    x = torch.from_numpy(load_center_crop(photo, 32)).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert np.array_equal(np.load(out / "photo.indices.npy"), tok.encode(x)[0].numpy())
    original = np.asarray(Image.open(out / "photo.original.png"))
    assert np.array_equal(original, load_center_crop(photo, 32))
    pair = np.asarray(Image.open(out / "photo.pair.png"))
    assert pair.shape == (32, 64, 3) and np.array_equal(pair[:, :32], original)


def test_push_to_hub_uploads_the_saved_folder(trained, monkeypatch):
    """push_to_hub creates the repo and uploads exactly what save_pretrained writes."""
    import huggingface_hub

    seen = {}

    def create_repo(self, repo_id, private=None, exist_ok=False):
        seen["create"] = (repo_id, private, exist_ok)

    def upload_folder(self, repo_id, folder_path, commit_message):
        seen["files"] = sorted(p.name for p in Path(folder_path).iterdir())
        seen["config"] = json.loads((Path(folder_path) / CONFIG_FILE).read_text())
        return type("Commit", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = load_tokenizer(trained / "gq.pt").push_to_hub("me/tiny", private=True)
    assert url == "https://hub/me/tiny/commit/1" and seen["create"] == ("me/tiny", True, True)
    assert seen["files"] == sorted([CARD_FILE, CONFIG_FILE, WEIGHTS_FILE])
    assert seen["config"]["format"] == "gaussquant-tokenizer/1" and seen["config"]["step"] == 5


def test_load_tokenizer_refuses_foreign_folders(tmp_path):
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"format": "other"}))
    (tmp_path / WEIGHTS_FILE).write_bytes(b"")
    with pytest.raises(GaussquantError, match="not a gaussquant tokenizer"):
        load_tokenizer(tmp_path)


# ----------------------------------------------------------------------------- any Gaussian VAE
def test_from_gaussian_vae_diffusers_round_trip(tmp_path):
    """A diffusers AutoencoderKL: indices = public GQ on its raw posterior, images = its decoder
    on the codewords; saved and loaded back bit for bit."""
    pytest.importorskip("diffusers")
    from test_diffusers_vae import tiny_vae

    vae = tiny_vae(4).eval()
    tok = from_gaussian_vae(vae, codebook_size=256, dim=2, seed=5)
    x = _images(size=16, seed=2)
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        gq = GaussianQuant(256, 2, seed=5)
        expected = gq.encode(dist.mean, dist.logvar)
        images = vae.decode(gq.decode(expected)).sample
    indices = tok.encode(x)
    assert indices.shape == (2, 2, 8, 8) and torch.equal(indices, expected)
    assert torch.equal(tok.decode(indices), images)
    back = load_tokenizer(tok.save_pretrained(tmp_path / "vae-gq"))
    assert torch.equal(back.encode(x), indices) and torch.equal(back.decode(indices), images)


class _ToyVAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.dec = torch.nn.ConvTranspose2d(4, 3, 4, stride=4)

    def encode(self, x):
        return self.enc(x).chunk(2, dim=1)

    def decode(self, z):
        return self.dec(z)


def test_from_gaussian_vae_any_module(tmp_path):
    torch.manual_seed(0)
    vae = _ToyVAE()
    tok = from_gaussian_vae(vae, codebook_size=64, dim=2, latent_channels=4)
    x = _images(size=16)
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        gq = GaussianQuant(64, 2)
        expected = gq.encode(mu, logvar)
        assert torch.equal(tok.encode(x), expected)
        assert torch.equal(tok.decode(expected), vae.decode(gq.decode(expected)))
    with pytest.raises(GaussquantError, match="latent_channels"):
        from_gaussian_vae(vae, codebook_size=64, dim=2)
    with pytest.raises(GaussquantError, match="module of your own"):
        tok.save_pretrained(tmp_path / "x")


# ----------------------------------------------------------------------------- README
def readme_example() -> str:
    """The README's public-API example: the python block after the `api-example` marker."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its api-example block"
    return match[1]


def test_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), ns)  # noqa: S102 - our own README
    assert ns["indices"].shape == (2, 2, 16, 16) and ns["codewords"].shape == (2, 8, 16, 16)
    assert torch.equal(ns["gq"].decode(ns["indices"]), ns["codewords"])
    assert isinstance(ns["tok"], Tokenizer) and ns["tokens"].shape == (2, 2, 16, 16)
    assert ns["recon"].shape == (2, 3, 64, 64)
    assert set(gaussquant.__all__) >= {"GaussianQuant", "load_tokenizer", "from_gaussian_vae"}


def test_import_official_from_a_hub_repository_offline(tmp_path):
    """`import-official NAME --hub REPO` downloads through hf_hub_download: from a pre-filled
    Hugging Face cache with HF_HUB_OFFLINE=1 it imports the same as the local file."""
    import numpy as np
    from test_official import FIXTURES, REFERENCE, official_state, save_lightning

    npz = np.load(REFERENCE / "official_models.npz")
    assert "unet" in FIXTURES
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = tmp_path / "hub" / "models--authors--gq"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    ckpt = repo / "snapshots" / commit / "sd3unet_gq_0.25.ckpt"
    save_lightning(official_state(npz, "unet"), ckpt)
    env = os.environ | {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    common = ["--params", str(ROOT / "params.yaml"), "--preset", "tiny", "--rate", RATE]
    argv = ["import-official", "sd3unet_gq_0.25.ckpt", "--hub", "authors/gq", *common]
    done = subprocess.run(
        [sys.executable, "-m", "gaussquant.cli", *argv, "--out", str(tmp_path / "hub.pt")],
        env=env,
        text=True,
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    from gaussquant.config import load_config
    from gaussquant.official import import_official

    cfg = load_config(ROOT / "params.yaml", "tiny")
    import_official(ckpt, tmp_path / "local.pt", cfg, rate=RATE)
    hub, local = (
        torch.load(tmp_path / "hub.pt", weights_only=True),
        torch.load(tmp_path / "local.pt", weights_only=True),
    )
    assert hub["extra"]["official"]["source_sha256"] == local["extra"]["official"]["source_sha256"]
    assert all(torch.equal(hub["model"][k], v) for k, v in local["model"].items())
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "gaussquant.cli",
            "import-official",
            "x.ckpt",
            "--hub",
            "authors/gq",
            *common,
            "--out",
            str(tmp_path / "x.pt"),
        ],
        env=env,
        text=True,
        capture_output=True,
    )
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "Hub file authors/gq/x.ckpt" in missing.stderr
