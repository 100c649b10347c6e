"""tests/data/reference is an unchanged copy of the project's shared/reference."""

import hashlib

import pytest
from conftest import REFERENCE, ROOT

SHARED = ROOT.parent / "shared" / "reference"


@pytest.mark.parametrize(
    "name",
    [
        "gq_official_vectors.npz",
        "gq_official_vectors.json",
        "official_models.npz",
        "official_models.json",
        "official_paper_keys.json",
        "gq_official_tdc_mixed.npz",
        "gq_official_tdc_mixed.json",
        "README.md",
    ],
)
def test_copy_matches_shared_reference(name):
    if not (SHARED / name).exists():
        pytest.skip("shared/reference is not beside this checkout")
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (REFERENCE / name, SHARED / name)]
    assert digest[0] == digest[1]
