# Every training (common.smk `training`): a Table 1 cell train/<method>-<arch>-<rate>-s<seed>,
# the fine-tuning of your own VAE train/byo-tdc, the ablation's ablation/train/tol<alpha>.


# What every training writes (train_gaussian adds the posterior rates)
TRAIN_OUTPUT = {
    name: f"{RES}/{{ablation}}train/{{run}}/{file}"
    for name, file in (("model", "model.pt"), ("log_csv", "metrics.csv"), ("summary", "summary.json"))
}


rule train:
    input:
        data=rules.prepare_data.output.manifest,
        code=CODE["train"],
    output:
        **TRAIN_OUTPUT,
    wildcard_constraints:
        run=TRAIN_RUN,
    params:
        cli=PARAMS,
        cfg=lambda wc: training(wc).triggers,
        args=lambda wc, output: training(wc).args,
        out=lambda wc: f"{RES}/{wc.ablation}train/{wc.run}",
        data=lambda w, input: os.path.dirname(input.data),
        launch=lambda wc, resources: launch_prefix(resources),
    resources:
        **model_job("train"),
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/{{ablation}}train/{{run}}.log",
    benchmark:
        f"{RES}/benchmarks/{{ablation}}train/{{run}}.tsv"
    shell:
        gaussquant("train {params.cli} {params.args} --data {params.data} --out {params.out} --no-progress", launch=True)


# The same training for a Gaussian VAE, which also records its validation posterior rates.
use rule train as train_gaussian with:
    output:
        **TRAIN_OUTPUT,
        rates=f"{RES}/{{ablation}}train/{{run}}/rates.npz",
    wildcard_constraints:
        run=GAUSSIAN_RUN,
