"""Which project files a stage really runs: a walk of its ``gaussquant`` imports (torch-free).

The Snakemake rules declare these files as inputs, so editing any code a stage imports -
at module level or inside a function (the stages import heavy libraries lazily) - reruns
exactly the rules that run it, and no hand-kept list can drift. Parsing only (``ast``): nothing
is imported, so the Snakefile stays fast to parse.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = "gaussquant"
SRC = Path(__file__).resolve().parent  # .../src/gaussquant


def module_file(name: str, root: Path = SRC) -> Path | None:
    """The file of module ``gaussquant.a.b`` (a module or a package's ``__init__``), if any."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_modules(path: Path) -> set[str]:
    """Every ``gaussquant.*`` module an import statement anywhere in ``path`` names
    (``from a import b`` gives ``a`` and, where it is a module, ``a.b``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):  # `if TYPE_CHECKING:` imports never run: drop their bodies
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            node.body = []
    if path.name == "__init__.py":  # a package's lazy exports (PEP 562 module __getattr__) run
        for node in tree.body:  # when a user reads the attribute, never when a submodule loads
            if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
                node.body = []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def _with_parents(name: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` and ``a.b.c`` itself."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@functools.cache
def code_files(*modules: str, root: Path = SRC) -> tuple[Path, ...]:
    """Sorted files of ``modules`` and of everything they import within the package."""
    seen: set[Path] = set()
    todo = [m for name in modules for m in _with_parents(name)]
    while todo:
        path = module_file(todo.pop(), root)
        if path is None or path in seen:
            continue
        seen.add(path)
        for name in _imported_modules(path):
            todo.extend(_with_parents(name))
    return tuple(sorted(seen))


def module_code(*modules: str, repo: Path | None = None) -> list[str]:
    """Files of ``modules`` and their imports, relative to ``repo`` (default: the repository
    holding this package)."""
    repo = repo or SRC.parents[1]
    return [str(p.relative_to(repo)) for p in code_files(*modules)]


def stage_code(stage: str, repo: Path | None = None) -> list[str]:
    """Files a ``gaussquant <stage>`` command runs (the CLI, the stage module and its imports)."""
    return module_code(f"{PACKAGE}.cli", f"{PACKAGE}.stages.{stage}", repo=repo)


# Stages whose output is a function of one module's code and the rule's params alone: the
# prepared data is what gaussquant.data makes of the `data:` values, which reach the rule as
# params (computed by the same config code), so an edit of the CLI, the config loader or
# another section re-prepares nothing.
STAGE_OUTPUT_CODE = {"prepare_data": f"{PACKAGE}.data"}


def rule_code(stage: str, repo: Path | None = None) -> list[str]:
    """The code inputs of a stage's rule: ``STAGE_OUTPUT_CODE``'s module where it has one,
    else every file the stage runs (``stage_code``)."""
    if stage in STAGE_OUTPUT_CODE:
        return module_code(STAGE_OUTPUT_CODE[stage], repo=repo)
    return stage_code(stage, repo)
