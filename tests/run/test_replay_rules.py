"""The rules replay checks a bundle against, on exact inputs (no model, no torch): where a null
had to stop, which claim fields change a number, how the audit's sample is drawn."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from loccheck.run.bundle import Bundle, BundleError
from loccheck.run.replay import _check_stop, _flat, audit_choice
from loccheck.stats.pvalues import sequential_stop_count

BUNDLE = Bundle(Path("evidence/c"), {"files": {"facts.json": "0" * 64}}, {}, {}, [])


def test_h_is_one_for_19_draws_at_alpha_005():
    assert sequential_stop_count(19, 0.05) == 1        # one draw at or above the claim decides


@pytest.mark.parametrize("null, width", [([2.0], 1), ([0.1, 0.2, 2.0, 0.3], 4), ([0.1] * 19, 1),
                                         ([0.1] * 18 + [2.0], 4)])
def test_a_null_that_stopped_where_the_rule_says_passes(null, width):
    _check_stop(BUNDLE, "the null", 1.0, null, 19, "sequential", 0.05, width)


@pytest.mark.parametrize("null, width, says", [
    ([2.0, 0.5], 1, "holds 2 draws, but the sequential rule stops after 1"),
    ([0.1, 0.2, 2.0, 0.3, 0.4], 4, "holds 5 draws, but the sequential rule stops after 4"),
    ([0.1] * 5, 1, "holds 5 of 19 draws and is not decided after them"),
    ([0.1] * 20, 1, "holds 20 draws, but the sequential rule stops after 19"),
])
def test_a_null_cut_short_or_run_past_its_stop_fails(null, width, says):
    with pytest.raises(BundleError, match=says):
        _check_stop(BUNDLE, "the null", 1.0, null, 19, "sequential", 0.05, width)


def test_a_full_null_must_hold_every_draw():
    _check_stop(BUNDLE, "the null", 1.0, [2.0] * 19, 19, "full", 0.05, 1)
    with pytest.raises(BundleError, match="holds 18 draws; the claim's null has 19"):
        _check_stop(BUNDLE, "the null", 1.0, [2.0] * 18, 19, "full", 0.05, 1)


def test_config_fields_are_spelled_as_the_claim_spells_them():
    flat = _flat({"edits": [{"method": "optimal", "learning_rate": 0.01}], "location": {"sites": ["L1H2", "L0H1"]},
                  "metrics": ["preference_margin"], "size_curve": None})
    assert flat == {"edits[0].method": "optimal", "edits[0].learning_rate": 0.01,
                    "location.sites": ["L1H2", "L0H1"], "metrics": ["preference_margin"], "size_curve": None}


def test_the_audit_sample_is_fixed_by_the_manifest_and_skips_diverged_fits():
    fits = [{"info": {"stopped": "diverged" if i == 2 else "plateau"}, "i": i} for i in range(6)]
    a = Bundle(Path("a"), {"files": {"facts.json": "1" * 64}}, {}, {}, fits)
    b = Bundle(Path("b"), {"files": {"facts.json": "2" * 64}}, {}, {}, fits)
    picks = [[f["i"] for f in audit_choice(x, 3)] for x in (a, a, b)]
    assert picks[0] == picks[1] and 2 not in picks[0] + picks[2] and len(set(picks[0])) == 3
    assert [f["i"] for f in audit_choice(a, 5)] == [0, 1, 3, 4, 5]
    with pytest.raises(BundleError, match="asks for more edits than the bundle's 5"):
        audit_choice(a, 6)


def test_a_bundle_is_replaced_only_once_the_new_one_is_complete(tmp_path):
    from loccheck.run.bundle import read_bundle, write_bundle

    claim = SimpleNamespace(name="c", effective_config=lambda: {"claim": "x"})
    good = SimpleNamespace(facts={"edits": []}, payload={"verdict": "SUPPORTED"}, outcomes=[])
    folder = write_bundle(claim, good, tmp_path / "evidence" / "c")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    bad = SimpleNamespace(facts={"edits": [object()]}, payload={}, outcomes=[])   # not JSON: fails halfway
    with pytest.raises(TypeError):
        write_bundle(claim, bad, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in (tmp_path / "evidence").iterdir()) == ["c"]       # no staging left
    assert read_bundle(folder).facts == {"edits": []}


def test_a_fit_s_parameters_are_recorded_up_to_the_cap_and_named_by_sha256_above_it(tmp_path, monkeypatch):
    import hashlib
    import json

    import numpy as np

    from loccheck.run import bundle

    def outcome(n: int, role: str):
        job = SimpleNamespace(method="optimal", role=role, index=None, size=None, location_text=["L1H2"],
                              settings=SimpleNamespace(to_json=lambda: {"lr": 0.1}), key=role, continued_from=None)
        return SimpleNamespace(job=job, n_params=n, info={}, metrics={"m": 1.0}, superseded=(),
                               state={"b": np.arange(n, dtype=np.float32), "a": np.ones(2, dtype=np.float32)})
    monkeypatch.setattr(bundle, "MAX_STATE_BYTES", 64)
    result = SimpleNamespace(facts={}, payload={}, outcomes=[outcome(8, "claim"), outcome(40, "ceiling")])
    folder = bundle.write_bundle(SimpleNamespace(name="c", effective_config=dict), result, tmp_path / "c")
    small, large = (json.loads((folder / "fits" / f"000{i}.json").read_text()) for i in (0, 1))
    assert set(small["state"]) == {"a", "b"} and "state_omitted" not in small       # 40 bytes: kept
    expected = hashlib.sha256(np.ones(2, np.float32).tobytes() + np.arange(40, dtype=np.float32).tobytes())
    assert "state" not in large and large["state_omitted"] == {"bytes": 168, "shapes": {"a": [2], "b": [40]},
                                                               "sha256": expected.hexdigest()}
