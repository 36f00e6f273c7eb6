"""An edit that diverges is reported, never cached, and can only count against the claim; what
is written is strict JSON."""
from __future__ import annotations

import json

import pytest

from loccheck.claim import parse_claim
from loccheck.testing import claim_text
from loccheck.run.verify import verify

pytestmark = pytest.mark.slow   # fits edits on a tiny model (torch)


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_diverged_edits_are_reported_not_cached_and_decide_nothing_in_the_claims_favour(known_llama, tmp_path):
    model_dir, pairs = known_llama
    # float16 weights and a learning rate so large that the first step overflows float16's
    # range (65504): the hidden states become inf, the norms NaN.
    edit = ("{max_epochs: 1, batch_size: 4, learning_rate: 1.0e+4, ceiling_learning_rate: 1.0e+4, "
            "init_std: 0.1}")
    text = claim_text(model_dir, pairs, ["L1H2"], n=19, edit=edit, stop="full").replace(
        "device: cpu", "device: cpu, dtype: float16")
    claim = parse_claim(text, path=tmp_path / "diverges.yaml")
    cache = tmp_path / "cache"
    first = verify(claim, out_dir=tmp_path / "out", cache_dir=cache, progress=False)
    # Only L1H2 reaches the output of this model: its edits (the claim's, the whole model's, and
    # the null's draws of it) blow up; the dead heads' edits cannot move and converge.
    live = [e for e in first.edits if e["location"] in (["L1H2"], "all")]
    dead = [e for e in first.edits if e not in live]
    assert all(e["diverged"] and e["stopped"] == "diverged" for e in live)
    assert dead and not any(e["diverged"] for e in dead)
    assert first.verdict == "NO_EFFECT" and "whole-model edit diverged" in first.verdict_reason
    assert first.test["ceiling_diverged"] and first.test["claim_diverged"]
    randoms = [e for e in first.edits if e["role"] == "random"]
    assert first.test["n_null_diverged"] == sum(e["diverged"] for e in randoms) >= 1
    assert [g is None for g in first.test["null_gains"]] == [e["diverged"] for e in randoms]
    # the diverged fits were not cached: the next run fits them again, and only them
    stored = [json.loads(p.read_text())["record"] for p in (cache / "fits").rglob("*.json")]
    assert not any(r.get("location") in (["L1H2"], "all") for r in stored if "state" in r)
    again = verify(claim, write_report=False, cache_dir=cache, progress=False)
    assert again.n_fitted == 2 + first.test["n_null_diverged"]       # claim, ceiling, each L1H2 draw
    assert again.payload["tests"] == first.payload["tests"]
    result = _strict((tmp_path / "out" / "result.json").read_text())
    assert result["tests"]["optimal"]["optimality_ratio"] is None
    report = (tmp_path / "out" / "report.md").read_text()
    assert "diverged" in report and "NO_EFFECT" in report


def _float16_claim(model_dir, pairs, tmp_path, ceiling_rate: str, stop: str):
    edit = (f"{{max_epochs: 2, batch_size: 4, learning_rate: 1.0e+4, ceiling_learning_rate: {ceiling_rate}, "
            "init_std: 0.1}")
    text = claim_text(model_dir, pairs, ["L1H2"], n=19, edit=edit, stop=stop).replace(
        "device: cpu", "device: cpu, dtype: float16")
    return parse_claim(text, path=tmp_path / "diverges.yaml")


def test_a_diverged_claim_under_the_sequential_null_is_falsified_not_a_crash(known_llama, tmp_path):
    """The stopping loop and the test score a diverged claim the same way (`compared_gains`): it
    used to stop the null on a claim scored 0 and then test its recorded gain ("undecided")."""
    model_dir, pairs = known_llama
    claim = _float16_claim(model_dir, pairs, tmp_path, "0.05", "sequential")
    result = verify(claim, write_report=False, cache_dir=tmp_path / "cache", progress=False)
    claim_edit, ceiling = result.edits[0], result.edits[1]
    assert claim_edit["stopped"] == "diverged" and not ceiling["diverged"]
    assert result.verdict == "FALSIFIED" and result.p_value == 1.0
    assert "The edit at the claimed heads diverged" in result.verdict_reason
    assert result.test["stopped_early"] and result.n_null_fitted < 19


def test_no_effect_keeps_its_own_reason_when_the_null_stops_early(known_llama, tmp_path):
    model_dir, pairs = known_llama
    claim = _float16_claim(model_dir, pairs, tmp_path, "1.0e+4", "sequential")
    result = verify(claim, write_report=False, cache_dir=tmp_path / "cache", progress=False)
    assert result.test["stopped_early"]
    assert result.verdict == "NO_EFFECT"
    assert result.verdict_reason.startswith("The whole-model edit diverged, so there is no effect to localize")
