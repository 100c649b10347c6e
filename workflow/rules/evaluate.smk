# One metrics JSON per evaluated row (docs/method.md §6; common.smk `evaluation`): Table 1's
# eval/<row>-<arch>-<rate>-s<seed>, your own VAE's eval/byo/<row>, the released official
# checkpoints' eval/official-<name>, the ablations' ablation/eval/<variant>.


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
        ENV
    threads: 1
    log:
        f"{RES}/logs/eval/fid_reference.log",
    benchmark:
        f"{RES}/benchmarks/eval/fid_reference.tsv"
    shell:
        gaussquant("fid-reference {params.cli} --data {params.data} --out {output} --no-progress")


rule evaluate:
    input:
        model=lambda wc: evaluation(wc).source,
        data=rules.prepare_data.output.manifest,
        fid_ref=FID_REF,
        code=CODE["evaluate"],
    output:
        metrics=f"{RES}/{{ablation}}eval/{{run}}/metrics.json",
        grid=f"{RES}/{{ablation}}eval/{{run}}/grid.png",
    wildcard_constraints:
        run=EVAL_RUN,
    params:
        launch=lambda wc, resources: launch_prefix(resources),
        cli=PARAMS,
        eval=str(CFG.eval),
        data=lambda w, input: os.path.dirname(input.data),
        fid=fid_ref_arg,
        continuous=lambda wc: "--continuous" if evaluation(wc).continuous else "",
        name=lambda wc, output: evaluation(wc).args,
    resources:
        **model_job("evaluate"),
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/{{ablation}}eval/{{run}}.log",
    benchmark:
        f"{RES}/benchmarks/{{ablation}}eval/{{run}}.tsv"
    shell:
        gaussquant(
            "evaluate {params.cli} --ckpt {input.model} --data {params.data} {params.name} {params.continuous}"
            " {params.fid} --out {output.metrics} --grid {output.grid} --no-progress",
            launch=True,
        )
