rule prepare_data:
    input:
        code=CODE["prepare_data"],
    output:
        manifest=f"{prepared_data_dir()}/manifest.json",
    params:
        cli=PARAMS,
        data=str(CFG.data),
        out=lambda w, output: os.path.dirname(output.manifest),
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/prepare_data.log",
    benchmark:
        f"{RES}/benchmarks/prepare_data.tsv"
    shell:
        gaussquant("prepare-data {params.cli} --out {params.out}")
