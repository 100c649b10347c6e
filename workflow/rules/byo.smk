# Bring your own diffusers AutoencoderKL (params `byo`, README "Your own VAE"): bits-back rate
# analysis, GQ and TokenBridge on the pretrained VAE, TDC fine-tuning from it, GQ and TokenBridge
# after it; every row measured by the same `gaussquant evaluate`, one table. The target fails
# with a one-line message while byo.vae is empty. GQ uses K = tdc.codebook_size and the m that
# gives byo.rate bits per pixel. The fine-tuning, conversions and evaluations are the train,
# convert and evaluate rules' (train/byo-tdc, convert/byo-*, eval/byo/<row>: common.smk).


rule byo:
    input:
        byo_outputs,


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
        ENV
    threads: 1
    log:
        f"{RES}/logs/byo/rate.log",
    benchmark:
        f"{RES}/benchmarks/byo/rate.tsv"
    shell:
        gaussquant("rate --vae {params.vae} --data {params.data} --bpp {params.bpp} --out {params.prefix} --no-progress")


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
        ENV
    threads: 1
    log:
        f"{RES}/logs/byo/table.log",
    shell:
        gaussquant("table {params.cli} --kind byo --out {params.prefix} {input.metrics}")
