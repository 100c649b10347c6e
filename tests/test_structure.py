"""Pipeline integrity: rerun triggers derived from real imports, no import cycles, one method
registry that everything derives from, every stage honouring --set and refusing bad settings."""

import copy
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gaussquant import codedeps
from gaussquant.config import Config, config_from_dict, resolve_params
from gaussquant.errors import ConfigError
from gaussquant.methods import (
    CONVERSIONS,
    HYPER_METHODS,
    METHODS,
    ROWS,
    TABLE1_METHODS,
    table1_rows,
)

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "gaussquant"


# ----------------------------------------------------------------------------- import walk


def test_import_walk_follows_lazy_imports_and_packages(tmp_path):
    """A synthetic package: module-level, function-level and `from pkg import module` imports
    are all followed, package __init__ files are included, outside imports are not."""
    pkg = tmp_path / "gaussquant"
    files = {
        "__init__.py": "",
        "a.py": "import os\nfrom gaussquant.b import thing\n",
        "b.py": "thing = 1\ndef f():\n    from gaussquant.sub import c\n"
        "if TYPE_CHECKING:\n    from gaussquant import unused\n",
        "sub/__init__.py": "",
        "sub/c.py": "from gaussquant import d\n",
        "d.py": "import numpy\n",
        "unused.py": "",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    got = {str(p.relative_to(pkg)) for p in codedeps.code_files("gaussquant.a", root=pkg)}
    assert got == {"__init__.py", "a.py", "b.py", "sub/__init__.py", "sub/c.py", "d.py"}


def test_stage_code_contains_what_the_issue_found_missing():
    train = set(codedeps.stage_code("train", ROOT))
    for name in ("sections.py", "metrics/lpips.py", "metrics/weights.py", "data.py", "runstate.py"):
        assert f"src/gaussquant/{name}" in train, name
    evaluate = set(codedeps.stage_code("evaluate", ROOT))
    assert "src/gaussquant/data.py" in evaluate and "src/gaussquant/metrics/lpips.py" in evaluate
    figure = set(codedeps.stage_code("figure", ROOT))
    assert "src/gaussquant/records.py" in figure  # kl-hist reads the rates training recorded
    assert "src/gaussquant/models/unet.py" not in figure  # and encodes nothing
    table = set(codedeps.stage_code("table", ROOT))
    assert "src/gaussquant/models/unet.py" not in table and "src/gaussquant/tables.py" in table


def test_prepare_data_reruns_only_for_the_data_code():
    """The prepared data depends on gaussquant.data and what it imports, not on the CLI, the
    config loader or the other sections (their values reach the rule as params)."""
    prepare = set(codedeps.rule_code("prepare_data", ROOT))
    assert "src/gaussquant/data.py" in prepare and "src/gaussquant/photos.py" in prepare
    for name in ("config.py", "sections.py", "methods.py", "cli.py", "stages/common.py"):
        assert f"src/gaussquant/{name}" not in prepare, name
    assert set(codedeps.rule_code("train", ROOT)) == set(codedeps.stage_code("train", ROOT))


def _rules():
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings()) as api:
        wf = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            snakefile=ROOT / "Snakefile",
            workdir=ROOT,
        )
        return list(wf._workflow.rules)


def test_every_rule_declares_the_code_its_stage_imports():
    """For every rule that runs `gaussquant <stage>`, every project file that stage imports
    (walked at this moment, not from a list) is one of the rule's inputs."""
    checked = set()
    for rule in _rules():
        if not rule.shellcmd:
            continue
        m = re.search(r"(?:gaussquant|\{params\.launch\}) ([a-z-]+) ", rule.shellcmd)
        if not m:
            continue
        stage = m.group(1).replace("-", "_")
        declared = {str(f) for f in rule.input.get("code", [])}
        missing = set(codedeps.rule_code(stage, ROOT)) - declared
        assert not missing, f"rule {rule.name} (gaussquant {m.group(1)}) lacks inputs {missing}"
        checked.add(rule.name)
    assert {"prepare_data", "train", "evaluate", "table1", "theory", "ablation_kl"} <= checked


def _import_graph() -> dict[Path, set[Path]]:
    graph = {}
    for path in SRC.rglob("*.py"):
        deps = set()
        for name in codedeps._imported_modules(path):
            target = codedeps.module_file(name, SRC)
            # `from gaussquant.x import y` names x.y; y may be an attribute: then x is the file
            if target is not None and target != path:
                deps.add(target)
        graph[path] = deps
    return graph


def test_no_import_cycles():
    """No module imports (at module level or lazily) one that imports it back, directly or
    through others; package __init__ files re-exporting their own modules do not count."""
    graph = _import_graph()

    def own_package(a: Path, b: Path) -> bool:  # pkg/__init__ <-> pkg/module re-exports
        return (a.name == "__init__.py" and b.parent == a.parent) or (
            b.name == "__init__.py" and a.parent == b.parent
        )

    state: dict[Path, int] = {}
    stack: list[Path] = []
    cycles = []

    def visit(node: Path) -> None:
        state[node], _ = 1, stack.append(node)
        for dep in graph.get(node, ()):
            if own_package(node, dep):
                continue
            if state.get(dep) == 1:
                cycles.append([p.relative_to(SRC) for p in stack[stack.index(dep) :]])
            elif dep not in state:
                visit(dep)
        state[node], _ = 2, stack.pop()

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, cycles


def _unit(path: Path) -> str:
    """The unit a source file belongs to: its subpackage, or the top-level module itself."""
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def unit_cycles(graph: dict[Path, set[Path]]) -> list[list[str]]:
    """Strongly connected groups of more than one unit (subpackages and top-level modules),
    counting every import, at module level or inside a function."""
    units: dict[str, set[str]] = {}
    for path, deps in graph.items():
        units.setdefault(_unit(path), set()).update(_unit(d) for d in deps)
    for name, deps in units.items():
        deps.discard(name)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(units.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(units):
        if v not in index:
            visit(v)
    return groups


def test_no_cycles_between_units():
    """No subpackage or top-level module reaches itself again through the imports of others
    (e.g. checkpoint -> models -> quantizers -> checkpoint), imports inside functions included."""
    assert unit_cycles(_import_graph()) == []


def test_unit_cycle_finder_sees_a_cycle_through_a_lazy_import():
    a, b, c = SRC / "a.py", SRC / "pkg" / "b.py", SRC / "pkg" / "c.py"
    graph = {a: {b}, b: {c}, c: {a}}  # a -> pkg, pkg -> a (c's import may sit in a function)
    assert unit_cycles(graph) == [["a", "pkg"]]
    assert unit_cycles({a: {b}, b: {c}, c: set()}) == []


# ----------------------------------------------------------------------------- method registry


def test_registry_is_complete_and_consistent():
    from gaussquant.quantizers import BUILDERS

    assert set(BUILDERS) == set(METHODS)
    config_sections = {f.name for f in dataclasses.fields(Config)}
    for m in METHODS.values():
        assert m.section is None or m.section in config_sections, m
        assert callable(m.shape), m
        assert m.hyper in HYPER_METHODS, m
    for row in ROWS.values():
        assert row.source in METHODS
        assert not row.continuous or METHODS[row.source].gaussian
    for name, (source, quantizer) in CONVERSIONS.items():
        assert METHODS[source].gaussian and quantizer in ("gq", "tokenbridge"), name
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(params["train"]["lr"]) == set(HYPER_METHODS) == set(params["train"]["batch_size"])
    assert table1_rows(list(TABLE1_METHODS)) == ["vq", "fsq", "lfq", "bsq", "gq", "gq-continuous"]


def test_each_method_builds_its_bottleneck_from_its_section(tiny_cfg):
    """Changing a method's section changes its bottleneck, and only its own."""
    from gaussquant.models.autoencoder import build_autoencoder

    cfg = dataclasses.replace(tiny_cfg, vq=dataclasses.replace(tiny_cfg.vq, beta=0.5))
    assert build_autoencoder(cfg, "vq", "vit", "8").bottleneck.beta == 0.5
    lfq = build_autoencoder(tiny_cfg, "lfq", "vit", "8").bottleneck
    assert lfq.bits == 8  # the tiny rate: 8 bits per latent position, one sign bit each
    tb = build_autoencoder(tiny_cfg, "tbtdc", "vit", "8").bottleneck
    assert tb.dim == 1 and tb.tdc.target == 1  # 8 bits / C = 8 channels
    gq = build_autoencoder(tiny_cfg, "tdc", "vit", "8").bottleneck
    assert gq.dim == 8 and gq.tdc.cfg == tiny_cfg.tdc  # m = C log2 K / bits = 8 x 8 / 8
    cfg = dataclasses.replace(tiny_cfg, fsq=dataclasses.replace(tiny_cfg.fsq, level=16))
    assert build_autoencoder(cfg, "fsq", "vit", "8").bottleneck.levels == [16, 16]


def test_dvc_stage_tracks_every_params_section():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    tracked = set(dvc["stages"]["pipeline"]["params"])
    assert tracked == {f.name for f in dataclasses.fields(Config)} | {"presets"}


# ----------------------------------------------------------------------------- config loading


def test_missing_key_in_params_is_an_error_naming_it():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    data = resolve_params(copy.deepcopy(raw), "paper")
    del data["train"]["save_every"], data["model"]["vit"]["clamp"]
    del data["fsq"]["level"]
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert str(err.value).startswith(
        "model.vit.clamp, fsq.level, train.save_every: missing from params.yaml"
    )


def test_dataclass_defaults_equal_the_paper_values_in_params():
    """A section built directly (a model in a test) gets what params.yaml's paper sections say."""
    from gaussquant.config import load_config

    paper = load_config(ROOT / "params.yaml", "paper")
    assert paper.train.save_every == Config().train.save_every
    assert paper.model.vit.clamp == Config().model.vit.clamp
    for name in ("tdc", "vanilla", "gq", "vq", "lfq", "bsq", "loss"):
        assert getattr(paper, name) == getattr(Config(), name), name


def _prepare(tmp_path, *sets):
    cmd = [sys.executable, "-m", "gaussquant.cli", "prepare-data", "--params"]
    cmd += [str(ROOT / "params.yaml"), "--preset", "tiny", "--out", str(tmp_path / "out")]
    for item in sets:
        cmd += ["--set", item]
    return subprocess.run(cmd + ["--no-progress"], capture_output=True, text=True, cwd=ROOT)


def test_prepare_data_applies_set_overrides(tmp_path):
    done = _prepare(tmp_path, "data.resolution=64", "data.n_train=5", "data.n_val=3")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 5, "val": 3}
    assert manifest["resolution"] == 64


@pytest.mark.parametrize(
    "item, words",
    [
        ("train.steps=-5", ["train.steps", ">= 1", "-5"]),
        ("data.resolutoin=64", ["data.resolutoin", "unknown key"]),
        ("data.min_scale=0.0", ["data.min_scale", "(0, 1]"]),
        ("data.strict=maybe", ["data.strict", "true or false"]),
    ],
)
def test_prepare_data_refuses_bad_settings_before_any_work(tmp_path, item, words):
    failed = _prepare(tmp_path, item)
    assert failed.returncode == 2
    for word in words:
        assert word in failed.stderr, failed.stderr
    assert not (tmp_path / "out").exists()


def test_prepare_data_strict_from_set_fails_on_a_truncated_image(tmp_path):
    import numpy as np
    from PIL import Image

    for split in ("train", "val"):
        folder = tmp_path / split
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(folder / f"{i}.jpg")
    blob = (tmp_path / "train" / "0.jpg").read_bytes()
    (tmp_path / "train" / "bad.jpg").write_bytes(blob[: len(blob) // 2])
    folder = ["data.source=folder", f"data.train_dir={tmp_path / 'train'}"]
    folder += [f"data.val_dir={tmp_path / 'val'}", "data.n_train=0", "data.n_val=0"]
    lenient = _prepare(tmp_path, *folder)
    assert lenient.returncode == 0 and "skipped train/bad.jpg" in lenient.stdout, lenient.stderr
    strict = _prepare(tmp_path, *folder, "data.strict=true")
    assert strict.returncode == 2 and "bad.jpg" in strict.stderr, strict.stderr
