"""The public Python API: ``from gaussquant import GaussianQuant, load_tokenizer, from_gaussian_vae``.

- :class:`GaussianQuant`: the GQ rule (docs/method.md §2) on any Gaussian posterior, with no model:
  ``encode(mu, logvar) -> indices``, ``decode(indices) -> codewords``.
- :func:`load_tokenizer`: a :class:`Tokenizer` from any checkpoint of ours (trained, converted,
  imported), a folder written by :meth:`Tokenizer.save_pretrained`, or a Hugging Face Hub id.
- :func:`from_gaussian_vae`: a :class:`Tokenizer` around any Gaussian VAE (a diffusers
  ``AutoencoderKL``, or a module giving mean and log-variance), converted with no training.

Everything runs without gradients and in eval mode, whatever the caller's context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from gaussquant.errors import GaussquantError
from gaussquant.quantizers.gaussian_quant import GaussianQuant as _GQModule


class GaussianQuant(nn.Module):
    """GQ with codebook size ``codebook_size`` (K, a power of two) and codeword dim ``dim`` (m):
    the codebook is regenerated from (K, m, ``seed``), never trained or stored (docs/method.md §2).

    ``encode(mu, logvar)``: posterior means and log-variances ``(B, C, H, W)`` (C a multiple of m)
    -> indices ``(B, C/m, H, W)`` int64 in [0, K); token ``t`` of a position holds channels
    ``t, t + C/m, t + 2C/m, ...`` (the strided layout of the official code). ``decode(indices)``
    -> the codewords ``(B, C, H, W)`` in the same layout. Bit-exact with the rule our converted
    checkpoints use (the float64 argmax, lowest index on ties).
    """

    def __init__(self, codebook_size: int, dim: int, seed: int = 42, beta: float = 1.0):
        super().__init__()
        # one token per position of a C = m latent: any C maps onto it (see _as_columns)
        self.quantizer = _GQModule(dim, codebook_size, dim, seed=seed, beta=beta).eval()
        self.codebook_size, self.dim, self.seed, self.beta = codebook_size, dim, seed, beta

    @property
    def codebook(self) -> torch.Tensor:
        """The codewords, (K, m) float32."""
        return self.quantizer.codebook

    @property
    def sha256(self) -> str:
        """sha256 of the codebook's float32 bytes (what checkpoints record)."""
        return self.quantizer.sha256

    def train(self, mode: bool = True) -> GaussianQuant:
        return super().train(False)  # GQ has nothing to train: always the eval-time rule

    def encode(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        if mu.shape != logvar.shape or mu.ndim != 4 or mu.shape[1] % self.dim:
            raise GaussquantError(
                f"GaussianQuant.encode: mu and logvar must both be (B, C, H, W) with C a multiple "
                f"of dim={self.dim}; got {tuple(mu.shape)} and {tuple(logvar.shape)}"
            )
        b, c, h, w = mu.shape
        z = torch.cat([_as_columns(mu, self.dim), _as_columns(logvar, self.dim)], dim=1)
        with torch.no_grad():
            return self.quantizer.encode(z).reshape(b, c // self.dim, h, w)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        if indices.ndim != 4:
            raise GaussquantError(
                f"GaussianQuant.decode: indices must be (B, T, H, W), got {tuple(indices.shape)}"
            )
        b, t, h, w = indices.shape
        codes = self.quantizer.indices_to_codes(indices.reshape(b, 1, t * h, w))
        return codes.reshape(b, self.dim * t, h, w)  # channel d * T + t: the strided layout

    forward = encode

    def extra_repr(self) -> str:
        return f"K={self.codebook_size}, m={self.dim}, seed={self.seed}, beta={self.beta}"


def _as_columns(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, m, (C/m) H, W): token t of row h becomes position (t H + h) of an
    m-channel latent, whose one token holds channels t, t + C/m, ... (posterior.to_tokens)."""
    b, c, h, w = x.shape
    return x.reshape(b, dim, (c // dim) * h, w)


# ----------------------------------------------------------------------------- tokenizers
class Tokenizer(nn.Module):
    """Images <-> token indices with a trained or converted autoencoder.

    ``encode(images)``: ``(B, 3, H, W)`` in [-1, 1] -> indices ``(B, T, h, w)`` int64 (T tokens
    per latent position, h = H/f). ``decode(indices)`` -> images ``(B, 3, H, W)``, nominally in
    [-1, 1] (not clamped). ``info``: what the checkpoint records (method, arch, rate, step,
    config, quantizer, evaluation metrics); :meth:`save_pretrained` writes it with the weights.
    """

    def __init__(self, model: nn.Module, info: dict[str, Any]):
        super().__init__()
        self.model = model.eval()
        self.info = info

    @property
    def quantizer(self) -> nn.Module:
        return self.model.bottleneck

    def train(self, mode: bool = True) -> Tokenizer:
        return super().train(False)  # a tokenizer is used, not trained: always eval mode

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise GaussquantError(
                f"Tokenizer.encode: images must be (B, 3, H, W) in [-1, 1], got {tuple(images.shape)}"
            )
        with torch.no_grad():
            return self.model.encode(images).indices

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.decode_indices(indices)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction: ``decode(encode(images))``."""
        return self.decode(self.encode(images))

    def save_pretrained(self, folder: str | Path, metrics: dict | str | Path | None = None) -> Path:
        """Write safetensors weights, ``config.json`` and a model card (README.md) into
        ``folder``; ``metrics``: a ``gaussquant evaluate`` JSON (or its dict) for the card."""
        from gaussquant.pretrained import save_pretrained

        return save_pretrained(self, folder, metrics)

    def push_to_hub(
        self,
        repo_id: str,
        metrics: dict | str | Path | None = None,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload gaussquant tokenizer",
    ) -> str:
        """:meth:`save_pretrained` into a Hugging Face Hub model repository (created if
        needed); returns the commit URL."""
        from gaussquant.pretrained import push_to_hub

        return push_to_hub(self, repo_id, metrics, private, token, commit_message)


def load_tokenizer(
    source: str | Path,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> Tokenizer:
    """A :class:`Tokenizer` from ``source``: a checkpoint file of ours (``gaussquant train``,
    ``convert``, ``import-official``), a folder written by :meth:`Tokenizer.save_pretrained`,
    or a Hub id ``owner/name`` (downloaded once into the Hugging Face cache; offline, with
    ``HF_HUB_OFFLINE=1`` or ``local_files_only``, read from the cache).

    A trained Gaussian VAE becomes its training-free tokenizer on load (GQ; TokenBridge for a
    ``tbtdc`` model), exactly as ``gaussquant convert`` would write it.
    """
    from gaussquant.checkpoint import autoencoder_from_payload, read_checkpoint
    from gaussquant.pretrained import download, read_pretrained

    path = Path(source)
    if path.is_file():
        payload = read_checkpoint(path)
    elif path.is_dir():
        payload = read_pretrained(path)
    else:
        payload = read_pretrained(download(str(source), revision, cache_dir, local_files_only))
    model = autoencoder_from_payload(payload)
    info = _quantize(model, {k: v for k, v in payload.items() if k != "model"})
    return Tokenizer(model, info)


def _quantize(model: nn.Module, info: dict[str, Any]) -> dict[str, Any]:
    """A trained Gaussian VAE gets its default training-free quantizer, as ``gaussquant
    convert`` writes it; returns the checkpoint record of the result."""
    from gaussquant.config import config_from_dict
    from gaussquant.conversion import convert_model
    from gaussquant.methods import GAUSSIAN_METHODS, ROWS

    method, extra = info["method"], info.get("extra", {})
    if method not in GAUSSIAN_METHODS or "quantizer" in extra:
        return info
    to = next(r.quantizer for r in ROWS.values() if r.source == method and r.quantizer)
    new = convert_model(model, config_from_dict(info["config"]), method, info["rate"], to)
    return info | {"method": to, "extra": extra | new}


def from_gaussian_vae(
    vae: nn.Module,
    codebook_size: int,
    dim: int,
    seed: int = 42,
    beta: float = 1.0,
    latent_channels: int | None = None,
) -> Tokenizer:
    """A GQ tokenizer around a trained Gaussian VAE, no training (docs/method.md §2).

    ``vae``: a diffusers ``AutoencoderKL`` (through our adapter, in its raw latent space; the
    tokenizer can then :meth:`~Tokenizer.save_pretrained`; m must also divide log2 K), or any
    module with ``encode(x) -> (mean, logvar)`` (each ``(B, C, h, w)``) and ``decode(z) -> x``,
    given its ``latent_channels`` C (such a tokenizer works in memory; save the module itself).
    """
    from gaussquant.models.diffusers_vae import VAE_CLASS

    config = getattr(vae, "config", None)
    if isinstance(config, dict) and config.get("_class_name", type(vae).__name__) == VAE_CLASS:
        return _from_diffusers(vae, codebook_size, dim, seed, beta)
    if latent_channels is None:
        raise GaussquantError(
            "from_gaussian_vae: give latent_channels=C for a module that is not a diffusers "
            "AutoencoderKL"
        )
    from gaussquant.conversion import POST_QUANTIZERS
    from gaussquant.models.autoencoder import Autoencoder

    settings = {"latent_channels": latent_channels, "codebook_size": codebook_size, "dim": dim}
    quantizer, meta = POST_QUANTIZERS["gq"].from_settings(settings | {"seed": seed, "beta": beta})
    model = Autoencoder(_PosteriorEncoder(vae), quantizer, _Decoder(vae))
    return Tokenizer(model, {"method": "gq", "arch": "custom", "extra": {"quantizer": meta}})


def _from_diffusers(vae, codebook_size: int, dim: int, seed: int, beta: float) -> Tokenizer:
    from dataclasses import replace

    from gaussquant import __version__
    from gaussquant.checkpoint import CHECKPOINT_FORMAT
    from gaussquant.config import config_to_dict
    from gaussquant.conversion import convert_model
    from gaussquant.models import diffusers_vae as dv
    from gaussquant.models.diffusers_vae import VAE_CLASS

    cfg = dv.byo_config(_base_config(), dv.plain_config(vae), codebook_size, dim)
    cfg = replace(cfg, gq=replace(cfg.gq, seed=seed, beta=beta))
    model = dv.diffusers_autoencoder(vae, cfg, "vanilla")
    rate = dv.byo_rate(cfg)
    new = convert_model(model, cfg, "vanilla", rate, "gq")
    spec = str(vae.config.get("_name_or_path") or VAE_CLASS)
    extra = {"diffusers": dv.describe(vae, spec)} | new
    info = {"format": CHECKPOINT_FORMAT, "version": __version__, "method": "gq"}
    info |= {"arch": dv.BYO_ARCH, "rate": rate, "step": 0}
    return Tokenizer(model, info | {"config": config_to_dict(cfg), "extra": extra})


def _base_config():
    """The paper's settings (the dataclass defaults, docs/method.md §5) with a placeholder
    learning rate and batch size per method: a converted VAE is never trained here, but its
    config is checked like params.yaml and stored so that the folder rebuilds it."""
    from dataclasses import replace

    from gaussquant.config import Config
    from gaussquant.methods import HYPER_METHODS

    cfg = Config()
    lr, batch = {m: 1e-4 for m in HYPER_METHODS}, {m: 1 for m in HYPER_METHODS}
    return replace(cfg, train=replace(cfg.train, lr=lr, batch_size=batch))


class _PosteriorEncoder(nn.Module):
    """``vae.encode(x) -> (mean, logvar)`` as our encoder's output ``[mean, logvar]``."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, logvar = self.vae.encode(x)
        return torch.cat([mean, logvar], dim=1)


class _Decoder(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)
