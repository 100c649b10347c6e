# Ablations (docs/method.md §3, §7) on one (arch, rate) of the TDC VAE: codebook size, TDC tolerance,
# codebook seed, KL ranges vanilla vs TDC. Outputs under results/<preset>/ablation/; its
# trainings, conversions and evaluations are the train, convert and evaluate rules'
# (ablation/train/tol<alpha>, ablation/{convert,eval}/{K<k>-s<seed>,tol<alpha>}).


rule ablation_codebook:
    input:
        metrics=[f"{ABL_RES}/eval/K{k}-s{BASE_SEED}/metrics.json" for k in ABL_KS],
        vae=ABL_BASE,
        data=rules.prepare_data.output.manifest,
        code=CODE["ablation"],
    output:
        _abl_tables("codebook"),
    params:
        prefix=lambda w, output: os.path.splitext(output[0])[0],
        cli=PARAMS,
        data=lambda w, input: os.path.dirname(input.data),
    resources:
        **model_job("encode"),
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/ablation/codebook.log",
    shell:
        gaussquant(
            "ablation {params.cli} --kind codebook --data {params.data} --vae {input.vae} --out {params.prefix} {input.metrics}"
        )


rule ablation_seed:
    input:
        metrics=[f"{ABL_RES}/eval/K{CFG.tdc.codebook_size}-s{s}/metrics.json" for s in ABL.seeds],
        code=CODE["ablation"],
    output:
        _abl_tables("seed"),
    params:
        prefix=lambda w, output: os.path.splitext(output[0])[0],
        cli=PARAMS,
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/ablation/seed.log",
    shell:
        gaussquant("ablation {params.cli} --kind seed --out {params.prefix} {input.metrics}")


rule ablation_tolerance:
    input:
        metrics=[f"{ABL_RES}/eval/tol{t}/metrics.json" for t in ABL.tolerances],
        vaes=[tol_checkpoint(t) for t in ABL.tolerances],
        data=rules.prepare_data.output.manifest,
        code=CODE["ablation"],
    output:
        _abl_tables("tolerance"),
    params:
        prefix=lambda w, output: os.path.splitext(output[0])[0],
        cli=PARAMS,
        data=lambda w, input: os.path.dirname(input.data),
        tols=" ".join(str(t) for t in ABL.tolerances),
    resources:
        **model_job("encode"),
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/ablation/tolerance.log",
    shell:
        gaussquant(
            "ablation {params.cli} --kind tolerance --data {params.data} --vae {input.vaes}"
            " --tolerances {params.tols} --out {params.prefix} {input.metrics}"
        )


rule ablation_kl:
    input:
        vaes=[f"{RES}/train/{cell(m, ABL.arch, ABL.rate, SEED0)}/model.pt" for m in KL_PAIR],
        data=rules.prepare_data.output.manifest,
        code=CODE["ablation"],
    output:
        _abl_tables("kl"),
    params:
        prefix=lambda w, output: os.path.splitext(output[0])[0],
        cli=PARAMS,
        data=lambda w, input: os.path.dirname(input.data),
    resources:
        **model_job("encode"),
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/ablation/kl.log",
    shell:
        gaussquant("ablation {params.cli} --kind kl --data {params.data} --vae {input.vaes} --out {params.prefix}")
