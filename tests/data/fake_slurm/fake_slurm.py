#!/usr/bin/env python3
"""Stand-in for the SLURM commands the executor plugin calls (tests/test_slurm.py): each one
records its arguments in $FAKE_SLURM/<command>.jsonl; sbatch runs the job at once, here, in
its -D directory (SLURM_JOB_ID set, ACCELERATE_USE_CPU=1 so that the GPU processes are CPU
processes), and sacct reports the state it ended in. Each command is a wrapper `fake_slurm.py NAME ARGS...`."""

import json
import os
import subprocess
import sys
from pathlib import Path

STATE = Path(os.environ["FAKE_SLURM"])


def _record(name: str, argv: list[str]) -> None:
    with open(STATE / f"{name}.jsonl", "a") as f:
        f.write(json.dumps(argv) + "\n")


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def sbatch(argv: list[str]) -> int:
    jobs = STATE / "jobs"
    jobs.mkdir(exist_ok=True)
    job_id = str(1000 + len(list(jobs.iterdir())))
    (jobs / job_id).write_text("RUNNING")
    wrap = _option(argv, "--wrap")
    script = wrap if wrap is not None else sys.stdin.read()
    log = Path(_option(argv, "--output").replace("%j", job_id))
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SLURM_JOB_ID": job_id, "ACCELERATE_USE_CPU": "1"}
    if gpus := _option(argv, "--gpus"):
        env["SLURM_GPUS"] = gpus
    with open(log, "w") as out:
        rc = subprocess.call(
            ["bash", "-c", script], cwd=_option(argv, "-D"), env=env, stdout=out, stderr=out
        )
    (jobs / job_id).write_text("COMPLETED" if rc == 0 else "FAILED")
    print(job_id)
    return 0


def sacct(argv: list[str]) -> int:
    if "--name" not in argv:  # the plugin guessing an account
        print("test")
        return 0
    for job in sorted((STATE / "jobs").iterdir()):
        print(f"{job.name}|{job.read_text()}")
    return 0


def srun(argv: list[str]) -> int:
    rest = argv[:]
    while rest and rest[0].startswith("-"):
        rest.pop(0)
    os.execvp(rest[0], rest)


OUTPUT = {
    "scontrol": "MinJobAge = 300 sec",
    "sinfo": "PARTITION\ngpu*",
    "sacctmgr": "test",
    "sshare": "test",
    "squeue": "",
}


def main() -> int:
    name, argv = sys.argv[1], sys.argv[2:]  # the wrapper passes the command name first
    _record(name, argv)
    handler = {"sbatch": sbatch, "sacct": sacct, "srun": srun}.get(name)
    if handler is not None:
        return handler(argv)
    if OUTPUT[name]:
        print(OUTPUT[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
