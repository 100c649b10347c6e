rule train:
    input:
        data=rules.prepare_data.output.manifest,
        code=CODE["train"],
    output:
        model=f"{RES}/train/{{method}}-{{arch}}-{{rate}}-s{{tseed}}/model.pt",
        log_csv=f"{RES}/train/{{method}}-{{arch}}-{{rate}}-s{{tseed}}/metrics.csv",
    params:
        cli=PARAMS,
        cfg=train_params,
        out=lambda wc: f"{RES}/train/{cell(wc.method, wc.arch, wc.rate, wc.tseed)}",
        data=lambda w, input: os.path.dirname(input.data),
        launch=lambda wc, resources: launch_prefix(resources),
    resources:
        **model_job("train"),
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/train/{{method}}-{{arch}}-{{rate}}-s{{tseed}}.log",
    benchmark:
        f"{RES}/benchmarks/train/{{method}}-{{arch}}-{{rate}}-s{{tseed}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} train {params.cli} --set train.seed={wildcards.tseed} --method {wildcards.method} --arch {wildcards.arch}"
        " --rate {wildcards.rate} --data {params.data} --out {params.out} --no-progress > {log} 2>&1"
