# gaussquant pipeline: the only Snakefile. Targets: reproduce_table1 (default), reproduce_figure1,
# reproduce_tokenbridge, evaluate_official (released official checkpoints),
# byo (your own diffusers VAE, params `byo`), figures, ablations, all.
# `snakemake --cores all <target>`; the preset comes from params.yaml (`preset:`).
# HTML report of what has run: `make report` (snakemake --report).
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "params.yaml"


report: "workflow/report/workflow.rst"


envvars:
    "PATH",  # common.smk puts the running interpreter's bin folder first


validate(config, "workflow/schemas/params.schema.json")


include: "workflow/rules/common.smk"
include: "workflow/rules/runs.smk"  # what each train/convert/evaluate run folder holds
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/convert.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/ablation.smk"
include: "workflow/rules/byo.smk"  # your own diffusers VAE: target byo, off by default
include: "workflow/rules/official.smk"
include: "workflow/rules/curves.smk"  # training curves for `dvc plots show`


rule reproduce_table1:
    input:
        table1_outputs(),
    default_target: True


rule reproduce_figure1:  # the rate-distortion curves over experiment.figure1_rates (docs/method.md §7)
    input:
        figure1_outputs(),


rule reproduce_tokenbridge:
    input:
        tokenbridge_outputs(),


rule figures:
    input:
        figure_outputs(),


rule ablations:
    input:
        ablation_outputs(),


rule all:
    input:
        rules.theory.output,
        ablation_outputs(),
        table1_outputs(),
        figure1_outputs(),
        tokenbridge_outputs(),
        figure_outputs(),
