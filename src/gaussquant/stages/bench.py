"""`gaussquant bench`: run the benchmarks in benchmarks/ and rewrite their report.

Each ``benchmarks/bench_<name>.py`` exposes ``main(argv) -> list[dict]`` (rows measured in one
run against a reference written for the benchmark) and a module docstring whose first line
titles its section. Not part of the test suite: timings are machine-dependent.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

from gaussquant.errors import GaussquantError

# name -> arguments for a full and a --quick run
SUITES = {
    "gq": ([], ["--quick"]),
    "data": ([], ["--images", "64", "--min-seconds", "0.5"]),
    "train": (["--steps", "20"], ["--steps", "3", "--no-paper"]),
    "eval": ([], ["--quick"]),
    "pipeline": ([], []),
    "e2e": ([], []),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run benchmarks/ and rewrite benchmarks/README.md")
    p.add_argument("--only", nargs="+", choices=sorted(SUITES), help="run only these suites")
    p.add_argument(
        "--quick", action="store_true", help="smaller sizes (a smoke run, not for the report)"
    )
    p.add_argument(
        "--extra",
        nargs=2,
        action="append",
        default=[],
        metavar=("SUITE", "ARGS"),
        help="more arguments for one suite, e.g. --extra e2e '--finished DIR --wall-s 1800' "
        "(report a `make reproduce` timed elsewhere)",
    )
    p.add_argument("--dir", type=Path, default=Path("benchmarks"), help="benchmarks folder")
    p.add_argument("--out", type=Path, default=None, help="report (default: <dir>/README.md)")
    p.set_defaults(func=run)


def _load(path: Path):
    """Import ``benchmarks/bench_<name>.py`` as a top-level module from its folder, so that
    spawned worker processes (multiprocessing) can import it again by name."""
    folder = str(path.parent.resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(path.stem)


def _describe(doc: str) -> tuple[str, str]:
    """(title, method paragraphs) of a benchmark's docstring, without its usage lines."""
    lines = doc.strip().splitlines()
    body = []
    for line in lines[1:]:
        if line.startswith(("Usage:", "    python")):
            break
        body.append(line)
    return lines[0], "\n".join(body).strip()


def machine() -> dict[str, str]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


NOTES = "notes.md"


def _sections(report: str) -> dict[str, str]:
    """The per-suite sections ("## name: ...") of a written report, by suite name."""
    out: dict[str, str] = {}
    for block in re.split(r"^(?=## )", report, flags=re.M)[1:]:
        name = block[3:].split(":", 1)[0].strip()
        if name in SUITES:
            out[name] = block.rstrip("\n") + "\n"
    return out


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from gaussquant.io import write_json, write_text

    suites = args.only or list(SUITES)
    sections, raw = [], {}
    for name in suites:
        path = args.dir / f"bench_{name}.py"
        if not path.is_file():
            raise GaussquantError(
                f"benchmark {str(path)!r} not found (run from the repository root)"
            )
        module = _load(path)
        extra = [shlex.split(a) for suite, a in args.extra if suite == name]
        argv = [*SUITES[name][1 if args.quick else 0], *(x for e in extra for x in e)]
        print(f"== bench {name} {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        result = module.main(argv)
        rows = result.get("rows", []) if isinstance(result, dict) else list(result or [])
        notes = result.get("notes", []) if isinstance(result, dict) else []
        raw[name] = result
        title, method = _describe(module.__doc__ or name)
        table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g")
        parts = [
            f"## {name}: {title}",
            method,
            f"`python benchmarks/bench_{name}.py {' '.join(argv)}` "
            f"({time.perf_counter() - t0:.0f} s)",
            table,
            *notes,
        ]
        sections.append("\n\n".join(p for p in parts if p) + "\n")
    info = machine()
    head = [
        "# Benchmarks",
        "",
        "Regenerate with `make bench` (= `gaussquant bench`). Every ratio is measured in one run "
        "against a reference implementation written for the benchmark.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        f"Command: `{' '.join(['gaussquant', 'bench'] + sys.argv[2:])}`",
        "",
    ]
    out = args.out or args.dir / "README.md"
    if args.quick:
        out = out.with_name("README.quick.md")
    if args.only and out.is_file():  # keep the sections of the suites not rerun, in suite order
        previous = out.read_text()
        kept = _sections(previous)
        earlier = re.search(r"^Kept sections were measured on: (.*)$", previous, re.M) or re.search(
            r"^Machine: (.*)$", previous, re.M
        )
        if earlier and any(name not in suites for name in kept):
            head[-1:-1] = ["", f"Kept sections were measured on: {earlier.group(1)}"]
        kept.update(dict(zip(suites, sections)))
        sections = [kept[name] for name in SUITES if name in kept]
        old = out.with_suffix(".json")
        if old.is_file():
            raw = {**json.loads(old.read_text()).get("results", {}), **raw}
        head[-1:-1] = [
            "",
            f"Suites rerun by that command: {', '.join(suites)}; the others are kept.",
        ]
    notes = args.dir / NOTES  # measured facts behind params.yaml choices, kept by hand
    if notes.is_file():
        sections.append(notes.read_text().rstrip("\n") + "\n")
    write_text(out, "\n".join(head) + "\n" + "\n".join(sections))
    write_json(out.with_suffix(".json"), {"machine": info, "results": raw})
    print(f"wrote {out}")
    return 0
