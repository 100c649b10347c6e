# Released official checkpoints (params `official.checkpoints`: configuration name -> .ckpt,
# downloaded from Hugging Face xutongda/GQModel) through our protocol: import (a Gaussian VAE
# also converted to GQ), evaluate on the validation images (the evaluate rule:
# eval/official-<name>), tabulate next to docs/method.md §7.
# Target: evaluate_official (meant for the paper preset; README "Use the released weights").
# Names and helpers: OFFICIAL, official_source, official_metrics in common.smk.


rule import_official:
    input:
        ckpt=official_source,
        code=CODE["official"],
    output:
        imported=f"{RES}/convert/official-{{oname}}/imported.pt",
        model=f"{RES}/convert/official-{{oname}}/model.pt",
    wildcard_constraints:
        oname="|".join(map(re.escape, OFFICIAL)) or "(?!)",  # only the configured names
    params:
        cli=PARAMS,
        rates=str(CFG.rates),
        tdc=str(CFG.tdc),
        gq=str(CFG.gq),
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/official/import-{{oname}}.log",
    benchmark:
        f"{RES}/benchmarks/official/import-{{oname}}.tsv"
    shell:
        gaussquant(
            "import-official {params.cli} {input.ckpt} --config {wildcards.oname} --out {output.imported} --eval-out {output.model}"
        )


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
        ENV
    threads: 1
    log:
        f"{RES}/logs/official/table.log",
    shell:
        gaussquant("official-table {params.cli} --out {params.prefix} {input.metrics}")


rule evaluate_official:
    input:
        rules.official_table.output,
