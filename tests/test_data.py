"""Data preparation and loading: the bundled photos, image folders (with bad files), the
prepared format (determinism, checksums, atomic output) and the deterministic loader."""

import dataclasses
import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from gaussquant import data as data_module
from gaussquant.cli import main as cli_main
from gaussquant.config import DataConfig
from gaussquant.data import (
    BUNDLED_PHOTOS,
    STEREO_PAIR,
    PreparedDataset,
    StepBatchSampler,
    bundled_photos,
    list_images,
    prepare,
    stereo_guard,
    verify_prepared,
)
from gaussquant.errors import ConfigError, GaussquantError
from gaussquant.io import sha256_file

ROOT = Path(__file__).resolve().parents[1]
RES = 32


def bundled_cfg(**kw):
    base = dict(source="bundled", resolution=RES, n_train=40, n_val=12, shard_size=16)
    return DataConfig(**{**base, **kw})


def shards(root, split):
    return [np.load(p) for p in sorted((Path(root) / split).glob("shard-*.npy"))]


def index_lines(root, split):
    return (Path(root) / split / "index.txt").read_text().splitlines()


def index_rows(root, split):
    """The folder index's rows: [relative path, bytes, width, height(, sha256)]."""
    text = gzip.decompress((Path(root) / split / "index.tsv.gz").read_bytes()).decode()
    return [line.split("\t") for line in text.splitlines()]


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundled") / "data"
    return out, prepare(bundled_cfg(), out, progress=False)


# ----------------------------------------------------------------------------- bundled photos


def test_bundled_photos_are_12_distinct_real_rgb_photos():
    photos = bundled_photos()
    assert tuple(photos) == BUNDLED_PHOTOS and len(photos) == 12
    assert photos["astronaut"].shape == (512, 512, 3)
    assert photos["china"].shape == (427, 640, 3) and photos["flower"].shape == (427, 640, 3)
    assert photos["grace_hopper"].shape == (600, 512, 3)
    digests = set()
    for name, photo in photos.items():
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3, name
        assert min(photo.shape[:2]) >= 300, name
        # photographs, not synthetic images: many distinct colours, colour channels differ
        assert len(np.unique(photo.reshape(-1, 3)[::7], axis=0)) > 5000, name
        assert not np.array_equal(photo[..., 0], photo[..., 1]), name
        digests.add(photo.tobytes())
    assert len(digests) == 12


def test_prepare_bundled_counts_shapes_and_disjoint_photos(bundled):
    out, manifest = bundled
    assert manifest["counts"] == {"train": 40, "val": 12}
    assert [s.shape[0] for s in shards(out, "train")] == [16, 16, 8]  # shard_size 16
    for split, n in (("train", 40), ("val", 12)):
        images = np.concatenate(shards(out, split))
        assert images.shape == (n, RES, RES, 3) and images.dtype == np.uint8
        assert images.std() > 10  # real image content
        assert len(index_lines(out, split)) == n
    val_names = {line.split()[0] for line in index_lines(out, "val")}
    train_names = {line.split()[0] for line in index_lines(out, "train")}
    assert val_names <= {"coffee", "grace_hopper"} and not train_names & {"coffee", "grace_hopper"}
    photos = manifest["splits"]
    assert set(photos["val"]["photos"]) == {"coffee", "grace_hopper"}
    assert set(photos["train"]["photos"]) == set(BUNDLED_PHOTOS) - {"coffee", "grace_hopper"}


def test_bundled_crops_are_the_recorded_boxes_of_the_photos(bundled):
    """Each crop equals the recorded box of its photo, resized; the box side is a fraction in
    [min_scale, 1] of the short side and never smaller than the resolution."""
    out, _ = bundled
    photos = bundled_photos()
    images = np.concatenate(shards(out, "train"))
    for image, line in zip(images, index_lines(out, "train")):
        name, box = line.split()
        x0, y0, side = (float(v) for v in box.removeprefix("box=").split(","))
        h, w = photos[name].shape[:2]
        assert 0.25 * min(h, w) - 1e-3 <= side <= min(h, w) + 1e-3 and side >= RES - 1e-3
        assert 0 <= x0 <= w - side + 1e-3 and 0 <= y0 <= h - side + 1e-3
        box = (x0, y0, x0 + side, y0 + side)
        ref = Image.fromarray(photos[name]).resize((RES, RES), Image.Resampling.BICUBIC, box=box)
        np.testing.assert_array_equal(np.asarray(ref), image, err_msg=line)


def test_prepare_is_deterministic_and_seeded(bundled, tmp_path):
    out, manifest = bundled
    again = prepare(bundled_cfg(), tmp_path / "again", progress=False)
    assert again == manifest
    for split in ("train", "val"):
        for a, b in zip(
            sorted((out / split).iterdir()), sorted((tmp_path / "again" / split).iterdir())
        ):
            assert a.name == b.name and a.read_bytes() == b.read_bytes()
    other = prepare(bundled_cfg(seed=1), tmp_path / "seed1", progress=False)
    assert other["sha256"] != manifest["sha256"]


def test_manifest_checksums_and_verify(bundled, tmp_path):
    out, manifest = bundled
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for split in ("train", "val"):
        for shard in manifest["splits"][split]["shards"]:
            assert sha256_file(out / split / shard["file"]) == shard["sha256"]
    assert verify_prepared(out) == manifest

    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    shard = bad / "train" / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # one flipped pixel: same shape, different checksum
    shard.write_bytes(bytes(data))
    verify_prepared(bad, checksums=False)  # headers still fine
    with pytest.raises(GaussquantError, match="shard-00001.npy: checksum.*gaussquant prepare-data"):
        verify_prepared(bad)
    shard.write_bytes(bytes(data[: len(data) // 2]))  # truncated: caught without hashing
    with pytest.raises(GaussquantError, match="shard-00001.npy.*gaussquant prepare-data"):
        verify_prepared(bad, checksums=False)
    shard.unlink()
    with pytest.raises(GaussquantError, match="shard-00001.npy: shard missing"):
        verify_prepared(bad)
    with pytest.raises(GaussquantError, match="manifest.json missing.*gaussquant prepare-data"):
        verify_prepared(tmp_path / "nothing")


@pytest.mark.parametrize(
    "edit, match",
    [
        (dict(val_photos=["lena"]), "data.val_photos: unknown photo"),
        (dict(val_photos=["motorcycle_left"]), "stereo pair"),
        (dict(val_split="pixels"), "data.val_split: 'pixels' is not allowed; allowed: photos, reg"),
        (
            dict(val_split="region", val_region=0.0),
            r"data.val_region: must be in \(0, 1\), got 0.0",
        ),
        (
            dict(val_split="region", val_region=1.0),
            r"data.val_region: must be in \(0, 1\), got 1.0",
        ),
        (dict(val_region=-0.1), "data.val_region"),
        (dict(n_train=0), "data.n_train"),
        (dict(min_scale=0.0), "data.min_scale"),
        (dict(source="webdataset"), "data.source"),
        (dict(verify="full"), "data.verify: 'full' is not allowed; allowed: decode, header"),
    ],
)
def test_bad_data_config_is_a_config_error(edit, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        prepare(bundled_cfg(**edit), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- held-out regions


def region_cfg(**kw):
    return bundled_cfg(val_split="region", n_train=64, n_val=32, **kw)


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    out = tmp_path_factory.mktemp("region") / "data"
    return out, prepare(region_cfg(), out, progress=False)


def boundary(name, val_region=0.25):
    """The first held-out column b of a photo, and where its training columns stop."""
    w = bundled_photos()[name].shape[1]
    b = round(w * (1 - val_region))
    return b, b - stereo_guard() if name == STEREO_PAIR[1] else b


def parsed_boxes(root, split):
    for line in index_lines(root, split):
        name, box = line.split()
        yield name, *(float(v) for v in box.removeprefix("box=").split(","))


def test_stereo_disparity_direction_and_guard():
    """A scene point at x_L in the left view is at x_R = x_L - d in the right view: the left
    view's pixels match the right view's at x - d far better than at x + d. The guard is the
    largest finite disparity, rounded up."""
    left, right, disparity = data_module._stereo_motorcycle()
    grey_l, grey_r = left.mean(axis=2), right.mean(axis=2)
    ys, xs = np.nonzero(np.isfinite(disparity))
    d = np.rint(disparity[ys, xs]).astype(int)
    err = {}
    for sign in (-1, 1):
        xr = xs + sign * d
        ok = (xr >= 0) & (xr < left.shape[1])
        err[sign] = np.abs(grey_l[ys[ok], xs[ok]] - grey_r[ys[ok], xr[ok]]).mean()
    assert err[-1] < 12 < 30 < err[1]  # measured 7.8 vs 45.0 grey levels
    finite = disparity[np.isfinite(disparity)]  # no ground truth: inf
    assert finite.min() > 0 and stereo_guard() - 1 < finite.max() <= stereo_guard()


def test_region_boxes_stay_in_their_columns(region):
    """Per photo, every training box lies in x < b (the right stereo view: x < b - guard) and
    every validation box in x >= b, as the manifest records; validation spans >= 6 photos."""
    out, manifest = region
    photos = bundled_photos()
    assert manifest["counts"] == {"train": 64, "val": 32}
    assert manifest["splits"]["train"]["stereo_guard"] == stereo_guard()
    for split in ("train", "val"):
        recorded = manifest["splits"][split]["photos"]
        assert list(recorded) == list(BUNDLED_PHOTOS)  # every photo contributes to both
        for name, x0, y0, side in parsed_boxes(out, split):
            h, w = photos[name].shape[:2]
            b, stop = boundary(name)
            lo, hi = (b, w) if split == "val" else (0, stop)
            assert recorded[name]["columns"] == [lo, hi], name
            assert lo - 1e-9 <= x0 and x0 + side <= hi + 1e-9, (split, name, x0, side)
            assert 0 <= y0 and y0 + side <= h + 1e-9
            assert side >= RES - 1e-9 or side >= min(hi - lo, h) - 1e-9  # upsample: region only
    val_names = {name for name, *_ in parsed_boxes(out, "val")}
    assert len(val_names) >= 6


@pytest.mark.parametrize("split", ["train", "val"])
def test_region_crops_never_read_the_other_split_columns(region, tmp_path, monkeypatch, split):
    """Painting over every column a split may not use (the other split's strip, and the right
    view's guard) leaves that split's crops byte-identical: the resampling filter reads no pixel
    outside the region."""
    out, manifest = region
    painted = {}
    for name, photo in bundled_photos().items():
        b, stop = boundary(name)
        photo = photo.copy()
        if split == "train":
            photo[:, stop:] = 255
        else:
            photo[:, :b] = 255
        painted[name] = photo
    monkeypatch.setattr(data_module, "bundled_photos", lambda: painted)
    again = prepare(region_cfg(), tmp_path / "painted", progress=False)
    assert again["splits"][split]["shards"] == manifest["splits"][split]["shards"]
    other = "val" if split == "train" else "train"
    assert again["splits"][other]["shards"] != manifest["splits"][other]["shards"]


def test_region_crops_are_the_recorded_boxes_and_deterministic(region, tmp_path):
    out, manifest = region
    photos = bundled_photos()
    images = np.concatenate(shards(out, "val"))
    for image, (name, x0, y0, side) in zip(images, parsed_boxes(out, "val")):
        b = boundary(name)[0]
        box = (x0 - b, y0, x0 - b + side, y0 + side)
        strip = Image.fromarray(photos[name][:, b:])
        ref = strip.resize((RES, RES), Image.Resampling.BICUBIC, box=box)
        # the box went through photo columns and back: a rounding of the last float bit
        np.testing.assert_allclose(np.asarray(ref), image, atol=1, err_msg=name)
    again = prepare(region_cfg(), tmp_path / "again", progress=False)
    assert again == manifest
    for split in ("train", "val"):
        for a in sorted((out / split).iterdir()):
            assert a.read_bytes() == (tmp_path / "again" / split / a.name).read_bytes()


def test_photos_mode_ignores_val_region_and_region_mode_val_photos(bundled, region, tmp_path):
    """``val_region`` belongs to region mode, ``val_photos`` to photos mode."""
    _, manifest = bundled
    shares = prepare(bundled_cfg(val_region=0.5), tmp_path / "p", progress=False)
    assert shares["sha256"] == manifest["sha256"]
    held = prepare(region_cfg(val_photos=["rocket"]), tmp_path / "r", progress=False)
    assert held["sha256"] == region[1]["sha256"]


def test_region_too_wide_for_the_stereo_guard_is_an_error(tmp_path):
    # 741 px: b = round(741 * 0.05) = 37 < the guard, so the right view has no training column
    with pytest.raises(GaussquantError, match="data.val_region: 0.95 leaves motorcycle_right"):
        prepare(region_cfg(val_region=0.95), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_quick_preset_validates_on_held_out_strips_of_at_least_6_photos(tmp_path):
    from gaussquant.config import load_config

    cfg = load_config(ROOT / "params.yaml", preset="quick").data
    assert cfg.source == "bundled" and cfg.val_split == "region"
    manifest = prepare(dataclasses.replace(cfg, n_train=8), tmp_path / "q", progress=False)
    assert manifest["counts"]["val"] == cfg.n_val
    assert len({name for name, *_ in parsed_boxes(tmp_path / "q", "val")}) >= 6


# ----------------------------------------------------------------------------- image folders


def _save(path, array, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return array


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """ImageNet-like tree with nested class dirs, jpg/JPEG/png, grey and RGBA images, a corrupt
    and a truncated file, and files that are not images."""
    root = tmp_path_factory.mktemp("imgs")
    photo = bundled_photos()["chelsea"]
    rng = np.random.default_rng(0)
    wide = _save(root / "train/n01/a.png", photo[100:132, 100:164])  # 64x32: crop = cols 16:48
    _save(root / "train/n01/b.JPEG", photo[::5, ::5], quality=95)
    _save(root / "train/n02/c.jpg", photo[::3, ::4].mean(axis=2).astype(np.uint8))  # grey
    rgba = np.dstack([photo[:40, :40], np.full((40, 40), 128, np.uint8)])
    _save(root / "train/n02/deep/d.png", rgba)
    (root / "train/n02/corrupt.jpg").write_bytes(rng.bytes(3000))
    good = root / "tmp.jpg"
    _save(good, photo, quality=90)
    (root / "train/n02/trunc.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    (root / "train/n02/notes.txt").write_text("not an image")
    (root / "train/n02/._a.jpg").write_bytes(b"macOS resource fork")
    _save(root / "val/x.jpg", photo[50:250, 50:450], quality=90)
    _save(root / "val/y.png", photo[:35, :33])
    (root / "empty").mkdir()
    return root, wide


def folder_cfg(root, **kw):
    base = dict(source="folder", train_dir=str(root / "train"), val_dir=str(root / "val"))
    return DataConfig(**{**base, "resolution": RES, "shard_size": 3, **kw})


def test_list_images_is_recursive_sorted_and_case_insensitive(folder):
    root, _ = folder
    rel = [p.relative_to(root / "train").as_posix() for p in list_images(root / "train")]
    expected = ["n01/a.png", "n01/b.JPEG", "n02/c.jpg", "n02/corrupt.jpg", "n02/deep/d.png"]
    assert rel == expected + ["n02/trunc.jpg"]


def test_prepare_folder_skips_and_lists_bad_files(folder, tmp_path):
    root, wide = folder
    manifest = prepare(folder_cfg(root), tmp_path / "out", workers=1, progress=False)
    assert (tmp_path / "out" / "train" / "index.tsv.gz").exists()
    assert manifest["counts"] == {"train": 4, "val": 2}
    assert [(s["split"], s["file"]) for s in manifest["skipped"]] == [
        ("train", "n02/corrupt.jpg"),
        ("train", "n02/trunc.jpg"),
    ]
    assert "truncated" in manifest["skipped"][1]["reason"]
    train = manifest["splits"]["train"]
    assert (train["found"], train["selected"], train["skipped"]) == (6, 6, 2)
    rows = index_rows(tmp_path / "out", "train")
    assert [r[0] for r in rows] == ["n01/a.png", "n01/b.JPEG", "n02/c.jpg", "n02/deep/d.png"]
    for rel, size, w, h in rows:  # no hashes by default
        with Image.open(root / "train" / rel) as im:
            assert (int(size), int(w), int(h)) == ((root / "train" / rel).stat().st_size, *im.size)
    assert train["kind"] == "index" and train["bytes"] == sum(int(r[1]) for r in rows)
    assert not list((tmp_path / "out").rglob("*.npy"))  # read in place: no pixel copy
    ds = PreparedDataset(tmp_path / "out", "train")
    images = np.stack([ds.uint8(i) for i in range(len(ds))])
    assert images.shape == (4, RES, RES, 3)
    np.testing.assert_array_equal(
        images[0], wide[:, 16:48]
    )  # short side already 32: pure center crop
    assert np.array_equal(images[2][..., 0], images[2][..., 2])  # grey -> 3 equal channels
    verify_prepared(tmp_path / "out")

    # the process pool gives the same bytes; n_train keeps a seeded subset in path order
    pooled = prepare(folder_cfg(root), tmp_path / "pool", workers=2, progress=False)
    assert pooled["sha256"] == manifest["sha256"]
    sub = prepare(folder_cfg(root, n_train=3), tmp_path / "sub", workers=1, progress=False)
    assert sub["splits"]["train"]["selected"] == 3
    lines = [r[0] for r in index_rows(tmp_path / "sub", "train")]
    assert lines == sorted(lines) and len(lines) + sub["splits"]["train"]["skipped"] == 3


def test_strict_fails_naming_the_file_and_leaves_nothing(folder, tmp_path):
    root, _ = folder
    with pytest.raises(GaussquantError, match=r"corrupt\.jpg: cannot read image"):
        prepare(folder_cfg(root, strict=True), tmp_path / "out", workers=2, progress=False)
    trunc_only = tmp_path / "t"
    (trunc_only / "k").mkdir(parents=True)
    (trunc_only / "k" / "trunc.jpg").write_bytes((root / "train/n02/trunc.jpg").read_bytes())
    _save(trunc_only / "k" / "ok.png", np.zeros((40, 40, 3), np.uint8))
    cfg = folder_cfg(root, strict=True, train_dir=str(trunc_only))
    with pytest.raises(
        GaussquantError, match=r"trunc\.jpg: cannot read image \(OSError: .*truncated"
    ):
        prepare(cfg, tmp_path / "out", workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no output, no temp dir left


def _jpegs(root, sizes, seed=0):
    """JPEGs of the given (width, height): views of a bundled photo, quality 90."""
    photo = Image.fromarray(bundled_photos()["astronaut"])
    for i, size in enumerate(sizes):
        path = root / f"c{i % 2}" / f"img_{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        box = (i * 7, i * 5, 512 - i * 3, 512 - i * 11)
        photo.resize(size, Image.Resampling.BICUBIC, box=box).save(path, quality=90)
    return root


@pytest.mark.parametrize("res", [32, 256])
def test_folder_images_match_torchvision_resize_and_center_crop(tmp_path, res):
    """The loader's images equal the official preprocessing (torchvision Resize(res), bilinear
    on the PIL image, then CenterCrop(res)) bit for bit: landscape, portrait, odd sizes whose
    long side truncates and whose crop offset rounds, a square, one already at res, and images
    smaller than res (upsampled)."""
    transforms = pytest.importorskip("torchvision.transforms")
    official = transforms.Compose([transforms.Resize(res), transforms.CenterCrop(res)])
    sizes = [(500, 375), (375, 500), (333, 257), (259, 401), (300, 300), (res + 41, res)]
    sizes += [(res // 2 + 3, res // 3 + 5)]
    root = _jpegs(tmp_path / "jpeg", sizes)
    cfg = DataConfig(source="folder", train_dir=str(root), val_dir=str(root), resolution=res)
    prepare(cfg, tmp_path / "out", workers=1, progress=False)
    ds = PreparedDataset(tmp_path / "out", "train")
    assert len(ds) == len(sizes)
    for i, path in enumerate(list_images(root)):
        with Image.open(path) as im:
            ref = np.asarray(official(im.convert("RGB")))
        np.testing.assert_array_equal(ds.uint8(i), ref, err_msg=str(path))
        ref_x = torch.from_numpy(ref.astype(np.float64)).permute(2, 0, 1) / 127.5 - 1
        torch.testing.assert_close(ds[i].double(), ref_x, rtol=0, atol=1e-7)


def test_index_hashes_changed_files_and_the_data_id(tmp_path):
    """Optional sha256s are recorded and checked at every read; without them a size change
    is still caught. The data id (manifest sha256) covers the files and the preprocessing
    (resolution), not the optional hashes or where the index was written."""
    root = _jpegs(tmp_path / "jpeg", [(64, 48)] * 4)
    cfg = DataConfig(source="folder", train_dir=str(root), val_dir=str(root), resolution=RES)
    plain = prepare(cfg, tmp_path / "plain", workers=1, progress=False)
    hashed_cfg = dataclasses.replace(cfg, hash=True)
    hashed = prepare(hashed_cfg, tmp_path / "hashed", workers=2, progress=False)
    rows = index_rows(tmp_path / "hashed", "train")
    paths = list_images(root)
    assert [r[4] for r in rows] == [sha256_file(p) for p in paths]
    assert hashed["sha256"] == plain["sha256"]
    other = prepare(dataclasses.replace(cfg, resolution=16), tmp_path / "r16", progress=False)
    assert other["sha256"] != plain["sha256"]

    blob = bytearray(paths[1].read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size, other content
    paths[1].write_bytes(bytes(blob))
    PreparedDataset(tmp_path / "plain", "train").files.read(1)  # size only: not caught
    name = paths[1].name
    with pytest.raises(GaussquantError, match=rf"{name}: changed .*sha256 differs"):
        PreparedDataset(tmp_path / "hashed", "train")[1]
    with pytest.raises(GaussquantError, match=rf"{name}: changed.*gaussquant prepare-data"):
        verify_prepared(tmp_path / "hashed", checksums=True)
    verify_prepared(tmp_path / "hashed")  # the default samples sizes only: cheap at every start
    paths[1].write_bytes(bytes(blob[:-10]))
    with pytest.raises(GaussquantError, match=rf"{name}: \d+ bytes, the index says"):
        verify_prepared(tmp_path / "plain")
    with pytest.raises(GaussquantError, match=rf"{name}: changed .*\d+ bytes, the index says"):
        PreparedDataset(tmp_path / "plain", "train")[1]
    paths[1].unlink()
    with pytest.raises(GaussquantError, match=rf"{name}: missing, the index says"):
        verify_prepared(tmp_path / "plain")
    index = tmp_path / "plain" / "train" / "index.tsv.gz"
    index.write_bytes(gzip.compress(b"x.jpg\t1\t1\t1\n"))
    with pytest.raises(GaussquantError, match=r"index.tsv.gz: checksum differs"):
        PreparedDataset(tmp_path / "plain", "train")


def test_header_verify_indexes_a_truncated_file_and_the_loader_names_it(folder, tmp_path):
    root, _ = folder
    cfg = folder_cfg(root, verify="header")
    manifest = prepare(cfg, tmp_path / "out", workers=1, progress=False)
    assert [s["file"] for s in manifest["skipped"]] == ["n02/corrupt.jpg"]  # no header
    ds = PreparedDataset(tmp_path / "out", "train")
    names = [ds.files.path(i).name for i in range(len(ds))]
    assert names == ["a.png", "b.JPEG", "c.jpg", "d.png", "trunc.jpg"]
    with pytest.raises(GaussquantError, match=r"trunc.jpg: cannot decode .*data.verify: decode"):
        ds[4]


def test_index_loader_is_deterministic_across_workers(tmp_path):
    """Decoding in DataLoader workers gives the batches of the main process, step by step,
    and a loader started at step k gives the batches k.. (a resumed run reads the same)."""
    root = _jpegs(tmp_path / "jpeg", [(70, 50), (50, 70), (90, 64)] * 4)
    cfg = DataConfig(source="folder", train_dir=str(root), val_dir=str(root), resolution=RES)
    prepare(cfg, tmp_path / "out", workers=1, progress=False)
    ds = PreparedDataset(tmp_path / "out", "train")
    assert len(pickle.dumps(ds)) < 10_000 and ds.kind == "index"

    def batches(start, workers):
        sampler = StepBatchSampler(len(ds), 4, steps=7, seed=5, start_step=start)
        return list(DataLoader(ds, batch_sampler=sampler, num_workers=workers))

    plain = batches(0, 0)
    assert len(plain) == 7 and all(torch.equal(a, b) for a, b in zip(batches(0, 2), plain))
    assert all(torch.equal(a, b) for a, b in zip(batches(4, 2), plain[4:]))


def test_storage_keys_are_not_run_settings():
    """Where the data is prepared and how it was checked do not change a training: moving
    it to scratch or adding hashes keeps the saved states resumable."""
    from gaussquant.config import DATA_STORAGE_KEYS, load_config
    from gaussquant.runstate import run_settings

    cfg = load_config(ROOT / "params.yaml", preset="tiny")
    rate = next(iter(cfg.rates))
    base = run_settings(cfg, "tdc", "unet", rate, "abc")
    edits = dict(prepared_dir="/scratch/x", verify="header", hash=True, shard_size=7)
    assert set(edits) == set(DATA_STORAGE_KEYS)
    moved = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **edits))
    assert run_settings(moved, "tdc", "unet", rate, "abc") == base
    other = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, resolution=64))
    assert run_settings(other, "tdc", "unet", rate, "abc") != base


@pytest.mark.parametrize(
    "train_dir, match",
    [
        ("empty", r"data.train_dir: no \.jpg/\.jpeg/\.png images found under '.*empty'"),
        ("missing", r"data.train_dir: '.*missing' does not exist; expected a folder"),
        ("val/x.jpg", r"data.train_dir: '.*x.jpg' is not a folder"),
    ],
)
def test_empty_or_wrong_folder_is_a_one_line_error(folder, tmp_path, train_dir, match):
    root, _ = folder
    with pytest.raises(GaussquantError, match=match) as err:
        prepare(folder_cfg(root, train_dir=str(root / train_dir)), tmp_path / "o", progress=False)
    assert "\n" not in str(err.value)


def test_cli_reports_a_bad_folder_in_one_line(folder, tmp_path, capsys):
    root, _ = folder
    argv = ["prepare-data", "--params", str(ROOT / "params.yaml"), "--preset", "tiny"]
    argv += ["--out", str(tmp_path / "o"), "--source", "folder", "--val-dir", str(root / "val")]
    assert cli_main(argv + ["--train-dir", str(root / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no .jpg/.jpeg/.png images found under" in err
    assert "Traceback" not in err
    assert cli_main(argv + ["--train-dir", str(root / "train"), "--no-progress"]) == 0
    assert "4 train + 2 val images" in capsys.readouterr().out


def test_existing_out_is_replaced_only_when_it_is_prepared_data(bundled, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    with pytest.raises(GaussquantError, match="not a prepared-data folder"):
        prepare(bundled_cfg(n_train=4, n_val=2), other, progress=False)
    assert (other / "keep.txt").exists()
    empty = tmp_path / "empty"  # Snakemake creates an output's parent folder beforehand
    empty.mkdir()
    prepare(bundled_cfg(n_train=4, n_val=2), empty, progress=False)
    again = prepare(bundled_cfg(n_train=5, n_val=2), empty, progress=False)
    assert read_counts(empty) == again["counts"] == {"train": 5, "val": 2}
    (empty / "manifest.json").unlink()  # what Snakemake removes before a rerun
    prepare(bundled_cfg(n_train=6, n_val=2), empty, progress=False)
    assert read_counts(empty) == {"train": 6, "val": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "other"]


def read_counts(root):
    return json.loads((root / "manifest.json").read_text())["counts"]


# ----------------------------------------------------------------------------- loading


def test_prepared_dataset_values_match_the_shards(bundled):
    out, _ = bundled
    ds = PreparedDataset(out, "train")
    images = np.concatenate(shards(out, "train"))
    assert len(ds) == 40 and ds.resolution == RES
    for i in (0, 15, 16, 39, -1):
        x = ds[i]
        assert x.shape == (3, RES, RES) and x.dtype == torch.float32 and x.is_contiguous()
        ref = torch.from_numpy(images[i].astype(np.float64)).permute(2, 0, 1) / 127.5 - 1
        torch.testing.assert_close(x.double(), ref, rtol=0, atol=1e-7)
    xs = torch.stack([ds[i] for i in range(len(ds))])
    assert xs.min() >= -1 and xs.max() <= 1
    assert xs.min() == -1 or images.min() > 0  # 0 maps to exactly -1
    with pytest.raises(IndexError):
        ds[40]
    assert len(pickle.dumps(ds)) < 10_000  # workers get the paths, not the pixels
    with pytest.raises(GaussquantError, match="gaussquant prepare-data"):
        PreparedDataset(out.parent / "nope", "train")


def test_step_order_is_a_function_of_seed_and_step(bundled):
    """The training order (StepBatchSampler): epochs are permutations seeded by seed + epoch,
    a run started at step k yields exactly the batches k.. of a run from step 0, processes take
    disjoint slices of the global batch, and DataLoader workers do not change the batches."""
    out, _ = bundled
    full = list(StepBatchSampler(40, 16, steps=6, seed=3))  # 40 // 16 = 2 steps per epoch
    assert len(full) == 6 and all(len(b) == 16 for b in full)
    epoch0 = full[0] + full[1]
    assert len(set(epoch0)) == 32 and set(epoch0) <= set(range(40))
    assert full[0] == torch.randperm(40, generator=torch.Generator().manual_seed(3))[:16].tolist()
    assert full[2] != full[0]  # the next epoch is a new permutation
    assert list(StepBatchSampler(40, 16, steps=6, seed=3, start_step=3)) == full[3:]
    ranks = [list(StepBatchSampler(40, 8, 6, 3, rank=r, world=2)) for r in (0, 1)]
    assert all(set(a).isdisjoint(b) for a, b in zip(*ranks))
    with pytest.raises(GaussquantError, match="one step needs 64"):
        StepBatchSampler(40, 32, 6, 3, world=2)

    ds = PreparedDataset(out, "train")
    plain = list(DataLoader(ds, batch_sampler=StepBatchSampler(40, 16, 3, 3)))
    torch.testing.assert_close(plain[1], torch.stack([ds[i] for i in full[1]]))
    workers = list(DataLoader(ds, batch_sampler=StepBatchSampler(40, 16, 3, 3), num_workers=2))
    assert len(workers) == 3 and all(torch.equal(a, b) for a, b in zip(workers, plain))


@pytest.mark.parametrize("setting", ["", "$GQ_TEST_SCRATCH/gq", "$GQ_TEST_UNSET/gq"])
def test_prepared_dir_puts_the_workflow_data_on_scratch(setting, tmp_path, monkeypatch):
    """data.prepared_dir moves the prepared data of the workflow (per preset; variables
    expanded) and every rule reads it there; an unset variable is an error, not a folder."""
    import yaml
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    monkeypatch.setenv("GQ_TEST_SCRATCH", str(tmp_path))
    monkeypatch.delenv("GQ_TEST_UNSET", raising=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["preset"], params["data"]["prepared_dir"] = "tiny", setting
    with SnakemakeApi(OutputSettings()) as api:

        def rules():
            wf = api.workflow(
                resource_settings=ResourceSettings(cores=1),
                config_settings=ConfigSettings(config=params),
                snakefile=ROOT / "Snakefile",
                workdir=ROOT,
            )
            return {r.name: r for r in wf._workflow.rules}

        if "UNSET" in setting:
            with pytest.raises(Exception, match=r"data.prepared_dir: .*not set"):
                rules()
            return
        found = rules()
    manifest = str(tmp_path / "gq" / "tiny" if setting else "results/tiny/data") + "/manifest.json"
    assert list(found["prepare_data"].output) == [manifest]
    for name in ("train", "evaluate", "fid_reference"):
        assert found[name].input["data"] == manifest, name


@pytest.mark.parametrize("world", [2, 4])
def test_processes_split_exactly_the_single_process_batch(world):
    """At every step, process r's batch is slice r of the global batch a single process with
    ``world`` times the batch would draw: together the processes see that batch, each image
    once, in every epoch (the multi-process training equivalence rests on it)."""
    n, b, steps = 50, 3, 9  # 50 // 12 = 4 steps per epoch (world 4): crosses epochs
    single = list(StepBatchSampler(n, b * world, steps, seed=5))
    ranks = [list(StepBatchSampler(n, b, steps, 5, rank=r, world=world)) for r in range(world)]
    for step in range(steps):
        parts = [ranks[r][step] for r in range(world)]
        assert all(len(p) == b for p in parts), step
        assert sum(parts, []) == single[step], step
