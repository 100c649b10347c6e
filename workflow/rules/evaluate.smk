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
        fid_ref=f"{RES}/eval/fid_reference.npz",
        code=CODE_EVAL,
    output:
        metrics=f"{RES}/eval/{{row}}-{{arch}}-{{rate}}/metrics.json",
        grid=f"{RES}/eval/{{row}}-{{arch}}-{{rate}}/grid.png",
    params:
        eval=str(CFG.eval),
        data=f"{RES}/data",
        continuous=lambda wc: "--continuous" if wc.row.endswith("-continuous") else "",
    threads: 1
    log:
        f"{RES}/logs/eval/{{row}}-{{arch}}-{{rate}}.log",
    benchmark:
        f"{RES}/benchmarks/eval/{{row}}-{{arch}}-{{rate}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} gaussquant evaluate {PARAMS} --ckpt {input.model} --data {params.data} --name {wildcards.row}"
        " {params.continuous} --fid-ref {input.fid_ref} --out {output.metrics} --grid {output.grid} --no-progress > {log} 2>&1"


rule fid_reference:
    input:
        data=rules.prepare_data.output.manifest,
        code=CODE_EVAL,
    output:
        f"{RES}/eval/fid_reference.npz",
    params:
        data=f"{RES}/data",
        eval=str(CFG.eval),
    threads: 1
    log:
        f"{RES}/logs/eval/fid_reference.log",
    benchmark:
        f"{RES}/benchmarks/eval/fid_reference.tsv"
    shell:
        "OMP_NUM_THREADS={threads} gaussquant fid-reference {PARAMS} --data {params.data} --out {output} --no-progress > {log} 2>&1"
