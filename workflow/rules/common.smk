# Target lists and helpers. Every output path is a pure function of (profile, method, arch, rate).
import math
import os
import sys
from dataclasses import fields

from gaussquant.config import NON_TRAJECTORY_KEYS, config_from_dict, resolve_params

# Rules call `gaussquant`/`accelerate` from the environment that runs Snakemake, activated or not.
os.environ["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"

CFG = config_from_dict(resolve_params(config))  # strict check of the whole file before any rule
PROFILE = CFG.profile
RES = f"results/{PROFILE}"
PARAMS = f"--params params.yaml --profile {PROFILE}"  # --config profile=... reaches the stages too
SRC = "src/gaussquant"

# Source files each stage runs (declared as inputs, so a code change reruns what it affects).
CODE_COMMON = [f"{SRC}/config.py", f"{SRC}/io.py", f"{SRC}/errors.py", f"{SRC}/cli.py"]
CODE_DATA = CODE_COMMON + [f"{SRC}/data.py", f"{SRC}/stages/prepare_data.py"]
CODE_MODEL = CODE_COMMON + [f"{SRC}/models/{m}.py" for m in ("__init__", "unet", "vit", "autoencoder")] + [
    f"{SRC}/quantizers/{q}.py" for q in ("base", "tdc", "vq", "fsq", "lfq", "bsq")
]
CODE_TRAIN = CODE_MODEL + [f"{SRC}/train.py", f"{SRC}/losses.py", f"{SRC}/models/discriminator.py", f"{SRC}/stages/train.py"]
CODE_CONVERT = CODE_MODEL + [f"{SRC}/quantizers/{q}.py" for q in ("gaussian_quant", "tokenbridge", "convert")] + [
    f"{SRC}/stages/convert.py"
]
CODE_EVAL = CODE_CONVERT + [f"{SRC}/evaluate.py", f"{SRC}/stages/evaluate.py"] + [
    f"{SRC}/metrics/{m}.py" for m in ("image", "lpips", "fid", "codebook")
]
CODE_TABLE = CODE_COMMON + [f"{SRC}/tables.py", f"{SRC}/stages/table.py"]
CODE_FIGURE = CODE_COMMON + [f"{SRC}/figures.py", f"{SRC}/stages/figure.py"]

# Evaluated rows of Table 1: trained tokenizers, GQ (converted TDC VAE) and the TDC VAE's
# continuous reconstruction as a reference row.
TABLE1_ROWS = [m for m in CFG.experiment.methods if m != "gq"] + (
    ["gq", "gq-continuous"] if "gq" in CFG.experiment.methods else []
)
TOKENBRIDGE_ROWS = ["tb-vanilla", "tb-tdc", "gq"]

wildcard_constraints:
    method="gq|vanilla|tbtdc|vq|fsq|lfq|bsq",
    arch="unet|vit",
    rate="[0-9.]+",
    row="[a-z0-9-]+",


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
    hp = "gq" if method == "tbtdc" else method  # the TokenBridge TDC VAE trains like the GQ one
    t, m = CFG.train, CFG.model
    train = {}  # every key that changes the result (per-method dicts: this method's value)
    for f in fields(t):
        if f.name not in NON_TRAJECTORY_KEYS:
            v = getattr(t, f.name)
            train[f.name] = v[hp] if isinstance(v, dict) else v
    return {
        "model": str((m.latent_channels, m.downsample, getattr(m, arch), m.discriminator)),
        "loss": str(CFG.loss),
        "train": str(train),
        "rate": str(CFG.rate(rate)),
        "method": str(getattr(CFG, method, "")),
        "tdc": str(CFG.tdc) if method in ("gq", "tbtdc") else "",
        "vanilla": str(CFG.vanilla) if method == "vanilla" else "",
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


CONVERSIONS = {  # converted name: (trained method, quantizer)
    "gq": ("gq", "gq"),
    "gq-vanilla": ("vanilla", "gq"),
    "tb-vanilla": ("vanilla", "tokenbridge"),
    "tb-tdc": ("tbtdc", "tokenbridge"),
}


def eval_checkpoint(wc):
    row = wc.row
    if row in CONVERSIONS:
        return f"{RES}/convert/{row}-{wc.arch}-{wc.rate}/model.pt"
    if row.endswith("-continuous"):  # the Gaussian VAE's unquantized reconstruction
        return f"{RES}/train/{row.removesuffix('-continuous')}-{wc.arch}-{wc.rate}/model.pt"
    return f"{RES}/train/{row}-{wc.arch}-{wc.rate}/model.pt"


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
