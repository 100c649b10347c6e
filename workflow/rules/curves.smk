# Training curves for `dvc plots show` (dvc.yaml `plots`): one CSV per Table 1 training run,
# copied from its metrics.csv into a folder that holds nothing else (a run's folder also holds
# model.pt, run.json and saved states with stale copies of the log, which are no plots).


rule curves:
    input:
        [
            f"{RES}/train/{cell(m, a, r, s)}/metrics.csv"
            for m in CFG.experiment.methods
            for a, r, s in grid()
        ],
    output:
        directory(f"{RES}/curves"),
    conda:
        ENV
    log:
        f"{RES}/logs/curves.log",
    shell:
        "mkdir -p {output} && for log in {input}; do"
        " cp $log {output}/$(basename $(dirname $log)).csv; done > {log} 2>&1"
