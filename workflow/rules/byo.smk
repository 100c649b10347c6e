# Bring your own diffusers AutoencoderKL (params `byo`, README "Your own VAE"): bits-back rate
# analysis, GQ and TokenBridge on the pretrained VAE, TDC fine-tuning from it, GQ and TokenBridge
# after it; every row measured by the same `gaussquant evaluate`, one table. Off while byo.vae
# is empty. GQ uses K = tdc.codebook_size and the m that gives byo.rate bits per pixel.
if BYO.vae:

    rule byo:
        input:
            byo_outputs(),

else:

    rule byo:
        conda:
            "../../environment.yml"
        log:
            f"{RES}/logs/byo/off.log",
        shell:
            "echo 'byo: params.yaml byo.vae is empty; set it to an AutoencoderKL folder or hub id"
            " (README: Your own VAE)' | tee {log} >&2; exit 1"


rule byo_rate:
    input:
        data=rules.prepare_data.output.manifest,
        code=CODE["rate"],
    output:
        json=f"{BYO_RES}/rate.json",
        md=f"{BYO_RES}/rate.md",
        png=f"{BYO_RES}/rate.png",
    params:
        byo=BYO_TRIGGERS,
        vae=BYO_VAE,
        bpp=BYO.rate,
        data=lambda w, input: os.path.dirname(input.data),
        prefix=lambda w, output: os.path.splitext(output.json)[0],
    resources:
        **model_job("encode"),
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/byo/rate.log",
    benchmark:
        f"{RES}/benchmarks/byo/rate.tsv"
    shell:
        "OMP_NUM_THREADS={threads} gaussquant rate --vae {params.vae} --data {params.data} --bpp {params.bpp}"
        " --out {params.prefix} --no-progress > {log} 2>&1"


rule byo_convert_pretrained:  # --to vae: the pretrained VAE itself, for its continuous row
    input:
        code=CODE["convert"],
    output:
        model=f"{RES}/convert/byo-pretrained-{{byoto}}/model.pt",
    wildcard_constraints:
        byoto="vae|gq|tokenbridge",
    params:
        cli=PARAMS,
        byo=BYO_TRIGGERS,
        vae=BYO_VAE,
        shape=BYO_SHAPE,
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/byo/convert-pretrained-{{byoto}}.log",
    benchmark:
        f"{RES}/benchmarks/byo/convert-pretrained-{{byoto}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} gaussquant convert {params.cli} --from-diffusers {params.vae} --to {wildcards.byoto}"
        " {params.shape} --out {output.model} > {log} 2>&1"


rule byo_train:
    input:
        data=rules.prepare_data.output.manifest,
        code=CODE["train"],
    output:
        model=f"{RES}/train/byo-tdc/model.pt",
        log_csv=f"{RES}/train/byo-tdc/metrics.csv",
    params:
        cli=PARAMS,
        byo=BYO_TRIGGERS,
        cfg=byo_train_params(),
        vae=BYO_VAE,
        shape=BYO_SHAPE,
        out=lambda w, output: os.path.dirname(output.model),
        data=lambda w, input: os.path.dirname(input.data),
        launch=lambda wc, resources: launch_prefix(resources),
    resources:
        **model_job("train"),
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/byo/train.log",
    benchmark:
        f"{RES}/benchmarks/byo/train.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} train {params.cli} --method gq --init-from-diffusers {params.vae}"
        " {params.shape} --data {params.data} --out {params.out} --no-progress > {log} 2>&1"


rule byo_convert_tdc:
    input:
        model=rules.byo_train.output.model,
        code=CODE["convert"],
    output:
        model=f"{RES}/convert/byo-tdc-{{byoq}}/model.pt",
    wildcard_constraints:
        byoq="gq|tokenbridge",
    params:
        cli=PARAMS,
        gq=str(CFG.gq),
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/byo/convert-tdc-{{byoq}}.log",
    benchmark:
        f"{RES}/benchmarks/byo/convert-tdc-{{byoq}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} gaussquant convert {params.cli} --ckpt {input.model} --to {wildcards.byoq}"
        " --out {output.model} > {log} 2>&1"


rule byo_evaluate:
    input:
        model=lambda wc: BYO_ROWS[wc.byorow][0],
        data=rules.prepare_data.output.manifest,
        fid_ref=FID_REF,
        code=CODE["evaluate"],
    output:
        metrics=f"{BYO_RES}/{{byorow}}/metrics.json",
        grid=f"{BYO_RES}/{{byorow}}/grid.png",
    wildcard_constraints:
        byorow="|".join(BYO_ROWS),
    params:
        launch=lambda wc, resources: launch_prefix(resources),
        cli=PARAMS,
        eval=str(CFG.eval),
        data=lambda w, input: os.path.dirname(input.data),
        fid=fid_ref_arg,
        name=lambda wc: shlex.quote(BYO_ROWS[wc.byorow][2]),
        continuous=lambda wc: "--continuous" if BYO_ROWS[wc.byorow][1] else "",
    resources:
        **model_job("evaluate"),
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/byo/eval-{{byorow}}.log",
    benchmark:
        f"{RES}/benchmarks/byo/eval-{{byorow}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} evaluate {params.cli} --ckpt {input.model} --data {params.data} --name {params.name}"
        " {params.continuous} {params.fid} --out {output.metrics} --grid {output.grid} --no-progress > {log} 2>&1"


rule byo_table:
    input:
        metrics=[f"{BYO_RES}/{row}/metrics.json" for row in BYO_ROWS],
        code=CODE["table"],
    output:
        csv=f"{RES}/tables/byo.csv",
        md=f"{RES}/tables/byo.md",
        tex=f"{RES}/tables/byo.tex",
        json=f"{RES}/tables/byo.json",
    params:
        cli=PARAMS,
        table=str(CFG.table),
        prefix=lambda w, output: os.path.splitext(output.csv)[0],
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/byo/table.log",
    shell:
        "OMP_NUM_THREADS={threads} gaussquant table {params.cli} --kind byo --out {params.prefix} {input.metrics} > {log} 2>&1"
