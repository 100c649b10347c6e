# Training-free conversions (docs/method.md §2, §4): a trained Gaussian VAE -> GQ or TokenBridge VQ-VAE.


rule convert:
    input:
        model=lambda wc: f"{RES}/train/{cell(CONVERSIONS[wc.conv][0], wc.arch, wc.rate, wc.tseed)}/model.pt",
        code=CODE["convert"],
    output:
        model=f"{RES}/convert/{{conv}}-{{arch}}-{{rate}}-s{{tseed}}/model.pt",
    wildcard_constraints:
        conv="|".join(CONVERSIONS),
    params:
        cli=PARAMS,
        to=lambda wc: CONVERSIONS[wc.conv][1],
        gq=str(CFG.gq),
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/convert/{{conv}}-{{arch}}-{{rate}}-s{{tseed}}.log",
    benchmark:
        f"{RES}/benchmarks/convert/{{conv}}-{{arch}}-{{rate}}-s{{tseed}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} gaussquant convert {params.cli} --ckpt {input.model} --to {params.to} --out {output.model} > {log} 2>&1"
