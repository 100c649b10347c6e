# Every training-free conversion (docs/method.md §2, §4; common.smk `conversion`): a trained
# Gaussian VAE -> GQ or TokenBridge VQ-VAE, for Table 1, your own VAE and the ablations.
# The released official checkpoints are imported by import_official (official.smk): another
# command, which maps the official weights' names and converts in the same step.


rule convert:
    input:
        model=lambda wc: conversion(wc).source,
        code=CODE["convert"],
    output:
        model=f"{RES}/{{ablation}}convert/{{run}}/model.pt",
    wildcard_constraints:
        run=CONVERT_RUN,
    params:
        cli=PARAMS,
        to=lambda wc: conversion(wc).to,
        gq=lambda wc: conversion(wc).triggers,
        args=lambda wc, input: " ".join([f"--ckpt {m}" for m in input.model] + [conversion(wc).args]),
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/{{ablation}}convert/{{run}}.log",
    benchmark:
        f"{RES}/benchmarks/{{ablation}}convert/{{run}}.tsv"
    shell:
        gaussquant("convert {params.cli} {params.args} --to {params.to} --out {output.model}")
