"""The contract every registered heuristic keeps, driven by the registry: a heuristic added to
`loccheck.heuristics` is tested here without a line of new test code. It refuses data that holds
the test questions, and ranks every site of its kind."""
from __future__ import annotations

import pytest

from loccheck.heuristics import HEURISTICS

pytestmark = pytest.mark.slow   # they run on a tiny model (torch)


@pytest.mark.parametrize("name", list(HEURISTICS))
def test_heuristic_refuses_data_with_a_test_split(contract_testbed, contract_facts_testbed, name):
    datasets = HEURISTICS[name].datasets
    claim, testbed = contract_facts_testbed if datasets is not None and "jsonl" not in datasets else contract_testbed
    section = HEURISTICS[name].section(method=name)
    with pytest.raises(TypeError, match="never see the test questions"):
        HEURISTICS[name].propose(section, testbed.loaded, testbed.data, testbed.cache_root)
    proposal = HEURISTICS[name].propose(section, testbed.loaded, testbed.data.without_test(), testbed.cache_root)
    if HEURISTICS[name].kind is None:
        assert proposal is None
    elif HEURISTICS[name].kind == "subspace":   # subspaces are a continuum: one proposed per layer
        ranked = [site for site, _ in proposal.ranked]
        assert sorted(s.layer for s in ranked) == list(range(testbed.adapter.n_layers))
        assert {s.kind for s in ranked} == {"subspace"}
    else:   # a ranking of every site of its kind, best first
        ranked = [site for site, _ in proposal.ranked]
        assert sorted(ranked) == sorted(testbed.adapter.sites(HEURISTICS[name].kind))
