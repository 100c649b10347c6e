"""What params.yaml holds: one dataclass per section, defaults = the paper's values (docs/method.md).

The rule between the two config modules: this file says *what* a section is (its fields, their
defaults, and the checks that read only that section, in ``__post_init__``, so a section built
directly - a model in a test - is checked too); :mod:`gaussquant.config` says *how* the file is
read (presets, ``--set`` overrides, strict types, missing keys, the checks that relate two
sections, derived values, the JSON schema). Import sections from :mod:`gaussquant.config`.
Torch-free (config loading and Snakefile parsing stay fast): only the standard library,
:mod:`gaussquant.errors`, :mod:`gaussquant.methods` and :mod:`gaussquant.photos` here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gaussquant.errors import ConfigError
from gaussquant.methods import HYPER_METHODS, TABLE1_METHODS, rate_shapes
from gaussquant.photos import BUNDLED_PHOTOS, STEREO_PAIR


def check(cond: bool, message: str) -> None:
    """A failed check of a parameter: :class:`ConfigError` with ``message``, which starts with the
    dotted key and says what is allowed."""
    if not cond:
        raise ConfigError(message)


def check_allowed(key: str, value: Any, allowed: tuple) -> None:
    check(
        value in allowed,
        f"{key}: {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}",
    )


def check_power_of_two(key: str, k: int) -> None:
    """The one check that a codebook size (or FSQ level) is a power of two >= 2."""
    ok = isinstance(k, int) and not isinstance(k, bool) and k >= 2 and k & (k - 1) == 0
    check(ok, f"{key}: {k} is not a power of two (allowed: 2, 4, ..., 65536, ...)")


# ----------------------------------------------------------------------------- data

SOURCES = ("bundled", "folder")
VERIFY_MODES = ("decode", "header")  # how prepare-data checks each image of a folder
VAL_SPLITS = ("photos", "region")  # bundled: hold out whole photos, or a strip of every photo
# Keys that say where the prepared data lives and how it was checked, not which images it
# holds (the manifest's sha256 says that): not part of a training run's settings.
DATA_STORAGE_KEYS = ("prepared_dir", "verify", "hash", "shard_size")


@dataclass
class DataConfig:
    """The ``data:`` section of params.yaml. Defaults are the paper's values where they apply
    (ImageNet folder, 256 px, every image: docs/method.md §5, §6).

    - ``source``: ``"bundled"`` (12 photos, offline) or ``"folder"`` (``train_dir``/``val_dir``).
    - ``resolution``: side of the square images, pixels.
    - ``n_train`` / ``n_val``: bundled: number of random crops (>= 1); folder: at most this
      many images, a seeded random subset kept in path order (0 = every image).
    - ``val_split``: how the bundled photos are split. ``photos``: whole photos
      (``val_photos``) are held out for validation, all others are training photos.
      ``region``: every photo contributes to both splits: validation crops come from its
      right-most strip (a share ``val_region`` of its width), training crops from the rest, so
      no pixel is shared (the right stereo view also leaves out the columns that show the left
      view's strip). ``region`` ignores ``val_photos``.
    - ``val_photos``: ``photos`` mode: bundled photos held out for validation.
    - ``val_region``: ``region`` mode: share of each photo's width held out, in (0, 1).
    - ``min_scale``, ``max_scale``: bundled crops cover a fraction ``f`` of the photo's short
      side, ``f`` log-uniform in ``[min_scale, max_scale]`` (and never so small that the crop is
      upsampled);
      the crop is then resized to ``resolution``. ``f = 1`` is a whole-photo view. 0.25 (at most
      4x zoom) keeps ~97 % of 32 px crops textured (mean |pixel gradient| >= 2/255, measured);
      smaller values give more flat sky/background patches (rocket: 27 % at 0.125).
    - ``seed``: crop positions and folder subsets. ``strict``: an unreadable image is an error
      (default: skip it and list it in the manifest). ``shard_size``: images per shard file.
    - ``verify``: how ``prepare-data`` checks each folder image before indexing it: ``decode``
      (every image decoded once: an unreadable file is skipped or, with ``strict``, an error,
      never a crash in the middle of a training) or ``header`` (only the header read: faster
      on slow file systems; a file that then fails to decode stops the training, naming it).
    - ``hash``: record each folder image's sha256 in the index; the loader then checks every
      file it reads (a few % of the decode time), else only its byte size.
    - ``prepared_dir``: where the workflow writes the prepared data (``""``: results/<preset>/
      data; e.g. ``$SCRATCH/gaussquant``: there, under <preset>/; ``~`` and ``$VARS`` expanded).
    """

    source: str = "folder"
    train_dir: str = "data/imagenet/train"
    val_dir: str = "data/imagenet/val"
    resolution: int = 256
    n_train: int = 0
    n_val: int = 0
    val_split: str = "photos"
    val_photos: list[str] = field(default_factory=lambda: ["coffee", "grace_hopper"])
    val_region: float = 0.25
    min_scale: float = 0.25
    max_scale: float = 1.0
    seed: int = 0
    strict: bool = False
    shard_size: int = 4096
    verify: str = "decode"
    hash: bool = False
    prepared_dir: str = ""

    def __post_init__(self) -> None:
        val = set(self.val_photos)
        pair = [p in val for p in STEREO_PAIR]
        bundled = self.source == "bundled"
        by_photos = bundled and self.val_split == "photos"
        checks = [
            (
                self.source in SOURCES,
                f"source: {self.source!r} is not allowed; allowed: bundled, folder",
            ),
            (
                self.val_split in VAL_SPLITS,
                f"val_split: {self.val_split!r} is not allowed; allowed: {', '.join(VAL_SPLITS)}",
            ),
            (
                0.0 < self.val_region < 1.0,
                f"val_region: must be in (0, 1), got {self.val_region}",
            ),
            (
                self.verify in VERIFY_MODES,
                f"verify: {self.verify!r} is not allowed; allowed: {', '.join(VERIFY_MODES)}",
            ),
            (self.resolution >= 1, f"resolution: must be >= 1, got {self.resolution}"),
            (self.shard_size >= 1, f"shard_size: must be >= 1, got {self.shard_size}"),
            (self.n_train >= bundled, f"n_train: must be >= {int(bundled)}, got {self.n_train}"),
            (self.n_val >= bundled, f"n_val: must be >= {int(bundled)}, got {self.n_val}"),
            (0.0 < self.min_scale <= 1.0, f"min_scale: must be in (0, 1], got {self.min_scale}"),
            (
                self.min_scale <= self.max_scale <= 1.0,
                f"max_scale: must be in [min_scale, 1] = [{self.min_scale}, 1], got {self.max_scale}",
            ),
            (
                val <= set(BUNDLED_PHOTOS),
                f"val_photos: unknown photo(s) {sorted(val - set(BUNDLED_PHOTOS))};"
                f" allowed: {', '.join(BUNDLED_PHOTOS)}",
            ),
            (
                not by_photos or 1 <= len(val) < len(BUNDLED_PHOTOS),
                "val_photos: hold out at least one photo and leave at least one for training",
            ),
            (
                all(pair) or not any(pair),
                "val_photos: motorcycle_left and motorcycle_right are a "
                "stereo pair (near-identical views); hold out both or neither",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"data.{msg}")


# ----------------------------------------------------------------------------- unet


UNET_OUT_HEADS = ("conv3x3", "ln_conv1x1")


@dataclass
class UNetConfig:
    """Convolutional backbone; defaults are the paper's values (docs/method.md §5).

    ch:             base channel count (128).
    ch_mult:        channel multiplier per level ([1, 2, 4, 4]); downsampling is
                    2 ** (len(ch_mult) - 1) (8: 256 px -> 32x32).
    num_res_blocks: ResNet blocks per encoder level (2); the decoder uses one more per level.
    attn_levels:    levels with single-head self-attention after each ResNet block, Python
                    indexing over the levels ([-1]: the lowest resolution only, 32x32 at 256 px).
    mid_attn:       attention between the two mid-block ResNet blocks (False: the official code
                    comments it out; SD / SD3 VAEs have it).
    dropout:        dropout inside ResNet blocks (0.0).
    num_groups:     GroupNorm groups (32); must divide ch * m for every m in ch_mult.
    out_head:       the encoder's output layer: ``conv3x3`` (the official 3x3 conv) or
                    ``ln_conv1x1`` (a LayerNorm over the channels of each position, then a 1x1
                    conv: every token's output from its own normalised features, as the ViT's
                    head; benchmarks/notes.md, "why the UNet's per-token rates spread").
    """

    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    attn_levels: list[int] = field(default_factory=lambda: [-1])
    mid_attn: bool = False
    dropout: float = 0.0
    num_groups: int = 32
    out_head: str = "conv3x3"

    def __post_init__(self) -> None:
        if self.out_head not in UNET_OUT_HEADS:
            raise ConfigError(
                f"unet.out_head: {self.out_head!r} is not one of {', '.join(UNET_OUT_HEADS)}"
            )
        if self.ch < 1:
            raise ConfigError(f"unet.ch: must be positive, got {self.ch}")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ConfigError(
                f"unet.ch_mult: need a non-empty list of positive integers, got {self.ch_mult}"
            )
        if self.num_res_blocks < 1:
            raise ConfigError(f"unet.num_res_blocks: must be >= 1, got {self.num_res_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"unet.dropout: must be in [0, 1), got {self.dropout}")
        n = len(self.ch_mult)
        for level in self.attn_levels:
            if not -n <= level < n:
                raise ConfigError(
                    f"unet.attn_levels: level {level} does not exist with {n} levels "
                    f"(ch_mult={self.ch_mult}); allowed: {-n} .. {n - 1}"
                )
        if self.num_groups < 1:
            raise ConfigError(f"unet.num_groups: must be positive, got {self.num_groups}")
        for width in [self.ch] + [self.ch * m for m in self.ch_mult]:
            if width % self.num_groups:
                raise ConfigError(
                    f"unet.num_groups: {self.num_groups} does not divide the channel count {width} "
                    f"(ch={self.ch}, ch_mult={self.ch_mult}); pick num_groups dividing every ch * m"
                )

    @property
    def downsample(self) -> int:
        """Spatial reduction factor 2 ** (levels - 1)."""
        return 2 ** (len(self.ch_mult) - 1)

    def has_attn(self, level: int) -> bool:
        n = len(self.ch_mult)
        return level in {a % n for a in self.attn_levels}


# ----------------------------------------------------------------------------- vit


CLAMP_MODES = ("inward", "hard")


@dataclass
class ViTConfig:
    """Transformer backbone; defaults are the paper's values (docs/method.md §5, ViT-B/8).

    patch:      patch size = downsampling factor (8).
    width:      token width (768); layers (12); heads (12); mlp_ratio (4.0).
    image_size: square input size in pixels (256); fixes the positional embedding's length.
    head_ratio: decoder head hidden width / width (4.0: 3072 at width 768, as BSQ-ViT).
    clamp:      gradient of the decoder's output clamp to [-1, 1]: "hard" (default) is the
                official ``torch.clamp`` (zero gradient outside); "inward" passes a gradient at
                out-of-range pixels only when a descent step moves them back into range. The
                forward values are identical.
    """

    patch: int = 8
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    image_size: int = 256
    head_ratio: float = 4.0
    clamp: str = "hard"

    def __post_init__(self) -> None:
        for key in ("patch", "width", "layers", "heads", "image_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"vit.{key}: must be positive, got {getattr(self, key)}")
        if self.width % self.heads:
            raise ConfigError(f"vit.heads: {self.heads} does not divide vit.width={self.width}")
        if self.image_size % self.patch:
            raise ConfigError(
                f"vit.image_size: {self.image_size} is not a multiple of vit.patch={self.patch}"
            )
        for key in ("mlp_ratio", "head_ratio"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"vit.{key}: must be positive, got {getattr(self, key)}")
        if self.clamp not in CLAMP_MODES:
            raise ConfigError(
                f"vit.clamp: {self.clamp!r} is not allowed; allowed: {', '.join(CLAMP_MODES)}"
            )

    @property
    def grid(self) -> int:
        """Latent positions per side (image_size / patch)."""
        return self.image_size // self.patch


# ----------------------------------------------------------------------------- discriminator


@dataclass
class DiscriminatorConfig:
    """PatchGAN; defaults are the paper's values (docs/method.md §5).

    ndf:         channels of the first conv (160); doubled per layer up to 8 x ndf.
    n_layers:    stride-2 convs (6); the input must be at least 3 * 2^n_layers pixels.
    use_actnorm: ActNorm (True) instead of BatchNorm as the norm layer.
    """

    ndf: int = 160
    n_layers: int = 6
    use_actnorm: bool = True

    def __post_init__(self) -> None:
        if self.ndf < 1:
            raise ConfigError(f"discriminator.ndf: must be positive, got {self.ndf}")
        if self.n_layers < 1:
            raise ConfigError(f"discriminator.n_layers: must be >= 1, got {self.n_layers}")

    @property
    def min_image_size(self) -> int:
        """Smallest input side (pixels) that still yields a logit map."""
        return 3 * 2**self.n_layers


# ----------------------------------------------------------------------------- tdc


@dataclass
class TDCConfig:
    """TDC hyperparameters; defaults are the paper's values (docs/method.md §1)."""

    codebook_size: int = 65536  # K; target T = log2 K bits per token (docs/method.md §2)
    tolerance: float = 0.5  # alpha, bits (docs/method.md §1)
    factor: float = 1.01  # multiplicative multiplier update (docs/method.md §1)
    weight: float = 0.1  # config weight of the TDC loss (docs/method.md §1)
    lam_max_range: tuple[float, float] = (1.0, 1000.0)  # clamp of lam_max (docs/method.md §1)
    lam_min_range: tuple[float, float] = (0.001, 1.0)  # clamp of lam_min (docs/method.md §1)
    # lower bound of lam: 0 = unbounded, the paper's (docs/method.md §1.5: a floor keeps lam
    # from winding down while the rate climbs from the prior)
    lam_floor: float = 0.0
    # the official code's truncated nats-to-bits constant (1/ln 2 = 1.4426950408889634 exactly);
    # the official TDC steps in tests/data/reference are only matched with it
    bits_per_nat: float = 1.4426

    def __post_init__(self) -> None:
        check_power_of_two("tdc.codebook_size", self.codebook_size)
        check(self.tolerance >= 0, f"tdc.tolerance: must be >= 0, got {self.tolerance}")
        check(self.factor > 1, f"tdc.factor: must be > 1, got {self.factor}")
        for key in ("lam_max_range", "lam_min_range"):
            lo, hi = getattr(self, key)
            check(0 < lo <= hi, f"tdc.{key}: need 0 < low <= high, got [{lo}, {hi}]")
        check(self.lam_floor >= 0, f"tdc.lam_floor: must be >= 0, got {self.lam_floor}")


# ----------------------------------------------------------------------------- theory


KINDS = ("iid", "sobol")
RULES = (
    "nn",
    "gq",
)  # nn: argmax q (the theorems' rule, beta = 0); gq: docs/method.md §2 score (beta)


@dataclass
class TheoryConfig:
    """The experiment's grid. Defaults run in well under a minute on 2 CPU cores."""

    # 1-D: posterior families (R, share of R carried by the mean), see posterior_for_rate
    rates: list[float] = field(default_factory=lambda: [2.0, 4.0])  # R, nats
    mean_shares: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.9])
    t_grid: list[float] = field(default_factory=lambda: [float(t) for t in range(-4, 5)])  # nats
    trials: int = 20000  # i.i.d. codebooks per 1-D row
    sobol_trials: int = 2000  # scrambling seeds per 1-D row
    # m-D: token rate R_bits split evenly over m dims; K = 2^(R_bits + t_bits)
    dims: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    md_rate_bits: int = 8
    md_t_bits: list[int] = field(default_factory=lambda: list(range(-4, 5)))
    md_mean_share_max: float = 0.9  # per-dim mean share ~ uniform(0, md_mean_share_max)
    md_trials: int = 2000  # posteriors (and i.i.d. codebooks) per m-D row
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    rules: list[str] = field(default_factory=lambda: list(RULES))
    beta: float = 1.0  # docs/method.md §2 score weight of rule "gq"
    ci_level: float = 0.999  # Clopper-Pearson confidence level
    seed: int = 0  # numpy seed of i.i.d. codebooks and posteriors
    sobol_seed: int = 42  # docs/method.md §2 codebook seed (first scrambling seed in 1-D)
    max_codebook: int = 65536
    chunk_elements: int = 1 << 22  # codebook floats held at once (32 MB in float64)

    def __post_init__(self) -> None:
        for name, allowed in (("kinds", KINDS), ("rules", RULES)):
            values = getattr(self, name)
            if not values or any(v not in allowed for v in values):
                raise ConfigError(
                    f"theory.{name}: {values} not allowed; allowed: {', '.join(allowed)}"
                )
        for name in ("trials", "sobol_trials", "md_trials", "max_codebook", "chunk_elements"):
            if getattr(self, name) < 1:
                raise ConfigError(f"theory.{name}: must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.ci_level < 1.0:
            raise ConfigError(f"theory.ci_level: must be in (0, 1), got {self.ci_level}")
        if not 0.0 <= self.beta <= 1.0:  # beta > 1 leaves the score without a maximum
            raise ConfigError(f"theory.beta: must be in [0, 1], got {self.beta}")
        shares = [*self.mean_shares, self.md_mean_share_max]
        if not self.mean_shares or not all(0.0 <= f < 1.0 for f in shares):
            raise ConfigError(
                f"theory.mean_shares, md_mean_share_max: need values in [0, 1), got {shares}"
            )
        if not self.rates or not all(r > 0 for r in self.rates) or not self.t_grid:
            raise ConfigError(
                "theory.rates, t_grid: need positive rates (nats) and a non-empty grid"
            )
        if self.md_rate_bits < 1 or not self.dims or not all(m >= 1 for m in self.dims):
            raise ConfigError(
                f"theory.md_rate_bits, dims: need >= 1, got {self.md_rate_bits}, {self.dims}"
            )
        top = math.log2(self.max_codebook)
        if not self.md_t_bits or not all(0 <= self.md_rate_bits + t <= top for t in self.md_t_bits):
            raise ConfigError(
                f"theory.md_t_bits: {self.md_t_bits} gives K = 2^(md_rate_bits + t) outside "
                f"[1, max_codebook={self.max_codebook}]"
            )


# ----------------------------------------------------------------------------- the other sections

PRESETS = ("tiny", "quick", "paper")
ARCHS = ("unet", "vit")
MIXED_PRECISION = ("fp32", "fp16", "bf16")
TRACKERS = ("none", "tensorboard", "wandb")  # train.log_with: Accelerate's trackers
# train.* keys that do not change a training's result (everything else in `train` does)
NON_TRAJECTORY_KEYS = (
    "log_every",
    "save_every",
    "num_workers",
    "grad_accum",
    "cudnn_benchmark",
    "activation_checkpointing",
    "compile",
    "dist_timeout_s",
    "log_with",
)
LPIPS_PRECISION = ("fp32", "bf16", "auto")  # auto: bf16 where the device computes it natively
BSQ_ENTROPY_RULES = ("repo", "faithful")


@dataclass
class ModelConfig:
    """Backbones shared by every method (docs/method.md §5)."""

    latent_channels: int = 16  # C, docs/method.md §5
    downsample: int = 8  # f8, docs/method.md §2/§5
    unet: UNetConfig = field(default_factory=UNetConfig)
    vit: ViTConfig = field(default_factory=ViTConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)

    def __post_init__(self) -> None:
        c, f = self.latent_channels, self.downsample
        check(c > 0, f"model.latent_channels: must be positive, got {c}")
        check(f >= 1 and f & (f - 1) == 0, f"model.downsample: must be a power of two, got {f}")
        levels = len(self.unet.ch_mult)
        check(
            2 ** (levels - 1) == f,
            f"model.unet.ch_mult: {levels} levels downsample by {2 ** (levels - 1)}, "
            f"but model.downsample is {f}",
        )
        check(
            self.vit.patch == f,
            f"model.vit.patch: {self.vit.patch} must equal model.downsample={f}",
        )


@dataclass
class LossConfig:
    """Reconstruction and adversarial loss (docs/method.md §5)."""

    lpips_weight: float = 1.0  # L1 + 1.0 * LPIPS(VGG)
    logvar_init: float = 0.0  # learned scalar log-variance s of the NLL
    disc_start: int = 20001  # discriminator from step 20,001
    disc_weight: float = 0.75  # times the adaptive weight
    disc_factor: float = 1.0
    adaptive_weight_max: float = 1.0e4  # clamp [0, 1e4]
    lpips_precision: str = (
        "fp32"  # the frozen LPIPS-VGG loss network; the paper's fp32 (docs/method.md §5)
    )

    def __post_init__(self) -> None:
        check(self.disc_start >= 0, f"loss.disc_start: must be >= 0, got {self.disc_start}")
        check_allowed("loss.lpips_precision", self.lpips_precision, LPIPS_PRECISION)


@dataclass
class VanillaConfig:
    """Continuous Gaussian VAE baseline (docs/method.md §1)."""

    kl_weight: float = 0.64  # summed KL in nats, official config


@dataclass
class GQConfig:
    """Gaussian Quant codebook and rule (docs/method.md §2); K is ``tdc.codebook_size``."""

    seed: int = 42
    beta: float = 1.0


@dataclass
class VQConfig:
    """VQGAN quantizer (docs/method.md §4)."""

    codebook_size: int = 65536
    beta: float = 0.25
    legacy_loss: bool = True  # taming's beta placement, what the paper's numbers used
    weight: float = 1.0

    def __post_init__(self) -> None:
        check_power_of_two("vq.codebook_size", self.codebook_size)


@dataclass
class LFQConfig:
    """LFQ (docs/method.md §4)."""

    sub_codebook_bits: int = 8
    entropy_weight: float = 0.1
    commit_weight: float = 0.025
    temperature: float = 0.01

    def __post_init__(self) -> None:
        check(self.temperature > 0, f"lfq.temperature: must be > 0, got {self.temperature}")


@dataclass
class BSQConfig:
    """BSQ (docs/method.md §4)."""

    entropy_weight: float = 0.1
    entropy_rule: str = "repo"  # "repo" (what the numbers used) | "faithful" (BSQ-ViT paper)

    def __post_init__(self) -> None:
        check_allowed("bsq.entropy_rule", self.entropy_rule, BSQ_ENTROPY_RULES)


@dataclass
class FSQConfig:
    """FSQ (docs/method.md §4): ``bits / log2 level`` levels of ``level`` each per latent position."""

    level: int = 16  # the paper's levels of 16 (4 bits each); a power of two >= 2

    def __post_init__(self) -> None:
        check_power_of_two("fsq.level", self.level)


@dataclass(frozen=True)
class Rate:
    """One rate of the experiment: ``bits`` per latent position (params.yaml ``rates``), the one
    number every quantizer's shape is derived from (:func:`gaussquant.methods.shape`); the bits
    per pixel follow from the downsampling f (docs/method.md §2: 16 / 32 / 64 bits per position
    are the paper's 0.25 / 0.5 / 1.0 bpp at f8)."""

    bits: int
    downsample: int

    @property
    def name(self) -> str:
        """The rate's name in paths, wildcards and tables: its bits per position."""
        return str(self.bits)

    @property
    def bpp(self) -> float:
        return self.bits / self.downsample**2


@dataclass
class TrainConfig:
    """Optimisation (docs/method.md §4/§5). ``lr`` and ``batch_size`` (per process) are per method."""

    steps: int = 100000  # not published (docs/method.md §5: "epoch 25" in the authors' records)
    # steps of the rates named here (bits per position -> steps), for every method at that rate;
    # the other rates train ``steps``
    steps_by_rate: dict[str, int] = field(default_factory=dict)
    batch_size: dict[str, int] = field(default_factory=dict)
    lr: dict[str, float] = field(default_factory=dict)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_decay: float = 0.0  # final share of steps with a linear lr decay to 0; 0 = docs/method.md §5
    seed: int = 0
    log_every: int = 50
    save_every: int = 2000
    num_workers: int = 4
    mixed_precision: str = "fp32"  # the paper's (docs/method.md §5)
    log_with: str = "none"  # none | tensorboard (out/tracking/) | wandb: metrics.csv's rows, live
    # Speed settings (docs/method.md §5): none changes the math of a step beyond float rounding
    grad_accum: int = 1  # micro-batches per step: batch_size / grad_accum images per forward
    tf32: bool = True  # CUDA: TF32 matmuls/convolutions (fp32 range, 10-bit mantissa)
    cudnn_benchmark: bool = True  # CUDA: cuDNN picks the fastest convolution per shape
    activation_checkpointing: bool = False  # recompute block activations in the backward
    compile: str = "none"  # none | a torch.compile backend (inductor, aot_eager, ...)
    dist_timeout_s: int = 1800  # process-group timeout (collectives, barriers)
    processes: int = 0  # GPUs (one process each) the workflow gives a training/evaluation; 0 = CPU

    def __post_init__(self) -> None:
        check(self.steps >= 1, f"train.steps: must be >= 1, got {self.steps}")
        for rate, steps in self.steps_by_rate.items():
            check(
                rate.isdigit() and steps >= 1,
                f"train.steps_by_rate: need bits per position -> steps >= 1, got {rate}: {steps}",
            )
        for key in ("log_every", "save_every"):
            check(getattr(self, key) >= 1, f"train.{key}: must be >= 1, got {getattr(self, key)}")
        check(self.num_workers >= 0, f"train.num_workers: must be >= 0, got {self.num_workers}")
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"train.betas: need two values in [0, 1), got {self.betas}",
        )
        check(0 <= self.lr_decay <= 1, f"train.lr_decay: must be in [0, 1], got {self.lr_decay}")
        check_allowed("train.mixed_precision", self.mixed_precision, MIXED_PRECISION)
        check_allowed("train.log_with", self.log_with, TRACKERS)
        for key in ("lr", "batch_size"):  # a section built in code may give no method's value
            for method, v in getattr(self, key).items():
                check_allowed(f"train.{key} key", method, HYPER_METHODS)
                check(v > 0, f"train.{key}.{method}: must be positive, got {v}")
        if self.grad_accum < 1:
            raise ConfigError(f"train.grad_accum: need >= 1, got {self.grad_accum}")
        if self.processes < 0:
            raise ConfigError(f"train.processes: need >= 0, got {self.processes}")
        if self.dist_timeout_s < 1:
            raise ConfigError(f"train.dist_timeout_s: need >= 1, got {self.dist_timeout_s}")
        for method, batch in self.batch_size.items():
            if batch % self.grad_accum:
                raise ConfigError(
                    f"train.batch_size.{method}={batch} is not a multiple of "
                    f"train.grad_accum={self.grad_accum}"
                )

    def steps_at(self, bits: int) -> int:
        """Training steps at the rate of ``bits`` per latent position."""
        return self.steps_by_rate.get(str(bits), self.steps)


@dataclass
class ExperimentConfig:
    """The grid the pipeline runs."""

    methods: list[str] = field(default_factory=lambda: list(TABLE1_METHODS))
    archs: list[str] = field(default_factory=lambda: list(ARCHS))
    rates: list[int] = field(default_factory=lambda: [16, 32, 64])  # Table 1, bits per position
    seeds: list[int] = field(default_factory=lambda: [0])  # training seeds: init, data order, noise
    figure1_rates: list[int] = field(default_factory=lambda: [16, 32, 64])  # docs/method.md §7

    def __post_init__(self) -> None:
        for method in self.methods:
            check_allowed("experiment.methods", method, TABLE1_METHODS)
        for arch in self.archs:
            check_allowed("experiment.archs", arch, ARCHS)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(
                f"experiment.seeds: need distinct seeds >= 0 (e.g. [0, 1, 2]), got {self.seeds}"
            )


@dataclass
class EvalConfig:
    """Evaluation protocol (docs/method.md §6)."""

    batch_size: int = 50
    max_images: int = 0  # 0 = every image (the official script drops the last partial batch)
    grid_images: int = 8
    fid: bool = True
    # ViT output clamped to [-1, 1] before the metrics; false = the official eval.py (encode +
    # decode, no clamp), true = its forward()/dequant() (this project's protocol before issue 15)
    clamp_output: bool = False

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, f"eval.batch_size: must be >= 1, got {self.batch_size}")
        check(
            self.max_images >= 0, f"eval.max_images: must be >= 0 (0 = all), got {self.max_images}"
        )


@dataclass
class TableConfig:
    """Presentation of the tables."""

    decimals: dict[str, int] = field(
        default_factory=lambda: {"psnr": 2, "ssim": 3, "lpips": 3, "rfid": 2}
    )


@dataclass
class AblationConfig:
    """Ablations of docs/method.md §3/§7 on one (arch, rate) of the TDC VAE."""

    arch: str = "unet"
    rate: int = 16  # bits per position
    codebook_log2_offsets: list[int] = field(
        default_factory=lambda: [-2, -1, 0, 1, 2]
    )  # K = 2^(b + o)
    tolerances: list[float] = field(
        default_factory=lambda: [0.25, 0.5, 1.0, 2.0]
    )  # TDC alpha, bits
    seeds: list[int] = field(default_factory=lambda: [42, 1, 2, 3, 4])  # GQ codebook seeds

    def __post_init__(self) -> None:
        check_allowed("ablation.arch", self.arch, ARCHS)
        check(
            all(t >= 0 for t in self.tolerances),
            f"ablation.tolerances: must be >= 0, got {self.tolerances}",
        )


RELEASED_WEIGHTS = "xutongda/GQModel"  # Hugging Face repository of the official checkpoints


@dataclass
class OfficialConfig:
    """Released official checkpoints to evaluate with our protocol (``evaluate_official``)."""

    # official configuration name (e.g. sd3unet_gq_0.25) -> local path of its checkpoint,
    # downloaded from RELEASED_WEIGHTS; empty = the target has nothing to evaluate
    checkpoints: dict[str, str] = field(default_factory=dict)


@dataclass
class ByoConfig:
    """Bring your own diffusers AutoencoderKL (README "Your own VAE"; Snakemake target ``byo``):
    rate analysis, GQ and TokenBridge on the pretrained VAE, TDC fine-tuning, GQ after it."""

    vae: str = ""  # folder or hub id, PATH_OR_ID[:SUBFOLDER]; empty = the target is off
    # bits per pixel of GQ at K = tdc.codebook_size (m = C log2 K / (rate f^2) from the VAE's C
    # and f) and of TokenBridge (log2 K / m bits per channel); 0.25 is docs/method.md §2's lowest rate
    rate: float = 0.25

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ConfigError(f"byo.rate: bits per pixel must be > 0, got {self.rate}")


@dataclass
class Config:
    preset: str = "paper"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    tdc: TDCConfig = field(default_factory=TDCConfig)
    vanilla: VanillaConfig = field(default_factory=VanillaConfig)
    gq: GQConfig = field(default_factory=GQConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    lfq: LFQConfig = field(default_factory=LFQConfig)
    bsq: BSQConfig = field(default_factory=BSQConfig)
    fsq: FSQConfig = field(default_factory=FSQConfig)
    rates: list[int] = field(default_factory=lambda: [16, 32, 64])  # bits per latent position
    train: TrainConfig = field(default_factory=TrainConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    table: TableConfig = field(default_factory=TableConfig)
    theory: TheoryConfig = field(default_factory=TheoryConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    official: OfficialConfig = field(default_factory=OfficialConfig)
    byo: ByoConfig = field(default_factory=ByoConfig)

    def rate(self, name: str | int) -> Rate:
        """The rate named by its bits per latent position (``"16"`` or 16)."""
        bits = int(name) if str(name).isdigit() else None
        if bits not in self.rates:
            raise ConfigError(
                f"rate {name!r} is not in params.yaml 'rates' (bits per latent position: {self.rates})"
            )
        return Rate(bits, self.model.downsample)

    def derived(self) -> dict[str, Any]:
        """Values computed from the parameters, logged at the start of every stage."""
        f, res, c = self.model.downsample, self.data.resolution, self.model.latent_channels
        return {
            "preset": self.preset,
            "latent_shape": [c, res // f, res // f],
            "positions_per_image": (res // f) ** 2,
            "target_bits_per_token": math.log2(self.tdc.codebook_size),
            "rates": {
                str(bits): {
                    "bits_per_position": bits,
                    "bpp": self.rate(bits).bpp,
                    "shapes": rate_shapes(self, bits),
                }
                for bits in self.rates
            },
        }
