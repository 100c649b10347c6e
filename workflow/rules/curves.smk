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
    run:
        import shutil
        from pathlib import Path

        Path(output[0]).mkdir(parents=True, exist_ok=True)
        for log in input:
            shutil.copyfile(log, Path(output[0]) / f"{Path(log).parent.name}.csv")
