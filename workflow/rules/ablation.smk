# Ablations (SPEC 3, 7) on one (arch, rate) of the TDC VAE: codebook size, TDC tolerance,
# codebook seed, KL ranges vanilla vs TDC. Outputs under results/<profile>/ablation/.
import math

ABL = CFG.ablation
ABL_RES = f"{RES}/ablation"
ABL_BASE = f"{RES}/train/gq-{ABL.arch}-{ABL.rate}/model.pt"
LOG2K = int(math.log2(CFG.tdc.codebook_size))
ABL_KS = [2 ** (LOG2K + o) for o in ABL.codebook_log2_offsets]
BASE_SEED = CFG.gq.seed


def tol_checkpoint(tol):
    """The tolerance of params.yaml is the main TDC VAE; other values are trained here."""
    if float(tol) == CFG.tdc.tolerance:
        return ABL_BASE
    return f"{ABL_RES}/train/tol{tol}/model.pt"


wildcard_constraints:
    tol=r"[0-9]+(\.[0-9]+)?",
    k=r"[0-9]+",
    seed=r"[0-9]+",
    variant=r"(K[0-9]+-s[0-9]+|tol[0-9.]+)",


rule ablation_train_tolerance:
    input:
        data=rules.prepare_data.output.manifest,
        code=CODE_TRAIN,
    output:
        model=f"{ABL_RES}/train/tol{{tol}}/model.pt",
    params:
        cfg=train_params_for("gq", ABL.rate),
        out=lambda wc: f"{ABL_RES}/train/tol{wc.tol}",
        data=f"{RES}/data",
    threads: 1
    log:
        f"{RES}/logs/ablation/train-tol{{tol}}.log",
    benchmark:
        f"{RES}/benchmarks/ablation/train-tol{{tol}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} gaussquant train {PARAMS} --set tdc.tolerance={wildcards.tol}"
        " --method gq --arch {ABL.arch} --rate {ABL.rate} --data {params.data} --out {params.out}"
        " --no-progress > {log} 2>&1"


rule ablation_convert_codebook:
    input:
        model=ABL_BASE,
        code=CODE_CONVERT,
    output:
        model=f"{ABL_RES}/convert/K{{k}}-s{{seed}}/model.pt",
    threads: 1
    log:
        f"{RES}/logs/ablation/convert-K{{k}}-s{{seed}}.log",
    shell:
        "OMP_NUM_THREADS={threads} gaussquant convert {PARAMS} --set gq.seed={wildcards.seed} --ckpt {input.model}"
        " --to gq --codebook-size {wildcards.k} --out {output.model} > {log} 2>&1"


rule ablation_convert_tolerance:
    input:
        model=lambda wc: tol_checkpoint(wc.tol),
        code=CODE_CONVERT,
    output:
        model=f"{ABL_RES}/convert/tol{{tol}}/model.pt",
    threads: 1
    log:
        f"{RES}/logs/ablation/convert-tol{{tol}}.log",
    shell:
        "OMP_NUM_THREADS={threads} gaussquant convert {PARAMS} --ckpt {input.model} --to gq --out {output.model} > {log} 2>&1"


rule ablation_evaluate:
    input:
        model=f"{ABL_RES}/convert/{{variant}}/model.pt",
        data=rules.prepare_data.output.manifest,
        fid_ref=f"{RES}/eval/fid_reference.npz",
        code=CODE_EVAL,
    output:
        metrics=f"{ABL_RES}/eval/{{variant}}/metrics.json",
    params:
        eval=str(CFG.eval),
        data=f"{RES}/data",
    threads: 1
    log:
        f"{RES}/logs/ablation/eval-{{variant}}.log",
    benchmark:
        f"{RES}/benchmarks/ablation/eval-{{variant}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} gaussquant evaluate {PARAMS} --ckpt {input.model} --data {params.data}"
        " --name {wildcards.variant} --fid-ref {input.fid_ref} --out {output.metrics} --no-progress > {log} 2>&1"


def _abl_tables(kind):
    return [f"{ABL_RES}/{kind}.{ext}" for ext in ("csv", "md", "png")]


rule ablation_codebook:
    input:
        metrics=[f"{ABL_RES}/eval/K{k}-s{BASE_SEED}/metrics.json" for k in ABL_KS],
        vae=ABL_BASE,
        data=rules.prepare_data.output.manifest,
        code=CODE_COMMON + [f"{SRC}/ablations.py", f"{SRC}/stages/ablation.py"],
    output:
        _abl_tables("codebook"),
    params:
        data=f"{RES}/data",
    threads: 1
    log:
        f"{RES}/logs/ablation/codebook.log",
    shell:
        "OMP_NUM_THREADS={threads} gaussquant ablation {PARAMS} --kind codebook --data {params.data}"
        " --vae {input.vae} --out {ABL_RES}/codebook {input.metrics} > {log} 2>&1"


rule ablation_seed:
    input:
        metrics=[f"{ABL_RES}/eval/K{CFG.tdc.codebook_size}-s{s}/metrics.json" for s in ABL.seeds],
        code=CODE_COMMON + [f"{SRC}/ablations.py", f"{SRC}/stages/ablation.py"],
    output:
        _abl_tables("seed"),
    threads: 1
    log:
        f"{RES}/logs/ablation/seed.log",
    shell:
        "OMP_NUM_THREADS={threads} gaussquant ablation {PARAMS} --kind seed --out {ABL_RES}/seed {input.metrics} > {log} 2>&1"


rule ablation_tolerance:
    input:
        metrics=[f"{ABL_RES}/eval/tol{t}/metrics.json" for t in ABL.tolerances],
        vaes=[tol_checkpoint(t) for t in ABL.tolerances],
        data=rules.prepare_data.output.manifest,
        code=CODE_COMMON + [f"{SRC}/ablations.py", f"{SRC}/stages/ablation.py"],
    output:
        _abl_tables("tolerance"),
    params:
        data=f"{RES}/data",
        tols=" ".join(str(t) for t in ABL.tolerances),
    threads: 1
    log:
        f"{RES}/logs/ablation/tolerance.log",
    shell:
        "OMP_NUM_THREADS={threads} gaussquant ablation {PARAMS} --kind tolerance --data {params.data}"
        " --vae {input.vaes} --tolerances {params.tols} --out {ABL_RES}/tolerance {input.metrics} > {log} 2>&1"


rule ablation_kl:
    input:
        vaes=[f"{RES}/train/{m}-{ABL.arch}-{ABL.rate}/model.pt" for m in ("vanilla", "gq")],
        data=rules.prepare_data.output.manifest,
        code=CODE_COMMON + [f"{SRC}/ablations.py", f"{SRC}/stages/ablation.py"],
    output:
        _abl_tables("kl"),
    params:
        data=f"{RES}/data",
    threads: 1
    log:
        f"{RES}/logs/ablation/kl.log",
    shell:
        "OMP_NUM_THREADS={threads} gaussquant ablation {PARAMS} --kind kl --data {params.data}"
        " --vae {input.vaes} --out {ABL_RES}/kl > {log} 2>&1"


def ablation_outputs():
    return [t for kind in ("codebook", "tolerance", "seed", "kl") for t in _abl_tables(kind)]
