"""One module per pipeline rule (``gaussquant <stage>``; see :mod:`gaussquant.cli`).

Every stage module is imported to register its sub-parser, so each imports torch and the other
heavy libraries inside its functions: ``gaussquant --help`` and Snakefile parsing stay fast.
"""
