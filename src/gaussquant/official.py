"""Official checkpoints <-> ours: import a released model, export one of ours.

The official code (`tongdaxu/VQ-VAE-from-Gaussian-VAE`, a Lightning fork of Stability-AI
``generative-models``) saves ``torch.load(f)["state_dict"]`` with the prefixes ``encoder.``,
``decoder.`` (``pit.modules.unet.Encoder``/``Decoder`` or ``pit.modules.vit.TransformerEncoder``/
``TransformerDecoder``), ``regularization.`` (the bottleneck) and ``loss.`` (learned NLL
log-variance, LPIPS-VGG, PatchGAN: training only). Our modules compute the same functions
(tests/test_official.py checks them against official outputs), so the conversion is a pure
key/shape/tensor map:

- UNet: same names except ``shortcut`` (official ``nin_shortcut``), ``resample`` (``downsample`` /
  ``upsample``), the attention's packed ``qkv`` 1x1 conv (official: separate ``q``, ``k``, ``v``,
  concatenated along the output channels) and the decoder's level order (ours ``up.k`` runs
  k-th, from the lowest resolution; official ``up.i`` is level i, ``up.0`` full resolution).
- ViT: ``patch_embed`` = ``conv1`` (both a bias-free Linear over (c, sh, sw)-ordered patches, so
  no reshape), ``pos_embed`` = ``positional_embedding``, ``blocks.i`` =
  ``transformer.resblocks.i`` with ``qkv`` = ``attn.in_proj_*`` (rows q, k, v; heads contiguous
  in each), ``attn_out`` = ``attn.out_proj``, ``mlp.0/2`` = ``mlp.c_fc/c_proj``; encoder
  ``proj_out`` = ``quant_embed``, decoder ``proj_in`` = ``post_quant_embed``, ``head`` = ``ffn.0``.
- Bottleneck: VQ codebook ``bottleneck.embedding.weight`` = ``regularization.embedding.weight``;
  FSQ levels (ours are derived, the official keeps them as a tensor); GQ, LFQ, BSQ hold no
  official tensors. Our TDC multipliers start at 1 on import (the official code keeps them as
  plain floats that are not saved).

Nothing is left out silently: every official encoder/decoder/regularization tensor must be
used and every one of ours filled with an equal shape, else a :class:`GaussquantError` names the
keys; ``loss.*`` tensors are skipped and counted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from gaussquant.checkpoint import CHECKPOINT_FORMAT, read_checkpoint, save_checkpoint
from gaussquant.config import Config, config_from_dict, config_to_dict
from gaussquant.errors import GaussquantError
from gaussquant.io import atomic_path, sha256_file, write_text
from gaussquant.methods import METHODS, gq_dim, shape
from gaussquant.models.autoencoder import build_autoencoder
from gaussquant.published import PAPER_DOWNSAMPLE, published
from gaussquant.records import METRICS, PAPER_METRICS
from gaussquant.safeload import load_pickle
from gaussquant.sections import RELEASED_WEIGHTS

OFFICIAL_REPO = "tongdaxu/VQ-VAE-from-Gaussian-VAE"
SKIPPED_PREFIX = "loss."  # NLL log-variance, LPIPS-VGG, discriminator: training only
GROUPS = 32  # the official UNet's Normalize(): GroupNorm(32), not stored in a checkpoint


@dataclass(frozen=True)
class OfficialSpec:
    """An official training configuration (``configs/<name>.yaml``) in our terms.

    ``heads``: ViT attention heads (not stored in a checkpoint).
    """

    arch: str
    method: str
    rate: str  # bits per latent position at f8 (16 / 32 / 64 = 0.25 / 0.5 / 1.0 bpp)
    heads: int | None = None


# Every configuration of the paper's rate-distortion figure that we can rebuild; the GQ regularizer
# has no persistent tensors, so its rate (m) comes from the name (default 0.25 bpp = 16 bits per
# latent position, m = 16).
OFFICIAL_CONFIGS = {
    "sd3unet_gq_0.25": OfficialSpec("unet", "tdc", "16"),
    "sd3unet_gq_0.50": OfficialSpec("unet", "tdc", "32"),
    "sd3unet_gq_1.00": OfficialSpec("unet", "tdc", "64"),
    "bsqvit_gq_0.25": OfficialSpec("vit", "tdc", "16", heads=12),
    "bsqvit_gq_0.50": OfficialSpec("vit", "tdc", "32", heads=12),
    "bsqvit_gq_1.00": OfficialSpec("vit", "tdc", "64", heads=12),
    "sd3unet_vq_16": OfficialSpec("unet", "vq", "16"),
    "sd3unet_fsq_16": OfficialSpec("unet", "fsq", "16"),
    "sd3unet_lfq_16": OfficialSpec("unet", "lfq", "16"),
    "sd3unet_bsq_16": OfficialSpec("unet", "bsq", "16"),
    "sd3unet_fsq_32": OfficialSpec("unet", "fsq", "32"),
    "sd3unet_fsq_64": OfficialSpec("unet", "fsq", "64"),
    "sd3unet_bsq_32": OfficialSpec("unet", "bsq", "32"),
    "sd3unet_bsq_64": OfficialSpec("unet", "bsq", "64"),
}
ALIASES = {  # the file names in the official configs/ folder
    "sd3unet_fsq_16_16x4": "sd3unet_fsq_16",
    "sd3unet_fsq_32_16x8": "sd3unet_fsq_32",
    "sd3unet_fsq_64_16x16": "sd3unet_fsq_64",
    "sd3unet_vq_r_128_16": "sd3unet_vq_16",
    "sd3unet_lfq_r_128_16": "sd3unet_lfq_16",
    "sd3unet_bsq_r_128_16": "sd3unet_bsq_16",
}
DEFAULT_GQ_RATE = "16"  # bits per position, m = 16: what the released sd3unet_gq_0.25.ckpt uses

# Our bottleneck tensors with no official counterpart, and why they may stay at their initial value.
UNSAVED_BY_OFFICIAL = {
    "bottleneck.tdc.lam": "TDC multiplier (official: a plain float, not saved)",
    "bottleneck.tdc.lam_min": "TDC multiplier (official: a plain float, not saved)",
    "bottleneck.tdc.lam_max": "TDC multiplier (official: a plain float, not saved)",
}
# Key name read from pit/quantization/vq.py (nn.Embedding attribute `embedding`); not in the fixtures.
VQ_CODEBOOK = ("bottleneck.embedding.weight", "regularization.embedding.weight")
# pit/quantization/fsq.py keeps its levels as an int32 nn.Parameter `levels`; not in the fixtures.
FSQ_LEVELS = "regularization.levels"


def official_config(name: str) -> tuple[str, OfficialSpec]:
    """Canonical name and definition of ``name`` (``configs/x.yaml``, ``x.yaml`` and ``x`` accepted)."""
    key = Path(name).name.removesuffix(".yaml")
    key = ALIASES.get(key, key)
    if key not in OFFICIAL_CONFIGS:
        known = ", ".join([*OFFICIAL_CONFIGS, *ALIASES])
        raise GaussquantError(f"unknown official configuration {name!r}; known: {known}")
    return key, OFFICIAL_CONFIGS[key]


# ----------------------------------------------------------------------------- key maps


@dataclass(frozen=True)
class Link:
    """One of our tensors and the official tensor(s) it is made of (several: concatenated on dim 0)."""

    ours: str
    official: tuple[str, ...]


def _unet_key(net: str, key: str, levels: int) -> tuple[str, ...]:
    if net == "decoder":  # ours runs up.0 first (lowest resolution); official up.i is level i
        key = re.sub(r"^up\.(\d+)\.", lambda m: f"up.{levels - 1 - int(m[1])}.", key)
    key = key.replace(".shortcut.", ".nin_shortcut.")
    key = key.replace(".resample.", ".downsample." if net == "encoder" else ".upsample.")
    if ".qkv." in key:  # one packed 1x1 conv here, three official ones (same rows, same order)
        return tuple(key.replace(".qkv.", f".{t}.") for t in "qkv")
    return (key,)


_VIT_RULES = (  # first match wins
    (r"^patch_embed\.", "conv1."),
    (r"^pos_embed$", "positional_embedding"),
    (r"^proj_out\.", "quant_embed."),
    (r"^proj_in\.", "post_quant_embed."),
    (r"^head\.", "ffn.0."),
    (r"^blocks\.(\d+)\.qkv\.(weight|bias)$", r"transformer.resblocks.\1.attn.in_proj_\2"),
    (r"^blocks\.(\d+)\.attn_out\.", r"transformer.resblocks.\1.attn.out_proj."),
    (r"^blocks\.(\d+)\.mlp\.0\.", r"transformer.resblocks.\1.mlp.c_fc."),
    (r"^blocks\.(\d+)\.mlp\.2\.", r"transformer.resblocks.\1.mlp.c_proj."),
    (r"^blocks\.(\d+)\.", r"transformer.resblocks.\1."),
)


def _vit_key(net: str, key: str, levels: int) -> tuple[str, ...]:
    for pattern, repl in _VIT_RULES:
        if re.search(pattern, key):
            return (re.sub(pattern, repl, key),)
    return (key,)


def links(our_keys: list[str], arch: str, cfg: Config) -> list[Link]:
    """Official source of each of our encoder/decoder/bottleneck tensors (ours in order).

    Bottleneck tensors with no official counterpart (:data:`UNSAVED_BY_OFFICIAL`) get no link.
    """
    levels = len(cfg.model.unet.ch_mult)
    rename: Callable[[str, str, int], tuple[str, ...]] = _unet_key if arch == "unet" else _vit_key
    out = []
    for key in our_keys:
        net, _, rest = key.partition(".")
        if net in ("encoder", "decoder"):
            out.append(Link(key, tuple(f"{net}.{k}" for k in rename(net, rest, levels))))
        elif key == VQ_CODEBOOK[0]:
            out.append(Link(key, (VQ_CODEBOOK[1],)))
        elif key not in UNSAVED_BY_OFFICIAL:  # a new quantizer tensor needs its official name here
            raise GaussquantError(f"no official counterpart is known for our tensor {key!r}")
    return out


# ----------------------------------------------------------------------------- recognising a checkpoint


class _Ignored:
    """Stands in for a Lightning checkpoint's hyperparameters (OmegaConf containers): built
    from nothing, its state dropped. Only ``state_dict``, ``global_step`` and ``epoch`` are read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


# The globals a Lightning checkpoint holds besides tensors and plain data, for the weights-only
# unpickler: OmegaConf hyperparameters (replaced by _Ignored, never imported), numpy scalars,
# dtypes and dtype classes (monitored metric values), pathlib.PosixPath, collections.defaultdict
# and the builtins dict, list, int (callback and loop states). Each only stores data.
OMEGACONF_GLOBALS = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "typing.Any",
)


def lightning_globals() -> list:
    import collections
    import pathlib

    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    numpy_names = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles a dtype with its class
    return [
        *((_Ignored, name) for name in OMEGACONF_GLOBALS),
        *((scalar, name) for name in numpy_names),
        np.dtype,
        *(getattr(dtypes, name) for name in getattr(dtypes, "__all__", ())),
        pathlib.PosixPath,
        collections.defaultdict,
        dict,
        list,
        int,
    ]


def read_official(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict of an official Lightning checkpoint (``["state_dict"]``) or a bare state dict,
    and the checkpoint's other scalar fields (``global_step``, ``epoch``)."""
    path = Path(path)
    if not path.is_file():
        raise GaussquantError(
            f"official checkpoint {str(path)!r} not found; download it from the Hugging Face "
            f"repository {RELEASED_WEIGHTS} (README: Use the released weights)"
        )
    obj = load_pickle(path, "official checkpoint", lightning_globals())  # never runs code
    info = {}
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        raise GaussquantError(
            f"{path}: already a gaussquant checkpoint (export-official writes official ones)"
        )
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        info = {k: obj[k] for k in ("global_step", "epoch") if isinstance(obj.get(k), int)}
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise GaussquantError(
            f"{path}: neither a Lightning checkpoint (a 'state_dict' of tensors) nor a bare state dict"
        )
    return dict(obj), info


def detect_arch(state: dict[str, torch.Tensor]) -> str:
    if "encoder.conv_in.weight" in state:
        return "unet"
    if "encoder.conv1.weight" in state:
        return "vit"
    sample = ", ".join(sorted(state)[:5])
    raise GaussquantError(
        "not an official UNet (encoder.conv_in.weight) or ViT (encoder.conv1.weight) checkpoint; "
        f"first keys: {sample}"
    )


def _count(state: dict, pattern: str) -> int:
    """Number of distinct integers matched by the one group of ``pattern`` over the keys."""
    return len({m[1] for k in state if (m := re.match(pattern, k))})


def _unet_section(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    ch = state["encoder.conv_in.weight"].shape[0]
    levels = _count(state, r"encoder\.down\.(\d+)\.")
    widths = [state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)]
    if any(w % ch for w in widths):
        raise GaussquantError(f"UNet level widths {widths} are not multiples of ch={ch}")
    attn = [i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state]
    return {
        "ch": ch,
        "ch_mult": [w // ch for w in widths],
        "num_res_blocks": _count(state, r"encoder\.down\.0\.block\.(\d+)\."),
        "attn_levels": [i - levels for i in attn],  # negative: [-1] = the lowest level
        "mid_attn": "encoder.mid.attn_1.q.weight" in state,  # commented out at official HEAD
        "num_groups": GROUPS,
    }


def _vit_section(state: dict[str, torch.Tensor], heads: int) -> tuple[dict[str, Any], int]:
    width, patch_in = state["encoder.conv1.weight"].shape
    patch = math.isqrt(patch_in // 3)
    tokens = state["encoder.positional_embedding"].shape[0]
    grid = math.isqrt(tokens)
    if 3 * patch * patch != patch_in or grid * grid != tokens:
        raise GaussquantError(
            "ViT: encoder.conv1.weight / positional_embedding shapes are not square RGB patches"
        )
    if width % heads:
        raise GaussquantError(f"ViT: {heads} heads do not divide the width {width}")
    section = {
        "patch": patch,
        "width": width,
        "layers": _count(state, r"encoder\.transformer\.resblocks\.(\d+)\."),
        "heads": heads,
        "mlp_ratio": state["encoder.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        "head_ratio": state["decoder.ffn.0.weight"].shape[0] / width,  # dim_ffn_output / width
        "clamp": "hard",  # the official clamp_range is a torch.clamp
    }
    return section, grid * patch


def _latent_io(state: dict, arch: str) -> tuple[int, int]:
    """(encoder output channels, decoder input channels)."""
    if arch == "unet":
        return state["encoder.conv_out.weight"].shape[0], state["decoder.conv_in.weight"].shape[1]
    enc, dec = state["encoder.quant_embed.weight"], state["decoder.post_quant_embed.weight"]
    return enc.shape[0], dec.shape[1]


def _rate_where(cfg: Config, method: str, value: Any, what: str) -> str:
    """The first rate of params.yaml at which ``method``'s derived shape is ``value``."""
    names = [str(b) for b in cfg.rates if shape(method, cfg, b) == value]
    if not names:
        raise GaussquantError(
            f"{what}: no rate in params.yaml 'rates' (bits per latent position: {cfg.rates}) "
            f"gives {method} the shape {value}"
        )
    return names[0]


def _method_and_rate(
    state: dict, arch: str, base: Config, config: str | None, rate: str | None, notes: list[str]
) -> tuple[str, str, OfficialSpec | None, str | None]:
    """(our method, our rate name, the official config, its canonical name)."""
    if config is not None:
        name, oc = official_config(config)
        if oc.arch != arch:
            raise GaussquantError(
                f"--config {config}: a {oc.arch} configuration, the checkpoint is a {arch}"
            )
        return oc.method, rate or oc.rate, oc, name
    enc_out, dec_in = _latent_io(state, arch)
    if VQ_CODEBOOK[1] in state:
        tokens = dec_in // state[VQ_CODEBOOK[1]].shape[1]
        return "vq", rate or _rate_where(base, "vq", tokens, "VQ codebook"), None, None
    if FSQ_LEVELS in state:
        levels = [int(v) for v in state[FSQ_LEVELS].tolist()]
        return "fsq", rate or _rate_where(base, "fsq", levels, "FSQ levels"), None, None
    if enc_out == 2 * dec_in:  # double_z: mu and logvar
        if rate is None:
            rate = DEFAULT_GQ_RATE
            notes.append(
                f"GQ rate not stored in the checkpoint (no regularizer tensors): assumed {rate} bits "
                f"per position, m = {gq_dim(base, int(rate))}; pass --config (e.g. sd3unet_gq_0.50) for another"
            )
        return "tdc", rate, None, None
    raise GaussquantError(
        f"encoder gives {enc_out} channels, decoder takes {dec_in}, no regularization tensors: "
        "LFQ or BSQ, which a checkpoint cannot tell apart; pass --config (e.g. sd3unet_lfq_16)"
    )


def recognise(
    state: dict[str, torch.Tensor],
    base: Config,
    config: str | None = None,
    rate: str | None = None,
    vit_heads: int | None = None,
) -> dict[str, Any]:
    """Arch, method, rate and our full config for an official state dict.

    ``base`` supplies every section the checkpoint does not define (losses, rates, GQ seed...);
    the model sections and the image size come from the checkpoint's shapes and ``config``.
    Returns ``{"arch", "method", "rate", "cfg", "config", "notes"}``.
    """
    notes: list[str] = []
    arch = detect_arch(state)
    method, rate, oc, name = _method_and_rate(state, arch, base, config, rate, notes)
    data = config_to_dict(base)
    model = data["model"]
    if arch == "unet":
        model["unet"] = {**model["unet"], **_unet_section(state)}
        model["downsample"] = 2 ** (len(model["unet"]["ch_mult"]) - 1)  # any image size: params'
    else:
        heads = vit_heads or (oc.heads if oc else None)
        if heads is None:
            heads = base.model.vit.heads
            notes.append(f"ViT heads are not stored in a checkpoint: took {heads} from params.yaml")
        section, image_size = _vit_section(state, heads)
        model["vit"] = {**model["vit"], **section}
        model["downsample"] = section["patch"]
        data["data"]["resolution"] = image_size  # the positional embedding fixes it
    enc_out, dec_in = _latent_io(state, arch)
    if method != "fsq":  # FSQ's channels are its levels, not model.latent_channels
        model["latent_channels"] = dec_in
    try:
        cfg = config_from_dict(data)
    except GaussquantError as err:
        raise GaussquantError(
            f"the official {arch} configuration does not fit params.yaml's other sections: {err}"
        ) from None
    return {
        "arch": arch,
        "method": method,
        "rate": rate,
        "cfg": cfg,
        "config": name,
        "notes": notes,
    }


# ----------------------------------------------------------------------------- import / export


def _listing(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def official_to_ours(
    state: dict[str, torch.Tensor],
    model: torch.nn.Module,
    arch: str,
    cfg: Config,
    method: str,
    rate: str,
) -> dict[str, torch.Tensor]:
    """Our state dict for ``model`` from an official one; every official non-``loss.`` key must
    be used and every one of ours filled with an equal shape (else an error naming the keys)."""
    ours = model.state_dict()
    plan = links(list(ours), arch, cfg)
    expected = {k for link in plan for k in link.official}
    if method == "fsq":
        expected.add(FSQ_LEVELS)
    given = {k for k in state if not k.startswith(SKIPPED_PREFIX)}
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        parts = [f"missing official keys: {_listing(missing)}"] if missing else []
        parts += [f"unexpected official keys: {_listing(unexpected)}"] if unexpected else []
        skipped = len(state) - len(given)
        raise GaussquantError(
            f"official {arch} {method} checkpoint does not map onto ours; "
            + "; ".join(parts)
            + f" ({skipped} {SKIPPED_PREFIX}* tensors skipped)"
        )
    if method == "fsq":
        got, want = [int(v) for v in state[FSQ_LEVELS].tolist()], model.bottleneck.levels
        if got != want:
            raise GaussquantError(f"{FSQ_LEVELS} = {got}, rate {rate} gives fsq levels {want}")
    out, bad = dict(ours), []
    for link in plan:
        parts = [state[k] for k in link.official]
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
        if tensor.shape != ours[link.ours].shape:
            shapes = " + ".join(str(tuple(p.shape)) for p in parts)
            bad.append(
                f"{'/'.join(link.official)} {shapes} -> {link.ours} {tuple(ours[link.ours].shape)}"
            )
            continue
        out[link.ours] = tensor.to(ours[link.ours].dtype).clone()
    if bad:
        raise GaussquantError(f"official tensor shapes differ from ours: {'; '.join(bad[:8])}")
    return out


def ours_to_official(
    state: dict[str, torch.Tensor], arch: str, cfg: Config, method: str, rate: str
) -> dict[str, torch.Tensor]:
    """Official state dict (``encoder.``/``decoder.``/``regularization.`` keys) from ours: the exact
    inverse of :func:`official_to_ours` (packed tensors split back, nothing rounded)."""
    out: dict[str, torch.Tensor] = {}
    for link in links(list(state), arch, cfg):
        t = state[link.ours]
        parts = t.chunk(len(link.official), 0) if len(link.official) > 1 else (t,)
        for key, part in zip(link.official, parts):
            out[key] = part.clone().contiguous()
    if method == "fsq":
        levels = shape("fsq", cfg, cfg.rate(rate).bits)
        out[FSQ_LEVELS] = torch.tensor(levels, dtype=torch.int32)
    return out


def import_official(
    src: str | Path,
    out: str | Path,
    base: Config,
    config: str | None = None,
    rate: str | None = None,
    vit_heads: int | None = None,
) -> dict[str, Any]:
    """Convert the official checkpoint ``src`` into our self-describing checkpoint ``out``.

    Returns the metadata stored under ``extra["official"]`` (source sha256, configuration name,
    skipped ``loss.*`` count, notes on assumed values) plus arch/method/rate.
    """
    state, info = read_official(src)
    r = recognise(state, base, config, rate, vit_heads)
    arch, method, rate, cfg = r["arch"], r["method"], r["rate"], r["cfg"]
    model = build_autoencoder(cfg, method, arch, rate)
    model.load_state_dict(official_to_ours(state, model, arch, cfg, method, rate))
    skipped = sum(k.startswith(SKIPPED_PREFIX) for k in state)
    meta = {
        "repo": OFFICIAL_REPO,
        "source": str(src),
        "source_sha256": sha256_file(src),
        "config": r["config"],
        "config_given": config is not None,
        "tensors_mapped": len(state) - skipped,
        "skipped_loss_tensors": skipped,
        "notes": r["notes"],
        **info,
    }
    save_checkpoint(
        out, model, cfg, method, arch, rate, info.get("global_step", 0), {"official": meta}
    )
    return {"arch": arch, "method": method, "rate": rate, **meta}


def export_official(src: str | Path, out: str | Path) -> dict[str, Any]:
    """Write our checkpoint ``src`` as an official Lightning-style ``{"state_dict": ...}`` at ``out``.

    The state dict holds ``encoder.``/``decoder.`` (and the VQ/FSQ ``regularization.``) tensors:
    they load into the official modules with ``strict=True``. A training checkpoint's ``loss.*``
    (LPIPS, discriminator) is not part of our checkpoints, so load a full AutoencodingEngine with
    ``strict=False``. Converted GQ checkpoints export their Gaussian VAE (the codebook is not stored).
    """
    payload = read_checkpoint(src)
    cfg = config_from_dict(payload["config"])
    extra = payload.get("extra", {})
    method = extra.get("source_method", payload["method"])  # a converted model: the trained one
    if method in ("vanilla", "tbtdc"):
        raise GaussquantError(
            f"{src}: method {method!r} has no official configuration to export to"
        )
    if payload["arch"] == "unet" and cfg.model.unet.num_groups != GROUPS:
        raise GaussquantError(
            f"{src}: model.unet.num_groups = {cfg.model.unet.num_groups}; the official UNet "
            f"normalises with GroupNorm({GROUPS}), so these weights would compute another function"
        )
    state = payload["model"]
    if "quantizer" in extra:  # post-training quantizer buffers are regenerated, never stored
        state = {k: v for k, v in state.items() if not k.startswith("bottleneck.")}
    official = ours_to_official(state, payload["arch"], cfg, method, payload["rate"])
    with atomic_path(out) as tmp:
        torch.save({"state_dict": official, "global_step": payload["step"]}, tmp)
    return {
        "arch": payload["arch"],
        "method": method,
        "rate": payload["rate"],
        "tensors": len(official),
        "config": extra.get("official", {}).get("config"),
    }


def paper_presets(base: Config) -> dict[str, dict[str, tuple[int, ...]]]:
    """Official key -> shape of our paper-size GQ models (meta device), per official config name
    (``sd3unet_gq_0.25``, ``bsqvit_gq_0.25``): what a released checkpoint must hold."""
    out = {}
    for name, arch in (("sd3unet_gq_0.25", "unet"), ("bsqvit_gq_0.25", "vit")):
        with torch.device("meta"):
            model = build_autoencoder(base, "tdc", arch, DEFAULT_GQ_RATE)
        state = ours_to_official(model.state_dict(), arch, base, "tdc", DEFAULT_GQ_RATE)
        out[name] = {k: tuple(v.shape) for k, v in state.items()}
    return out


# ----------------------------------------------------------------------------- comparison with docs/method.md §7


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluated official checkpoint (``runs``: metrics JSONs whose ``name`` is the
    official configuration): our measurement, the published docs/method.md §7 value of the same arch,
    method and rate, and ours minus published (NaN where docs/method.md §7 has no number)."""
    rows = []
    for _, run in runs.iterrows():
        name, spec = official_config(run["name"])
        method = "gq" if METHODS[spec.method].gaussian else spec.method  # the row evaluated
        paper = published(spec.arch, method, int(spec.rate)) or {}
        row = {"config": name, "arch": spec.arch, "method": method, "bits": int(spec.rate)}
        row["bpp"] = row["bits"] / PAPER_DOWNSAMPLE**2
        row |= {"bits_per_pixel": run["bits_per_pixel"], "images": run["n_images"]}
        for key in PAPER_METRICS:
            ours = math.nan if run.get(key) is None else float(run[key])
            row |= {key: ours, f"paper_{key}": paper.get(key, math.nan)}
            row[f"diff_{key}"] = ours - row[f"paper_{key}"]
        rows.append(row)
    return pd.DataFrame(rows)


def write_comparison(
    table: pd.DataFrame, prefix: str | Path, decimals: dict[str, int], caption: str
) -> list[Path]:
    """``prefix``.csv (raw numbers) and .md (ours / paper / difference per metric)."""
    prefix = Path(prefix)
    csv, md = prefix.with_suffix(".csv"), prefix.with_suffix(".md")
    write_text(csv, table.to_csv(index=False, float_format="%.6g"))
    shown = table[["config", "arch", "method", "bits", "bpp", "images"]].copy()
    for key in PAPER_METRICS:
        d = decimals.get(key, 3)
        for col, title in ((key, "ours"), (f"paper_{key}", "paper"), (f"diff_{key}", "diff")):
            fmt = f"{{:+.{d}f}}" if title == "diff" else f"{{:.{d}f}}"
            cells = table[col].map(lambda v, f=fmt: "-" if math.isnan(v) else f.format(v))
            shown[f"{METRICS[key][0]} {title}"] = cells
    text = shown.to_markdown(index=False, disable_numparse=True)  # keeps "+" and decimals
    write_text(md, f"{caption}\n\n{text}\n")
    return [csv, md]
