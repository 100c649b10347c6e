"""The pipeline end to end on the tiny preset, through DVC, in a temporary copy of the repo."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def repo_env(repo: Path) -> dict:
    """ENV in which a repo copy's jobs run the copy's own code (not the checkout's editable
    install, which an edit during the run would change under them)."""
    return {**ENV, "PYTHONPATH": str(Path(repo) / "src")}


def _run(cmd, cwd, check=True):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=repo_env(cwd))
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def _copy_repo(dst: Path, weights: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for f in files:
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst / f)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    text = (dst / "params.yaml").read_text()
    assert params["preset"] in ("quick", "tiny", "paper")
    (dst / "params.yaml").write_text(
        re.sub(r"^preset: \w+", "preset: tiny", text, count=1, flags=re.M)
    )
    (dst / "weights").symlink_to(weights)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
    ):
        _run(cmd, dst)
    return dst


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, weights_dir):
    repo = _copy_repo(tmp_path_factory.mktemp("repo"), weights_dir)
    _run(["dvc", "repro"], repo)
    return repo


@pytest.mark.slow
def test_dvc_repro_tiny_produces_sane_tables_and_figures(tiny_repo):
    res = tiny_repo / "results" / "tiny"
    table = pd.read_csv(res / "tables" / "table1.csv")
    assert set(table["arch"]) == {"UNet", "ViT"}
    assert {"VQGAN", "FSQ", "LFQ", "BSQ", "GQ (ours)"} <= set(table["method"])
    q = table[table["quantized"]]
    assert q["psnr"].between(5, 60).all() and q["ssim"].between(-1, 1).all()
    assert q["lpips"].between(0, 1.5).all() and (q["rfid"] >= 0).all()
    assert (q["tokens"] > 0).all() and (table["images"] == 16).all()
    assert (table["seeds"] == 2).all() and table["psnr_ci95"].notna().all()  # 2 training seeds
    assert table["psnr_per_seed"].str.count(":").eq(2).all()
    md = (res / "tables" / "table1.md").read_text()
    assert "PSNR \u2191" in md and "LPIPS \u2193" in md and "\u00b1" in md
    assert "over 2 training seeds" in md
    assert "$\\pm$" in (res / "tables" / "table1.tex").read_text()
    verdicts = pd.read_csv(res / "tables" / "verdicts.csv")
    assert set(verdicts["baseline"]) == {"vq", "fsq", "lfq", "bsq"}
    assert set(verdicts["metric"]) == {"psnr", "ssim", "lpips", "rfid"}
    assert (verdicts["n"] == 2).all()
    assert set(verdicts["verdict"]) <= {"GQ better", "no significant difference", "GQ worse"}
    assert ((verdicts["low"] <= verdicts["diff"]) & (verdicts["diff"] <= verdicts["high"])).all()
    assert (verdicts["mde"] >= 0).all()  # finite from 2 seeds on
    tb = pd.read_csv(res / "tables" / "tokenbridge.csv")
    assert {"TokenBridge, vanilla VAE", "TokenBridge, TDC VAE", "GQ (ours)"} <= set(tb["method"])
    # the continuous reference rows carry the validation per-token KL of the TDC VAE
    cont = json.loads((res / "eval" / "gq-continuous-unet-8-s0" / "metrics.json").read_text())
    assert len(cont["per_image"]["psnr"]) == 16 and cont["seed"] == 0
    tb_bits = cont["token_bits"]
    assert tb_bits["min"] <= tb_bits["p01"] <= tb_bits["mean"] <= tb_bits["p99"] <= tb_bits["max"]
    assert tb_bits["target"] == 8.0 and tb_bits["tokens"] == 16 * 16  # 16 images x 4x4 x 1 token
    assert tb_bits["tolerance"] == 0.5 and 0 <= tb_bits["within_tolerance"] <= 1
    summary = json.loads((res / "train" / "tdc-unet-8-s1" / "summary.json").read_text())
    check = summary["tdc"]
    assert check["target_bits"] == 8.0 and check["val_p05"] <= check["val_p95"]
    shares = [check[f"val_{k}_tolerance"] for k in ("below", "within", "above")]
    assert all(0 <= v <= 1 for v in shares) and sum(shares) == pytest.approx(1.0)
    assert check["holds"] == (
        6.0 <= check["val_p05"] and check["val_p95"] <= 10.0 and shares[1] >= 0.7
    )
    for fig in ("rate_distortion", "tdc_kl_hist", "tdc_dynamics", "recon_grid"):
        png = res / "figures" / f"{fig}.png"
        assert png.stat().st_size > 5000, fig
        assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_second_run_has_nothing_to_do(tiny_repo):
    out = _run(
        ["snakemake", "-n", "reproduce_table1", "reproduce_tokenbridge", "figures"], tiny_repo
    )
    assert "Nothing to be done" in out.stdout + out.stderr
    status = _run(["dvc", "status"], tiny_repo)
    assert "up to date" in status.stdout.lower()


@pytest.mark.slow
def test_report_covers_every_complete_target(tiny_repo):
    out = _run(["gaussquant", "report"], tiny_repo)
    assert "not complete: none" in out.stdout, out.stdout
    html = (tiny_repo / "results" / "tiny" / "report.html").read_text(errors="replace")
    for name in ("table1.csv", "rate_distortion.png", "tdc_kl_hist.png", "theory.png", "kl.png"):
        assert name in html, name


@pytest.mark.slow
def test_table_parameter_change_reruns_only_table_rules(tiny_repo):
    params = tiny_repo / "params.yaml"
    original = params.read_text()
    changed = original.replace("decimals: {psnr: 2,", "decimals: {psnr: 3,", 1)
    assert changed != original, "the table parameter to change is not in params.yaml"
    params.write_text(changed)
    try:
        out = _run(
            ["snakemake", "reproduce_table1", "reproduce_tokenbridge", "-n", "--quiet", "rules"],
            tiny_repo,
        )
        log = out.stdout + out.stderr
        rules = set(re.findall(r"^(\w+)\s+\d+\s*$", log, flags=re.M)) - {"total", "job"}
        assert rules and rules <= {
            "table1",
            "table_tokenbridge",
            "reproduce_table1",
            "reproduce_tokenbridge",
        }, log
    finally:
        params.write_text(original)


@pytest.mark.slow
def test_tdc_parameter_change_retrains_only_tdc_models(tiny_repo):
    """Rerun triggers are per method: the TDC tolerance retrains the TDC VAEs, not the
    VQ/FSQ/LFQ/BSQ baselines or the vanilla VAE."""
    params = tiny_repo / "params.yaml"
    text = params.read_text()
    changed = text.replace("  tolerance: 0.5  #", "  tolerance: 0.75  #", 1)
    assert changed != text, "the TDC tolerance line is not in params.yaml"
    params.write_text(changed)
    try:
        out = _run(["snakemake", "-n", "reproduce_table1", "reproduce_tokenbridge"], tiny_repo)
        log = out.stdout + out.stderr
        retrained = set(re.findall(r"output: results/tiny/train/([a-z]+)-", log))
        assert retrained == {"tdc", "tbtdc"}, log[-3000:]
    finally:
        params.write_text(text)


@pytest.mark.slow
@pytest.mark.parametrize(
    "source, expected",
    [
        ("metrics/lpips.py", {"train", "train_gaussian", "evaluate", "table1"}),
        ("tables.py", {"table1", "table_tokenbridge"}),
    ],
    ids=["lpips-retrains", "tables-only-tables"],
)
def test_editing_code_reruns_exactly_the_rules_that_run_it(tiny_repo, source, expected):
    """Code inputs come from each stage's real imports: the LPIPS loss network's code retrains
    (and re-evaluates) everything; the table code reruns only the tables."""
    path = tiny_repo / "src" / "gaussquant" / source
    text = path.read_text()
    path.write_text(text + "\n# an edit\n")
    try:
        targets = ["reproduce_table1", "reproduce_tokenbridge", "figures", "ablations"]
        out = _run(["snakemake", *targets, "-n", "--quiet", "rules"], tiny_repo)
        log = out.stdout + out.stderr
        rules = set(re.findall(r"^(\w+)\s+\d+\s*$", log, flags=re.M)) - {"total", "job", "all"}
        assert expected <= rules, log
        if source == "tables.py":
            assert rules - set(targets) == expected, log
    finally:
        path.write_text(text)
        os.utime(path, ns=(0, 0))  # older than every output again


@pytest.mark.slow  # the tiny_repo fixture runs `dvc repro` (~150 s)
@pytest.mark.parametrize(
    "old,new,expected",
    [
        (
            "      lr_decay: 0.5  #",
            "      lr_decay: 0.25  #",
            {"tdc", "tbtdc", "vanilla", "vq", "fsq", "lfq", "bsq"},
        ),
        ("      log_every: 2\n", "      log_every: 3\n", set()),
    ],
    ids=["lr_decay-retrains-all", "log_every-retrains-none"],
)
def test_train_keys_trigger_retraining_unless_bookkeeping(tiny_repo, old, new, expected):
    """Every `train` key that changes a result is a rerun trigger (so a new key cannot be
    forgotten); logging cadence is not."""
    params = tiny_repo / "params.yaml"
    text = params.read_text()
    i = text.index("  tiny:")
    changed = text[:i] + text[i:].replace(old, new, 1)
    assert changed != text, f"{old!r} is not in the tiny preset"
    params.write_text(changed)
    try:
        out = _run(["snakemake", "-n", "reproduce_table1", "reproduce_tokenbridge"], tiny_repo)
        log = out.stdout + out.stderr
        retrained = set(re.findall(r"output: results/tiny/train/([a-z]+)-", log))
        assert retrained == expected, log[-3000:]
    finally:
        params.write_text(text)


@pytest.mark.slow
def test_dvc_exp_run_with_a_param_reruns_only_what_it_changes(tiny_repo):
    """`dvc exp run -S` of a table parameter reruns the Snakemake table rules only; afterwards
    DVC and Snakemake agree that everything is up to date. (Runs last on the shared workspace:
    DVC rewrites params.yaml.)"""
    models = {p: p.stat().st_mtime_ns for p in (tiny_repo / "results" / "tiny").rglob("model.pt")}
    table = tiny_repo / "results" / "tiny" / "tables" / "table1.md"
    before = table.read_text()
    _run(["dvc", "exp", "run", "-S", "table.decimals.psnr=4"], tiny_repo)
    assert yaml.safe_load((tiny_repo / "params.yaml").read_text())["table"]["decimals"]["psnr"] == 4
    assert table.read_text() != before, "the table was not rewritten with the new decimals"
    assert {p: p.stat().st_mtime_ns for p in models} == models, "a model was retrained"
    status = _run(["dvc", "status"], tiny_repo)
    assert "up to date" in status.stdout.lower(), status.stdout
    out = _run(
        ["snakemake", "-n", "reproduce_table1", "reproduce_tokenbridge", "figures"], tiny_repo
    )
    assert "Nothing to be done" in out.stdout + out.stderr


def test_snakemake_lint_is_clean():
    out = _run(["snakemake", "--lint"], ROOT, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_figure1_target_writes_its_table_and_verdicts_at_every_rate():
    """reproduce_figure1 plans the figure and its table with verdicts, both from the
    evaluations of every rate in experiment.figure1_rates and every Table 1 row."""
    from gaussquant.config import load_config

    cfg = load_config(ROOT / "params.yaml", "tiny", [])
    out = _run(
        ["snakemake", "reproduce_figure1", "-n", "-p", "--forceall", "--config", "preset=tiny"],
        ROOT,
    )
    text = out.stdout + out.stderr
    table = re.search(r"gaussquant table .*--kind figure1 .*", text)
    assert table, text[-3000:]
    assert "--verdicts results/tiny/tables/figure1_verdicts" in table.group(0)
    evals = re.findall(r"results/tiny/eval/(\w+)-\w+-(\d+)-s\d/metrics.json", table.group(0))
    assert {int(bits) for _, bits in evals} == set(cfg.experiment.figure1_rates), evals
    assert {row for row, _ in evals} >= {"gq", *cfg.experiment.methods} - {"tdc"}, evals


def test_paper_dry_run_with_slurm_renders_multi_gpu_launch(tmp_path):
    out = _run(
        ["snakemake", "reproduce_table1", "-n", "-p", "--profile", "profiles/slurm"]
        + ["--config", "preset=paper"],  # --config takes several values: target first
        ROOT,
    )
    text = out.stdout + out.stderr
    assert (
        "accelerate launch --config_file workflow/accelerate/multigpu.yaml --num_processes 8"
        in text
    )
    assert "-m gaussquant.cli train" in text
    for rate in (16, 32, 64):  # bits per latent position: the paper's 0.25 / 0.5 / 1.0 bpp
        assert f"--rate {rate} " in text


def test_dvc_outs_cover_every_results_folder():
    """Every results/<preset>/<folder> a rule writes is a (persisted) DVC out."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    outs = {}
    for out in dvc["stages"]["pipeline"]["outs"]:
        ((path, opts),) = out.items() if isinstance(out, dict) else ((out, {}),)
        outs[path] = opts
    written = set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        written |= set(re.findall(r"\{RES\}/(\w+)/", smk.read_text()))
    covered = {p.split("/")[2] for p in outs if p.startswith("results/")}
    assert written and written <= covered, f"not covered by dvc.yaml outs: {written - covered}"
    assert all(opts.get("persist") for opts in outs.values())
    assert ".snakemake/metadata" in outs


def _finished_outputs(repo: Path) -> set[str]:
    """Outputs Snakemake has recorded as finished: one metadata record per output, written when
    its job ends (file names are the urlsafe base64 of the path, split in name-length chunks)."""
    import base64

    meta = repo / ".snakemake" / "metadata"
    done = set()
    for f in meta.rglob("*") if meta.exists() else ():
        if f.is_file():
            done.add(base64.urlsafe_b64decode("".join(f.relative_to(meta).parts)).decode())
    return done


@pytest.mark.slow
def test_interrupted_run_resumes_without_losing_finished_work(tmp_path, weights_dir):
    """SIGKILL the whole Snakemake process group mid-run, re-run the same command: jobs that
    had finished are not run again, nothing half-written counts as done, the run completes."""
    import signal
    import time

    import torch

    repo = _copy_repo(tmp_path, weights_dir)
    train_dir = repo / "results" / "tiny" / "train"
    cmd = ["snakemake", "--cores", "2", "reproduce_table1"]
    proc = subprocess.Popen(
        cmd,
        cwd=repo,
        env=repo_env(repo),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def finished_models():
        return {p for p in _finished_outputs(repo) if re.fullmatch(r".*/train/[^/]+/model\.pt", p)}

    try:
        deadline = time.time() + 600
        while not finished_models() and time.time() < deadline:
            assert proc.poll() is None, "snakemake ended before it could be interrupted"
            time.sleep(0.2)
        time.sleep(1.0)  # let the next jobs start, so the kill lands mid-way through them
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (repo / "results" / "tiny" / "tables" / "table1.csv").exists()
    done = {repo / p: (repo / p).stat().st_mtime_ns for p in finished_models()}
    assert done, "no training had finished before the kill"
    for p in train_dir.glob("*/model.pt"):  # atomic writes: every checkpoint present is whole
        assert torch.load(p, map_location="cpu", weights_only=True)["step"] == 6

    # a hard kill leaves Snakemake's lock behind (a clean Ctrl-C removes it); as its message says
    _run(["snakemake", "--unlock"], repo)
    out = _run(cmd, repo)
    assert (repo / "results" / "tiny" / "tables" / "table1.csv").exists()
    assert {p: p.stat().st_mtime_ns for p in done} == done, "a finished training was redone"
    again = _run(["snakemake", "-n", "reproduce_table1"], repo)
    assert "Nothing to be done" in again.stdout + again.stderr, out.stdout[-2000:]
