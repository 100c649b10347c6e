# One metrics JSON per evaluated row (method or conversion), arch and rate (SPEC 6).


def eval_checkpoint(wc):
    row = wc.row
    if row in CONVERSIONS:
        return f"{RES}/convert/{row}-{wc.arch}-{wc.rate}/model.pt"
    if row.endswith("-continuous"):  # the Gaussian VAE's unquantized reconstruction
        return f"{RES}/train/{row.removesuffix('-continuous')}-{wc.arch}-{wc.rate}/model.pt"
    return f"{RES}/train/{row}-{wc.arch}-{wc.rate}/model.pt"


rule evaluate:
    input:
        model=eval_checkpoint,
        data=rules.prepare_data.output.manifest,
        code=CODE_EVAL,
    output:
        metrics=f"{RES}/eval/{{row}}-{{arch}}-{{rate}}/metrics.json",
        grid=f"{RES}/eval/{{row}}-{{arch}}-{{rate}}/grid.png",
    params:
        eval=str(CFG.eval),
        data=f"{RES}/data",
        continuous=lambda wc: "--continuous" if wc.row.endswith("-continuous") else "",
    log:
        f"{RES}/logs/eval/{{row}}-{{arch}}-{{rate}}.log",
    benchmark:
        f"{RES}/benchmarks/eval/{{row}}-{{arch}}-{{rate}}.tsv"
    shell:
        "gaussquant evaluate {PARAMS} --ckpt {input.model} --data {params.data} --name {wildcards.row}"
        " {params.continuous} --out {output.metrics} --grid {output.grid} --no-progress > {log} 2>&1"
