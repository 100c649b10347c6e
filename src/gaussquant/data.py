"""Data: prepare deterministic uint8 image shards, then load them fast through memory maps.

Two sources, one prepared format:

- ``bundled``: the 12 real RGB photographs that ship inside the scikit-image (9), scikit-learn
  (2) and matplotlib (1) wheels, cut into random square crops. Whole photos are held out for
  validation (``val_photos``), so no validation pixel is ever seen in training. Offline.
- ``folder``: any image folder (ImageNet layout or flat; ``*.jpg|*.jpeg|*.png`` found
  recursively, case-insensitive), each image resized so its short side is ``resolution``
  (PIL bicubic) and center-cropped to ``resolution`` x ``resolution`` (SPEC 5, 6).

Prepared format (``gaussquant prepare-data --out DIR``)::

    DIR/manifest.json            counts, source, resolution, seed, per-shard sha256, skipped files
    DIR/{train,val}/shard-00000.npy   uint8 (N, H, W, 3), at most ``shard_size`` images each
    DIR/{train,val}/index.txt    one line per image: its source (file path, or photo + crop box)

The directory is written into a temporary sibling and renamed into place, so an interrupted
run leaves nothing that looks done. The same config gives byte-identical shards.
:class:`PreparedDataset` serves float32 ``x`` of shape (3, H, W) in [-1, 1].
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from gaussquant import __version__
from gaussquant.errors import GaussquantError
from gaussquant.io import sha256_bytes, sha256_file
from gaussquant.sections import BUNDLED_PHOTOS, STEREO_PAIR, DataConfig

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
    import skimage.data

    if name in STEREO_PAIR:
        left, right, _disparity = skimage.data.stereo_motorcycle()
        return left if name == STEREO_PAIR[0] else right
    return getattr(skimage.data, name)()


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


def _bundled_crops(
    photos: dict[str, np.ndarray], n: int, cfg: DataConfig, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, str]]:
    """``n`` random square crops: photo uniform, side fraction log-uniform, position uniform."""
    resolution = cfg.resolution
    names = list(photos)
    images = {name: Image.fromarray(photos[name]) for name in names}
    for _ in range(n):
        name = names[rng.integers(len(names))]
        h, w = photos[name].shape[:2]
        short = min(h, w)
        # never upsample, unless the photo's short side is below the resolution
        lo = min(1.0, max(cfg.min_scale, resolution / short))
        hi = max(lo, cfg.max_scale)
        side = short * math.exp(rng.uniform(math.log(lo), math.log(hi)))
        x0, y0 = rng.uniform(0.0, w - side), rng.uniform(0.0, h - side)
        box = (x0, y0, x0 + side, y0 + side)
        # resize(box=...) resamples only the box: the same pixels as resizing the whole photo
        # to short side resolution/f and cropping, without the full-photo resize per crop.
        crop = images[name].resize((resolution, resolution), Image.Resampling.BICUBIC, box=box)
        yield np.asarray(crop), f"{name} box={x0!r},{y0!r},{side!r}"  # exact: repr round-trips


# ----------------------------------------------------------------------------- image folders


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


def load_center_crop(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """Decode an image, resize its short side to ``resolution`` (PIL bicubic, antialiased) and
    center-crop: uint8 (resolution, resolution, 3). Raises whatever PIL raises on bad files."""
    # The official data class (pit/data.py SimpleDataset) is not public in our sources;
    # SPEC 5 says "resize short side 256 + center crop", done here with PIL bicubic.
    with Image.open(path) as im:
        im.load()  # PIL decodes lazily: force it so truncated files fail here
        im = im.convert("RGB")
    w, h = im.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    im = im.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return np.array(im.crop((left, top, left + resolution, top + resolution)))  # writable


def _decode_job(job: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    path, resolution = job
    try:
        return load_center_crop(path, resolution), None
    except Exception as err:  # any decoder failure is a bad file, reported by name
        return None, f"{type(err).__name__}: {err}"


def _decoded(
    paths: list[Path], resolution: int, workers: int, progress: bool, desc: str
) -> Iterator[tuple[Path, np.ndarray | None, str | None]]:
    """Decode ``paths`` in order with a process pool (``workers`` <= 1: in this process)."""
    from tqdm import tqdm

    jobs = [(str(p), resolution) for p in paths]
    # fork where available: spawned workers would re-import torch (seconds each).
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
    pool = ctx.Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(_decode_job, jobs, chunksize=16) if pool else map(_decode_job, jobs)
        bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=None if progress else True)
        with bar:
            for path, (image, reason) in zip(paths, results):
                bar.update(1)
                yield path, image, reason
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
        held = set(cfg.val_photos)
        used = {k: v for k, v in bundled_photos().items() if (k in held) == (split == "val")}
        entry = _write_split(tmp / split, _bundled_crops(used, n, cfg, rng), cfg)
        photo = {
            k: {"shape": list(v.shape), "sha256": sha256_bytes(v.tobytes())}
            for k, v in used.items()
        }
        entry["photos"] = photo
        return entry
    key, root = f"data.{split}_dir", Path(getattr(cfg, f"{split}_dir"))
    found = list_images(root, key)
    paths = _subset(found, n, rng)
    skipped: list[dict[str, str]] = []

    def items() -> Iterator[tuple[np.ndarray, str]]:
        decoded = _decoded(paths, cfg.resolution, workers, progress, f"prepare {split}")
        with contextlib.closing(decoded):  # stop the pool now, also when strict raises
            for path, image, reason in decoded:
                rel = path.relative_to(root).as_posix()
                if image is not None:
                    yield image, rel
                elif cfg.strict:
                    fix = "fix or remove the file, or set data.strict: false to skip it"
                    raise GaussquantError(f"{path}: cannot read image ({reason}); {fix}")
                else:
                    skipped.append({"split": split, "file": rel, "reason": reason})

    entry = _write_split(tmp / split, items(), cfg)
    if entry["count"] == 0:
        first = f"{skipped[0]['file']}: {skipped[0]['reason']}"
        raise GaussquantError(
            f"{key}: none of the {len(paths)} images under {str(root)!r} "
            f"could be read (first: {first})"
        )
    entry.update(dir=str(root), found=len(found), selected=len(paths), skipped=len(skipped))
    entry["skipped_files"] = skipped  # moved to the manifest's top-level list by prepare()
    return entry


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
            for shard in splits[split]["shards"]:
                digest.update(f"{split}/{shard['file']} {shard['sha256']}\n".encode())
        import PIL

        manifest = {
            "format": FORMAT,
            "gaussquant_version": __version__,
            "source": cfg.source,
            "resolution": cfg.resolution,
            "seed": cfg.seed,
            "counts": {s: splits[s]["count"] for s in SPLITS},
            "sha256": digest.hexdigest(),  # of all shard checksums: one id for the whole data
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


def verify_prepared(root: str | os.PathLike, checksums: bool | None = None) -> dict[str, Any]:
    """Check every shard of ``root`` against its manifest; return the manifest.

    Always checks presence, dtype and shape (cheap: headers). ``checksums``: also recompute
    every sha256; ``None`` does so when the shards total at most 4 GiB (a full ImageNet at 256
    px is ~250 GB, too slow to hash at every training start). Raises :class:`GaussquantError`.
    """
    root = Path(root)
    manifest = read_manifest(root)
    entries = [
        (root / split / s["file"], s, manifest["splits"][split]["shape"])
        for split in SPLITS
        for s in manifest["splits"][split]["shards"]
    ]
    for path, shard, shape in entries:
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
        checksums = sum(p.stat().st_size for p, _, _ in entries) <= 4 << 30
    if checksums:
        for path, shard, _ in entries:
            if sha256_file(path) != shard["sha256"]:
                raise GaussquantError(
                    f"{path}: checksum differs from the manifest (corrupt or "
                    f"modified); {_fix_hint(root)}"
                )
    return manifest


class PreparedDataset(Dataset):
    """Images of one split of a prepared folder: ``x`` float32 (3, H, W) in [-1, 1].

    Shards are memory-mapped (opened lazily in each process, so DataLoader workers and
    pickling never copy them); item ``i`` is the ``i``-th line of ``split/index.txt``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        if split not in SPLITS:
            raise GaussquantError(f"split {split!r} is not allowed; allowed: {', '.join(SPLITS)}")
        self.root = Path(root)
        self.split = split
        self.manifest = read_manifest(self.root)
        entry = self.manifest["splits"][split]
        self.resolution = int(self.manifest["resolution"])
        self._paths = [self.root / split / s["file"] for s in entry["shards"]]
        self._starts = np.cumsum([0] + [s["count"] for s in entry["shards"]]).tolist()
        self._shards: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return self._starts[-1]

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
        """Image ``i`` as stored: uint8 (H, W, 3), a read-only view of the memory map."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        i %= len(self)
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
