# What each run folder of the train, convert and evaluate rules holds (training, conversion,
# evaluation), and the settings of the ablations, the released official checkpoints and your
# own VAE that those runs read. Functions only (the rules are in the other files).
import json
import math
import re
import shlex
from dataclasses import dataclass, field

from gaussquant.methods import CONVERSIONS, METHODS, ROWS
from gaussquant.sections import RELEASED_WEIGHTS


# ----------------------------------------------------------------------------- ablations
# On one (arch, rate) of the TDC VAE (workflow/rules/ablation.smk), under results/<preset>/ablation.
ABL = CFG.ablation
ABL_RES = f"{RES}/ablation"
ABL_BASE = f"{RES}/train/{cell('tdc', ABL.arch, ABL.rate, SEED0)}/model.pt"
ABL_BASE_RATES = f"{os.path.dirname(ABL_BASE)}/rates.npz"
LOG2K = int(math.log2(CFG.tdc.codebook_size))
ABL_KS = [2 ** (LOG2K + o) for o in ABL.codebook_log2_offsets]
BASE_SEED = CFG.gq.seed


def tol_checkpoint(tol):
    """The tolerance of params.yaml is the main TDC VAE; other values are trained here."""
    if float(tol) == CFG.tdc.tolerance:
        return ABL_BASE
    return f"{ABL_RES}/train/tol{tol}/model.pt"


def tol_rates(tol):
    """The validation posterior rates that the training of ``tol_checkpoint(tol)`` recorded."""
    return f"{os.path.dirname(tol_checkpoint(tol))}/rates.npz"


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


# ----------------------------------------------------------------------------- official weights
# Released official checkpoints (workflow/rules/official.smk): configuration name -> .ckpt.
OFFICIAL = CFG.official.checkpoints


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


# ----------------------------------------------------------------------------- your own VAE
# Bring your own diffusers VAE (workflow/rules/byo.smk): its runs are train/byo-tdc,
# convert/byo-{pretrained-vae,pretrained-<q>,tdc-<q>} and eval/byo/<row>.
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


def byo_outputs(wildcards=None):
    """The byo table and the rate report; an error naming the setting while byo.vae is empty."""
    if not BYO.vae:
        raise ValueError(
            "byo: params.yaml byo.vae is empty; set it to an AutoencoderKL folder or hub id "
            "(README: Your own VAE)"
        )
    table = [f"{RES}/tables/byo.{ext}" for ext in ("csv", "md", "tex")]
    return table + [f"{BYO_RES}/rate.{ext}" for ext in ("json", "md", "png")]


def byo_train_params():
    """What changes the fine-tuning (rerun triggers): the tdc run's determinants that do not
    depend on the VAE (its shapes are derived from the VAE when the stage runs)."""
    run = run_determinants(CFG, "tdc", "diffusers", str(CFG.rates[0]), max(CFG.train.processes, 1))
    keep = ("train", "global_batch", "loss", "section")
    triggers = {k: json.dumps(run[k], sort_keys=True) for k in keep}
    return triggers | {"disc": str(CFG.model.discriminator), "byo": json.dumps(BYO_TRIGGERS)}


# ----------------------------------------------------------------------------- run folders
# The one train, convert and evaluate rule each write results/<preset>/[ablation/]<stage>/<run>;
# the functions below say what the run is: the variant's arguments (`args`, derived from the
# output path, so no rerun trigger of its own), its rerun triggers, its input checkpoint.
def cell_regex(names):
    return f"(?:{'|'.join(map(re.escape, names))})-(?:unet|vit)-[0-9]+-s[0-9]+"


def parse_cell(name):
    """(name, arch, rate, seed) of a cell's directory name."""
    return re.fullmatch(r"(.+)-(unet|vit)-([0-9]+)-s([0-9]+)", name).groups()


@dataclass(frozen=True)
class Run:
    args: str
    triggers: object = ""
    source: list = field(default_factory=list)  # the checkpoint it reads, if any
    to: str = ""  # a conversion's target (gaussquant convert --to)
    continuous: bool = False  # an evaluation of the posterior mean (gaussquant evaluate --continuous)


# Gaussian VAEs also write rates.npz (their validation posterior rates: KL figure, ablations)
GAUSSIAN_RUN = f"{cell_regex([m for m in METHODS if METHODS[m].gaussian])}|byo-tdc|tol[0-9.]+"
TRAIN_RUN = cell_regex([m for m in METHODS if not METHODS[m].gaussian])
CONVERT_RUN = f"{cell_regex(CONVERSIONS)}|byo-pretrained-(?:vae|gq|tokenbridge)|byo-tdc-(?:gq|tokenbridge)|K[0-9]+-s[0-9]+|tol[0-9.]+"
EVAL_RUN = f"{cell_regex(ROWS)}|byo/(?:{'|'.join(BYO_ROWS)})|official-(?:{'|'.join(map(re.escape, OFFICIAL)) or '(?!)'})|K[0-9]+-s[0-9]+|tol[0-9.]+"


def _variant(wc):
    """A run's name, checked against its folder: the ablation's runs only under ablation/."""
    if bool(re.fullmatch(r"K[0-9]+-s[0-9]+|tol[0-9.]+", wc.run)) != bool(wc.ablation):
        raise ValueError(f"{wc.ablation}{wc.run}: not a run of this workflow")
    return wc.run


def training(wc):
    """A training: a Table 1 cell, the byo fine-tuning or a tolerance of the ablation."""
    run = _variant(wc)
    if run == "byo-tdc":
        return Run(f"--method tdc --init-from-diffusers {BYO_VAE} {BYO_SHAPE}", byo_train_params())
    if run.startswith("tol"):
        args = f"--set tdc.tolerance={run[3:]} --set train.seed={SEED0} --method tdc --arch {ABL.arch} --rate {ABL.rate}"
        return Run(args, train_params_for("tdc", ABL.arch, ABL.rate, SEED0))
    method, arch, rate, seed = parse_cell(run)
    args = f"--set train.seed={seed} --method {method} --arch {arch} --rate {rate}"
    return Run(args, train_params_for(method, arch, rate, seed))


def conversion(wc):
    """A training-free conversion: of a Table 1 cell, of the ablation's TDC VAE (codebook size
    and seed, tolerance), of your own VAE (pretrained, or after TDC fine-tuning)."""
    run, gq = _variant(wc), str(CFG.gq)
    if run.startswith("K"):
        k, seed = re.fullmatch(r"K([0-9]+)-s([0-9]+)", run).groups()
        return Run(f"--set gq.seed={seed} --codebook-size {k}", gq, [ABL_BASE], "gq")
    if run.startswith("tol"):
        return Run("", gq, [tol_checkpoint(run[3:])], "gq")
    if run.startswith("byo-pretrained-"):  # --to vae: the pretrained VAE itself, for its continuous row
        return Run(f"--from-diffusers {BYO_VAE} {BYO_SHAPE}", BYO_TRIGGERS, [], run.rsplit("-", 1)[1])
    if run.startswith("byo-tdc-"):
        return Run("", gq, [f"{RES}/train/byo-tdc/model.pt"], run.rsplit("-", 1)[1])
    conv, arch, rate, seed = parse_cell(run)
    source, to = CONVERSIONS[conv]
    return Run("", gq, [f"{RES}/train/{cell(source, arch, rate, seed)}/model.pt"], to)


def evaluation(wc):
    """An evaluated row: of Table 1 (a conversion's output, or the trained model itself: a
    Gaussian VAE's continuous reconstruction reads its training checkpoint), of your own VAE,
    of a released official checkpoint, of the ablations."""
    run = _variant(wc)
    if wc.ablation:
        return Run(f"--name {run}", source=[f"{ABL_RES}/convert/{run}/model.pt"])
    if run.startswith("byo/"):
        ckpt, continuous, name = BYO_ROWS[run[4:]]
        return Run(f"--name {shlex.quote(name)}", source=[ckpt], continuous=continuous)
    if run.startswith("official-"):
        return Run(f"--name {run[9:]}", source=[f"{RES}/convert/{run}/model.pt"])
    name, arch, rate, seed = parse_cell(run)
    row = ROWS[name]
    stage, ckpt = ("convert", run) if row.quantizer else ("train", cell(row.source, arch, rate, seed))
    return Run(f"--name {name}", source=[f"{RES}/{stage}/{ckpt}/model.pt"], continuous=row.continuous)
