# Target lists and helpers. Every output path is a pure function of (profile, method, arch, rate,
# training seed).
import json
import math
import shlex
import os
import re
import sys
from dataclasses import replace

from snakemake.exceptions import WorkflowError

from gaussquant.codedeps import rule_code
from gaussquant.config import config_from_dict, resolve_params, run_determinants
from gaussquant.methods import CONVERSIONS, METHODS, ROWS, TOKENBRIDGE_ROWS, shape, table1_rows
from gaussquant.sections import RELEASED_WEIGHTS

# Rules call `gaussquant`/`accelerate` from the environment that runs Snakemake, activated or not.
os.environ["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"

CFG = config_from_dict(resolve_params(config))  # strict check of the whole file before any rule
PROFILE = CFG.profile
RES = f"results/{PROFILE}"
PARAMS = f"--params params.yaml --profile {PROFILE}"  # --config profile=... reaches the stages too
STAGE_RULES = ("prepare_data", "train", "convert", "evaluate", "fid_reference", "table", "figure", "theory", "ablation", "official", "rate")

# Source files each stage runs, from a walk of its imports (gaussquant.codedeps): declared as
# inputs, so a code change reruns exactly the rules whose stage runs that code (prepare_data:
# only the data code, codedeps.STAGE_OUTPUT_CODE).
CODE = {stage: rule_code(stage) for stage in STAGE_RULES}

# Evaluated rows of Table 1: trained tokenizers, GQ (converted TDC VAE) and the TDC VAE's
# continuous reconstruction as a reference row (gaussquant.methods).
TABLE1_ROWS = table1_rows(CFG.experiment.methods)

wildcard_constraints:
    method="|".join(METHODS),
    arch="unet|vit",
    rate="[0-9]+",  # bits per latent position
    tseed="[0-9]+",
    row="|".join(ROWS),


# Inception statistics of the originals, computed once; not needed where eval.fid is off.
FID_REF = [f"{RES}/eval/fid_reference.npz"] if CFG.eval.fid else []


def fid_ref_arg(wildcards, input):
    return f"--fid-ref {input.fid_ref}" if input.fid_ref else ""


SEEDS = CFG.experiment.seeds  # training seeds: every trained cell and evaluated row, per seed
SEED0 = SEEDS[0]  # the one seed of the diagnostics figures and the ablations


def grid(rates=None, seeds=None):
    """(arch, rate, training seed) of every cell of Table 1 (or of the given rates, seeds)."""
    rates = CFG.experiment.rates if rates is None else rates
    return [(a, r, s) for a in CFG.experiment.archs for r in rates for s in (seeds or SEEDS)]


def cell(name, arch, rate, seed):
    """The directory name of one trained/converted/evaluated cell."""
    return f"{name}-{arch}-{rate}-s{seed}"


def table1_outputs():
    """Table 1, its verdicts and the figures made from the same runs (no extra training)."""
    return [f"{RES}/tables/{t}.{ext}" for t in ("table1", "verdicts") for ext in ("csv", "md")] + [
        f"{RES}/tables/table1.tex"
    ] + [
        f"{RES}/figures/{name}.png" for name in ("rate_distortion", "tdc_dynamics", "recon_grid")
    ]


def tokenbridge_outputs():
    return [f"{RES}/tables/tokenbridge.{ext}" for ext in ("csv", "md", "tex")]


def figure1_outputs():
    return [f"{RES}/figures/figure1.{ext}" for ext in ("png", "pdf")]


def figure_outputs():
    return [
        f"{RES}/figures/rate_distortion.png",
        f"{RES}/figures/tdc_kl_hist.png",
        f"{RES}/figures/tdc_dynamics.png",
        f"{RES}/figures/recon_grid.png",
    ]


def eval_json(row, arch, rate, seed):
    return f"{RES}/eval/{cell(row, arch, rate, seed)}/metrics.json"


def train_params_for(method, arch, rate, seed):
    """The rerun triggers of a training: what determines its trajectory, as the resume logic
    defines it (gaussquant.config.run_determinants), at the pipeline's seed and process count;
    so editing e.g. the TDC tolerance does not retrain the FSQ baselines, and logging or
    checkpoint cadence retrain nothing."""
    cfg = replace(CFG, train=replace(CFG.train, seed=int(seed)))  # the pipeline's seed axis
    run = run_determinants(cfg, method, arch, rate, max(CFG.train.processes, 1))
    return {k: json.dumps(v, sort_keys=True) for k, v in run.items()}


def train_params(wildcards):
    return train_params_for(wildcards.method, wildcards.arch, wildcards.rate, wildcards.tseed)


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


def eval_checkpoint(wc):
    """The checkpoint a row measures: a conversion's output, or the trained model itself (a
    Gaussian VAE's continuous reconstruction reads its training checkpoint)."""
    row = ROWS[wc.row]
    if row.quantizer:
        return f"{RES}/convert/{cell(row.name, wc.arch, wc.rate, wc.tseed)}/model.pt"
    return f"{RES}/train/{cell(row.source, wc.arch, wc.rate, wc.tseed)}/model.pt"


# Ablations (workflow/rules/ablation.smk) on one (arch, rate) of the TDC VAE.
ABL = CFG.ablation
ABL_RES = f"{RES}/ablation"
ABL_BASE = f"{RES}/train/{cell('gq', ABL.arch, ABL.rate, SEED0)}/model.pt"
LOG2K = int(math.log2(CFG.tdc.codebook_size))
ABL_KS = [2 ** (LOG2K + o) for o in ABL.codebook_log2_offsets]
BASE_SEED = CFG.gq.seed


def tol_checkpoint(tol):
    """The tolerance of params.yaml is the main TDC VAE; other values are trained here."""
    if float(tol) == CFG.tdc.tolerance:
        return ABL_BASE
    return f"{ABL_RES}/train/tol{tol}/model.pt"


def _abl_tables(kind, for_report=True):
    """An ablation's table and figure; report flags only where ablation.smk declares them as
    outputs, since Snakemake resolves a caption path from the file that uses the flag."""
    csv, md, png = (f"{ABL_RES}/{kind}.{ext}" for ext in ("csv", "md", "png"))
    if not for_report:
        return [csv, md, png]
    labels = dict(category="Ablations", subcategory=kind, caption="../report/ablation.rst")
    return [report(csv, **labels), md, report(png, **labels)]


def ablation_outputs():
    kinds = ("codebook", "tolerance", "seed", "kl")
    return [t for kind in kinds for t in _abl_tables(kind, for_report=False)]


# Released official checkpoints (workflow/rules/official.smk): configuration name -> .ckpt.
OFFICIAL = CFG.official.checkpoints
OFFICIAL_NAME = "|".join(map(re.escape, OFFICIAL)) or "(?!)"  # only the configured names


def official_source(wc):
    path = OFFICIAL[wc.oname]
    if not os.path.isfile(path):
        raise ValueError(
            f"official.checkpoints.{wc.oname}: {path} not found; download it from the Hugging Face "
            f"repository {RELEASED_WEIGHTS}, e.g. `hf download {RELEASED_WEIGHTS} {wc.oname}.ckpt "
            f"--local-dir {os.path.dirname(path) or '.'}` (README: Use the released weights)"
        )
    return path


def official_metrics(wildcards=None):
    if not OFFICIAL:
        raise ValueError(
            "official.checkpoints is empty: download checkpoints from the Hugging Face repository "
            f"{RELEASED_WEIGHTS} and list them in params.yaml (README: Use the released weights)"
        )
    return [f"{RES}/eval/official-{name}/metrics.json" for name in OFFICIAL]


# Bring your own diffusers VAE (workflow/rules/byo.smk).
BYO = CFG.byo
BYO_RES = f"{RES}/eval/byo"
BYO_VAE = shlex.quote(BYO.vae)
BYO_SHAPE = f"--bpp {BYO.rate}"  # K from params; the stages derive m from the VAE's C and f
BYO_TRIGGERS = {"vae": BYO.vae, "rate": BYO.rate, "k": CFG.tdc.codebook_size, "gq": str(CFG.gq)}
# evaluated row -> (checkpoint, continuous, table name)
BYO_ROWS = {
    "pretrained": (f"{RES}/convert/byo-pretrained-vae/model.pt", True, "pretrained VAE, continuous"),
    "gq-pretrained": (f"{RES}/convert/byo-pretrained-gq/model.pt", False, "GQ, pretrained VAE"),
    "tb-pretrained": (f"{RES}/convert/byo-pretrained-tokenbridge/model.pt", False, "TokenBridge, pretrained VAE"),
    "tdc": (f"{RES}/train/byo-tdc/model.pt", True, "TDC fine-tuned VAE, continuous"),
    "gq-tdc": (f"{RES}/convert/byo-tdc-gq/model.pt", False, "GQ after TDC fine-tuning"),
    "tb-tdc": (f"{RES}/convert/byo-tdc-tokenbridge/model.pt", False, "TokenBridge after TDC fine-tuning"),
}


def byo_outputs():
    """The byo table and the rate report."""
    table = [f"{RES}/tables/byo.{ext}" for ext in ("csv", "md", "tex")]
    return table + [f"{BYO_RES}/rate.{ext}" for ext in ("json", "md", "png")]


def byo_train_params():
    """What changes the fine-tuning (rerun triggers): the gq run's determinants that do not
    depend on the VAE (its shapes are derived from the VAE when the stage runs)."""
    run = run_determinants(CFG, "gq", "diffusers", str(CFG.rates[0]), max(CFG.train.processes, 1))
    keep = ("train", "global_batch", "loss", "section")
    return {k: json.dumps(run[k], sort_keys=True) for k in keep} | {"disc": str(CFG.model.discriminator)}


def prepared_data_dir():
    """Where prepare_data writes: results/<profile>/data, or <data.prepared_dir>/<profile> (e.g.
    on scratch; ~ and $VARS expanded here, where Snakemake runs)."""
    if not CFG.data.prepared_dir:
        return f"{RES}/data"
    path = os.path.expandvars(os.path.expanduser(CFG.data.prepared_dir))
    if "$" in path:
        raise ValueError(f"data.prepared_dir: {CFG.data.prepared_dir!r}: a variable in it is not set")
    return os.path.join(path, PROFILE)
