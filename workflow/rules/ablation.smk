# Ablations (docs/method.md §3, §7) on one (arch, rate) of the TDC VAE: codebook size, TDC tolerance,
# codebook seed, KL ranges vanilla vs TDC. Outputs under results/<preset>/ablation/; its
# trainings, conversions and evaluations are the train, convert and evaluate rules'
# (ablation/train/tol<alpha>, ablation/{convert,eval}/{K<k>-s<seed>,tol<alpha>}).


rule ablation_codebook:
    input:
        metrics=[f"{ABL_RES}/eval/K{k}-s{BASE_SEED}/metrics.json" for k in ABL_KS],
        rates=ABL_BASE_RATES,
        code=CODE["ablation"],
    output:
        _abl_tables("codebook"),
    params:
        prefix=lambda w, output: os.path.splitext(output[0])[0],
        cli=PARAMS,
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/ablation/codebook.log",
    shell:
        gaussquant(
            "ablation {params.cli} --kind codebook --vae {input.rates} --out {params.prefix} {input.metrics}"
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
        rates=[tol_rates(t) for t in ABL.tolerances],
        code=CODE["ablation"],
    output:
        _abl_tables("tolerance"),
    params:
        prefix=lambda w, output: os.path.splitext(output[0])[0],
        cli=PARAMS,
        tols=" ".join(str(t) for t in ABL.tolerances),
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/ablation/tolerance.log",
    shell:
        gaussquant(
            "ablation {params.cli} --kind tolerance --vae {input.rates}"
            " --tolerances {params.tols} --out {params.prefix} {input.metrics}"
        )


rule ablation_kl:
    input:
        rates=[f"{RES}/train/{cell(m, ABL.arch, ABL.rate, SEED0)}/rates.npz" for m in KL_PAIR],
        code=CODE["ablation"],
    output:
        _abl_tables("kl"),
    params:
        prefix=lambda w, output: os.path.splitext(output[0])[0],
        cli=PARAMS,
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/ablation/kl.log",
    shell:
        gaussquant("ablation {params.cli} --kind kl --vae {input.rates} --out {params.prefix}")
