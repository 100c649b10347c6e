"""Pretrained Gaussian VAEs from diffusers (``AutoencoderKL``) as our encoder and decoder.

Optional extra: ``pip install -e ".[diffusers]"``. Any ``AutoencoderKL`` (SD 1.x/2.x/SDXL with
4 latent channels, SD3/FLUX with 16) is a Gaussian VAE: its encoder emits ``2C`` channels, mean
then log-variance, exactly our bottleneck input (docs/method.md §1), so GQ conversion, TokenBridge and TDC
fine-tuning apply unchanged.

VAE spec (``--vae``): ``PATH_OR_ID[:SUBFOLDER]``.
- a local folder holding ``config.json`` + weights (what ``save_pretrained`` writes), or a
  pipeline folder whose ``vae/`` subfolder holds them (found without naming it);
- a hub id such as ``stabilityai/sd-vae-ft-mse``, or ``stabilityai/stable-diffusion-3-medium-
  diffusers:vae`` for a pipeline repo's VAE subfolder (needs network or the local hub cache);
- the part after the last ``:`` is the subfolder, unless the whole spec is an existing path.

Latent space. GQ, the bits-back rate and TDC all work in the **raw** latent space, the one
``vae.encode(x).latent_dist`` lives in: that is where the VAE's KL term pulled the posterior
towards the prior N(0, I), so that is where ``KL(q || N(0, I))`` is the rate and the Gaussian
codebook matches the prior. diffusers pipelines feed diffusion models the *scaled* latent
``(z - shift_factor) * scaling_factor`` (:func:`raw_to_scaled`), whose KL to N(0, I) means
nothing. Codewords are raw latents, so ``vae.decode(codewords)`` decodes them directly.

Our pipeline, unchanged. :func:`byo_config` re-bases params.yaml on the VAE (C, f, K and one
rate ``byo`` at m); :func:`diffusers_autoencoder` puts the VAE's halves around the bottleneck
that :data:`gaussquant.quantizers.BUILDERS` builds for a method, as for our backbones. A
checkpoint of it is an ordinary one (arch ``diffusers``, rate ``byo``) whose ``extra["diffusers"]``
(:func:`describe`) lets :func:`gaussquant.checkpoint.load_autoencoder` rebuild the architecture
offline; conversion, evaluation and training then run their usual code.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gaussquant.config import Config, check_power_of_two, config_from_dict, config_to_dict
from gaussquant.errors import GaussquantError
from gaussquant.methods import GAUSSIAN_METHODS, shape
from gaussquant.models.autoencoder import Autoencoder
from gaussquant.posterior import LOGVAR_MAX, LOGVAR_MIN, dim_for_bpp
from gaussquant.quantizers import BUILDERS

DESCRIPTION_KIND = "diffusers-autoencoderkl/1"
VAE_CLASS = "AutoencoderKL"
INSTALL_HINT = 'install the extra: pip install -e ".[diffusers]"'


# ----------------------------------------------------------------------------- loading
def _diffusers():
    try:
        import diffusers
    except ImportError as err:
        raise GaussquantError(f"diffusers is not installed ({err}); {INSTALL_HINT}") from None
    return diffusers


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``PATH_OR_ID[:SUBFOLDER]`` -> (path or hub id, subfolder or None); see the module doc.

    A local folder without ``config.json`` but with ``vae/config.json`` (a pipeline saved with
    ``save_pretrained``) resolves to subfolder ``vae``.
    """
    spec = str(spec)
    if not spec:
        raise GaussquantError("--vae: empty spec; give a folder or hub id, PATH_OR_ID[:SUBFOLDER]")
    where, subfolder = spec, None
    if not Path(spec).exists() and ":" in spec:
        where, _, subfolder = spec.rpartition(":")
        subfolder = subfolder or None
    local = Path(where)
    if subfolder is None and local.is_dir() and not (local / "config.json").is_file():
        if (local / "vae" / "config.json").is_file():
            subfolder = "vae"
    return where, subfolder


def _looks_local(where: str) -> bool:
    # hub ids are "name" or "org/name"; anything else (./x, /x, a/b/c, x\y) can only be a path
    return where.startswith((".", "/", "~")) or where.count("/") > 1 or "\\" in where


def read_vae_config(spec: str, local_files_only: bool = False) -> dict[str, Any]:
    """The diffusers config of ``spec``, checked to be an ``AutoencoderKL``'s.

    A folder of another diffusers class would otherwise load as an ``AutoencoderKL`` with random
    weights and only a warning (diffusers ignores the class name), hence the check.
    """
    diffusers = _diffusers()
    where, subfolder = parse_spec(spec)
    full = Path(where) / (subfolder or "")
    if _looks_local(where) or Path(where).exists():
        if not full.is_dir():
            raise GaussquantError(
                f"--vae {spec}: folder {str(full)!r} not found; give a folder written by "
                "AutoencoderKL.save_pretrained (or a pipeline folder with vae/), or a hub id"
            )
        if not (full / "config.json").is_file():
            raise GaussquantError(
                f"--vae {spec}: {str(full)!r} has no config.json; give the folder "
                "AutoencoderKL.save_pretrained wrote (append :SUBFOLDER for a pipeline's VAE)"
            )
    try:
        config = diffusers.AutoencoderKL.load_config(
            where, subfolder=subfolder, local_files_only=local_files_only
        )
    except (OSError, ValueError) as err:  # no network, unknown id, no such subfolder, bad json
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GaussquantError(
            f"--vae {spec}: no such local folder, and the hub gave no config ({reason}); "
            "check the id, or without network save it elsewhere "
            "(AutoencoderKL.from_pretrained(ID).save_pretrained(DIR)) and pass --vae DIR"
        ) from None
    cls = config.get("_class_name")
    if cls != VAE_CLASS:
        raise GaussquantError(
            f"--vae {spec}: config is a diffusers {cls!r}, not an {VAE_CLASS} (Gaussian VAE); "
            "point it at the VAE (a pipeline's VAE is its :vae subfolder)"
        )
    return dict(config)


def load_vae(spec: str, local_files_only: bool = False, dtype: torch.dtype = torch.float32):
    """An ``AutoencoderKL`` from ``spec`` (module doc) in eval mode, every weight loaded.

    ``local_files_only``: never contact the hub (folders and the local hub cache only); the
    ``HF_HUB_OFFLINE=1`` environment variable does the same for every diffusers call.
    """
    diffusers = _diffusers()
    read_vae_config(spec, local_files_only)
    where, subfolder = parse_spec(spec)
    try:
        vae, info = diffusers.AutoencoderKL.from_pretrained(
            where,
            subfolder=subfolder,
            local_files_only=local_files_only,
            torch_dtype=dtype,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GaussquantError(f"--vae {spec}: cannot load the weights ({reason})") from None
    # diffusers only warns and initialises missing weights at random: a silently broken VAE
    bad = {k: v for k, v in info.items() if k != "error_msgs" and v} | (
        {"error_msgs": info["error_msgs"]} if info.get("error_msgs") else {}
    )
    if bad:
        first = ", ".join(f"{k}: {list(v)[:3]}" for k, v in bad.items())
        raise GaussquantError(f"--vae {spec}: weights do not match the config ({first})")
    return vae.eval()


def plain_config(vae) -> dict[str, Any]:
    """The VAE's diffusers config as plain JSON data (lists, numbers, strings), with the class
    name: ``AutoencoderKL.from_config`` of it rebuilds the architecture."""
    out = {"_class_name": VAE_CLASS}
    for k, v in dict(vae.config).items():
        if not k.startswith("_"):
            out[k] = list(v) if isinstance(v, (tuple, list)) else v
    return out


def downsampling_factor(config: dict[str, Any]) -> int:
    """Pixels per latent position along each axis: one 2x downsampler between encoder levels."""
    return 2 ** (len(config["block_out_channels"]) - 1)


# ----------------------------------------------------------------------------- latent scaling
def _scale_shift(config: dict[str, Any], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` broadcastable to (B, C, H, W) with ``scaled = (raw - shift) * scale``.

    Per-channel ``latents_mean`` / ``latents_std`` (when both are set, as in some SDXL-style
    VAEs) take precedence over the scalar ``shift_factor`` (SD3/FLUX; None = 0 for SD 1.x/2.x).
    """
    scale = torch.tensor(float(config["scaling_factor"]), dtype=like.dtype, device=like.device)
    mean, std = config.get("latents_mean"), config.get("latents_std")
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=like.dtype, device=like.device).reshape(shape)
        std_t = torch.tensor(std, dtype=like.dtype, device=like.device).reshape(shape)
        return scale / std_t, mean_t
    shift = float(config.get("shift_factor") or 0.0)
    return scale, torch.tensor(shift, dtype=like.dtype, device=like.device)


def raw_to_scaled(z: torch.Tensor, config: dict[str, Any]) -> torch.Tensor:
    """Raw latent (GQ codewords, ``latent_dist.mean``) -> the latent diffusion models see."""
    scale, shift = _scale_shift(config, z)
    return (z - shift) * scale


def scaled_to_raw(z: torch.Tensor, config: dict[str, Any]) -> torch.Tensor:
    """Inverse of :func:`raw_to_scaled`: what ``vae.decode`` (and GQ) take."""
    scale, shift = _scale_shift(config, z)
    return z / scale + shift


# ----------------------------------------------------------------------------- adapters
class DiffusersEncoder(nn.Module):
    """``vae.encoder`` + ``quant_conv``: ``x`` (B, 3, H, W) in [-1, 1] -> (B, 2C, H/f, W/f) =
    ``[mean, logvar]`` of ``vae.encode(x).latent_dist`` bit for bit (logvar clamped to
    [-30, 20] like diffusers and docs/method.md §1). Shares the VAE's modules (no copy); diffusers'
    tiling and slicing are not used."""

    def __init__(self, vae):
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv if vae.config.get("use_quant_conv", True) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mu, logvar = torch.chunk(h, 2, dim=1)
        return torch.cat([mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)], dim=1)


class DiffusersDecoder(nn.Module):
    """``post_quant_conv`` + ``vae.decoder``: raw latent (B, C, h, w) -> image (B, 3, h f, w f),
    exactly ``vae.decode(z).sample`` (nominally [-1, 1]; not clamped, like diffusers)."""

    def __init__(self, vae):
        super().__init__()
        use = vae.config.get("use_post_quant_conv", True)
        self.post_quant_conv = vae.post_quant_conv if use else None
        self.decoder = vae.decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


# ----------------------------------------------------------------------------- byo config
BYO_ARCH = "diffusers"  # a checkpoint's arch: rebuilt from its extra["diffusers"] description


def byo_config(cfg: Config, vae_config: dict[str, Any], codebook_size: int, dim: int) -> Config:
    """``cfg`` (params.yaml) for a diffusers VAE: its latent shape (C, f), codebook size K and
    one rate (:func:`byo_rate`) at codebook dim m: ``(C/m) log2 K`` bits per latent position.

    Everything downstream - the bottlenecks of :data:`gaussquant.quantizers.BUILDERS`, TDC, GQ
    and TokenBridge conversion, evaluation's bits per pixel, the training loop - reads these
    fields exactly as for our own models. TokenBridge gets ``log2 K / m`` bits per channel (the
    same bits per pixel as GQ), so m must divide log2 K. Our backbones' sections only follow f
    so that the config validates; they build nothing here. Checked like params.yaml.
    """
    c, f = int(vae_config["latent_channels"]), downsampling_factor(vae_config)
    log2k = codebook_size.bit_length() - 1
    where = f"VAE with C = {c} latent channels"
    check_power_of_two("--codebook-size", codebook_size)
    if dim < 1 or c % dim or log2k % dim:
        allowed = [m for m in range(1, c + 1) if c % m == 0 and log2k % m == 0]
        raise GaussquantError(
            f"--dim: m = {dim} must divide C = {c} ({where}) and log2 K = {log2k} (TokenBridge "
            f"then has log2 K / m bits per channel); allowed: {', '.join(map(str, allowed))}"
        )
    if cfg.data.resolution % f:
        raise GaussquantError(
            f"data.resolution: {cfg.data.resolution} px is not a multiple of the VAE's "
            f"downsampling factor f = {f}; prepare the data at a multiple of it"
        )
    bits = c // dim * log2k  # per latent position, every method alike
    m = cfg.model
    model = replace(
        m,
        latent_channels=c,
        downsample=f,
        unet=replace(m.unet, ch_mult=[1] * len(vae_config["block_out_channels"])),
        vit=replace(m.vit, patch=f),
    )
    offsets = [o for o in cfg.ablation.codebook_log2_offsets if log2k + o >= 1]
    out = replace(
        cfg,
        model=model,
        tdc=replace(cfg.tdc, codebook_size=codebook_size),
        vq=replace(cfg.vq, codebook_size=codebook_size),
        fsq=replace(cfg.fsq, level=2),  # fits any bits (the byo target trains no FSQ)
        lfq=replace(cfg.lfq, sub_codebook_bits=math.gcd(bits, cfg.lfq.sub_codebook_bits)),
        rates=[bits],
        experiment=replace(cfg.experiment, rates=[bits], figure1_rates=[bits]),
        ablation=replace(cfg.ablation, rate=bits, codebook_log2_offsets=offsets),
    )
    return config_from_dict(config_to_dict(out))  # what loading the checkpoint will build


def byo_rate(cfg: Config) -> str:
    """The name of a :func:`byo_config`'s one rate."""
    return cfg.rate(cfg.rates[0]).name


def codebook_dim(
    vae_config: dict[str, Any], codebook_size: int, dim: int | None, bpp: float | None
) -> int:
    """The codebook dim m: ``dim`` as given, or the one giving ``bpp`` bits per pixel with
    K = ``codebook_size`` on this VAE (:func:`gaussquant.posterior.dim_for_bpp`)."""
    if (dim is None) == (bpp is None):
        raise GaussquantError("give the codebook dim: exactly one of --dim m or --bpp BPP")
    if dim is not None:
        return dim
    c, f = int(vae_config["latent_channels"]), downsampling_factor(vae_config)
    return dim_for_bpp(c, f, codebook_size.bit_length() - 1, bpp)


# ----------------------------------------------------------------------------- autoencoder
def diffusers_autoencoder(
    vae, cfg: Config, method: str, rate: str | None = None, bottleneck: nn.Module | None = None
) -> Autoencoder:
    """:class:`Autoencoder` with ``vae``'s encoder and decoder (shared, not copied) and the
    bottleneck of ``method`` at ``rate`` (default :func:`byo_rate`) built by
    :data:`gaussquant.quantizers.BUILDERS` from ``cfg`` (a :func:`byo_config`), as for our own
    models: ``tdc`` TDC fine-tuning, ``vanilla`` the pretrained VAE as it is (its KL term's weight
    does not matter once trained); ``bottleneck`` (a converted model's quantizer) replaces the
    one ``method`` would build."""
    if method not in GAUSSIAN_METHODS:
        raise GaussquantError(
            f"method {method!r}: a diffusers VAE is a Gaussian VAE; allowed: "
            f"{', '.join(GAUSSIAN_METHODS)}"
        )
    c = int(vae.config["latent_channels"])
    if c != cfg.model.latent_channels:
        raise GaussquantError(
            f"the VAE has {c} latent channels, the config {cfg.model.latent_channels}; "
            "build the config with byo_config from this VAE"
        )
    if bottleneck is None:
        bits = cfg.rate(rate or byo_rate(cfg)).bits
        bottleneck = BUILDERS[method](cfg, shape(method, cfg, bits))
    return Autoencoder(DiffusersEncoder(vae), bottleneck, DiffusersDecoder(vae))


def weights_sha256(vae) -> str:
    """sha256 over the VAE's state dict (names, dtypes, shapes, bytes) in key order."""
    h = hashlib.sha256()
    for name, t in vae.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def describe(vae, spec: str) -> dict[str, Any]:
    """Plain data to store in a checkpoint (``extra["diffusers"]``) so that
    :func:`autoencoder_from_description` rebuilds the architecture offline: the spec it came
    from, the diffusers config and version, and the sha256 of the weights as loaded."""
    return {
        "kind": DESCRIPTION_KIND,
        "spec": str(spec),
        "diffusers_version": _diffusers().__version__,
        "config": plain_config(vae),
        "weights_sha256": weights_sha256(vae),
    }


def pretrained_autoencoder(
    spec: str, cfg: Config, method: str, rate: str | None = None, local_files_only: bool = False
) -> tuple[Autoencoder, dict[str, Any]]:
    """The pretrained VAE of ``spec`` with ``method``'s bottleneck (:func:`diffusers_autoencoder`)
    and the checkpoint ``extra`` that describes it: ``{"diffusers": describe(...)}``."""
    vae = load_vae(spec, local_files_only)
    return diffusers_autoencoder(vae, cfg, method, rate), {"diffusers": describe(vae, spec)}


def autoencoder_from_description(
    desc: dict[str, Any],
    cfg: Config,
    method: str,
    rate: str | None = None,
    bottleneck: nn.Module | None = None,
) -> Autoencoder:
    """The architecture :func:`describe` recorded, randomly initialised, with ``method``'s
    bottleneck from ``cfg`` (the checkpoint's): no network, no files. The checkpoint loader
    (:func:`gaussquant.checkpoint.load_autoencoder`) passes a converted checkpoint's
    ``bottleneck`` and loads the weights, as for our own models."""
    if desc.get("kind") != DESCRIPTION_KIND:
        raise GaussquantError(
            f"diffusers description of kind {desc.get('kind')!r}; expected {DESCRIPTION_KIND}"
        )
    config = dict(desc["config"])
    if config.get("_class_name") != VAE_CLASS:
        raise GaussquantError(f"diffusers description of a {config.get('_class_name')!r}")
    vae = _diffusers().AutoencoderKL.from_config(config)
    return diffusers_autoencoder(vae, cfg, method, rate, bottleneck)
