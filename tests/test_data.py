"""Data preparation and loading: the bundled photos, image folders (with bad files), the
prepared format (determinism, checksums, atomic output) and the deterministic loader."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from gaussquant.cli import main as cli_main
from gaussquant.data import (
    BUNDLED_PHOTOS,
    DataConfig,
    PreparedDataset,
    StepBatchSampler,
    bundled_photos,
    list_images,
    prepare,
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
        (dict(n_train=0), "data.n_train"),
        (dict(min_scale=0.0), "data.min_scale"),
        (dict(source="webdataset"), "data.source"),
    ],
)
def test_bad_data_config_is_a_config_error(edit, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        prepare(bundled_cfg(**edit), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


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
    assert manifest["counts"] == {"train": 4, "val": 2}
    assert [(s["split"], s["file"]) for s in manifest["skipped"]] == [
        ("train", "n02/corrupt.jpg"),
        ("train", "n02/trunc.jpg"),
    ]
    assert "truncated" in manifest["skipped"][1]["reason"]
    train = manifest["splits"]["train"]
    assert (train["found"], train["selected"], train["skipped"]) == (6, 6, 2)
    assert index_lines(tmp_path / "out", "train") == [
        "n01/a.png",
        "n01/b.JPEG",
        "n02/c.jpg",
        "n02/deep/d.png",
    ]
    images = np.concatenate(shards(tmp_path / "out", "train"))
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
    lines = index_lines(tmp_path / "sub", "train")
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
    argv = ["prepare-data", "--params", str(ROOT / "params.yaml"), "--profile", "tiny"]
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
