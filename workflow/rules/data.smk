rule prepare_data:
    input:
        code=CODE_DATA,
    output:
        manifest=f"{RES}/data/manifest.json",
    params:
        data=str(CFG.data),
        out=f"{RES}/data",
    log:
        f"{RES}/logs/prepare_data.log",
    benchmark:
        f"{RES}/benchmarks/prepare_data.tsv"
    shell:
        "gaussquant prepare-data {PARAMS} --out {params.out} > {log} 2>&1"
