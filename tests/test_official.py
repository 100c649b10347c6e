"""Official checkpoints in and out (gaussquant.official) against the official implementation's
own outputs: tests/data/reference/official_models.npz holds small official UNet and ViT
encoder/decoder pairs (random weights under their checkpoint keys) with inputs and the outputs
the official modules computed; official_paper_keys.json every key and shape of the paper-size
official networks. See tests/data/reference/README.md."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import PARAMS, REFERENCE

from gaussquant.config import load_config
from gaussquant.errors import GaussquantError

NPZ = REFERENCE / "official_models.npz"
PAPER_KEYS = REFERENCE / "official_paper_keys.json"
TOL = 1e-5  # float32 rounding scale of these networks (json float64_vs_float32: up to 1.08e-5)
FIXTURES = {"unet": "unet_small", "vit": "vit_small"}
VIT_HEADS = 2  # vit_small's heads (a checkpoint does not store them)
RATE = "8"  # the tiny preset's rate (bits per position): m = 8 = the fixtures' z_channels, K = 256


@pytest.fixture(scope="module")
def npz():
    return np.load(NPZ)


def official_state(npz, arch: str) -> dict[str, torch.Tensor]:
    """The fixture's official state dict, keys as in a Lightning checkpoint's state_dict."""
    prefix = f"{FIXTURES[arch]}/state/"
    return {k[len(prefix) :]: torch.from_numpy(npz[k]) for k in npz.files if k.startswith(prefix)}


def save_lightning(state: dict, path, **extra) -> None:
    torch.save({"state_dict": state, "global_step": 7, "epoch": 1, **extra}, path)


def import_args(arch: str) -> dict:
    return {"rate": RATE, "vit_heads": VIT_HEADS if arch == "vit" else None}


@pytest.fixture(scope="module")
def imported(npz, tiny_cfg, tmp_path_factory):
    """arch -> (our checkpoint path, import metadata, the official checkpoint path)."""
    from gaussquant.official import import_official

    out = {}
    for arch in FIXTURES:
        d = tmp_path_factory.mktemp(f"official-{arch}")
        save_lightning(official_state(npz, arch), d / "official.ckpt")
        meta = import_official(d / "official.ckpt", d / "ours.pt", tiny_cfg, **import_args(arch))
        out[arch] = (d / "ours.pt", meta, d / "official.ckpt")
    return out


@pytest.fixture
def one_thread():
    """The official outputs were computed on 1 thread; more threads change the UNet's rounding."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(imported, arch):
    from gaussquant.checkpoint import load_autoencoder

    return load_autoencoder(imported[arch][0], arch=arch)[0]


def _max_diff(a: torch.Tensor, ref: np.ndarray) -> float:
    assert tuple(a.shape) == ref.shape
    return (a - torch.from_numpy(ref)).abs().max().item()


# ----------------------------------------------------------------------------- function parity


@pytest.mark.parametrize("arch", FIXTURES)
@torch.no_grad()
def test_imported_model_computes_the_official_outputs(npz, imported, one_thread, arch):
    model, f = _model(imported, arch), FIXTURES[arch]
    x = torch.from_numpy(npz[f"{f}/x"])
    mu = torch.from_numpy(npz[f"{f}/mu"])
    assert x.is_contiguous() and mu.is_contiguous()  # NCHW, as the official run
    raw = {"clamp": False} if arch == "vit" else {}
    diffs = {
        "moments": _max_diff(model.encoder(x), npz[f"{f}/moments"]),
        "decoded": _max_diff(model.decoder(mu, **raw), npz[f"{f}/decoded"]),
    }
    if arch == "vit":  # the official forward()/dequant() clamp to clamp_range [-1, 1]
        diffs["decoded_clamped"] = _max_diff(model.decoder(mu), npz[f"{f}/decoded_clamped"])
        assert np.abs(npz[f"{f}/decoded"]).max() > 1.2  # so the clamp is really exercised
    print(f"{arch} max abs diff vs official: {diffs}")
    assert max(diffs.values()) <= TOL, diffs


@pytest.mark.parametrize(
    "arch, key, what",
    [
        ("unet", "encoder.down.3.attn.0.qkv", "q/k swapped in the packed UNet attention"),
        ("vit", "encoder.blocks.0.qkv", "q/k rows swapped in the packed ViT in_proj"),
    ],
)
@torch.no_grad()
def test_parity_check_catches_a_q_k_mix_up(npz, imported, one_thread, arch, key, what):
    """The tolerance is far below what a plausible import mistake changes (json sensitivity)."""
    model, f = _model(imported, arch), FIXTURES[arch]
    for name in ("weight", "bias"):
        p = model.get_parameter(f"{key}.{name}")
        q, k, v = p.detach().clone().chunk(3, 0)
        p.copy_(torch.cat([k, q, v], 0))
    diff = _max_diff(model.encoder(torch.from_numpy(npz[f"{f}/x"])), npz[f"{f}/moments"])
    assert diff > 1000 * TOL, what


@pytest.mark.parametrize("arch", FIXTURES)
@torch.no_grad()
def test_gq_on_imported_moments_equals_gq_on_official_moments(npz, imported, tmp_path, arch):
    """Converted to GQ (gaussquant convert), the imported model's tokens are those of the official
    moments; GQ itself reproduces the official indices (tests/test_gaussian_quant.py)."""
    from gaussquant.checkpoint import load_autoencoder
    from gaussquant.stages.convert import convert_checkpoint

    f = FIXTURES[arch]
    convert_checkpoint(imported[arch][0], "gq", tmp_path / "gq.pt")
    model = load_autoencoder(tmp_path / "gq.pt")[0]
    ours = model.encode(torch.from_numpy(npz[f"{f}/x"])).indices
    official = model.bottleneck.encode(torch.from_numpy(npz[f"{f}/moments"]))
    assert ours.shape == (2, 1, 4, 4) and model.bottleneck.codebook_size == 256
    assert torch.equal(ours, official)
    assert len(ours.unique()) > 8  # 32 tokens, many distinct: not a degenerate result


@torch.no_grad()
def test_vit_evaluation_is_unclamped_by_default_as_official_eval(npz, imported, tiny_cfg):
    """The official eval.py scores encode() + decode(): no clamp. eval.clamp_output = true gives
    the clamped output of the official forward()."""
    from gaussquant.evaluate import reconstruct

    assert tiny_cfg.eval.clamp_output is False
    assert load_config(PARAMS, "paper").eval.clamp_output is False
    model, f = _model(imported, "vit"), FIXTURES["vit"]
    mu = torch.from_numpy(npz[f"{f}/mu"])
    default = reconstruct(model, mu, tiny_cfg.eval.clamp_output)
    assert _max_diff(default, npz[f"{f}/decoded"]) <= TOL and default.abs().max() > 1.2
    clamped = reconstruct(model, mu, True)
    assert _max_diff(clamped, npz[f"{f}/decoded_clamped"]) <= TOL
    unet = _model(imported, "unet")  # no clamp in the UNet configuration either way
    z = torch.from_numpy(npz["unet_small/mu"])
    assert torch.equal(reconstruct(unet, z, True), reconstruct(unet, z, False))


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("arch", FIXTURES)
def test_import_then_export_gives_back_every_official_tensor_bit_for_bit(
    npz, imported, tmp_path, arch
):
    from gaussquant.official import export_official

    path, meta, _ = imported[arch]
    official = official_state(npz, arch)
    meta_out = export_official(path, tmp_path / "back.ckpt")
    back = torch.load(tmp_path / "back.ckpt", weights_only=True)["state_dict"]
    assert set(back) == set(official) and meta_out["tensors"] == len(official)
    for key, tensor in official.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key
    assert meta["tensors_mapped"] == len(official) and meta["skipped_loss_tensors"] == 0
    assert (meta["method"], meta["rate"], meta["global_step"]) == ("tdc", RATE, 7)


@pytest.mark.parametrize(
    "method, config", [("vq", None), ("fsq", None), ("lfq", "sd3unet_lfq_16"), ("bsq", None)]
)
def test_trained_tokenizers_export_and_import_back_unchanged(tmp_path, method, config):
    """Baselines: VQ's codebook (regularization.embedding.weight) and FSQ's levels
    (regularization.levels) travel with the networks; LFQ/BSQ need the configuration name."""
    from gaussquant.checkpoint import read_checkpoint, save_checkpoint
    from gaussquant.models.autoencoder import build_autoencoder
    from gaussquant.official import export_official, import_official

    # the official UNet normalises with GroupNorm(32): ch 32 instead of the tiny preset's 8
    tiny_cfg = load_config(PARAMS, "tiny", ["model.unet.ch=32", "model.unet.num_groups=32"])
    torch.manual_seed(0)
    model = build_autoencoder(tiny_cfg, method, "unet", RATE)
    save_checkpoint(tmp_path / "ours.pt", model, tiny_cfg, method, "unet", RATE, 3)
    export_official(tmp_path / "ours.pt", tmp_path / "official.ckpt")
    exported = torch.load(tmp_path / "official.ckpt", weights_only=True)["state_dict"]
    if method == "vq":
        assert exported["regularization.embedding.weight"].shape == (256, 8)
    if method == "fsq":
        assert exported["regularization.levels"].tolist() == [4, 4, 4, 4]
    if method == "bsq":  # LFQ and BSQ look alike: the name decides
        with pytest.raises(GaussquantError, match="LFQ or BSQ"):
            import_official(tmp_path / "official.ckpt", tmp_path / "back.pt", tiny_cfg)
        config = "sd3unet_bsq_16"
    meta = import_official(
        tmp_path / "official.ckpt", tmp_path / "back.pt", tiny_cfg, config=config, rate=RATE
    )
    assert (meta["method"], meta["rate"]) == (method, RATE)
    back = read_checkpoint(tmp_path / "back.pt")["model"]
    original = model.state_dict()
    assert set(back) == set(original)
    assert all(torch.equal(back[k], v) for k, v in original.items())


def test_import_records_source_hash_and_configuration(npz, tiny_cfg, tmp_path):
    from gaussquant.checkpoint import read_checkpoint
    from gaussquant.io import sha256_file
    from gaussquant.official import import_official

    save_lightning(official_state(npz, "unet"), tmp_path / "o.ckpt")
    import_official(tmp_path / "o.ckpt", tmp_path / "ours.pt", tiny_cfg, rate=RATE)
    payload = read_checkpoint(tmp_path / "ours.pt")
    meta = payload["extra"]["official"]
    assert meta["source_sha256"] == sha256_file(tmp_path / "o.ckpt")
    assert meta["repo"] == "tongdaxu/VQ-VAE-from-Gaussian-VAE" and meta["config"] is None
    unet = payload["config"]["model"]["unet"]  # read off the shapes (the fixture's kwargs)
    kwargs = json.loads((REFERENCE / "official_models.json").read_text())["configs"]
    enc = kwargs["unet_small"]["encoder"]["kwargs"]
    assert unet["ch"] == enc["ch"] and unet["ch_mult"] == enc["ch_mult"]
    assert unet["num_res_blocks"] == enc["num_res_blocks"] and unet["attn_levels"] == [-1]
    assert unet["mid_attn"] is False and payload["config"]["model"]["latent_channels"] == 8


def test_cli_import_and_export_round_trip(npz, tmp_path):
    """`gaussquant import-official` / `export-official` end to end, loss.* skipped and counted."""
    state = official_state(npz, "vit")
    loss = {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.ones(2, 3)}
    save_lightning({**state, **loss}, tmp_path / "official.ckpt")
    cli = [sys.executable, "-m", "gaussquant.cli"]
    common = ["--params", str(PARAMS), "--preset", "tiny"]
    out = subprocess.run(
        [*cli, "import-official", str(tmp_path / "official.ckpt"), "--out", str(tmp_path / "o.pt")]
        + [*common, "--rate", RATE, "--vit-heads", str(VIT_HEADS)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert f"mapped {len(state)} official tensors, skipped 2 loss.* tensors" in out.stdout
    back = tmp_path / "back.ckpt"
    out = subprocess.run(
        [*cli, "export-official", str(tmp_path / "o.pt"), "--out", str(back)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    exported = torch.load(back, weights_only=True)["state_dict"]
    assert set(exported) == set(state)
    assert all(torch.equal(exported[k], v) for k, v in state.items())


# ----------------------------------------------------------------------------- errors


def test_missing_and_extra_keys_are_named(npz, tiny_cfg, tmp_path):
    from gaussquant.official import import_official

    state = official_state(npz, "unet")
    del state["decoder.up.2.upsample.conv.bias"]
    state["encoder.mid.attn_2.q.weight"] = torch.zeros(1)
    state["loss.logvar"] = torch.zeros(())
    save_lightning(state, tmp_path / "bad.ckpt")
    with pytest.raises(GaussquantError) as err:
        import_official(tmp_path / "bad.ckpt", tmp_path / "o.pt", tiny_cfg, rate=RATE)
    msg = str(err.value)
    assert "missing official keys: decoder.up.2.upsample.conv.bias" in msg
    assert "unexpected official keys: encoder.mid.attn_2.q.weight" in msg
    assert "(1 loss.* tensors skipped)" in msg and "loss.logvar" not in msg
    assert not (tmp_path / "o.pt").exists()


def test_shape_mismatch_names_both_tensors(npz, tiny_cfg, tmp_path):
    from gaussquant.official import import_official

    state = official_state(npz, "unet")
    state["decoder.conv_out.bias"] = torch.zeros(4)
    save_lightning(state, tmp_path / "bad.ckpt")
    with pytest.raises(GaussquantError, match=r"decoder\.conv_out\.bias \(4,\) -> "):
        import_official(tmp_path / "bad.ckpt", tmp_path / "o.pt", tiny_cfg, rate=RATE)


def test_export_refuses_a_unet_the_official_modules_cannot_compute(tiny_cfg, tmp_path):
    from gaussquant.checkpoint import save_checkpoint
    from gaussquant.models.autoencoder import build_autoencoder
    from gaussquant.official import export_official

    model = build_autoencoder(tiny_cfg, "tdc", "unet", RATE)  # GroupNorm(4)
    save_checkpoint(tmp_path / "ours.pt", model, tiny_cfg, "tdc", "unet", RATE, 0)
    with pytest.raises(GaussquantError, match=r"num_groups = 4; .*GroupNorm\(32\)"):
        export_official(tmp_path / "ours.pt", tmp_path / "official.ckpt")
    assert not (tmp_path / "official.ckpt").exists()


def test_missing_file_names_the_hugging_face_repository(tiny_cfg, tmp_path):
    from gaussquant.official import import_official

    with pytest.raises(GaussquantError, match="xutongda/GQModel"):
        import_official(tmp_path / "sd3unet_gq_0.25.ckpt", tmp_path / "o.pt", tiny_cfg)


def test_our_checkpoint_is_not_taken_for_an_official_one(imported, tiny_cfg, tmp_path):
    from gaussquant.official import import_official

    with pytest.raises(GaussquantError, match="already a gaussquant checkpoint"):
        import_official(imported["unet"][0], tmp_path / "o.pt", tiny_cfg)


# ----------------------------------------------------------------------------- paper size


@pytest.fixture(scope="module")
def paper_keys():
    return json.loads(PAPER_KEYS.read_text())["configs"]


def _official_shapes(entry: dict, parts=("encoder_keys", "decoder_keys")) -> dict:
    return {d["key"]: tuple(d["shape"]) for part in parts for d in entry[part]}


def test_paper_presets_map_one_to_one_onto_the_official_keys(paper_keys):
    from gaussquant.official import paper_presets

    presets = paper_presets(load_config(PARAMS, "paper"))
    counts = {}
    for name, entry in paper_keys.items():
        want, got = _official_shapes(entry), presets[name]
        assert set(got) == set(want), (name, sorted(set(got) ^ set(want))[:8])
        assert {k: v for k, v in got.items() if want[k] != v} == {}, name
        n_params = sum(int(np.prod(s)) for s in got.values())
        assert n_params == entry["encoder_n_params"] + entry["decoder_n_params"]
        counts[name] = len(got)
    print(f"paper presets, official keys mapped: {counts}")
    assert counts == {"sd3unet_gq_0.25": 116 + 158, "bsqvit_gq_0.25": 152 + 155}


@pytest.mark.parametrize("name", ["sd3unet_gq_0.25", "bsqvit_gq_0.25"])
def test_paper_checkpoint_layout_is_recognised_and_loads(paper_keys, name):
    """A state dict with every key of a released training checkpoint (meta tensors: shapes
    only) is recognised as the paper configuration and fills every tensor of our model."""
    from gaussquant.models.autoencoder import build_autoencoder
    from gaussquant.official import SKIPPED_PREFIX, official_to_ours, recognise

    base = load_config(PARAMS, "paper")
    shapes = _official_shapes(paper_keys[name], ("encoder_keys", "decoder_keys", "loss_keys"))
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    r = recognise(state, base, config=name)
    assert (r["method"], r["rate"], r["config"]) == ("tdc", "16", name)
    assert r["cfg"].model == base.model  # the paper's model sections, read off the shapes
    with torch.device("meta"):
        model = build_autoencoder(r["cfg"], "tdc", r["arch"], r["rate"])
    ours = official_to_ours(state, model, r["arch"], r["cfg"], "tdc", r["rate"])
    assert set(ours) == set(model.state_dict())
    assert sum(k.startswith(SKIPPED_PREFIX) for k in state) == 68


# ----------------------------------------------------------------------------- evaluate_official


def test_comparison_table_puts_ours_next_to_spec7(tmp_path):
    import pandas as pd

    from gaussquant.official import comparison_table, write_comparison

    runs = pd.DataFrame(
        [
            {"name": "sd3unet_gq_0.25", "bits_per_pixel": 0.25, "n_images": 3}
            | {"psnr": 28.0, "ssim": 0.8, "lpips": 0.05, "rfid": None},
            {"name": "bsqvit_gq_1.00", "bits_per_pixel": 1.0, "n_images": 3}
            | {"psnr": 31.0, "ssim": 0.9, "lpips": 0.02, "rfid": 0.5},
        ]
    )
    table = comparison_table(runs)
    unet, vit = table.iloc[0], table.iloc[1]
    assert unet["paper_psnr"] == 27.61 and unet["diff_psnr"] == pytest.approx(28.0 - 27.61)
    assert np.isnan(unet["rfid"]) and np.isnan(unet["diff_rfid"])  # eval.fid off: no rFID
    assert (vit["arch"], vit["bpp"], vit["paper_rfid"]) == ("vit", 1.0, 0.349)
    csv, md = write_comparison(table, tmp_path / "official", {"psnr": 2}, "caption")
    text = md.read_text()
    assert "| PSNR ours" in text and "+0.39" in text and "27.61" in text
    assert pd.read_csv(csv)["diff_lpips"].round(3).tolist() == [-0.009, -0.004]


def _workflow_copy(dst, weights, checkpoints: dict) -> None:
    """The workflow in ``dst`` on the tiny preset with ``official.checkpoints`` set and a
    0.25 bpp rate, so the fixture UNet stands in for sd3unet_gq_0.25."""
    import shutil

    import yaml

    root = PARAMS.parent
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "workflow", "profiles"):
        shutil.copytree(root / name, dst / name, ignore=ignore)
    for name in ("Snakefile", "environment.yml"):
        shutil.copy2(root / name, dst / name)
    params = yaml.safe_load(PARAMS.read_text())
    params["preset"] = "tiny"
    params["official"]["checkpoints"] = {k: str(v) for k, v in checkpoints.items()}
    # 16 bits per position (0.25 bpp at f8; C = 8, K = 256): GQ m = 4, 2 tokens x 8 bits
    params["presets"]["tiny"]["rates"] = [8, 16]
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dst / "weights").symlink_to(weights)


def _snakemake(repo, *args):
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{PARAMS.parent / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)


@pytest.mark.slow
@torch.no_grad()
def test_evaluate_official_target_end_to_end(npz, tmp_path, weights_dir):
    """`snakemake evaluate_official` on a checkpoint in the official format (the fixture UNet
    with a training checkpoint's loss tensor): imported, converted to GQ, evaluated on the tiny
    validation images, tabulated next to docs/method.md §7's sd3unet GQ 0.25 bpp numbers."""
    import pandas as pd

    from gaussquant.checkpoint import load_autoencoder, read_checkpoint
    from gaussquant.io import sha256_file

    ckpt = tmp_path / "hf" / "sd3unet_gq_0.25.ckpt"
    ckpt.parent.mkdir()
    save_lightning({**official_state(npz, "unet"), "loss.logvar": torch.zeros(())}, ckpt)
    repo = tmp_path / "repo"
    repo.mkdir()
    _workflow_copy(repo, weights_dir, {"sd3unet_gq_0.25": ckpt})
    out = _snakemake(repo, "evaluate_official")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = repo / "results" / "tiny"
    table = pd.read_csv(res / "tables" / "official.csv")
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["config"], row["arch"], row["method"], row["bpp"]) == (
        "sd3unet_gq_0.25",
        "unet",
        "gq",
        0.25,
    )
    assert row["bits_per_pixel"] == 0.25 and row["images"] == 16
    assert row["paper_psnr"] == 27.61 and row["paper_rfid"] == 0.529
    for key in ("psnr", "ssim", "lpips", "rfid"):
        diff = row[key] - row[f"paper_{key}"]  # the CSV holds 6 significant digits
        assert np.isfinite(row[key]) and row[f"diff_{key}"] == pytest.approx(diff, abs=1e-4)
    assert "| sd3unet_gq_0.25 |" in (res / "tables" / "official.md").read_text()
    metrics = json.loads((res / "eval" / "official-sd3unet_gq_0.25" / "metrics.json").read_text())
    assert metrics["method"] == "gq" and metrics["checkpoint"]["quantizer"]["dim"] == 4
    assert metrics["psnr"] == pytest.approx(row["psnr"], rel=1e-5)
    imported = read_checkpoint(res / "convert" / "official-sd3unet_gq_0.25" / "imported.pt")
    meta = imported["extra"]["official"]
    assert meta["source_sha256"] == sha256_file(ckpt) and meta["config"] == "sd3unet_gq_0.25"
    assert meta["skipped_loss_tensors"] == 1
    # the evaluated model computes the official function: its tokens on the fixture photos are
    # GQ's tokens of the official encoder outputs
    model = load_autoencoder(res / "convert" / "official-sd3unet_gq_0.25" / "model.pt")[0]
    ours = model.encode(torch.from_numpy(npz["unet_small/x"])).indices
    assert torch.equal(ours, model.bottleneck.encode(torch.from_numpy(npz["unet_small/moments"])))


def test_evaluate_official_missing_checkpoint_names_the_hugging_face_repo(tmp_path, weights_dir):
    missing = tmp_path / "hf" / "sd3unet_gq_0.25.ckpt"
    _workflow_copy(tmp_path, weights_dir, {"sd3unet_gq_0.25": missing})
    out = _snakemake(tmp_path, "-n", "evaluate_official")
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert f"{missing} not found" in log and "xutongda/GQModel" in log
