# Ablations (docs/method.md §3, §7) on one (arch, rate) of the TDC VAE: codebook size, TDC tolerance,
# codebook seed, KL ranges vanilla vs TDC. Outputs under results/<profile>/ablation/.
wildcard_constraints:
    tol=r"[0-9]+(\.[0-9]+)?",
    k=r"[0-9]+",
    seed=r"[0-9]+",
    variant=r"(K[0-9]+-s[0-9]+|tol[0-9.]+)",


rule ablation_train_tolerance:
    input:
        data=rules.prepare_data.output.manifest,
        code=CODE["train"],
    output:
        model=f"{ABL_RES}/train/tol{{tol}}/model.pt",
    params:
        launch=lambda wc, resources: launch_prefix(resources),
        cli=PARAMS,
        cfg=train_params_for("gq", ABL.arch, ABL.rate, SEED0),
        seed=SEED0,
        arch=ABL.arch,
        rate=ABL.rate,
        out=lambda wc: f"{ABL_RES}/train/tol{wc.tol}",
        data=lambda w, input: os.path.dirname(input.data),
    resources:
        **model_job("train"),
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/ablation/train-tol{{tol}}.log",
    benchmark:
        f"{RES}/benchmarks/ablation/train-tol{{tol}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} train {params.cli} --set tdc.tolerance={wildcards.tol} --set train.seed={params.seed}"
        " --method gq --arch {params.arch} --rate {params.rate} --data {params.data} --out {params.out}"
        " --no-progress > {log} 2>&1"


rule ablation_convert_codebook:
    input:
        model=ABL_BASE,
        code=CODE["convert"],
    output:
        model=f"{ABL_RES}/convert/K{{k}}-s{{seed}}/model.pt",
    params:
        cli=PARAMS,
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/ablation/convert-K{{k}}-s{{seed}}.log",
    shell:
        "OMP_NUM_THREADS={threads} gaussquant convert {params.cli} --set gq.seed={wildcards.seed} --ckpt {input.model}"
        " --to gq --codebook-size {wildcards.k} --out {output.model} > {log} 2>&1"


rule ablation_convert_tolerance:
    input:
        model=lambda wc: tol_checkpoint(wc.tol),
        code=CODE["convert"],
    output:
        model=f"{ABL_RES}/convert/tol{{tol}}/model.pt",
    params:
        cli=PARAMS,
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/ablation/convert-tol{{tol}}.log",
    shell:
        "OMP_NUM_THREADS={threads} gaussquant convert {params.cli} --ckpt {input.model} --to gq --out {output.model} > {log} 2>&1"


rule ablation_evaluate:
    input:
        model=f"{ABL_RES}/convert/{{variant}}/model.pt",
        data=rules.prepare_data.output.manifest,
        fid_ref=FID_REF,
        code=CODE["evaluate"],
    output:
        metrics=f"{ABL_RES}/eval/{{variant}}/metrics.json",
    params:
        launch=lambda wc, resources: launch_prefix(resources),
        cli=PARAMS,
        eval=str(CFG.eval),
        data=lambda w, input: os.path.dirname(input.data),
        fid=fid_ref_arg,
    resources:
        **model_job("evaluate"),
    conda:
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/ablation/eval-{{variant}}.log",
    benchmark:
        f"{RES}/benchmarks/ablation/eval-{{variant}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} evaluate {params.cli} --ckpt {input.model} --data {params.data}"
        " --name {wildcards.variant} {params.fid} --out {output.metrics} --no-progress > {log} 2>&1"


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
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/ablation/codebook.log",
    shell:
        "OMP_NUM_THREADS={threads} gaussquant ablation {params.cli} --kind codebook --data {params.data}"
        " --vae {input.vae} --out {params.prefix} {input.metrics} > {log} 2>&1"


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
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/ablation/seed.log",
    shell:
        "OMP_NUM_THREADS={threads} gaussquant ablation {params.cli} --kind seed --out {params.prefix} {input.metrics} > {log} 2>&1"


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
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/ablation/tolerance.log",
    shell:
        "OMP_NUM_THREADS={threads} gaussquant ablation {params.cli} --kind tolerance --data {params.data}"
        " --vae {input.vaes} --tolerances {params.tols} --out {params.prefix} {input.metrics} > {log} 2>&1"


rule ablation_kl:
    input:
        vaes=[f"{RES}/train/{cell(m, ABL.arch, ABL.rate, SEED0)}/model.pt" for m in ("vanilla", "gq")],
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
        "../../environment.yml"
    threads: 1
    log:
        f"{RES}/logs/ablation/kl.log",
    shell:
        "OMP_NUM_THREADS={threads} gaussquant ablation {params.cli} --kind kl --data {params.data}"
        " --vae {input.vaes} --out {params.prefix} > {log} 2>&1"


