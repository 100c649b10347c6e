"""Data: prepare the bundled photos as uint8 shards and image folders as an index, then load.

Two sources, one prepared folder:

- ``bundled``: the 12 real RGB photographs that ship inside the scikit-image (9), scikit-learn
  (2) and matplotlib (1) wheels, cut into random square crops, stored as shards. Validation
  holds out whole photos (``val_split: photos``, ``val_photos``) or the right-most strip of
  every photo (``val_split: region``, ``val_region``); either way no validation pixel is ever
  seen in training. Offline.
- ``folder``: any image folder (ImageNet layout or flat; ``*.jpg|*.jpeg|*.png`` found
  recursively, case-insensitive), read in place: ``prepare-data`` writes an index (relative
  paths, byte sizes, image sizes, optional sha256; ~20 bytes per image gzipped) and each
  worker decodes, resizes and center-crops on the fly as the official code does (``PREPROCESS``,
  docs/method.md §5, §6). No copy of the pixels: ImageNet's uint8 shards at 256 px were ~262 GB.

Prepared format (``gaussquant prepare-data --out DIR``)::

    DIR/manifest.json            counts, source, resolution, seed, checksums, skipped files
    DIR/{train,val}/shard-00000.npy   bundled: uint8 (N, H, W, 3), ``shard_size`` images each
    DIR/{train,val}/index.txt    bundled: one line per image: its photo + crop box
    DIR/{train,val}/index.tsv.gz folder: path, bytes, width, height[, sha256] per image

The directory is written into a temporary sibling and renamed into place, so an interrupted
run leaves nothing that looks done. The same config gives byte-identical files; the
manifest's ``sha256`` identifies the images (for an index: the files and the preprocessing).
:class:`PreparedDataset` serves float32 ``x`` of shape (3, H, W) in [-1, 1].
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import gzip
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from gaussquant import __version__
from gaussquant.errors import GaussquantError
from gaussquant.io import sha256_bytes, sha256_file
from gaussquant.photos import BUNDLED_PHOTOS, STEREO_PAIR

if TYPE_CHECKING:  # the values only: the prepare_data rule has them as params, not this code
    from gaussquant.sections import DataConfig

SPLITS = ("train", "val")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FORMAT = "gaussquant-prepared/1"
MANIFEST = "manifest.json"


# ----------------------------------------------------------------------------- bundled photos


def _load_photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    if name == "grace_hopper":
        from matplotlib.cbook import get_sample_data

        with get_sample_data("grace_hopper.jpg") as f, Image.open(f) as im:
            return np.asarray(im.convert("RGB"))
    if name in STEREO_PAIR:
        left, right, _disparity = _stereo_motorcycle()
        return left if name == STEREO_PAIR[0] else right
    import skimage.data

    return getattr(skimage.data, name)()


@functools.lru_cache(maxsize=1)
def _stereo_motorcycle() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-image's rectified stereo pair: (left, right, disparity of the left view)."""
    import skimage.data

    return skimage.data.stereo_motorcycle()


@functools.lru_cache(maxsize=1)
def _bundled_photos() -> tuple[tuple[str, np.ndarray], ...]:
    out = []
    for name in BUNDLED_PHOTOS:
        try:
            photo = np.ascontiguousarray(_load_photo(name), dtype=np.uint8)
        except ImportError as err:
            raise GaussquantError(
                f"bundled photo {name!r} needs {err.name} (pip install scikit-image "
                "scikit-learn matplotlib)"
            ) from None
        if photo.ndim != 3 or photo.shape[2] != 3:
            raise GaussquantError(
                f"bundled photo {name!r} has shape {photo.shape}, expected (H, W, 3); "
                "an unexpected scikit-image/scikit-learn/matplotlib version?"
            )
        photo.setflags(write=False)
        out.append((name, photo))
    return tuple(out)


def bundled_photos() -> dict[str, np.ndarray]:
    """The 12 bundled photographs: read-only uint8 (H, W, 3) arrays in ``BUNDLED_PHOTOS`` order."""
    return dict(_bundled_photos())


@functools.lru_cache(maxsize=1)
def stereo_guard() -> int:
    """Columns (px) by which the right stereo view's training region stops short of the
    validation boundary: the ceiling of the largest finite disparity of the pair.

    A scene point at column x_L of the left view is at x_R = x_L - d in the right view. Checked
    on the data (scikit-image 0.26): left[y, x] matches right[y, x - d] (mean |grey difference|
    7.8 over the 332k pixels with a disparity) and not right[y, x + d] (45.0); the finite d lie
    in [7.2, 59.9] px (7 % of the map is inf: no ground truth; scikit-image's docstring states
    the opposite direction and NaN). So the left view's strip x_L >= b shows up in the right
    view at x_R >= b - max d, and the right view trains on x_R < b - ceil(max d) only
    (tests/test_data.py asserts the direction).
    """
    try:
        left, _right, disparity = _stereo_motorcycle()
    except Exception as err:  # no scikit-image, or its data cannot be read: no guard, no split
        raise GaussquantError(
            f"cannot read the stereo pair's disparity map for data.val_split: region "
            f"({type(err).__name__}: {err}); pip install scikit-image"
        ) from None
    d = np.asarray(disparity, dtype=np.float64)
    finite = d[np.isfinite(d)]
    if d.shape != left.shape[:2] or finite.size == 0 or finite.min() < 0:
        raise GaussquantError(
            f"the stereo pair's disparity map (shape {d.shape}, {finite.size} finite values) is "
            f"not a non-negative map of the left view {left.shape[:2]}; an unexpected "
            "scikit-image version? data.val_split: region cannot bound the stereo guard"
        )
    return math.ceil(finite.max())


def bundled_regions(cfg: DataConfig, split: str) -> dict[str, tuple[int, int]]:
    """The column range ``[x0, x1)`` of each bundled photo that ``split``'s crops come from.

    ``photos``: the whole width of the split's photos. ``region``: every photo, validation
    from ``x >= b``, training from ``x < b`` (the right stereo view: ``x < b - stereo_guard()``),
    ``b = round(w * (1 - val_region))``.
    """
    photos = bundled_photos()
    if cfg.val_split == "photos":
        held = set(cfg.val_photos)
        return {k: (0, v.shape[1]) for k, v in photos.items() if (k in held) == (split == "val")}
    regions = {}
    for name, photo in photos.items():
        w = photo.shape[1]
        b = round(w * (1.0 - cfg.val_region))
        stop = b - stereo_guard() if name == STEREO_PAIR[1] else b
        regions[name] = (b, w) if split == "val" else (0, stop)
        if regions[name][1] <= regions[name][0]:
            raise GaussquantError(
                f"data.val_region: {cfg.val_region} leaves {name} (width {w}) no {split} "
                "columns; choose a share nearer 0.25"
            )
    return regions


def _bundled_crops(
    photos: dict[str, np.ndarray],
    regions: dict[str, tuple[int, int]],
    n: int,
    cfg: DataConfig,
    rng: np.random.Generator,
) -> Iterator[tuple[np.ndarray, str]]:
    """``n`` random square crops inside the ``regions`` (column ranges) of their photos: photo
    uniform, side fraction log-uniform, position uniform. The side is a fraction of the whole
    photo's short side (both splits zoom alike), clipped to the region."""
    resolution = cfg.resolution
    names = list(regions)
    # only the region's pixels exist for the resampling filter: none from outside is read
    images = {k: Image.fromarray(photos[k][:, x0:x1]) for k, (x0, x1) in regions.items()}
    for _ in range(n):
        name = names[rng.integers(len(names))]
        short = min(photos[name].shape[:2])
        w, h = images[name].size
        # never upsample, unless the photo's (or the region's) short side is below the resolution
        lo = min(1.0, max(cfg.min_scale, resolution / short))
        hi = max(lo, cfg.max_scale)
        side = min(short * math.exp(rng.uniform(math.log(lo), math.log(hi))), w, h)
        x0, y0 = rng.uniform(0.0, w - side), rng.uniform(0.0, h - side)
        box = (x0, y0, x0 + side, y0 + side)
        # resize(box=...) resamples only the box: the same pixels as resizing the whole photo
        # to short side resolution/f and cropping, without the full-photo resize per crop.
        crop = images[name].resize((resolution, resolution), Image.Resampling.BICUBIC, box=box)
        x = x0 + regions[name][0]  # in photo columns; exact in photos mode (+ 0)
        yield np.asarray(crop), f"{name} box={x!r},{y0!r},{side!r}"  # exact: repr round-trips


# ----------------------------------------------------------------------------- image folders

# The official preprocessing of folder images (docs/method.md §5): torchvision ``Resize(res)``
# on the PIL image (bilinear, the short side to ``res``, the long side ``int(res * long /
# short)``; PIL's resize antialiases) then ``CenterCrop(res)`` (offsets ``round((side - res) /
# 2)``). Part of the data's id: a change here changes every image.
PREPROCESS = "torchvision Resize(bilinear, PIL) + CenterCrop"
INDEX = "index.tsv.gz"  # per split: relative path, bytes, width, height[, sha256] per line


def list_images(folder: str | os.PathLike, key: str = "folder") -> list[Path]:
    """Image files under ``folder`` (recursive, following links; extensions case-insensitive;
    hidden files such as macOS ``._x.jpg`` ignored), sorted by relative path. ``key`` names
    the parameter in errors."""
    root = Path(folder)
    what = "a folder of .jpg/.jpeg/.png images (e.g. ImageNet train/ with one subfolder per class)"
    if not root.exists():
        raise GaussquantError(f"{key}: {str(root)!r} does not exist; expected {what}")
    if not root.is_dir():
        raise GaussquantError(f"{key}: {str(root)!r} is not a folder; expected {what}")
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                files.append(Path(dirpath, name))
    if not files:
        raise GaussquantError(
            f"{key}: no .jpg/.jpeg/.png images found under {str(root)!r} "
            f"(searched recursively); expected {what}"
        )
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def resize_center_crop(im: Image.Image, resolution: int) -> np.ndarray:
    """``PREPROCESS`` of an RGB PIL image: uint8 (resolution, resolution, 3), writable."""
    w, h = im.size
    long = int(resolution * max(w, h) / min(w, h))  # truncated, as torchvision
    size = (resolution, long) if w <= h else (long, resolution)
    if size != (w, h):  # torchvision returns the image itself when the size is already right
        im = im.resize(size, Image.Resampling.BILINEAR)
    left, top = (int(round((s - resolution) / 2.0)) for s in size)
    return np.array(im.crop((left, top, left + resolution, top + resolution)))


def load_center_crop(file: str | os.PathLike | IO[bytes], resolution: int) -> np.ndarray:
    """Decode an image file (path or binary file object), convert it to RGB and apply
    ``PREPROCESS``. Raises whatever PIL raises on bad files."""
    with Image.open(file) as im:
        im.load()  # PIL decodes lazily: force it so truncated files fail here
        rgb = im.convert("RGB")
    return resize_center_crop(rgb, resolution)


def _check_job(job: tuple[str, str, bool]) -> tuple[tuple[int, int, int, str] | None, str | None]:
    """(bytes, width, height, sha256 or "") of one image file, or the reason it is unusable."""
    path, verify, with_hash = job
    try:
        with open(path, "rb") as f:
            data = f.read() if with_hash or verify == "decode" else None
            size = len(data) if data is not None else os.fstat(f.fileno()).st_size
            with Image.open(io.BytesIO(data) if data is not None else f) as im:
                if verify == "decode":
                    im.load()
                    im.convert("RGB")
                w, h = im.size
        digest = hashlib.sha256(data).hexdigest() if with_hash else ""
        return (size, w, h, digest), None
    except Exception as err:  # any reader failure is a bad file, reported by name
        return None, f"{type(err).__name__}: {err}"


def _checked(
    paths: list[Path], cfg: DataConfig, workers: int, progress: bool, desc: str
) -> Iterator[tuple[Path, tuple[int, int, int, str] | None, str | None]]:
    """Check ``paths`` in order with a process pool (``workers`` <= 1: in this process)."""
    from tqdm import tqdm

    jobs = [(str(p), cfg.verify, cfg.hash) for p in paths]
    # fork where available: spawned workers would re-import torch (seconds each).
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
    pool = ctx.Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(_check_job, jobs, chunksize=64) if pool else map(_check_job, jobs)
        bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=None if progress else True)
        with bar:
            for path, (info, reason) in zip(paths, results):
                bar.update(1)
                yield path, info, reason
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _subset(paths: list[Path], n: int, rng: np.random.Generator) -> list[Path]:
    if n == 0 or n >= len(paths):
        return paths
    keep = np.sort(rng.choice(len(paths), size=n, replace=False))  # spread over classes, path order
    return [paths[i] for i in keep]


# ----------------------------------------------------------------------------- writing


def _write_split(split_dir: Path, items: Iterable[tuple[np.ndarray, str]], cfg: DataConfig) -> dict:
    """Write ``(image, source)`` items into shards; return the split's manifest entry."""
    resolution, shard_size = cfg.resolution, cfg.shard_size
    split_dir.mkdir(parents=True)
    buf = np.empty((shard_size, resolution, resolution, 3), np.uint8)
    shards, index, k = [], [], 0

    def flush() -> None:
        name = f"shard-{len(shards):05d}.npy"
        np.save(split_dir / name, buf[:k])
        shards.append({"file": name, "count": k, "sha256": sha256_file(split_dir / name)})

    for image, source in items:
        buf[k] = image
        index.append(source)
        k += 1
        if k == shard_size:
            flush()
            k = 0
    if k:
        flush()
    (split_dir / "index.txt").write_text("".join(line + "\n" for line in index))
    return {
        "kind": "shards",
        "count": len(index),
        "shape": [resolution, resolution, 3],
        "shards": shards,
        "index_sha256": sha256_file(split_dir / "index.txt"),
    }


def _prepare_split(cfg: DataConfig, split: str, tmp: Path, workers: int, progress: bool) -> dict:
    """Write ``tmp/split`` and return its manifest entry (skipped files under ``skipped_files``)."""
    n = cfg.n_train if split == "train" else cfg.n_val
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split)])  # one stream per split
    if cfg.source == "bundled":
        photos, regions = bundled_photos(), bundled_regions(cfg, split)
        entry = _write_split(tmp / split, _bundled_crops(photos, regions, n, cfg, rng), cfg)
        entry["photos"] = {  # which photos, and which of their columns [x0, x1), this split used
            k: {
                "shape": list(photos[k].shape),
                "sha256": sha256_bytes(photos[k].tobytes()),
                "columns": list(cols),
            }
            for k, cols in regions.items()
        }
        if cfg.val_split == "region" and split == "train":
            entry["stereo_guard"] = stereo_guard()
        return entry
    key, root = f"data.{split}_dir", Path(getattr(cfg, f"{split}_dir"))
    found = list_images(root, key)
    paths = _subset(found, n, rng)
    skipped: list[dict[str, str]] = []

    def items() -> Iterator[tuple[str, tuple[int, int, int, str]]]:
        checked = _checked(paths, cfg, workers, progress, f"index {split}")
        with contextlib.closing(checked):  # stop the pool now, also when strict raises
            for path, info, reason in checked:
                rel = path.relative_to(root).as_posix()
                if "\t" in rel or "\n" in rel:
                    info, reason = None, "a tab or newline in the file name"
                if info is not None:
                    yield rel, info
                elif cfg.strict:
                    fix = "fix or remove the file, or set data.strict: false to skip it"
                    raise GaussquantError(f"{path}: cannot read image ({reason}); {fix}")
                else:
                    skipped.append({"split": split, "file": rel, "reason": reason})

    entry = write_index(tmp / split, items(), cfg.resolution)
    if entry["count"] == 0:
        first = f"{skipped[0]['file']}: {skipped[0]['reason']}"
        raise GaussquantError(
            f"{key}: none of the {len(paths)} images under {str(root)!r} "
            f"could be read (first: {first})"
        )
    entry.update(dir=str(root.resolve()), found=len(found), selected=len(paths))
    entry.update(skipped=len(skipped), verify=cfg.verify)
    entry["skipped_files"] = skipped  # moved to the manifest's top-level list by prepare()
    return entry


def write_index(
    split_dir: Path, items: Iterable[tuple[str, tuple[int, int, int, str]]], resolution: int
) -> dict:
    """Write ``split_dir/INDEX`` (gzip, byte-identical for the same items) from ``(relative
    path, (bytes, width, height, sha256 or ""))`` items; return the split's manifest entry."""
    split_dir.mkdir(parents=True)
    text, content = hashlib.sha256(), hashlib.sha256()
    count = total = 0
    with gzip.GzipFile(split_dir / INDEX, "wb", mtime=0) as f:
        for rel, (size, w, h, digest) in items:
            line = f"{rel}\t{size}\t{w}\t{h}"
            content.update(f"{line}\n".encode())  # the optional hashes are not the content
            line = f"{line}\t{digest}\n" if digest else f"{line}\n"
            f.write(line.encode())
            text.update(line.encode())
            count, total = count + 1, total + size
    return {
        "kind": "index",
        "count": count,
        "shape": [resolution, resolution, 3],
        "index": INDEX,
        "index_sha256": text.hexdigest(),  # of the uncompressed text
        "content_sha256": content.hexdigest(),
        "bytes": total,
    }


def _content_lines(split: str, entry: dict, resolution: int) -> Iterator[str]:
    """What a split's images are, for the manifest's ``sha256``: shard checksums, or the
    index's files (path, bytes, size) and the preprocessing that turns them into images."""
    if entry.get("kind", "shards") == "shards":
        for shard in entry["shards"]:
            yield f"{split}/{shard['file']} {shard['sha256']}\n"
    else:
        yield f"{split}/{INDEX} {entry['content_sha256']} {PREPROCESS} {resolution}\n"


def _check_out(out: Path) -> None:
    # Replaceable: empty, or only what prepare() writes (Snakemake deletes just the declared
    # manifest.json before a rerun and leaves train/ and val/ behind).
    ours = {MANIFEST, *SPLITS, ".snakemake_timestamp"}
    if out.exists() and (not out.is_dir() or any(p.name not in ours for p in out.iterdir())):
        raise GaussquantError(
            f"--out {str(out)!r} exists and is not a prepared-data folder; "
            "choose another path or remove it"
        )


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` onto ``out`` (rename: atomic for a new or empty ``out``)."""
    if out.exists() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "data")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))  # respects cgroup/SLURM CPU pinning
    return os.cpu_count() or 1


def prepare(
    cfg: DataConfig, out: str | os.PathLike, *, workers: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Prepare ``out`` (train/ and val/ shards + manifest.json) from ``cfg``; return the manifest.

    ``workers``: decoding processes for the folder source (default: the usable CPU cores). An
    existing prepared ``out`` is replaced only once the new one is complete.
    """
    out = Path(out)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workers = workers or _usable_cpus()
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the usual permissions
        splits = {s: _prepare_split(cfg, s, tmp, workers, progress) for s in SPLITS}
        skipped = [f for s in SPLITS for f in splits[s].pop("skipped_files", [])]
        digest = hashlib.sha256()
        for split in SPLITS:
            for line in _content_lines(split, splits[split], cfg.resolution):
                digest.update(line.encode())
        import PIL

        manifest = {
            "format": FORMAT,
            "gaussquant_version": __version__,
            "source": cfg.source,
            "resolution": cfg.resolution,
            "seed": cfg.seed,
            "counts": {s: splits[s]["count"] for s in SPLITS},
            "sha256": digest.hexdigest(),  # of the content of both splits: one id for the data
            "config": dataclasses.asdict(cfg),
            "versions": {"numpy": np.__version__, "pillow": PIL.__version__},
            "splits": splits,
            "skipped": skipped,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # tmp is renamed whole
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


# ----------------------------------------------------------------------------- reading


def _fix_hint(root: Path) -> str:
    return f"run `gaussquant prepare-data --out {root}` to (re)create it"


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared folder; :class:`GaussquantError` if absent or unreadable."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise GaussquantError(
            f"{str(root)!r} has no prepared data ({MANIFEST} missing); {_fix_hint(root)}"
        ) from None
    except (OSError, ValueError) as err:
        raise GaussquantError(f"{root / MANIFEST}: unreadable ({err}); {_fix_hint(root)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GaussquantError(f"{root / MANIFEST}: not a {FORMAT} manifest; {_fix_hint(root)}")
    return manifest


def _verify_shards(root: Path, split: str, entry: dict, checksums: bool | None) -> None:
    """Presence, dtype and shape of every shard (headers); their sha256 when ``checksums``
    (``None``: when the split's shards total at most 4 GiB)."""
    shape = entry["shape"]
    paths = [(root / split / s["file"], s) for s in entry["shards"]]
    for path, shard in paths:
        try:
            arr = np.load(path, mmap_mode="r")
            ok = arr.dtype == np.uint8 and list(arr.shape) == [shard["count"], *shape]
        except FileNotFoundError:
            raise GaussquantError(f"{path}: shard missing; {_fix_hint(root)}") from None
        except (OSError, ValueError) as err:
            raise GaussquantError(f"{path}: corrupt shard ({err}); {_fix_hint(root)}") from None
        if not ok:
            raise GaussquantError(
                f"{path}: {arr.dtype} {arr.shape} does not match the manifest "
                f"(uint8 {[shard['count'], *shape]}); {_fix_hint(root)}"
            )
    if checksums is None:
        checksums = sum(p.stat().st_size for p, _ in paths) <= 4 << 30
    for path, shard in paths if checksums else ():
        if sha256_file(path) != shard["sha256"]:
            raise GaussquantError(
                f"{path}: checksum differs from the manifest (corrupt or modified); "
                f"{_fix_hint(root)}"
            )


class ImageFiles:
    """The indexed image files of one split (``INDEX``), held in flat arrays (no per-file
    Python objects: DataLoader workers share them without copy-on-read growth)."""

    def __init__(self, prepared: Path, split: str, entry: dict):
        self.prepared, self.dir = prepared, Path(entry["dir"])
        path = prepared / split / entry["index"]
        try:
            text = gzip.decompress(path.read_bytes())
        except FileNotFoundError:
            raise GaussquantError(f"{path}: index missing; {_fix_hint(prepared)}") from None
        except (OSError, EOFError, zlib.error) as err:
            raise GaussquantError(f"{path}: corrupt index ({err}); {_fix_hint(prepared)}") from None
        if sha256_bytes(text) != entry["index_sha256"]:
            raise GaussquantError(
                f"{path}: checksum differs from the manifest; {_fix_hint(prepared)}"
            )
        rows = [line.split(b"\t") for line in text.splitlines()]
        names = [r[0] for r in rows]
        self.offsets = np.cumsum([0] + [len(n) for n in names], dtype=np.int64)
        self.names = np.frombuffer(b"".join(names), np.uint8)
        self.sizes = np.array([int(r[1]) for r in rows], np.int64)
        hashed = bool(rows) and len(rows[0]) > 4
        digests = b"".join(bytes.fromhex(r[4].decode()) for r in rows) if hashed else None
        self.sha256 = np.frombuffer(digests, np.uint8).reshape(-1, 32) if hashed else None

    def __len__(self) -> int:
        return len(self.sizes)

    def path(self, i: int) -> Path:
        return self.dir / self.names[self.offsets[i] : self.offsets[i + 1]].tobytes().decode()

    def read(self, i: int, check_hash: bool = True) -> bytes:
        """File ``i``'s bytes, checked against the index (size; sha256 when recorded)."""
        path = self.path(i)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise GaussquantError(
                f"{path}: cannot read ({err}); {_fix_hint(self.prepared)}"
            ) from None
        if len(data) != self.sizes[i]:
            what = f"{len(data)} bytes, the index says {self.sizes[i]}"
        elif check_hash and self.sha256 is not None:
            same = hashlib.sha256(data).digest() == self.sha256[i].tobytes()
            what = None if same else "its sha256 differs from the index's"
        else:
            what = None
        if what:
            raise GaussquantError(
                f"{path}: changed since it was indexed ({what}); {_fix_hint(self.prepared)}"
            )
        return data

    def image(self, i: int, resolution: int) -> np.ndarray:
        """File ``i`` decoded and preprocessed (``PREPROCESS``): uint8 (res, res, 3)."""
        data = self.read(i)
        try:
            return load_center_crop(io.BytesIO(data), resolution)
        except Exception as err:  # a file that passed data.verify: header but does not decode
            raise GaussquantError(
                f"{self.path(i)}: cannot decode ({type(err).__name__}: {err}); remove it or "
                f"prepare with data.verify: decode, which skips such files"
            ) from None

    def verify(self, checksums: bool | None) -> None:
        """Each file's size (and sha256 when recorded) if ``checksums``, else a spread sample
        of 64 files' sizes (a stat each: a full ImageNet check is minutes of network I/O)."""
        if not self.dir.is_dir():
            raise GaussquantError(
                f"{self.dir}: the indexed image folder is missing; {_fix_hint(self.prepared)}"
            )
        n = len(self)
        picks = range(n) if checksums else np.unique(np.linspace(0, n - 1, min(n, 64)).astype(int))
        for i in picks:
            if checksums:
                self.read(int(i))
                continue
            path = self.path(int(i))
            size = path.stat().st_size if path.is_file() else None
            if size != self.sizes[i]:
                raise GaussquantError(
                    f"{path}: {'missing' if size is None else f'{size} bytes'}, the index says "
                    f"{self.sizes[i]} bytes; {_fix_hint(self.prepared)}"
                )


def verify_prepared(root: str | os.PathLike, checksums: bool | None = None) -> dict[str, Any]:
    """Check ``root`` against its manifest; return the manifest. Raises :class:`GaussquantError`.

    Shards: presence, dtype and shape (headers); with ``checksums`` (``None``: up to 4 GiB per
    split) every sha256. Index: the index's own sha256, the image folder and a sample of 64
    files' sizes; with ``checksums`` every file (size, and sha256 where recorded).
    """
    root = Path(root)
    manifest = read_manifest(root)
    for split in SPLITS:
        entry = manifest["splits"][split]
        if entry.get("kind", "shards") == "shards":
            _verify_shards(root, split, entry, checksums)
        else:
            ImageFiles(root, split, entry).verify(checksums)
    return manifest


class PreparedDataset(Dataset):
    """Images of one split of a prepared folder: ``x`` float32 (3, H, W) in [-1, 1].

    Shards are memory-mapped (opened lazily in each process, so DataLoader workers and
    pickling never copy them); an index is decoded file by file (``ImageFiles``), in the
    order of its lines. Item ``i`` is the ``i``-th line of ``split/index.txt`` or ``INDEX``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        if split not in SPLITS:
            raise GaussquantError(f"split {split!r} is not allowed; allowed: {', '.join(SPLITS)}")
        self.root = Path(root)
        self.split = split
        self.manifest = read_manifest(self.root)
        entry = self.manifest["splits"][split]
        self.resolution = int(self.manifest["resolution"])
        self.kind = entry.get("kind", "shards")
        self.files = ImageFiles(self.root, split, entry) if self.kind == "index" else None
        shards = entry.get("shards", [])
        self._paths = [self.root / split / s["file"] for s in shards]
        self._starts = np.cumsum([0] + [s["count"] for s in shards]).tolist()
        self._shards: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else self._starts[-1]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_shards": None}  # reopen the maps, never pickle their data

    def _open(self) -> list[np.ndarray]:
        if self._shards is None:
            try:
                self._shards = [np.load(p, mmap_mode="r") for p in self._paths]
            except (OSError, ValueError) as err:
                raise GaussquantError(
                    f"{self.root}: cannot open shards ({err}); {_fix_hint(self.root)}"
                ) from None
        return self._shards

    def uint8(self, i: int) -> np.ndarray:
        """Image ``i``: uint8 (H, W, 3), a read-only view of a shard's memory map, or the
        file decoded and preprocessed now (an index)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        i %= len(self)
        if self.files is not None:
            return self.files.image(i, self.resolution)
        s = bisect.bisect_right(self._starts, i) - 1
        return self._open()[s][i - self._starts[s]]

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(np.array(self.uint8(i))).permute(2, 0, 1)
        x = x.to(torch.float32, memory_format=torch.contiguous_format)
        return x.div_(127.5).sub_(1.0)  # 0 -> -1, 255 -> 1 exactly


# ----------------------------------------------------------------------------- loading order


class StepBatchSampler(Sampler[list[int]]):
    """Index batches for steps ``start_step, start_step + 1, ...`` of this process.

    Global batch ``b * world`` at step ``s`` comes from the permutation of epoch
    ``s * b * world // n``, seeded with ``seed + epoch``; process ``rank`` takes its slice. The
    order depends only on (seed, step), never on how many times the run was resumed.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        steps: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        if n < batch_size * world:
            raise GaussquantError(
                f"the training set has {n} images but one step needs {batch_size * world} "
                "(train.batch_size x processes); prepare more data (data.n_train) or lower the batch"
            )
        self.n, self.b, self.steps, self.seed = n, batch_size, steps, seed
        self.start, self.rank, self.world = start_step, rank, world
        self.per_epoch = n // (batch_size * world)  # drop the ragged end of each epoch

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[int]]:
        perm, epoch = None, -1
        for step in range(self.start, self.steps):
            e, k = divmod(step, self.per_epoch)
            if e != epoch:
                g = torch.Generator().manual_seed(self.seed + e)
                perm, epoch = torch.randperm(self.n, generator=g), e
            g0 = (k * self.world + self.rank) * self.b
            yield perm[g0 : g0 + self.b].tolist()
