"""docs/method.md: its numbered sections, the citations of it, and the values it shares with code.

Code, tests and the workflow cite the method document as ``docs/method.md §N`` (or ``§N.M``;
lists and ranges such as ``§1/§5`` or ``§1-§3`` cite every number). A citation of a section the
document does not have fails here, as does a published number or pinned weight hash that the
document and the code state differently.
"""

import re

from conftest import ROOT

from gaussquant.published import PUBLISHED

DOC = ROOT / "docs" / "method.md"
THIS = ROOT / "tests" / "test_method_doc.py"  # its own examples are not citations
# Where the project cites the document (files and folders at the top of the repository).
SCANNED = (
    "src tests workflow benchmarks profiles params.yaml Snakefile README.md Makefile dvc.yaml "
    "pyproject.toml environment.yml"
).split()
TEXT_SUFFIXES = {".py", ".smk", ".yaml", ".yml", ".md", ".toml", ".rst", ".json", ".txt", ""}
# A byte-for-byte copy of the official reference data (tests/test_reference_copy.py): its README
# is not the project's text and must not be edited.
VENDORED = ROOT / "tests" / "data" / "reference"
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", re.M)
SECTION = r"§\d+(?:\.\d+)?"
CITATION = re.compile(rf"docs/method\.md\s*({SECTION}(?:(?:\s*[,/\-–]\s*|\s+and\s+){SECTION})*)")
NUMBER = re.compile(r"\d+(?:\.\d+)?")
IN_DOC = re.compile(r"§(\d+(?:\.\d+)?)")
# The two names of the design-time documents the project no longer ships, built so that this
# file does not match itself. The first name alone in quotes is an argparse metavar, not a document.
OLD = "SP" + "EC"
OLD_REFERENCE = re.compile(rf"\b{OLD}\b|\bDES" + r"IGN\b")
METAVAR = re.compile(rf"""(["']){OLD}\1""")
METHOD = {"VQGAN": "vq", "FSQ": "fsq", "LFQ": "lfq", "BSQ": "bsq", "GQ": "gq"}


def _sections(text: str) -> set[str]:
    return set(HEADING.findall(text))


def _cited(text: str) -> set[str]:
    """Section numbers cited as ``docs/method.md §...`` in ``text``."""
    return {n for span in CITATION.findall(text) for n in NUMBER.findall(span)}


def _project_files():
    for name in SCANNED:
        top = ROOT / name
        for path in sorted(top.rglob("*")) if top.is_dir() else [top]:
            if (
                path.is_file()
                and path.suffix in TEXT_SUFFIXES
                and VENDORED not in path.parents
                and path not in (DOC, THIS)
                and "__pycache__" not in path.parts
                and not any(part.endswith(".egg-info") for part in path.parts)  # pip's copy
            ):
                yield path


def test_sections_one_to_eight_in_order():
    top = [s for s in HEADING.findall(DOC.read_text()) if "." not in s]
    assert top == [str(n) for n in range(1, 9)]


def test_subsections_belong_to_their_section_and_are_unique():
    subs = [s for s in HEADING.findall(DOC.read_text()) if "." in s]
    assert len(subs) == len(set(subs))
    for parent in {s.split(".")[0] for s in subs}:
        numbers = [int(s.split(".")[1]) for s in subs if s.split(".")[0] == parent]
        assert numbers == list(range(1, len(numbers) + 1)), parent


def test_citation_parser_reads_lists_and_ranges():
    text = "see docs/method.md §1-§3, §5 and §6.2, and docs/method.md §2.4/§7. Also docs/method.md §9.1."
    assert _cited(text) == {"1", "3", "5", "6.2", "2.4", "7", "9.1"}
    assert _cited("docs/method.md §5, 256 px") == {"5"}
    assert _cited(text) - _sections(
        "## 1. a\n### 2.4 b\n## 3. c\n## 5. d\n### 6.2 e\n## 7. f\n"
    ) == {"9.1"}


def test_cross_references_inside_the_document_exist():
    text = DOC.read_text()
    assert set(IN_DOC.findall(text)) - _sections(text) == set()


def test_every_cited_section_exists():
    sections = _sections(DOC.read_text())
    missing = {
        f"{path.relative_to(ROOT)}: §{n}"
        for path in _project_files()
        for n in _cited(path.read_text(errors="replace"))
        if n not in sections
    }
    assert not missing, sorted(missing)


def test_no_reference_to_the_old_documents():
    left = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for path in _project_files()
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OLD_REFERENCE.search(METAVAR.sub("", line))
    ]
    assert not left, "\n".join(left)


def test_published_table_matches_code():
    """§7's table states exactly the values of gaussquant.published, cell for cell."""
    section = DOC.read_text().split("## 7.")[1].split("\n## 8.")[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1] in METHOD:
            for bits, cell in zip((16, 32, 64), cells[2:]):  # 0.25 / 0.5 / 1.0 bpp at f8
                key = (cells[0].lower(), METHOD[cells[1]], bits)
                table[key] = tuple(float(v) for v in cell.split("/"))
    assert table == PUBLISHED


def test_pinned_weight_hashes_match_code():
    from gaussquant.metrics.weights import PINNED

    stated = dict(re.findall(r"\| `(\S+?)` .*?\| `([0-9a-f]{64})` \|", DOC.read_text()))
    assert stated == {p.filename: p.sha256 for p in PINNED.values()}
