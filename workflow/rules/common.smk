# Settings, target lists and helpers of the rules. Every output path is a pure function of
# (preset, method or row, arch, rate, training seed); what each run folder of the train,
# convert and evaluate rules holds is in runs.smk.
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from snakemake.exceptions import WorkflowError

from gaussquant.codedeps import rule_code
from gaussquant.config import config_from_dict, resolve_params, run_determinants, workflow_params
from gaussquant.methods import TOKENBRIDGE_ROWS, table1_rows

# Rules call `gaussquant`/`accelerate` from the environment that runs Snakemake, activated or not.
os.environ["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"

_params = workflow_params(config)  # former spellings (profile:, --config profile=) renamed
config.clear()  # the rules and the report read today's keys
config.update(_params)
CFG = config_from_dict(resolve_params(config))  # strict check of the whole file before any rule
PRESET = CFG.preset
RES = f"results/{PRESET}"
PARAMS = f"--params params.yaml --preset {PRESET}"  # --config preset=... reaches the stages too
ENV = "../../environment.yml"  # every rule's conda environment (relative to this folder)
STAGE_RULES = ("prepare_data", "train", "convert", "evaluate", "fid_reference", "table", "figure", "theory", "ablation", "official", "rate")

# Source files each stage runs, from a walk of its imports (gaussquant.codedeps): declared as
# inputs, so a code change reruns exactly the rules whose stage runs that code (prepare_data:
# only the data code, codedeps.STAGE_OUTPUT_CODE).
CODE = {stage: rule_code(stage) for stage in STAGE_RULES}

if any(Path(RES, "train").glob("gq-*")):  # trained when the TDC VAE was named gq
    print(f"{RES}/train/gq-*: the TDC VAE's runs are now train/tdc-*; rename the folders to keep them", file=sys.stderr)


def gaussquant(command, launch=False):
    """The shell command that runs `gaussquant COMMAND` for a rule, with the rule's OMP threads
    and its output in the rule's log; ``launch``: through {params.launch} (accelerate on GPUs,
    see launch_prefix)."""
    prog = "{params.launch}" if launch else "gaussquant"
    return f"OMP_NUM_THREADS={{threads}} {prog} {command} > {{log}} 2>&1"


wildcard_constraints:
    ablation="(ablation/)?",  # the ablations' runs live under results/<preset>/ablation/
    tseed="[0-9]+",


# ----------------------------------------------------------------------------- Table 1 grid
# Evaluated rows of Table 1: trained tokenizers, GQ (converted TDC VAE) and the TDC VAE's
# continuous reconstruction as a reference row (gaussquant.methods).
TABLE1_ROWS = table1_rows(CFG.experiment.methods)
SEEDS = CFG.experiment.seeds  # training seeds: every trained cell and evaluated row, per seed
SEED0 = SEEDS[0]  # the one seed of the diagnostics figures and the ablations
KL_PAIR = ("vanilla", "tdc")  # the KL figure and ablation: a vanilla VAE against the TDC VAE

# Inception statistics of the originals, computed once; not needed where eval.fid is off.
FID_REF = [f"{RES}/eval/fid_reference.npz"] if CFG.eval.fid else []


def fid_ref_arg(wildcards, input):
    return f"--fid-ref {input.fid_ref}" if input.fid_ref else ""


def grid(rates=None, seeds=None):
    """(arch, rate, training seed) of every cell of Table 1 (or of the given rates, seeds)."""
    rates = CFG.experiment.rates if rates is None else rates
    return [(a, r, s) for a in CFG.experiment.archs for r in rates for s in (seeds or SEEDS)]


def cell(name, arch, rate, seed):
    """The directory name of one trained/converted/evaluated cell."""
    return f"{name}-{arch}-{rate}-s{seed}"


def eval_json(row, arch, rate, seed):
    return f"{RES}/eval/{cell(row, arch, rate, seed)}/metrics.json"


def table1_outputs():
    """Table 1, its verdicts and the figures made from the same runs (no extra training)."""
    tables = [f"{RES}/tables/{t}.{ext}" for t in ("table1", "verdicts") for ext in ("csv", "md")]
    figures = ("rate_distortion", "tdc_dynamics", "recon_grid")
    return tables + [f"{RES}/tables/table1.tex"] + [f"{RES}/figures/{n}.png" for n in figures]


def tokenbridge_outputs():
    return [f"{RES}/tables/tokenbridge.{ext}" for ext in ("csv", "md", "tex")]


def figure1_outputs():
    return [f"{RES}/figures/figure1.{ext}" for ext in ("png", "pdf")] + [
        f"{RES}/tables/figure1.md",
        f"{RES}/tables/figure1_verdicts.md",
    ]


def figure_outputs():
    figures = ("rate_distortion", "tdc_kl_hist", "tdc_dynamics", "recon_grid")
    return [f"{RES}/figures/{name}.png" for name in figures]


def train_params_for(method, arch, rate, seed):
    """The rerun triggers of a training: what determines its trajectory, as the resume logic
    defines it (gaussquant.config.run_determinants), at the pipeline's seed and process count;
    so editing e.g. the TDC tolerance does not retrain the FSQ baselines, and logging or
    checkpoint cadence retrain nothing."""
    cfg = replace(CFG, train=replace(CFG.train, seed=int(seed)))  # the pipeline's seed axis
    run = run_determinants(cfg, method, arch, rate, max(CFG.train.processes, 1))
    return {k: json.dumps(v, sort_keys=True) for k, v in run.items()}


# ----------------------------------------------------------------------------- resources
# model_job() gives the resources of every rule that trains, encodes or evaluates a model -
# GPUs through the executor's own `gpu` resource (sbatch --gpus, never GRES in slurm_extra),
# train.processes of them for trainings and evaluations (one process each), one for the other
# encoding steps; cluster limits per kind (SLURM minutes, MB). train.processes 0 = CPU.
JOB_LIMITS = {
    "train": dict(runtime=4320, mem_mb=256000, cpus_per_task=64),
    "evaluate": dict(runtime=480, mem_mb=128000, cpus_per_task=32),
    "encode": dict(runtime=240, mem_mb=64000, cpus_per_task=8),
}


def model_job(kind):
    """Resources of a rule of ``kind`` (train | evaluate | encode) that runs a model."""
    gpus = CFG.train.processes if kind in ("train", "evaluate") else min(CFG.train.processes, 1)
    return dict(gpu=gpus, nodes=1, **JOB_LIMITS[kind])


def launch_prefix(resources):
    """`gaussquant` on the CPU; `accelerate launch` with one process per GPU of the job.

    One node only: the executor runs each job as one `srun -n1` task that sees the job's GPUs,
    and a second launcher per node inside that step is not supported. Several nodes are
    refused here; README "Paper scale" gives the sbatch script for a multi-node training.
    """
    gpus, nodes = int(resources.get("gpu", 0)), int(resources.get("nodes", 1))
    if nodes != 1:
        raise WorkflowError(
            f"nodes={nodes}: the workflow launches a job on one node (1 to 8 GPUs: "
            "train.processes); train on several nodes with the sbatch script of README "
            "'Paper scale'"
        )
    if gpus <= 0:
        return "gaussquant"
    cfg = "workflow/accelerate/gpu1.yaml" if gpus == 1 else "workflow/accelerate/multigpu.yaml"
    return f"accelerate launch --config_file {cfg} --num_processes {gpus} -m gaussquant.cli"


def prepared_data_dir():
    """Where prepare_data writes: results/<preset>/data, or <data.prepared_dir>/<preset> (e.g.
    on scratch; ~ and $VARS expanded here, where Snakemake runs)."""
    if not CFG.data.prepared_dir:
        return f"{RES}/data"
    path = os.path.expandvars(os.path.expanduser(CFG.data.prepared_dir))
    if "$" in path:
        raise ValueError(f"data.prepared_dir: {CFG.data.prepared_dir!r}: a variable in it is not set")
    return os.path.join(path, PRESET)
