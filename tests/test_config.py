"""params.yaml loading: presets merge onto the paper values; bad input fails before any work,
naming the key and what is allowed."""

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gaussquant.config import config_from_dict, load_config, resolve_params
from gaussquant.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def _cfg(preset="paper", **edits):
    """Resolved params of ``preset`` with dotted-key edits applied."""
    data = resolve_params(copy.deepcopy(RAW), preset)
    for dotted, value in edits.items():
        *path, last = dotted.split("__")
        node = data
        for key in path:
            node = node[key]
        node[last] = value
    return config_from_dict(data)


@pytest.mark.parametrize("preset", ["tiny", "quick", "paper"])
def test_every_preset_loads(preset):
    cfg = load_config(ROOT / "params.yaml", preset)
    assert cfg.preset == preset
    for name in cfg.experiment.rates:
        assert name in cfg.rates


def test_paper_preset_is_spec():
    """The paper preset encodes docs/method.md §1, §2, §4, §5 exactly."""
    cfg = load_config(ROOT / "params.yaml", "paper")
    assert (
        cfg.data.resolution == 256 and cfg.model.latent_channels == 16 and cfg.model.downsample == 8
    )
    assert cfg.model.unet.ch == 128 and list(cfg.model.unet.ch_mult) == [1, 2, 4, 4]
    assert cfg.model.unet.num_res_blocks == 2
    v = cfg.model.vit
    assert (v.patch, v.width, v.layers, v.heads, v.mlp_ratio) == (8, 768, 12, 12, 4.0)
    d = cfg.model.discriminator
    assert (d.ndf, d.n_layers, d.use_actnorm) == (160, 6, True)
    assert (
        cfg.loss.lpips_weight == 1.0
        and cfg.loss.disc_start == 20001
        and cfg.loss.disc_weight == 0.75
    )
    t = cfg.tdc
    assert (t.codebook_size, t.tolerance, t.factor, t.weight) == (65536, 0.5, 1.01, 0.1)
    assert tuple(t.lam_max_range) == (1.0, 1000.0) and tuple(t.lam_min_range) == (0.001, 1.0)
    assert t.lam_floor == 0.0 and cfg.train.steps_by_rate == {}  # lam unbounded, one length
    assert cfg.vanilla.kl_weight == 0.64 and cfg.gq.seed == 42 and cfg.gq.beta == 1.0
    assert cfg.vq.codebook_size == 65536 and cfg.vq.beta == 0.25 and cfg.vq.legacy_loss
    assert (cfg.lfq.sub_codebook_bits, cfg.lfq.entropy_weight, cfg.lfq.commit_weight) == (
        8,
        0.1,
        0.025,
    )
    assert (
        cfg.lfq.temperature == 0.01
        and cfg.bsq.entropy_weight == 0.1
        and cfg.bsq.entropy_rule == "repo"
    )
    assert cfg.train.lr == {
        "tdc": 1e-4,
        "vanilla": 1e-4,
        "fsq": 1e-4,
        "lfq": 4e-5,
        "bsq": 4e-5,
        "vq": 4e-4,
    }
    assert cfg.train.batch_size == {
        "tdc": 16,
        "vanilla": 16,
        "fsq": 16,
        "lfq": 16,
        "bsq": 16,
        "vq": 8,
    }
    assert list(cfg.train.betas) == [0.9, 0.999] and cfg.train.mixed_precision == "fp32"
    assert cfg.rates == [16, 32, 64] and [cfg.rate(b).bpp for b in cfg.rates] == [0.25, 0.5, 1.0]
    assert cfg.experiment.methods == ["vq", "fsq", "lfq", "bsq", "tdc"]
    assert cfg.experiment.archs == ["unet", "vit"] and cfg.experiment.rates == [16, 32, 64]
    assert cfg.eval.max_images == 0
    der = cfg.derived()
    assert der["latent_shape"] == [16, 32, 32]
    # the paper's per-position shapes at 0.25 / 0.5 / 1.0 bpp (docs/method.md §2, §4), derived from the bits
    shapes = [der["rates"][str(b)]["shapes"] for b in (16, 32, 64)]
    assert [s["tdc"] for s in shapes] == [16, 8, 4] and [s["vq"] for s in shapes] == [1, 2, 4]
    assert [s["fsq"] for s in shapes] == [[16] * 4, [16] * 8, [16] * 16]
    assert [(s["lfq"], s["bsq"], s["tbtdc"]) for s in shapes] == [
        (16, 16, 1),
        (32, 32, 2),
        (64, 64, 4),
    ]


BAD = [
    # (edits, words the message must contain)
    ({"preset": "huge"}, ["preset", "tiny, quick, paper"]),
    ({"tdc__codebook_size": 1000}, ["tdc.codebook_size", "1000", "power of two"]),
    ({"vq__codebook_size": 3}, ["vq.codebook_size", "power of two"]),
    (
        {"rates": [16, 24]},
        ["rates: 24 bits", "vq: tokens = bits / log2 vq.codebook_size = 24 / 16"],
    ),
    ({"rates": [16, 16]}, ["rates: need distinct", "[16, 16]"]),
    ({"tdc__codebook_size": 8}, ["rates: 16 bits", "tdc: m = 3 does not divide C = 16"]),
    ({"fsq__level": 8}, ["rates: 16 bits", "fsq: dims = bits / log2 fsq.level = 16 / 3"]),
    ({"fsq__level": 6}, ["fsq.level", "power of two"]),
    ({"lfq__sub_codebook_bits": 3}, ["rates: 16 bits", "lfq: sub-codebooks", "16 / 3"]),
    ({"model__latent_channels": 32}, ["rates: 16 bits", "tbtdc: bits per channel = bits / C"]),
    ({"train__steps": -5}, ["train.steps", ">= 1", "-5"]),
    ({"train__save_every": 0}, ["train.save_every", ">= 1"]),
    ({"train__steps": 1.5}, ["train.steps", "expected an integer"]),
    ({"train__steps": "100"}, ["train.steps", "expected an integer"]),
    ({"train__lr__tdc": "1e-4"}, ["train.lr.tdc", "expected a number", "1.0e-4"]),
    ({"train__lr__vq": -1.0}, ["train.lr.vq", "positive"]),
    ({"train__mixed_precision": "fp8"}, ["train.mixed_precision", "fp32, fp16, bf16"]),
    ({"bsq__entropy_rule": "paper"}, ["bsq.entropy_rule", "repo, faithful"]),
    ({"vq__legacy_loss": "yes"}, ["vq.legacy_loss", "true or false"]),
    (
        {"experiment__methods": ["tdc", "rq"]},
        ["experiment.methods", "rq", "vq, fsq, lfq, bsq, tdc"],
    ),
    ({"experiment__archs": ["cnn"]}, ["experiment.archs", "unet, vit"]),
    ({"experiment__rates": [8]}, ["experiment.rates", "8", "allowed: 16, 32, 64"]),
    ({"model__downsample": 16}, ["model.unet.ch_mult", "16"]),
    ({"tdc__tolerance": -0.5}, ["tdc.tolerance", ">= 0"]),
    ({"data__resolution": 100}, ["data.resolution", "multiple of"]),
    ({"model__unet__num_groups": 5}, ["model.unet.num_groups", "does not divide"]),
    ({"model__discriminator__n_layers": 7}, ["model.discriminator.n_layers", "384 px"]),
]


@pytest.mark.parametrize("edits,words", BAD, ids=[next(iter(e)) for e, _ in BAD])
def test_bad_values_name_key_and_allowed(edits, words):
    with pytest.raises(ConfigError) as err:
        _cfg(**edits)
    for word in words:
        assert word in str(err.value), f"{word!r} not in message: {err.value}"


def test_unknown_key_lists_allowed_keys():
    data = resolve_params(copy.deepcopy(RAW), "paper")
    data["train"]["stepz"] = 3
    with pytest.raises(
        ConfigError, match=r"train\.stepz: unknown key; allowed: steps, steps_by_rate, batch_size"
    ):
        config_from_dict(data)


def test_unknown_key_in_preset_override():
    raw = copy.deepcopy(RAW)
    raw["presets"]["quick"]["model"]["unet"]["channels"] = 4
    with pytest.raises(ConfigError, match=r"presets\.quick\.model\.unet\.channels: unknown key"):
        resolve_params(raw, "quick")


def test_missing_method_in_lr_table():
    data = resolve_params(copy.deepcopy(RAW), "paper")
    del data["train"]["lr"]["lfq"]
    with pytest.raises(ConfigError, match="train.lr: missing method 'lfq'"):
        config_from_dict(data)


def test_preset_override_merges_only_given_keys():
    quick = load_config(ROOT / "params.yaml", "quick")
    paper = load_config(ROOT / "params.yaml", "paper")
    assert quick.model.unet.ch != paper.model.unet.ch
    # quick overrides only tdc.factor: the paper's K = 2^16 tokens
    assert quick.tdc.factor != paper.tdc.factor
    assert dataclasses.replace(quick.tdc, factor=paper.tdc.factor) == paper.tdc
    assert quick.rates == paper.rates and quick.experiment.rates == [16]
    assert quick.model.vit.mlp_ratio == paper.model.vit.mlp_ratio


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_committed_schema_is_generated_from_dataclasses():
    """workflow/schemas/params.schema.json == json_schema(); regenerate with
    python -c "import json; from gaussquant.config import json_schema; print(json.dumps(json_schema(), indent=2))"."""
    import json

    from gaussquant.config import json_schema

    committed = json.loads((ROOT / "workflow" / "schemas" / "params.schema.json").read_text())
    assert committed == json_schema()


def test_loading_the_config_does_not_import_torch():
    """Every Snakefile parse imports gaussquant.config: the section dataclasses live in the
    torch-free gaussquant.sections, so loading params.yaml costs no torch import (~1.3 s)."""
    code = "import sys, gaussquant.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_schema_accepts_params_and_rejects_unknown_section():
    import jsonschema

    from gaussquant.config import json_schema

    jsonschema.validate(RAW, json_schema())
    bad = copy.deepcopy(RAW)
    bad["trian"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json_schema())


def test_vit_image_size_is_derived():
    cfg = load_config(ROOT / "params.yaml", "quick")
    assert cfg.model.vit.image_size == cfg.data.resolution == 32
    data = resolve_params(copy.deepcopy(RAW), "paper")
    data["model"]["vit"]["image_size"] = 224
    with pytest.raises(ConfigError, match="model.vit.image_size: derived from data.resolution"):
        config_from_dict(data)


def test_config_round_trips_through_checkpoint_dict():
    from gaussquant.config import config_to_dict

    for preset in ("tiny", "quick", "paper"):
        cfg = load_config(ROOT / "params.yaml", preset)
        assert config_from_dict(config_to_dict(cfg)) == cfg


def test_overrides_apply_after_preset_and_are_checked():
    cfg = load_config(ROOT / "params.yaml", "quick", ["tdc.tolerance=0.25", "gq.seed=7"])
    assert cfg.tdc.tolerance == 0.25 and cfg.gq.seed == 7
    with pytest.raises(
        ConfigError, match="override tdc.tolerence: unknown key; allowed: codebook_size"
    ):
        load_config(ROOT / "params.yaml", "quick", ["tdc.tolerence=0.25"])
    with pytest.raises(ConfigError, match="tdc.codebook_size: 1000 is not a power of two"):
        load_config(ROOT / "params.yaml", "quick", ["tdc.codebook_size=1000"])


def test_checkpoint_written_before_new_keys_still_loads(tmp_path, tiny_cfg):
    """A checkpoint's config lacking keys added later (a whole section, a field) loads with their
    defaults; params.yaml lacking them is still an error."""
    import torch

    from gaussquant.checkpoint import load_autoencoder, save_checkpoint
    from gaussquant.config import config_to_dict, with_added_keys
    from gaussquant.models.autoencoder import build_autoencoder

    old = config_to_dict(tiny_cfg)
    del old["official"], old["eval"]["clamp_output"]
    with pytest.raises(ConfigError, match="eval.clamp_output, official: missing"):
        config_from_dict(old)
    assert config_from_dict(with_added_keys(old)) == tiny_cfg  # the defaults are these values
    model = build_autoencoder(tiny_cfg, "fsq", "unet", "8")
    path = tmp_path / "old.pt"
    save_checkpoint(path, model, tiny_cfg, "fsq", "unet", "8", step=1)
    payload = torch.load(path, weights_only=True)
    payload["config"] = old
    torch.save(payload, path)
    loaded, _ = load_autoencoder(path)
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values())
    )


def _former_spelling(raw: dict) -> dict:
    """``raw`` with params.yaml's preset keys spelled as before (profile:, profiles:)."""
    return {{"preset": "profile", "presets": "profiles"}.get(k, k): v for k, v in raw.items()}


def test_params_with_former_profile_keys_load_with_one_line(tmp_path, capsys):
    """A params file with `profile:` / `profiles:` loads as today's `preset:` / `presets:`, with
    one line on stderr naming the renames; both spellings of a key in one file: a one-line error."""
    old = tmp_path / "params.yaml"
    old.write_text(yaml.safe_dump(_former_spelling(RAW), sort_keys=False))
    for preset in ("tiny", None):
        assert load_config(old, preset) == load_config(ROOT / "params.yaml", preset)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "profile: -> preset:, profiles: -> presets:" in lines[0], lines
    for both in ({**RAW, "profile": "tiny"}, {**RAW, "profiles": RAW["presets"]}):
        with pytest.raises(ConfigError, match=r"both 'profiles?' and 'presets?'; keep only") as err:
            resolve_params(both)
        assert "\n" not in str(err.value)


def test_former_profile_flag_is_an_alias_of_preset(capsys):
    """`--profile NAME` on a stage's command line is `--preset NAME`, with one line on stderr."""
    import argparse

    from gaussquant.stages.common import add_params_args

    parser = argparse.ArgumentParser()
    add_params_args(parser)
    assert parser.parse_args(["--preset", "tiny"]).preset == "tiny"
    assert capsys.readouterr().err == ""
    assert parser.parse_args(["--profile", "tiny"]).preset == "tiny"
    assert capsys.readouterr().err == "--profile is now --preset (read as --preset tiny)\n"
    assert parser.parse_args([]).preset is None  # the file's own preset


def test_workflow_reads_config_profile_as_preset(tmp_path, capsys):
    """Snakemake's `--config profile=NAME` (the file has `preset:`) selects that preset."""
    from gaussquant.config import workflow_params

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(RAW, sort_keys=False))
    out = workflow_params({**RAW, "profile": "paper"}, path)
    assert out["preset"] == "paper" and "profile" not in out
    assert capsys.readouterr().err.count("\n") == 1
    path.write_text(yaml.safe_dump(_former_spelling(RAW), sort_keys=False))  # an old file
    assert workflow_params(_former_spelling(RAW), path) == RAW


def test_stored_config_with_profile_key_loads_and_resumes(tmp_path, tiny_cfg):
    """A checkpoint whose stored config says `profile` (before presets) loads as `preset`; saved
    training states compare run settings, which no preset enters, so they resume."""
    import torch

    from gaussquant.checkpoint import read_checkpoint, save_checkpoint
    from gaussquant.config import config_to_dict
    from gaussquant.models.autoencoder import build_autoencoder
    from gaussquant.runstate import run_settings

    path = tmp_path / "old.pt"
    save_checkpoint(
        path, build_autoencoder(tiny_cfg, "fsq", "unet", "8"), tiny_cfg, "fsq", "unet", "8", step=1
    )
    payload = torch.load(path, weights_only=True)
    payload["config"] = _former_spelling(payload["config"])
    assert "profile" in payload["config"]
    torch.save(payload, path)
    assert read_checkpoint(path)["config"] == config_to_dict(tiny_cfg)
    other = dataclasses.replace(tiny_cfg, preset="paper")
    assert run_settings(other, "tdc", "unet", "8") == run_settings(tiny_cfg, "tdc", "unet", "8")


def test_preset_gives_its_own_official_checkpoints():
    """official.checkpoints is keyed by configuration names: a preset sets the whole dict."""
    raw = copy.deepcopy(RAW)
    raw["presets"]["tiny"]["official"] = {"checkpoints": {"sd3unet_gq_0.25": "w/a.ckpt"}}
    cfg = config_from_dict(resolve_params(raw, "tiny"))
    assert cfg.official.checkpoints == {"sd3unet_gq_0.25": "w/a.ckpt"}
    assert config_from_dict(resolve_params(raw, "quick")).official.checkpoints == {}


def test_checkpoint_config_with_per_bpp_rate_blocks_migrates():
    """A config saved when rates were bpp-named blocks of shapes reads as bits per position."""
    from gaussquant.config import config_to_dict, migrate_rates

    data = config_to_dict(load_config(ROOT / "params.yaml", "tiny"))
    old = {"bpp": 0.125, "gq_dim": 8, "vq_tokens": 1, "fsq_levels": [4, 4, 4, 4]}
    data |= {"rates": {"0.125": old}, "ablation": data["ablation"] | {"rate": "0.125"}}
    data["experiment"] |= {"rates": ["0.125"], "figure1_rates": ["0.125"]}
    del data["fsq"]
    new, rate = migrate_rates(data, "0.125")
    assert rate == "8" and new["rates"] == [8] and new["fsq"] == {"level": 4}
    assert config_from_dict(new) == load_config(ROOT / "params.yaml", "tiny")
    assert migrate_rates(new, "8") == (new, "8")  # today's layout passes unchanged


def _gq_named(section: dict) -> dict:
    """A params section as written when the trained TDC VAE was named gq."""
    out = copy.deepcopy(section)
    train, exp = out.get("train", {}), out.get("experiment", {})
    for key in ("batch_size", "lr"):
        if key in train:
            train[key] = {("gq" if m == "tdc" else m): v for m, v in train[key].items()}
    if "methods" in exp:
        exp["methods"] = ["gq" if m == "tdc" else m for m in exp["methods"]]
    return out


def test_params_naming_the_tdc_vae_gq_load_with_one_line_each(capsys):
    """train.batch_size / train.lr keys and experiment.methods entries `gq` (the trained TDC
    VAE's former name) read as `tdc`, one line per section that uses them."""
    raw = _gq_named(RAW)
    raw["presets"] = {k: _gq_named(v) for k, v in RAW["presets"].items()}
    for preset in ("tiny", "quick", "paper"):
        assert config_from_dict(resolve_params(raw, preset)) == load_config(
            ROOT / "params.yaml", preset
        )
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 * 3  # params, presets.quick, presets.tiny, at each of 3 loads
    assert all("'tdc'" in line and "train.lr.gq" in line for line in lines), lines
    assert "experiment.methods: gq" in lines[0]


def test_checkpoint_and_training_state_of_method_gq_load_as_tdc(tmp_path, tiny_cfg):
    """A checkpoint written with method gq (its config's batch_size/lr keys too) loads as the
    tdc model; a converted one keeps method gq (the conversion) with source_method tdc; a saved
    training state recorded under gq resumes under tdc."""
    import torch

    from gaussquant import runstate
    from gaussquant.checkpoint import load_autoencoder, save_checkpoint
    from gaussquant.config import config_to_dict
    from gaussquant.models.autoencoder import build_autoencoder

    model = build_autoencoder(tiny_cfg, "tdc", "unet", "8")
    for name, extra in (("vae", {}), ("gq", {"source_method": "gq"})):
        path = tmp_path / f"{name}.pt"
        save_checkpoint(path, model, tiny_cfg, "gq", "unet", "8", step=1, extra=extra)
        payload = torch.load(path, weights_only=True)
        payload["config"] = _gq_named(config_to_dict(tiny_cfg))
        torch.save(payload, path)
        loaded, payload = load_autoencoder(path)
        assert config_from_dict(payload["config"]) == tiny_cfg
        assert all(
            torch.equal(a, b)
            for a, b in zip(loaded.state_dict().values(), model.state_dict().values())
        )
    assert (load_autoencoder(tmp_path / "vae.pt")[1]["method"]) == "tdc"
    assert payload["method"] == "gq" and payload["extra"]["source_method"] == "tdc"
    state = tmp_path / "state"
    runstate.discard_stale_states(state, {"method": "gq", "shape": 4, "processes": 1})
    (state / "step-00000004").mkdir()
    runstate.discard_stale_states(state, {"method": "tdc", "shape": 4, "processes": 1})
    assert (state / "step-00000004").is_dir()  # kept: the same run under its new name


def test_steps_by_rate_sets_each_rates_steps_and_only_its_rerun_trigger():
    """train.steps_by_rate: a named rate trains its own steps, the others train.steps; a rate's
    run determinants (resume, rerun triggers) hold its own steps only, so changing the 64-bit
    budget retrains no 16-bit model; a key that is not a rate is a one-line error."""
    from gaussquant.config import run_determinants
    from gaussquant.train import at_rate_steps

    base = load_config(ROOT / "params.yaml", "quick", ["train.steps=7"])
    cfg = load_config(
        ROOT / "params.yaml", "quick", ["train.steps=7", "train.steps_by_rate={64: 11}"]
    )
    assert [cfg.train.steps_at(b) for b in (16, 32, 64)] == [7, 7, 11]
    assert at_rate_steps(cfg, "64").train.steps == 11 and at_rate_steps(cfg, "16").train.steps == 7
    for rate, same in (("16", True), ("64", False)):
        a, b = (run_determinants(c, "tdc", "unet", rate) for c in (base, cfg))
        assert (a == b) is same, rate
    assert run_determinants(cfg, "fsq", "vit", "64")["train"]["steps"] == 11
    with pytest.raises(ConfigError, match="train.steps_by_rate key: 48"):
        load_config(ROOT / "params.yaml", "quick", ["train.steps_by_rate={48: 11}"])
    with pytest.raises(ConfigError, match="train.steps_by_rate"):
        load_config(ROOT / "params.yaml", "quick", ["train.steps_by_rate={64: 0}"])
    with pytest.raises(ConfigError, match="tdc.lam_floor: must be >= 0"):
        load_config(ROOT / "params.yaml", "quick", ["tdc.lam_floor=-1.0"])
