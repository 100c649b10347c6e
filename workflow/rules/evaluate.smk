# One metrics JSON per evaluated row (method or conversion), arch and rate (docs/method.md §6).


rule evaluate:
    input:
        model=eval_checkpoint,
        data=rules.prepare_data.output.manifest,
        fid_ref=FID_REF,
        code=CODE["evaluate"],
    output:
        metrics=f"{RES}/eval/{{row}}-{{arch}}-{{rate}}-s{{tseed}}/metrics.json",
        grid=f"{RES}/eval/{{row}}-{{arch}}-{{rate}}-s{{tseed}}/grid.png",
    params:
        launch=lambda wc, resources: launch_prefix(resources),
        cli=PARAMS,
        eval=str(CFG.eval),
        data=lambda w, input: os.path.dirname(input.data),
        fid=fid_ref_arg,
        continuous=lambda wc: "--continuous" if wc.row.endswith("-continuous") else "",
    resources:
        **model_job("evaluate"),
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/eval/{{row}}-{{arch}}-{{rate}}-s{{tseed}}.log",
    benchmark:
        f"{RES}/benchmarks/eval/{{row}}-{{arch}}-{{rate}}-s{{tseed}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} evaluate {params.cli} --ckpt {input.model} --data {params.data} --name {wildcards.row}"
        " {params.continuous} {params.fid} --out {output.metrics} --grid {output.grid} --no-progress > {log} 2>&1"


rule fid_reference:
    input:
        data=rules.prepare_data.output.manifest,
        code=CODE["fid_reference"],
    output:
        f"{RES}/eval/fid_reference.npz",
    params:
        cli=PARAMS,
        data=lambda w, input: os.path.dirname(input.data),
        eval=str(CFG.eval),
    resources:
        **model_job("encode"),
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/eval/fid_reference.log",
    benchmark:
        f"{RES}/benchmarks/eval/fid_reference.tsv"
    shell:
        "OMP_NUM_THREADS={threads} gaussquant fid-reference {params.cli} --data {params.data} --out {output} --no-progress > {log} 2>&1"
