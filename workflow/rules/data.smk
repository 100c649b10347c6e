def prepared_data_dir():
    """Where prepare_data writes: results/<profile>/data, or <data.prepared_dir>/<profile> (e.g.
    on scratch; ~ and $VARS expanded here, where Snakemake runs)."""
    if not CFG.data.prepared_dir:
        return f"{RES}/data"
    path = os.path.expandvars(os.path.expanduser(CFG.data.prepared_dir))
    if "$" in path:
        raise ValueError(f"data.prepared_dir: {CFG.data.prepared_dir!r}: a variable in it is not set")
    return os.path.join(path, PROFILE)


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
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/prepare_data.log",
    benchmark:
        f"{RES}/benchmarks/prepare_data.tsv"
    shell:
        "OMP_NUM_THREADS={threads} gaussquant prepare-data {params.cli} --out {params.out} > {log} 2>&1"
