rule prepare_data:
    input:
        code=CODE_DATA,
    output:
        manifest=f"{RES}/data/manifest.json",
    params:
        data=str(CFG.data),
        out=f"{RES}/data",
    threads: 1
    log:
        f"{RES}/logs/prepare_data.log",
    benchmark:
        f"{RES}/benchmarks/prepare_data.tsv"
    shell:
        "OMP_NUM_THREADS={threads} gaussquant prepare-data {PARAMS} --out {params.out} > {log} 2>&1"
