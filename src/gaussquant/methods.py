"""The method registry: every trained method and every evaluated row, in one place (torch-free).

A *method* is something ``gaussquant train`` trains; a *row* is something ``gaussquant
evaluate`` measures (a trained tokenizer, a training-free conversion of a Gaussian VAE, or a
Gaussian VAE's continuous reconstruction). Config validation, the Snakemake rules, the
rerun triggers, the training's resume record, the tables and the figures all read these two
dicts; the bottleneck classes are chosen by the same names in
:data:`gaussquant.quantizers.BUILDERS`.

Adding a quantizer (tried with a trivial one: 7 files, ~25 lines besides its own module):
its file in ``quantizers/`` (with a ``from_config`` classmethod) and one line in
``quantizers.BUILDERS``; one :class:`Method` here; its rate field (and section, if any) in
``sections.py``, with the bit-count check in ``config._validate_rate``; the same keys in
``params.yaml`` (every ``rates`` entry, profiles' own rates included; ``train.lr`` /
``batch_size`` of each profile unless ``hp`` borrows another method's) and in
``workflow/schemas/params.schema.json``; a section of its own is also a ``dvc.yaml`` param.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """A trained method.

    section:    the params.yaml section with its own hyperparameters (rerun triggers, resume
                record); None when it has none beyond the rate's shape.
    rate_field: the ``rates.<r>`` field that shapes its bottleneck at a rate.
    gaussian:   a Gaussian VAE (continuous; GQ/TokenBridge convert it after training).
    hp:         whose ``train.lr`` / ``train.batch_size`` entry it uses.
    table1:     a column of Table 1 (allowed in ``experiment.methods``).
    """

    name: str
    display: str
    color: str
    section: str | None
    rate_field: str
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
    Method("vq", "VQGAN", "tab:blue", "vq", "vq_tokens"),
    Method("fsq", "FSQ", "tab:orange", None, "fsq_levels"),
    Method("lfq", "LFQ", "tab:green", "lfq", "lfq_bits"),
    Method("bsq", "BSQ", "tab:purple", "bsq", "bsq_bits"),
    Method("gq", "GQ (ours)", "tab:red", "tdc", "gq_dim", gaussian=True),
    Method("vanilla", "vanilla VAE", "tab:gray", "vanilla", "gq_dim", gaussian=True, table1=False),
    # TokenBridge protocol: TDC at m = 1, target B bits per dimension (SPEC 4); trains like gq
    Method("tbtdc", "TDC VAE, m = 1", "tab:pink", "tdc", "tokenbridge_bits", True, "gq", False),
)
METHODS: dict[str, Method] = {m.name: m for m in _METHODS}

_ROWS = (
    *(Row(m.name, m.display, m.color, m.name) for m in _METHODS if m.table1 and not m.gaussian),
    Row("gq", "GQ (ours)", "tab:red", "gq", quantizer="gq"),
    Row("gq-continuous", "TDC VAE, continuous (reference)", "0.5", "gq", continuous=True),
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
