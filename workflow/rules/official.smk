# Released official checkpoints (params `official.checkpoints`: configuration name -> .ckpt,
# downloaded from Hugging Face xutongda/GQModel) through our protocol: import (a Gaussian VAE
# also converted to GQ), evaluate on the validation images, tabulate next to docs/method.md §7.
# Target: evaluate_official (meant for the paper profile; README "Use the released weights").
# Names and helpers: OFFICIAL, official_source, official_metrics in common.smk.


rule import_official:
    input:
        ckpt=official_source,
        code=CODE["official"],
    output:
        imported=f"{RES}/convert/official-{{oname}}/imported.pt",
        model=f"{RES}/convert/official-{{oname}}/model.pt",
    wildcard_constraints:
        oname=OFFICIAL_NAME,
    params:
        cli=PARAMS,
        rates=str(CFG.rates),
        tdc=str(CFG.tdc),
        gq=str(CFG.gq),
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/official/import-{{oname}}.log",
    benchmark:
        f"{RES}/benchmarks/official/import-{{oname}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} gaussquant import-official {params.cli} {input.ckpt} --config {wildcards.oname}"
        " --out {output.imported} --eval-out {output.model} > {log} 2>&1"


rule evaluate_official_model:
    input:
        model=rules.import_official.output.model,
        data=rules.prepare_data.output.manifest,
        fid_ref=FID_REF,
        code=CODE["evaluate"],
    output:
        metrics=f"{RES}/eval/official-{{oname}}/metrics.json",
        grid=f"{RES}/eval/official-{{oname}}/grid.png",
    wildcard_constraints:
        oname=OFFICIAL_NAME,
    params:
        launch=lambda wc, resources: launch_prefix(resources),
        cli=PARAMS,
        eval=str(CFG.eval),
        data=lambda w, input: os.path.dirname(input.data),
        fid=fid_ref_arg,
    resources:
        **model_job("evaluate"),
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/official/eval-{{oname}}.log",
    benchmark:
        f"{RES}/benchmarks/official/eval-{{oname}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} evaluate {params.cli} --ckpt {input.model} --data {params.data}"
        " --name {wildcards.oname} {params.fid} --out {output.metrics} --grid {output.grid} --no-progress > {log} 2>&1"


rule official_table:
    input:
        metrics=official_metrics,
        code=CODE["official"],
    output:
        csv=f"{RES}/tables/official.csv",
        md=f"{RES}/tables/official.md",
    params:
        cli=PARAMS,
        table=str(CFG.table),
        prefix=lambda w, output: os.path.splitext(output.csv)[0],
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/official/table.log",
    shell:
        "OMP_NUM_THREADS={threads} gaussquant official-table {params.cli} --out {params.prefix} {input.metrics} > {log} 2>&1"


rule evaluate_official:
    input:
        rules.official_table.output,
