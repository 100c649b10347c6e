# Tables (CSV, Markdown, LaTeX) and figures from the metrics JSONs.


rule table1:
    input:
        metrics=[eval_json(row, a, r, s) for a, r, s in grid() for row in TABLE1_ROWS],
        code=CODE["table"],
    output:
        csv=report(f"{RES}/tables/table1.csv", category="Tables", caption="../report/table1.rst"),
        md=f"{RES}/tables/table1.md",
        tex=f"{RES}/tables/table1.tex",
        json=f"{RES}/tables/table1.json",
        verdicts=report(f"{RES}/tables/verdicts.csv", category="Tables", caption="../report/verdicts.rst"),
        verdicts_md=f"{RES}/tables/verdicts.md",
    params:
        cli=PARAMS,
        table=str(CFG.table),
        prefix=lambda w, output: os.path.splitext(output.csv)[0],
        verdicts=lambda w, output: os.path.splitext(output.verdicts)[0],
        kind="table1",
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/table1.log",
    shell:
        gaussquant("table {params.cli} --kind {params.kind} --out {params.prefix} --verdicts {params.verdicts} {input.metrics}")


use rule table1 as table_figure1 with:  # Figure 1's numbers with intervals and verdicts at every rate
    input:
        metrics=[eval_json(row, a, r, s) for a, r, s in grid(CFG.experiment.figure1_rates) for row in TABLE1_ROWS],
        code=CODE["table"],
    output:
        csv=report(f"{RES}/tables/figure1.csv", category="Tables", caption="../report/figure1_table.rst"),
        md=f"{RES}/tables/figure1.md",
        tex=f"{RES}/tables/figure1.tex",
        json=f"{RES}/tables/figure1.json",
        verdicts=f"{RES}/tables/figure1_verdicts.csv",
        verdicts_md=f"{RES}/tables/figure1_verdicts.md",
    params:  # merged into table1's: only the kind differs
        kind="figure1",
    log:
        f"{RES}/logs/table_figure1.log",


rule table_tokenbridge:
    input:
        metrics=[eval_json(row, a, r, s) for a, r, s in grid() for row in TOKENBRIDGE_ROWS],
        code=CODE["table"],
    output:
        csv=report(f"{RES}/tables/tokenbridge.csv", category="Tables", caption="../report/tokenbridge.rst"),
        md=f"{RES}/tables/tokenbridge.md",
        tex=f"{RES}/tables/tokenbridge.tex",
        json=f"{RES}/tables/tokenbridge.json",
    params:
        cli=PARAMS,
        table=str(CFG.table),
        prefix=lambda w, output: os.path.splitext(output.csv)[0],
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/table_tokenbridge.log",
    shell:
        gaussquant("table {params.cli} --kind tokenbridge --out {params.prefix} {input.metrics}")


rule figure_rate_distortion:
    input:
        metrics=[eval_json(row, a, r, s) for a, r, s in grid() for row in TABLE1_ROWS],
        code=CODE["figure"],
    output:
        report(f"{RES}/figures/rate_distortion.png", category="Figures", caption="../report/rate_distortion.rst"),
    params:
        cli=PARAMS,
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/figures/rate_distortion.log",
    shell:
        gaussquant("figure {params.cli} --kind rate-distortion --out {output} {input.metrics}")


rule figure1:
    input:
        metrics=[eval_json(row, a, r, s) for a, r, s in grid(CFG.experiment.figure1_rates) for row in TABLE1_ROWS],
        code=CODE["figure"],
    output:
        png=report(f"{RES}/figures/figure1.png", category="Figures", caption="../report/figure1.rst"),
        pdf=f"{RES}/figures/figure1.pdf",
    params:
        cli=PARAMS,
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/figures/figure1.log",
    shell:
        gaussquant("figure {params.cli} --kind figure1 --out {output.png} {input.metrics}")


rule figure_tdc_kl_hist:
    input:
        rates=[f"{RES}/train/{cell(m, a, r, SEED0)}/rates.npz" for a, r, _ in grid(seeds=[SEED0]) for m in KL_PAIR],
        code=CODE["figure"],
    output:
        fig=report(f"{RES}/figures/tdc_kl_hist.png", category="Figures", caption="../report/tdc_kl_hist.rst"),
        summary=f"{RES}/figures/tdc_kl_hist.json",
    params:
        cli=PARAMS,
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/figures/tdc_kl_hist.log",
    shell:
        gaussquant("figure {params.cli} --kind kl-hist --out {output.fig} --summary {output.summary} {input.rates}")


rule figure_tdc_dynamics:
    input:
        logs=[f"{RES}/train/{cell('tdc', a, r, s)}/metrics.csv" for a, r, s in grid()],
        checks=[f"{RES}/train/{cell('tdc', a, r, s)}/summary.json" for a, r, s in grid()],  # read beside each log
        code=CODE["figure"],
    output:
        report(f"{RES}/figures/tdc_dynamics.png", category="Figures", caption="../report/tdc_dynamics.rst"),
    params:
        cli=PARAMS,
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/figures/tdc_dynamics.log",
    shell:
        gaussquant("figure {params.cli} --kind tdc-dynamics --out {output} {input.logs}")


rule figure_recon_grid:
    input:
        grids=[f"{RES}/eval/{cell(row, a, r, SEED0)}/grid.png" for a, r, _ in grid(seeds=[SEED0]) for row in TABLE1_ROWS],
        code=CODE["figure"],
    output:
        report(f"{RES}/figures/recon_grid.png", category="Figures", caption="../report/recon_grid.rst"),
    params:
        cli=PARAMS,
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/figures/recon_grid.log",
    shell:
        gaussquant("figure {params.cli} --kind recon-grid --out {output} {input.grids}")


rule theory:
    input:
        code=CODE["theory"],
    output:
        csv=f"{RES}/theory/theory.csv",
        fig=report(f"{RES}/theory/theory.png", category="Theory", caption="../report/theory.rst"),
    params:
        cli=PARAMS,
        theory=str(CFG.theory),
    conda:
        ENV
    threads: 1
    log:
        f"{RES}/logs/theory.log",
    benchmark:
        f"{RES}/benchmarks/theory.tsv"
    shell:
        gaussquant("theory {params.cli} --out-csv {output.csv} --out-fig {output.fig} --no-progress")
