"""An edit that diverges is reported, never cached, and can only count against the claim; what
is written is strict JSON."""
from __future__ import annotations

import json

import pytest

from loccheck.claim import parse_claim
from loccheck.testing import claim_text
from loccheck.verification import verify

pytestmark = pytest.mark.slow   # fits edits on a tiny model (torch)


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_diverged_edits_are_reported_not_cached_and_decide_nothing_in_the_claims_favour(known_llama, tmp_path):
    model_dir, pairs = known_llama
    # float16 weights and a learning rate so large that the first step overflows float16's
    # range (65504): the hidden states become inf, the norms NaN.
    edit = "{max_epochs: 1, batch_size: 4, learning_rate: 1.0e+4, init_std: 0.1}"
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
