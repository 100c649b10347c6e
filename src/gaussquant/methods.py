"""The method registry: every trained method and every evaluated row, in one place (torch-free).

A *method* is something ``gaussquant train`` trains; a *row* is something ``gaussquant
evaluate`` measures (a trained tokenizer, a training-free conversion of a Gaussian VAE, or a
Gaussian VAE's continuous reconstruction). Config validation, the Snakemake rules, the
rerun triggers, the training's resume record, the tables and the figures all read these two
dicts; the bottleneck classes are chosen by the same names in
:data:`gaussquant.quantizers.BUILDERS`.

Adding a quantizer (tried with a trivial sign quantizer on a scratch branch: 3 files, plus
``experiment.methods`` in params.yaml): its file in ``quantizers/`` (with a ``from_config(cfg,
shape)`` classmethod) and one line in ``quantizers.BUILDERS``; one :class:`Method` here, whose
``shape`` derives its bottleneck from the rate's bits (a function below, or an existing one);
``hp`` borrows another method's ``train.lr`` / ``batch_size`` (else give its own in every
preset of params.yaml). Hyperparameters of its own also need a section dataclass in
``sections.py`` (and a ``dvc.yaml`` param); the JSON schema is regenerated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# ----------------------------------------------------------------------------- shapes at a rate
# A trained method's bottleneck shape at ``bits`` per latent position, derived from the bits
# and the method's own section (docs/method.md §2, §4); ``cfg`` is a loaded Config. A ValueError
# says why the rate does not fit the method.


def _whole(num: int, den: int, what: str) -> int:
    if den < 1 or num < den or num % den:
        raise ValueError(f"{what} = {num} / {den} is not a whole number >= 1")
    return num // den


def _log2(n: int) -> int:
    return n.bit_length() - 1  # powers of two only (config validation)


def gq_dim(cfg: Any, bits: int) -> int:
    """GQ's codebook dim m = C log2 K / bits: C/m tokens of log2 K bits (K = tdc.codebook_size)."""
    c, log2k = cfg.model.latent_channels, _log2(cfg.tdc.codebook_size)
    m = _whole(c * log2k, bits, f"m = C log2 K / bits = {c} x {log2k} / {bits}")
    if c % m:
        raise ValueError(f"m = {m} does not divide C = {c} (model.latent_channels)")
    return m


def vq_tokens(cfg: Any, bits: int) -> int:
    """VQ tokens per position, each of log2 vq.codebook_size bits and C / tokens dims."""
    log2k = _log2(cfg.vq.codebook_size)
    n = _whole(bits, log2k, f"tokens = bits / log2 vq.codebook_size = {bits} / {log2k}")
    c = cfg.model.latent_channels
    if c % n:
        raise ValueError(f"{n} tokens per position do not divide C = {c}")
    return n


def fsq_levels(cfg: Any, bits: int) -> list[int]:
    """FSQ levels: bits / log2 fsq.level dimensions of fsq.level levels each."""
    level = cfg.fsq.level
    return [level] * _whole(
        bits, _log2(level), f"dims = bits / log2 fsq.level = {bits} / {_log2(level)}"
    )


def sign_bits(cfg: Any, bits: int) -> int:
    """BSQ: one sign channel per bit."""
    return bits


def lfq_bits(cfg: Any, bits: int) -> int:
    """LFQ: one sign channel per bit, in sub-codebooks of lfq.sub_codebook_bits."""
    _whole(bits, cfg.lfq.sub_codebook_bits, "sub-codebooks = bits / lfq.sub_codebook_bits")
    return bits


def tokenbridge_bits(cfg: Any, bits: int) -> int:
    """TokenBridge: B = bits / C bits per channel (m = 1)."""
    c = cfg.model.latent_channels
    return _whole(bits, c, f"bits per channel = bits / C = {bits} / {c}")


@dataclass(frozen=True)
class Method:
    """A trained method.

    section:    the params.yaml section with its own hyperparameters (rerun triggers, resume
                record); None when it has none beyond the rate's shape.
    shape:      its bottleneck's shape at a rate, ``shape(cfg, bits per latent position)``.
    gaussian:   a Gaussian VAE (continuous; GQ/TokenBridge convert it after training).
    hp:         whose ``train.lr`` / ``train.batch_size`` entry it uses.
    table1:     a column of Table 1 (allowed in ``experiment.methods``).
    """

    name: str
    display: str
    color: str
    section: str | None
    shape: Callable[[Any, int], Any]
    gaussian: bool = False
    hp: str = ""
    table1: bool = True

    @property
    def hyper(self) -> str:
        return self.hp or self.name


@dataclass(frozen=True)
class Row:
    """An evaluated row: ``source`` is the trained method whose checkpoint it measures;
    ``quantizer`` the training-free conversion applied (None: the trained model as it is);
    ``continuous``: a Gaussian VAE's posterior-mean reconstruction (a reference, not quantized)."""

    name: str
    display: str
    color: str
    source: str
    quantizer: str | None = None
    continuous: bool = False


_METHODS = (
    Method("vq", "VQGAN", "tab:blue", "vq", vq_tokens),
    Method("fsq", "FSQ", "tab:orange", "fsq", fsq_levels),
    Method("lfq", "LFQ", "tab:green", "lfq", lfq_bits),
    Method("bsq", "BSQ", "tab:purple", "bsq", sign_bits),
    Method("tdc", "TDC VAE", "tab:red", "tdc", gq_dim, gaussian=True),
    Method("vanilla", "vanilla VAE", "tab:gray", "vanilla", gq_dim, gaussian=True, table1=False),
    # TokenBridge protocol: TDC at m = 1, target B bits per dimension (docs/method.md §4); trains like tdc
    Method("tbtdc", "TDC VAE, m = 1", "tab:pink", "tdc", tokenbridge_bits, True, "tdc", False),
)
METHODS: dict[str, Method] = {m.name: m for m in _METHODS}

_ROWS = (
    *(Row(m.name, m.display, m.color, m.name) for m in _METHODS if m.table1 and not m.gaussian),
    Row("gq", "GQ (ours)", "tab:red", "tdc", quantizer="gq"),
    Row("gq-continuous", "TDC VAE, continuous (reference)", "0.5", "tdc", continuous=True),
    Row("gq-vanilla", "GQ on vanilla VAE", "tab:olive", "vanilla", quantizer="gq"),
    Row("tb-vanilla", "TokenBridge, vanilla VAE", "tab:brown", "vanilla", quantizer="tokenbridge"),
    Row("tb-tdc", "TokenBridge, TDC VAE", "tab:pink", "tbtdc", quantizer="tokenbridge"),
)
ROWS: dict[str, Row] = {r.name: r for r in _ROWS}  # also the reading order of the tables

TRAINED_METHODS = tuple(METHODS)
GAUSSIAN_METHODS = tuple(m.name for m in _METHODS if m.gaussian)
TABLE1_METHODS = tuple(m.name for m in _METHODS if m.table1)
HYPER_METHODS = tuple(
    m.name for m in _METHODS if m.hyper == m.name
)  # keys of train.lr / batch_size
CONVERSIONS = {r.name: (r.source, r.quantizer) for r in _ROWS if r.quantizer}
TOKENBRIDGE_ROWS = ("tb-vanilla", "tb-tdc", "gq")


# Trained methods' former names: checkpoints, training states and params files that use them
# still load (config.migrate_method_names); the trained TDC VAE was "gq", now only its conversion.
RENAMED_METHODS = {"gq": "tdc"}


def current_method(name: str) -> str:
    """A trained method's name today (``gq`` -> ``tdc``)."""
    return RENAMED_METHODS.get(name, name)


def shape(method: str, cfg: Any, bits: int) -> Any:
    """``method``'s bottleneck shape at ``bits`` per latent position."""
    return METHODS[method].shape(cfg, bits)


def rate_shapes(cfg: Any, bits: int) -> dict[str, Any]:
    """Every trained method's shape at ``bits`` per latent position (ValueError names the method)."""
    out = {}
    for name, m in METHODS.items():
        try:
            out[name] = m.shape(cfg, bits)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    return out


def table1_rows(methods: list[str]) -> list[str]:
    """Evaluated rows of Table 1 for ``experiment.methods``: each trained tokenizer, and for a
    Gaussian method its GQ conversion plus its continuous reconstruction as a reference row."""
    rows = [m for m in methods if not METHODS[m].gaussian]
    for m in methods:
        if METHODS[m].gaussian:
            rows += [
                r.name for r in _ROWS if r.source == m and (r.quantizer == "gq" or r.continuous)
            ]
    return rows


def display_name(row: str) -> str:
    return ROWS[row].display if row in ROWS else row


def color(row: str) -> str:
    return ROWS[row].color if row in ROWS else "k"
