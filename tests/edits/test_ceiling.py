"""The ceiling is the optimum of the whole-model edit: a whole-model edit that fits the training
pairs worse than a location's edit (here: a learning rate too small to move it) is continued
from that edit's parameters, which lie in its family, until it fits at least as well."""
from __future__ import annotations

import pytest

from loccheck.claim import parse_claim
from loccheck.testing import claim_text
from loccheck.run.verify import verify

pytestmark = pytest.mark.slow   # fits edits on a tiny model (torch)

STALLED_CEILING = "{max_epochs: 6, batch_size: 4, learning_rate: 0.05, ceiling_learning_rate: 1.0e-9, init_std: 0.1}"


def test_a_ceiling_that_fits_worse_than_the_claim_is_continued_from_it(known_llama, tmp_path):
    model_dir, pairs = known_llama
    claim = parse_claim(claim_text(model_dir, pairs, ["L1H2"], n=3, alpha=0.25, edit=STALLED_CEILING,
                                   stop="full"), path=tmp_path / "continued.yaml")
    result = verify(claim, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    claim_edit, ceiling = result.edits[0], result.edits[1]
    first = ceiling["first_fit"]
    assert first["stopped"] == "stalled" and not first["converged"]          # 1e-9 moves nothing
    assert ceiling["continued_from"] == {"role": "claim", "index": None, "location": ["L1H2"],
                                         "final_objective": claim_edit["final_objective"]}
    # started at the claim's edit (its objective, to float rounding: another prefix), by the rule
    assert ceiling["objective_curve"][0] == pytest.approx(claim_edit["final_objective"], rel=1e-4)
    assert ceiling["final_objective"] <= ceiling["objective_curve"][0]
    assert ceiling["converged"] and ceiling["learning_rate"] == 1e-9
    distinct = {tuple(e["location"]) for e in result.edits if e["role"] != "ceiling"}   # draws may repeat
    assert result.test["ceiling_converged"] and result.n_fitted == len(distinct) + 2   # both ceiling fits
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**The ceiling was continued:**" in report and "stalled" in report
    # cached like any fit: a second run fits nothing and decides the same
    again = verify(claim, write_report=False, cache_dir=tmp_path / "cache", progress=False)
    assert again.n_fitted == 0 and again.payload["tests"] == result.payload["tests"]
