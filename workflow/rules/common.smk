# Target lists and helpers. Every output path is a pure function of (profile, method, arch, rate).
import math
import os
import sys
from dataclasses import fields

from gaussquant.codedeps import stage_code
from gaussquant.config import NON_TRAJECTORY_KEYS, config_from_dict, resolve_params
from gaussquant.methods import CONVERSIONS, METHODS, ROWS, TOKENBRIDGE_ROWS, table1_rows

# Rules call `gaussquant`/`accelerate` from the environment that runs Snakemake, activated or not.
os.environ["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"

CFG = config_from_dict(resolve_params(config))  # strict check of the whole file before any rule
PROFILE = CFG.profile
RES = f"results/{PROFILE}"
PARAMS = f"--params params.yaml --profile {PROFILE}"  # --config profile=... reaches the stages too
STAGE_RULES = ("prepare_data", "train", "convert", "evaluate", "fid_reference", "table", "figure", "theory", "ablation")

# Source files each stage runs, from a walk of its imports (gaussquant.codedeps): declared as
# inputs, so a code change reruns exactly the rules whose stage runs that code.
CODE = {stage: stage_code(stage) for stage in STAGE_RULES}

# Evaluated rows of Table 1: trained tokenizers, GQ (converted TDC VAE) and the TDC VAE's
# continuous reconstruction as a reference row (gaussquant.methods).
TABLE1_ROWS = table1_rows(CFG.experiment.methods)

wildcard_constraints:
    method="|".join(METHODS),
    arch="unet|vit",
    rate="[0-9.]+",
    row="|".join(ROWS),


# Inception statistics of the originals, computed once; not needed where eval.fid is off.
FID_REF = [f"{RES}/eval/fid_reference.npz"] if CFG.eval.fid else []


def fid_ref_arg(wildcards, input):
    return f"--fid-ref {input.fid_ref}" if input.fid_ref else ""


def grid():
    return [(a, r) for a in CFG.experiment.archs for r in CFG.experiment.rates]


def table1_outputs():
    """Table 1 and the figures made from the same runs (no extra training)."""
    return [f"{RES}/tables/table1.{ext}" for ext in ("csv", "md", "tex")] + [
        f"{RES}/figures/{name}.png" for name in ("rate_distortion", "tdc_dynamics", "recon_grid")
    ]


def tokenbridge_outputs():
    return [f"{RES}/tables/tokenbridge.{ext}" for ext in ("csv", "md", "tex")]


def figure_outputs():
    return [
        f"{RES}/figures/rate_distortion.png",
        f"{RES}/figures/tdc_kl_hist.png",
        f"{RES}/figures/tdc_dynamics.png",
        f"{RES}/figures/recon_grid.png",
    ]


def eval_json(row, arch, rate):
    return f"{RES}/eval/{row}-{arch}-{rate}/metrics.json"


def train_params_for(method, arch, rate):
    """The params that change a training run (rerun triggers): only what this (method, arch,
    rate) reads, so editing e.g. the TDC tolerance does not retrain the FSQ baselines, and
    logging/checkpoint cadence (which do not change the result) retrain nothing."""
    spec = METHODS[method]
    t, m = CFG.train, CFG.model
    train = {}  # every key that changes the result (per-method dicts: this method's value)
    for f in fields(t):
        if f.name not in NON_TRAJECTORY_KEYS:
            v = getattr(t, f.name)
            train[f.name] = v[spec.hyper] if isinstance(v, dict) else v
    return {
        "model": str((m.latent_channels, m.downsample, getattr(m, arch), m.discriminator)),
        "loss": str(CFG.loss),
        "train": str(train),
        "rate": str(CFG.rate(rate)),
        "method": str(getattr(CFG, spec.section)) if spec.section else "",
    }


def train_params(wildcards):
    return train_params_for(wildcards.method, wildcards.arch, wildcards.rate)


def launch_prefix(resources):
    """`gaussquant` locally; `accelerate launch` with the GPU count when a profile gives GPUs.

    resources.gpus = GPUs per node, resources.nodes = nodes (the slurm profile sets both);
    multi-node runs start one launcher per node through srun, rank from SLURM_NODEID.
    """
    gpus, nodes = int(resources.get("gpus", 0)), int(resources.get("nodes", 1))
    if gpus <= 0:
        return "gaussquant"
    cfg = "workflow/accelerate/gpu1.yaml" if gpus * nodes == 1 else "workflow/accelerate/multigpu.yaml"
    cmd = f"accelerate launch --config_file {cfg} --num_processes {gpus * nodes} --num_machines {nodes}"
    if nodes > 1:  # one launcher per node; the inner shell expands the per-task rank
        head = "$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)"
        inner = f"{cmd} --machine_rank $SLURM_NODEID --main_process_ip {head} --main_process_port 29500"
        return f"srun --ntasks={nodes} --ntasks-per-node=1 bash -c '{inner} -m gaussquant.cli \"$@\"' _"
    return f"{cmd} -m gaussquant.cli"


def eval_checkpoint(wc):
    """The checkpoint a row measures: a conversion's output, or the trained model itself (a
    Gaussian VAE's continuous reconstruction reads its training checkpoint)."""
    row = ROWS[wc.row]
    if row.quantizer:
        return f"{RES}/convert/{row.name}-{wc.arch}-{wc.rate}/model.pt"
    return f"{RES}/train/{row.source}-{wc.arch}-{wc.rate}/model.pt"


# Ablations (workflow/rules/ablation.smk) on one (arch, rate) of the TDC VAE.
ABL = CFG.ablation
ABL_RES = f"{RES}/ablation"
ABL_BASE = f"{RES}/train/gq-{ABL.arch}-{ABL.rate}/model.pt"
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
