"""Pipeline overhead on a finished tiny workspace: `snakemake -n`, `dvc status` vs startup.

Builds a workspace like tests/test_pipeline.py (the repo's files from ``git ls-files -co
--exclude-standard`` copied to a temp dir, ``preset: tiny``, metric weights symlinked, git
init + commit), runs ``dvc repro`` once, then times each command ``--repeats`` times (median;
target: under 5 s each):

- ``snakemake -n reproduce_table1``: DAG build + up-to-date check of the finished pipeline,
- ``dvc status``: DVC's check of the recorded outs (hashes of every results folder),

against the references ``python -c pass`` (interpreter startup) and ``snakemake --version`` /
``dvc --version`` (interpreter + package import: the floor of any command of that tool), and
``python -c "import gaussquant.config"``, the import every Snakefile parse does (common.smk).
Peak RSS is each command's own high-water mark (``os.wait4`` rusage, from a small launcher).
The last rows split the ``dvc repro`` wall time by rule from Snakemake's benchmark files
(``results/tiny/benchmarks/**/*.tsv``, columns ``s``, ``cpu_time``, ``max_rss``); jobs run in
parallel, so their wall seconds add up to more than the repro's.

If ``dvc repro`` fails, its error is reported and the commands are timed against the
unfinished workspace instead (rows labelled ``unfinished``).

    python benchmarks/bench_pipeline.py [--repeats 3] [--workspace DIR] [--keep] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's binaries (snakemake, dvc, gaussquant)
ENV = {
    **os.environ,
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    "OMP_NUM_THREADS": "1",
}
PRESET = "tiny"
TARGET_S = 5.0


# Runs argv[2:] and writes its wall time and peak RSS (KiB) to argv[1]. A separate small launcher:
# ru_maxrss survives exec, so a child forked from this process (pandas loaded, ~70 MB) would
# report at least our own RSS; forked from this ~10 MB launcher, the floor is the launcher's.
_LAUNCHER = """import os, sys, time
t0 = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    cpu = usage.ru_utime + usage.ru_stime
    f.write(f"{time.perf_counter() - t0} {os.waitstatus_to_exitcode(status)} {usage.ru_maxrss} {cpu}")
"""


def run_measured(cmd: list[str], cwd: Path, timeout: float | None = None) -> dict:
    """Run ``cmd``: wall and CPU seconds, exit code, peak RSS (MiB) of this command alone, output.

    Peak RSS is ``ru_maxrss`` of the command's process and the descendants it waited for
    (``os.wait4`` in the launcher); wall time excludes the launcher's own startup.
    """
    with tempfile.TemporaryDirectory() as tmp:
        report, log = Path(tmp) / "report", Path(tmp) / "log"
        with open(log, "wb") as out:
            proc = subprocess.run(
                [sys.executable, "-c", _LAUNCHER, str(report), *cmd],
                cwd=cwd,
                env=ENV,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        text = log.read_bytes().decode(errors="replace")
        if proc.returncode != 0 or not report.exists():
            raise RuntimeError(f"launcher failed ({proc.returncode}) for {cmd}: {text[-2000:]}")
        wall, rc, kib, cpu = report.read_text().split()
    return {
        "s": float(wall),
        "cpu_s": float(cpu),
        "rc": int(rc),
        "rss_mb": int(kib) / 1024,
        "out": text,
    }


def build_workspace(dst: Path, weights: Path, preset: str = PRESET) -> None:
    """A git repo with the repo's files at ``preset`` and the metric weights linked."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for f in files:
        if (ROOT / f).is_file():  # listed but deleted in the working tree: skip
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    params = dst / "params.yaml"
    params.write_text(
        re.sub(r"^preset: \w+", f"preset: {preset}", params.read_text(), count=1, flags=re.M)
    )
    (dst / "weights").symlink_to(weights.resolve())
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        [
            "git",
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            "commit",
            "-qm",
            "copy",
        ],
    ):
        subprocess.run(cmd, cwd=dst, env=ENV, check=True, capture_output=True)


def rule_benchmarks(workspace: Path) -> list[tuple[str, re.Pattern]]:
    """(rule, regex of its benchmark path under results/<preset>/benchmarks), from the rules."""
    out = []
    for smk in sorted((workspace / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for m in re.finditer(r"^rule (\w+):(.*?)(?=^rule |\Z)", text, flags=re.M | re.S):
            b = re.search(r'benchmark:\s*\n\s*f?"\{RES\}/benchmarks/([^"]+)"', m.group(2))
            if b:
                # a wildcard may be empty ({ablation}) or span folders ({run}: eval/byo/<row>)
                pattern = re.sub(r"\\\{\\\{\w+\\\}\\\}", ".*", re.escape(b.group(1)))
                out.append((m.group(1), re.compile(pattern + r"\Z")))
    return out


def rule_split(workspace: Path, preset: str = PRESET) -> list[dict]:
    """Wall seconds per rule (column ``s`` summed over its jobs), from Snakemake's benchmarks."""
    bench_dir = workspace / "results" / preset / "benchmarks"
    rules = rule_benchmarks(workspace)
    per_rule: dict[str, list[tuple[float, float, float]]] = {}  # (s, cpu_time, max_rss) per job
    for tsv in sorted(bench_dir.rglob("*.tsv")):
        rel = tsv.relative_to(bench_dir).as_posix()
        name = next((r for r, pat in rules if pat.match(rel)), f"? {rel}")
        df = pd.read_csv(tsv, sep="\t")
        last = df.iloc[-1]
        per_rule.setdefault(name, []).append(
            tuple(
                float(pd.to_numeric(last.get(k), errors="coerce"))
                for k in ("s", "cpu_time", "max_rss")
            )
        )
    total = sum(j[0] for jobs in per_rule.values() for j in jobs)
    rows = []
    for name, jobs in sorted(per_rule.items(), key=lambda kv: -sum(j[0] for j in kv[1])):
        s = sum(j[0] for j in jobs)
        rows.append(
            {
                "what": f"rule {name}",
                "kind": "repro split",
                "runs": len(jobs),
                "seconds": s,
                "max_s": max(j[0] for j in jobs),
                "cpu_s": sum(j[1] for j in jobs),
                "peak_rss_mb": max(j[2] for j in jobs),
                "note": f"{100 * s / total:.0f} % of rule time",
            }
        )
    return rows


def time_command(cmd: list[str], cwd: Path, repeats: int, kind: str, check=None) -> dict:
    runs = [run_measured(cmd, cwd, timeout=300) for _ in range(repeats)]
    times = [r["s"] for r in runs]
    last = runs[-1]
    note = f"exit {last['rc']}"
    if check is not None:
        note += "; " + check(last["out"])
    return {
        "what": " ".join(Path(cmd[0]).name if i == 0 else c for i, c in enumerate(cmd)),
        "kind": kind,
        "runs": repeats,
        "seconds": statistics.median(times),
        "max_s": max(times),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "peak_rss_mb": max(r["rss_mb"] for r in runs),
        "note": note,
    }


def _error_summary(out: str, limit: int = 300) -> str:
    """The output from its first error line on, whitespace collapsed, at most ``limit`` chars."""
    lines = out.splitlines()
    first = next((i for i, ln in enumerate(lines) if re.search(r"Error|Exception", ln)), 0)
    return " ".join(" ".join(lines[first:]).split())[:limit]


def _snakemake_state(out: str) -> str:
    if "Nothing to be done" in out:
        return "nothing to be done"
    jobs = re.search(r"^total\s+(\d+)", out, flags=re.M)
    return f"{jobs.group(1)} jobs planned" if jobs else "no job count in output"


def _dvc_state(out: str) -> str:
    return "up to date" if "up to date" in out.lower() else "changed: " + " ".join(out.split())[:80]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="reuse this workspace (built and reproduced here if it does not exist)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = ap.parse_args(argv)

    tmp = None
    if args.workspace is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
        ws = tmp / "repo"
    else:
        ws = args.workspace.resolve()
    rows: list[dict] = []
    try:
        state = "finished"
        if not (ws / ".git").exists():
            ws.mkdir(parents=True, exist_ok=True)
            build_workspace(ws, args.weights)
        if not (ws / "results" / PRESET / "tables" / "table1.csv").exists():
            print(f"dvc repro in {ws} ...", flush=True)
            r = run_measured(["dvc", "repro"], ws, timeout=1500)
            ok = r["rc"] == 0
            rows.append(
                {
                    "what": "dvc repro (whole tiny pipeline, once)",
                    "kind": "build",
                    "runs": 1,
                    "seconds": r["s"],
                    "max_s": r["s"],
                    "cpu_s": r["cpu_s"],
                    "peak_rss_mb": r["rss_mb"],
                    "note": "ok" if ok else "FAILED: " + _error_summary(r["out"]),
                }
            )
            if not ok:
                state = "unfinished"
                print(
                    f"dvc repro failed (exit {r['rc']}); timing the unfinished workspace:\n"
                    + r["out"][-3000:],
                    file=sys.stderr,
                )
        n = args.repeats
        measured = [
            (["python", "-c", "pass"], "reference", None),
            (["snakemake", "--version"], "reference", None),
            (["dvc", "--version"], "reference", None),
            # what workflow/rules/common.smk imports: part of every Snakemake invocation
            (["python", "-c", "import gaussquant.config"], "reference", None),
            (["snakemake", "-n", "reproduce_table1"], f"target, {state}", _snakemake_state),
            (["dvc", "status"], f"target, {state}", _dvc_state),
        ]
        for cmd, kind, check in measured:
            cmd = [str(BIN / cmd[0])] + cmd[1:]
            rows.append(time_command(cmd, ws, n, kind, check))
        floor = {
            r["what"].split()[0]: r["seconds"]
            for r in rows
            if r["kind"] == "reference" and "--version" in r["what"]
        }
        py = next(r["seconds"] for r in rows if r["what"] == "python -c pass")
        for r in rows:
            if r["kind"].startswith("target"):
                tool = r["what"].split()[0]
                r["note"] += (
                    f"; {r['seconds'] / py:.1f}x python startup, "
                    f"{r['seconds'] - floor[tool]:+.2f} s over `{tool} --version`; "
                    f"target < {TARGET_S:g} s: {'met' if r['seconds'] < TARGET_S else 'MISSED'}"
                )
        rows += rule_split(ws)
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            print(f"workspace kept: {ws}")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return {"rows": rows, "notes": [BEFORE]}


BEFORE = (
    "Before/after: until the params.yaml section dataclasses moved to the torch-free "
    "`gaussquant.sections`, `import gaussquant.config` pulled in torch: 1.31 s and 695 MB, "
    "and `snakemake -n reproduce_table1` took 2.16 s (747 MB) on this machine under load "
    "(earlier report, same benchmark)."
)


if __name__ == "__main__":
    main()
