"""The claim files the project ships load, and name heads the target model has."""
from pathlib import Path

import pytest

from loccheck.claim import load_claim

CLAIMS = sorted((Path(__file__).resolve().parents[2] / "claims").rglob("*.yaml"))


def test_there_are_shipped_claims():
    assert {p.name for p in CLAIMS} >= {"iti_truthful.yaml", "alpaca7b_iti_truthful.yaml"}


@pytest.mark.parametrize("path", CLAIMS, ids=lambda p: p.name)
def test_shipped_claim_loads(path):
    claim = load_claim(path)
    assert claim.claim and claim.expect is not None


def test_iti_truthful_fits_smollm2_and_the_null_can_reach_alpha():
    claim = load_claim(CLAIMS[[p.name for p in CLAIMS].index("iti_truthful.yaml")])
    assert claim.model.name == "smollm2-135m-instruct"
    heads = claim.location.parsed
    assert len(heads) == 16 and all(h.layer < 30 and h.head < 9 for h in heads)
    assert 1 / (claim.random_locations.n + 1) <= claim.verdict.alpha


def test_the_shipped_truth_direction_is_the_file_it_names():
    """Its basis file is one direction of SmolLM2's 576-wide residual stream, with the sha256 the
    claim pins (read as `verify` reads it, without the model)."""
    from loccheck.data.bases import read_basis

    path = CLAIMS[[p.name for p in CLAIMS].index("truth_direction_smollm2.yaml")]
    spec = load_claim(path).location.subspace
    basis = read_basis(spec.basis, key=spec.key, width=576, field="location.subspace.basis", base_dir=path.parent)
    assert basis.dim == 1 and basis.sha256 == spec.sha256 and spec.layer < 30


@pytest.mark.parametrize("name", ["iti_truthful.yaml", "rome_tracing_smollm2.yaml"])
def test_the_shipped_head_and_mlp_claims_ask_for_both_kinds_of_evidence(name):
    claim = load_claim(CLAIMS[[p.name for p in CLAIMS].index(name)])
    assert claim.verdict_tests == ("editing", "necessity")
    assert claim.necessity.n >= 99 and 1 / (claim.necessity.n + 1) <= claim.verdict.alpha / 2   # room for Holm
