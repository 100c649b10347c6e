"""`gaussquant report`: Snakemake's HTML report of every pipeline target already produced.

``snakemake --report`` refuses a target whose report files do not exist yet, so this asks
Snakemake (dry runs, in parallel) which targets are complete and reports exactly those.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from gaussquant.stages.common import add_preset_arg

TARGETS = ("reproduce_table1", "reproduce_tokenbridge", "figures", "ablations", "theory")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="HTML report (snakemake --report) of the targets already produced"
    )
    p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    add_preset_arg(p)
    p.add_argument("--out", type=Path, default=None, help="default results/<preset>/report.html")
    p.set_defaults(func=run)


def _snakemake() -> str:
    exe = Path(sys.executable).with_name("snakemake")
    return str(exe) if exe.exists() else (shutil.which("snakemake") or "snakemake")


def complete_targets(config_args: list[str]) -> list[str]:
    """The targets of ``TARGETS`` whose outputs are all up to date."""
    procs = {
        t: subprocess.Popen(
            # target first: --quiet and --config take several values and would swallow it
            [_snakemake(), t, "-n", *config_args, "--quiet", "rules"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for t in TARGETS
    }
    done = []
    for t, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode != 0:  # a broken workflow is an error, not an incomplete target
            from gaussquant.errors import GaussquantError

            raise GaussquantError(f"`snakemake {t} -n` failed ({proc.returncode}):\n{out[-2000:]}")
        if "Nothing to be done" in out:
            done.append(t)
    return done


def run(args: argparse.Namespace) -> int:
    from gaussquant.config import load_config
    from gaussquant.errors import GaussquantError

    preset = load_config(args.params, args.preset).preset
    config_args = ["--config", f"preset={preset}"] if args.preset else []
    out = args.out or Path("results") / preset / "report.html"
    targets = complete_targets(config_args)
    if not targets:
        raise GaussquantError(
            f"no target of preset {preset!r} is complete yet ({', '.join(TARGETS)}): "
            "run `make reproduce` (or `snakemake --cores all <target>`) first"
        )
    print(
        f"report of: {', '.join(targets)} (not complete: "
        f"{', '.join(t for t in TARGETS if t not in targets) or 'none'})"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [_snakemake(), *targets, "--report", str(out), *config_args]
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise GaussquantError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    print(f"wrote {out}")
    return 0
