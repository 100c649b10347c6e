"""Typed, strict configuration loaded from ``params.yaml`` (the sections: :mod:`gaussquant.sections`).

``params.yaml`` holds the paper's values in its top-level sections (each commented with its
docs/method.md section) and, under ``presets.<name>``, the overrides of the small presets. The active
preset is the top-level ``preset`` key (``tiny | quick | paper``). :func:`load_config`
deep-merges the preset's overrides onto the paper values and builds nested dataclasses,
failing - before any computation - on unknown keys, wrong types and impossible values, with a
message that names the key and the allowed values. A key missing from params.yaml is an
error too (never a silent dataclass default). Every stage loads its config through
:func:`load_config` (``stages.common.load_stage_config``), ``--set`` overrides included.

Derived values (bits per pixel, tokens, latent shape, per-method quantizer shapes) are computed
in one place (:meth:`Config.derived`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from gaussquant.errors import ConfigError
from gaussquant.methods import (
    HYPER_METHODS,
    METHODS,
    RENAMED_METHODS,
    current_method,
    rate_shapes,
    shape,
)
from gaussquant.sections import (  # noqa: F401 (re-exported: import every section from here)
    ARCHS,
    BSQ_ENTROPY_RULES,
    DATA_STORAGE_KEYS,
    LPIPS_PRECISION,
    MIXED_PRECISION,
    NON_TRAJECTORY_KEYS,
    PRESETS,
    TRACKERS,
    AblationConfig,
    BSQConfig,
    ByoConfig,
    Config,
    DataConfig,
    DiscriminatorConfig,
    EvalConfig,
    ExperimentConfig,
    FSQConfig,
    GQConfig,
    LFQConfig,
    LossConfig,
    ModelConfig,
    OfficialConfig,
    Rate,
    TableConfig,
    TDCConfig,
    TheoryConfig,
    TrainConfig,
    UNetConfig,
    VanillaConfig,
    ViTConfig,
    VQConfig,
    check,
    check_allowed,
    check_power_of_two,
)

# ----------------------------------------------------------------------------- loading


def read_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"params file {str(path)!r} not found (run from the repository root or pass --params)"
        )
    with open(path) as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def resolve_params(raw: dict[str, Any], preset: str | None = None) -> dict[str, Any]:
    """Deep-merge ``presets[preset]`` onto the top-level (paper) sections."""
    raw = migrate_method_names(migrate_preset_keys(dict(raw), "params"), "params")
    presets = raw.pop("presets", {}) or {}
    presets = {k: migrate_method_names(v or {}, f"presets.{k}") for k, v in presets.items()}
    preset = preset or raw.get("preset", "paper")
    if preset not in PRESETS:
        raise ConfigError(f"preset: {preset!r} is not allowed; allowed: {', '.join(PRESETS)}")
    unknown = set(presets) - set(PRESETS)
    if unknown:
        raise ConfigError(
            f"presets: unknown preset(s) {sorted(unknown)}; allowed: {', '.join(PRESETS)}"
        )
    raw["preset"] = preset
    return _merge(raw, presets.get(preset) or {}, f"presets.{preset}")


# dicts keyed by names the user chooses (official configuration names, rates): a preset gives
# the whole dict instead of merging into the top level's keys
NAMED_DICTS = ("checkpoints", "steps_by_rate")


def _merge(base: dict, override: dict, where: str) -> dict:
    out = dict(base)
    for key, value in override.items():
        if key not in base:
            raise ConfigError(f"{where}.{key}: unknown key; allowed: {', '.join(map(str, base))}")
        if isinstance(value, dict) and isinstance(base[key], dict) and key not in NAMED_DICTS:
            out[key] = _merge(base[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def load_config(
    path: str | Path = "params.yaml", preset: str | None = None, overrides: list[str] | None = None
) -> Config:
    """Load, merge, type-check and validate ``params.yaml``. Raises :class:`ConfigError`.

    ``overrides`` are ``dotted.key=value`` strings (value parsed as YAML) applied after the
    preset, e.g. ``tdc.tolerance=0.25`` (the ablation rules use them).
    """
    data = resolve_params(read_params(path), preset)
    for item in overrides or []:
        apply_override(data, item)
    return config_from_dict(data)


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``dotted.key=value`` in the resolved params dict; the key must exist."""
    key, sep, text = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r}: expected dotted.key=value, e.g. tdc.tolerance=0.25")
    *path, last = key.strip().split(".")
    node = data
    for i, part in enumerate(path):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"override {key}: unknown key {'.'.join(path[: i + 1])}")
        node = node[part]
    if not isinstance(node, dict) or last not in node:
        raise ConfigError(f"override {key}: unknown key; allowed: {', '.join(map(str, node))}")
    node[last] = yaml.safe_load(text)


def config_from_dict(data: dict[str, Any]) -> Config:
    vit = (data.get("model") or {}).get("vit") or {}
    if "image_size" in vit:
        raise ConfigError("model.vit.image_size: derived from data.resolution; remove the key")
    missing = _missing(Config, data, "")
    if missing:  # never a silent dataclass default: params.yaml states every value
        raise ConfigError(
            f"{', '.join(missing)}: missing from params.yaml; add the key(s) to the file"
        )
    cfg = _build(Config, data, "")
    res, f = cfg.data.resolution, cfg.model.downsample
    check(
        res > 0 and res % f == 0,
        f"data.resolution: {res} must be a positive multiple of model.downsample={f}",
    )
    # the ViT's positional embedding length follows the image size (a derived value)
    cfg.model.vit = dataclasses.replace(cfg.model.vit, image_size=cfg.data.resolution)
    validate(cfg)
    return cfg


DERIVED_FIELDS = {(ViTConfig, "image_size")}  # computed from other keys, never written in the file


def _missing(tp: Any, value: Any, key: str) -> list[str]:
    """Dotted names of every dataclass field absent from ``value`` (nested sections and each
    ``rates`` entry included); wrong types are left to :func:`_build`."""
    if not dataclasses.is_dataclass(tp) or not isinstance(value, dict):
        return []
    hints, out = typing.get_type_hints(tp), []
    for f in dataclasses.fields(tp):
        if f.name not in value:
            out += [] if (tp, f.name) in DERIVED_FIELDS else [_join(key, f.name)]
            continue
        sub, hint = value[f.name], hints[f.name]
        if typing.get_origin(hint) is dict and isinstance(sub, dict):
            for k, v in sub.items():
                out += _missing(typing.get_args(hint)[1], v, _join(_join(key, f.name), str(k)))
        else:
            out += _missing(hint, sub, _join(key, f.name))
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _build(tp: Any, value: Any, key: str) -> Any:
    """Convert ``value`` to type ``tp`` strictly; ``key`` is the dotted path for messages."""
    where = key or "params"
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        unknown = [k for k in value if k not in names]
        if unknown:
            raise ConfigError(f"{_join(key, unknown[0])}: unknown key; allowed: {', '.join(names)}")
        kwargs = {k: _build(hints[k], v, _join(key, k)) for k, v in value.items()}
        try:
            return tp(**kwargs)
        except (
            ConfigError
        ) as err:  # a section's own check, e.g. "unet.ch: ..." -> "model.unet.ch: ..."
            msg, parent = str(err), key.rpartition(".")[0]
            raise ConfigError(
                f"{parent}.{msg}" if parent and msg.startswith(key.rpartition(".")[2]) else msg
            ) from None
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{where}: {err}") from None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None) and value is None:
                return None
        non_none = [a for a in args if a is not type(None)]
        return _build(non_none[0], value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {_type_name(args[0])}, got {value!r}")
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _build(args[1], v, _join(key, str(k))) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = (
                " (write numbers like 1.0e-4 with a dot: YAML reads 1e-4 as text)"
                if isinstance(value, str)
                else ""
            )
            raise ConfigError(f"{where}: expected a number, got {value!r}{hint}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported parameter type {tp}")  # a bug in the dataclasses


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


# ----------------------------------------------------------------------------- validation


def validate(cfg: Config) -> None:
    """The checks that relate two sections (each section checks itself when built, in
    :mod:`gaussquant.sections`): :class:`ConfigError` naming the key and what is allowed. Every
    method's shape at every rate is derived here once (:func:`gaussquant.methods.rate_shapes`)."""
    check_allowed("preset", cfg.preset, PRESETS)
    res, f, d = cfg.data.resolution, cfg.model.downsample, cfg.model.discriminator
    check(res % f == 0, f"data.resolution: {res} must be a multiple of model.downsample={f}")
    check(
        res >= 32, f"data.resolution: {res} px is below 32 px, the smallest LPIPS AlexNet accepts"
    )
    check(
        res >= d.min_image_size,
        f"model.discriminator.n_layers: {d.n_layers} layers need images of at least "
        f"{d.min_image_size} px, data.resolution is {res}",
    )
    for key in ("lr", "batch_size"):  # params.yaml gives every method's value
        missing = [m for m in HYPER_METHODS if m not in getattr(cfg.train, key)]
        check(
            not missing,
            f"train.{key}: missing method {missing[0] if missing else ''!r}; give a value for "
            f"each of {', '.join(HYPER_METHODS)}",
        )
    _validate_rates(cfg)
    a = cfg.ablation
    check_allowed("ablation.rate", a.rate, tuple(cfg.rates))
    log2k = int(math.log2(cfg.tdc.codebook_size))
    check(
        all(log2k + o >= 1 for o in a.codebook_log2_offsets),
        f"ablation.codebook_log2_offsets: {a.codebook_log2_offsets} give K < 2 for log2 K = {log2k}",
    )


def _validate_rates(cfg: Config) -> None:
    check(
        bool(cfg.rates) and len(set(cfg.rates)) == len(cfg.rates) and min(cfg.rates) >= 1,
        f"rates: need distinct bits per latent position >= 1, got {cfg.rates}",
    )
    for bits in cfg.rates:
        try:
            rate_shapes(cfg, bits)
        except ValueError as err:
            raise ConfigError(f"rates: {bits} bits per latent position do not fit {err}") from None
    for key in ("rates", "figure1_rates"):
        for bits in getattr(cfg.experiment, key):
            check_allowed(f"experiment.{key}", bits, tuple(cfg.rates))
    for bits in cfg.train.steps_by_rate:
        check_allowed("train.steps_by_rate key", int(bits), tuple(cfg.rates))


def at_rate_steps(cfg: Config, rate: str) -> Config:
    """``cfg`` with ``train.steps`` set to ``rate``'s steps (``train.steps_by_rate``): what a
    training at that rate runs, saves with its checkpoint and resumes by."""
    steps = cfg.train.steps_at(cfg.rate(rate).bits)
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, steps=steps, steps_by_rate={})
    )


def run_determinants(cfg: Config, method: str, arch: str, rate: str, processes: int = 1) -> dict:
    """Everything in ``cfg`` that determines the trajectory of the training (method, arch, rate)
    on ``processes`` processes, as plain data: the one definition that the resume logic
    (:func:`gaussquant.runstate.run_settings`) and the workflow's rerun triggers share. Only
    what this training reads: its method's section, its bottleneck's shape, this backbone,
    its learning rate and the global batch (per-process batch x processes); not the logging,
    saving, speed or storage settings, which leave the result unchanged."""
    spec, d = METHODS[method], config_to_dict(at_rate_steps(cfg, rate))  # this rate's steps only
    skip = (*NON_TRAJECTORY_KEYS, "batch_size", "processes", "steps_by_rate")
    train = {k: v for k, v in d["train"].items() if k not in skip}
    train["lr"] = cfg.train.lr.get(spec.hyper)
    model = d["model"]
    if arch in ("unet", "vit"):  # our backbones: only the one trained
        keep = ("latent_channels", "downsample", arch, "discriminator")
        model = {k: model[k] for k in keep}
    run = {
        "method": method,
        "arch": arch,
        "rate": str(rate),
        "shape": shape(method, cfg, cfg.rate(rate).bits),  # the bottleneck at this rate
        "train": train,
        "global_batch": cfg.train.batch_size.get(spec.hyper, 0) * processes,
        "data": {k: v for k, v in d["data"].items() if k not in DATA_STORAGE_KEYS},
        "model": model,
        "loss": d["loss"],
        "section": {spec.section: d[spec.section]} if spec.section else {},
    }
    return json.loads(json.dumps(run))  # plain JSON types (tuples -> lists), as saved


def migrate_rates(data: dict[str, Any], rate: str) -> tuple[dict[str, Any], str]:
    """A saved config (checkpoint) from when rates were named by bits per pixel with a block of
    quantizer shapes each (``rates: {"0.25": {bpp: 0.25, gq_dim: 16, ...}}``), in today's terms:
    ``rates`` as bits per latent position, the experiment's and ablation's rates likewise, FSQ's
    level from its level list; returns it with ``rate``'s new name. Today's layout passes."""
    old = data.get("rates")
    if not isinstance(old, dict):
        return data, rate
    f = data["model"]["downsample"]
    bits = {name: round(r["bpp"] * f * f) for name, r in old.items()}
    exp, abl = data["experiment"], data["ablation"]
    out = dict(data, rates=list(bits.values()))
    out["experiment"] = dict(
        exp, **{k: [bits[n] for n in exp[k]] for k in ("rates", "figure1_rates")}
    )
    out["ablation"] = dict(abl, rate=bits[abl["rate"]])
    out.setdefault("fsq", {"level": next(iter(old.values()))["fsq_levels"][0]})
    return out, str(bits[rate])


def migrate_method_names(data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A params dict or saved config that names a trained method by its former name (the TDC
    VAE's ``gq``: ``train.batch_size`` / ``train.lr`` keys, ``experiment.methods``) in today's
    names (methods.RENAMED_METHODS); ``where``: a params file's section, said in one line."""
    train, exp = data.get("train") or {}, data.get("experiment") or {}
    old = [f"train.{k}.{m}" for k in ("batch_size", "lr") for m in train.get(k) or {}]
    old += [f"experiment.methods: {m}" for m in exp.get("methods") or []]
    old = [k for k in old if k.split(".")[-1].split(" ")[-1] in RENAMED_METHODS]
    if not old:
        return data
    if where:
        print(
            f"{where}: {', '.join(old)}: the trained TDC VAE is now 'tdc'; rename 'gq' to 'tdc' "
            "there (read as 'tdc' for now)",
            file=sys.stderr,
        )
    out = dict(data)
    out["train"] = dict(train) | {
        k: {current_method(m): v for m, v in train[k].items()}
        for k in ("batch_size", "lr")
        if isinstance(train.get(k), dict)
    }
    if "methods" in exp:
        out["experiment"] = dict(exp, methods=[current_method(m) for m in exp["methods"]])
    return out


# params.yaml's presets were first called profiles (a word Snakemake's profiles/ folder uses)
OLD_PRESET_KEYS = {"profile": "preset", "profiles": "presets"}


def migrate_preset_keys(data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A params dict or saved config with the former ``profile`` / ``profiles`` keys, in
    today's ``preset`` / ``presets`` (OLD_PRESET_KEYS); both spellings of one key: an error.
    ``where``: a params file, said in one line on stderr (saved configs migrate silently)."""
    old = [k for k in OLD_PRESET_KEYS if k in data]
    both = [k for k in old if OLD_PRESET_KEYS[k] in data]
    if both:
        raise ConfigError(
            f"{where or 'config'}: both {both[0]!r} and {OLD_PRESET_KEYS[both[0]]!r}; "
            f"keep only {OLD_PRESET_KEYS[both[0]]!r}"
        )
    if old and where:
        renames = ", ".join(f"{k}: -> {OLD_PRESET_KEYS[k]}:" for k in old)
        print(f"{where}: rename {renames} (read as such for now)", file=sys.stderr)
    return {OLD_PRESET_KEYS.get(k, k): v for k, v in data.items()} if old else data


def migrate_saved_config(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config (checkpoint, exported tokenizer) of any earlier version in today's terms:
    former names and keys renamed, keys added since filled in (the one place all such
    migrations of a saved config meet)."""
    return with_added_keys(migrate_preset_keys(migrate_method_names(data)))


def workflow_params(config: dict[str, Any], path: str | Path = "params.yaml") -> dict[str, Any]:
    """Snakemake's ``config`` (params.yaml and ``--config``) with the former spellings renamed:
    ``--config profile=NAME`` (a ``profile`` that the file does not hold) is ``--config
    preset=NAME``, said in one line on stderr; the file's own old keys as in resolve_params."""
    config = dict(config)
    if "profile" in config and "profile" not in read_params(path):
        print("--config profile=NAME is now --config preset=NAME (read as such)", file=sys.stderr)
        config["preset"] = config.pop("profile")
    return migrate_preset_keys(config, "params")


def with_added_keys(data: dict[str, Any], defaults: Any = None) -> dict[str, Any]:
    """A saved config (checkpoint) written before some keys existed, completed with their
    defaults: keys added later (e.g. ``eval.clamp_output``, ``official``) do not describe the
    saved model, so old checkpoints keep loading. params.yaml itself gets no such leniency."""
    defaults = config_to_dict(Config()) if defaults is None else defaults
    out = dict(data)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and value and isinstance(out[key], dict):
            out[key] = with_added_keys(out[key], value)
    return out


def config_to_dict(cfg: Any) -> Any:
    """Plain (YAML/JSON-able) dict of a config dataclass, for checkpoints and logs; derived
    values are left out so :func:`config_from_dict` accepts the result."""
    if isinstance(cfg, ViTConfig):
        return {
            f.name: config_to_dict(getattr(cfg, f.name))
            for f in dataclasses.fields(cfg)
            if f.name != "image_size"
        }
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    return cfg


# ----------------------------------------------------------------------------- JSON schema


def _schema(tp: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        props = {f.name: _schema(hints[f.name]) for f in dataclasses.fields(tp)}
        return {"type": "object", "properties": props, "additionalProperties": False}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema(a) for a in args]}
    if origin is list:
        return {"type": "array", "items": _schema(args[0])}
    if origin is tuple:
        return {
            "type": "array",
            "items": _schema(args[0]),
            "minItems": len(args),
            "maxItems": len(args),
        }
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema(args[1])}
    simple = {float: "number", int: "integer", bool: "boolean", str: "string", type(None): "null"}
    return {"type": simple[tp]}


def json_schema() -> dict[str, Any]:
    """JSON schema of params.yaml (committed as workflow/schemas/params.schema.json).

    Snakemake validates the raw file with it before any rule; :func:`load_config` then checks
    values that a schema cannot express (powers of two, rates vs bits, ...).
    """
    schema = _schema(Config)
    props = schema["properties"]
    props["preset"] = {"type": "string", "enum": list(PRESETS)}
    props["presets"] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {p: {"type": "object"} for p in PRESETS},
    }
    for old, new in OLD_PRESET_KEYS.items():  # former spellings, still read (migrate_preset_keys)
        props[old] = props[new]
    schema.pop("required", None)
    schema["anyOf"] = [{"required": [k]} for k in ("preset", "profile")]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gaussquant params.yaml",
        **schema,
    }
