"""The planted-truth benchmark's bookkeeping, without a model: where implants and decoys go,
and the power table's counts and exact intervals (issue 27, item 1)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from scipy.stats import binomtest

from loccheck.locations import head_sites, mlp_sites
from loccheck.studies.planted.power import IMPLANTS, PlantSpec, choose_sites, claim_text, decoys_for, power_table

SMOLLM2 = SimpleNamespace(n_layers=30, sites=lambda kind: head_sites(30, 9) if kind == "head" else mlp_sites(30))


def test_implants_cover_heads_and_mlp_layers_in_the_middle_layers():
    assert len(IMPLANTS) >= 6 and {s.kind for s in IMPLANTS} == {"head", "mlp"}
    assert len({s.seed for s in IMPLANTS}) == len(IMPLANTS)
    assert len({choose_sites(SMOLLM2, s) for s in IMPLANTS}) == len(IMPLANTS)           # no site set twice
    for spec in IMPLANTS:
        sites = choose_sites(SMOLLM2, spec)
        assert len(set(sites)) == spec.k and all(7 <= s.layer < 22 for s in sites)
        assert sites == choose_sites(SMOLLM2, spec)                              # seeded
        decoys = decoys_for(SMOLLM2, sites, 3, spec.seed)
        assert len(decoys) == 3 and all(len(set(d)) == spec.k and not set(d) & set(sites) for d in decoys)


def test_the_claim_of_an_implant_loads(tmp_path):
    from loccheck.claim import parse_claim

    spec = PlantSpec("h", "head", 4, 1)
    claim = parse_claim(claim_text(spec, choose_sites(SMOLLM2, spec), tmp_path / "pairs.jsonl", 19))
    assert claim.verdict_tests == ("editing", "necessity") and claim.necessity_behavior == "rejected"
    assert claim.behavior.prompt_format == "text" and claim.random_locations.n == 19
    assert claim.null_size("editing", 270 * 269 * 268 * 267 // 24) == 19 and claim.null_size("necessity", 0) == 99
    # one MLP layer of 30: each other layer once, never the claimed one again
    spec = PlantSpec("m", "mlp", 1, 4)
    claim = parse_claim(claim_text(spec, choose_sites(SMOLLM2, spec), tmp_path / "pairs.jsonl", 19))
    assert claim.random_locations.draw == "every"
    assert claim.null_size("editing", 30) == claim.null_size("necessity", 30) == 29


def _claim(role, editing, necessity, verdict):
    return {"role": role, "verdict": verdict, "editing": {"verdict": editing[0], "p_value": editing[1]},
            "necessity": {"verdict": necessity[0], "p_value": necessity[1]}}


def test_the_power_table_counts_implants_that_took_only():
    head, mlp = {"kind": "head"}, {"kind": "mlp"}
    records = [
        {"spec": head, "implant": {"steps": 90},
         "claims": [_claim("true", ("SUPPORTED", 0.05), ("SUPPORTED", 0.01), "SUPPORTED"),
                    _claim("decoy0", ("FALSIFIED", 1.0), ("FALSIFIED", 0.5), "FALSIFIED"),
                    _claim("decoy1", ("SPECIFIC_BUT_WEAK", 0.05), ("FALSIFIED", 0.9), "SPECIFIC_BUT_WEAK")]},
        {"spec": mlp, "implant": {"steps": 80},
         "claims": [_claim("true", ("FALSIFIED", 0.5), ("SUPPORTED", 0.01), "FALSIFIED"),
                    _claim("decoy0", ("FALSIFIED", 1.0), ("FALSIFIED", 1.0), "FALSIFIED")]},
        {"spec": head, "implant": None, "failed": "did not take"},
    ]
    rows = {(r["sites"], r["test"], r["location"]): r for r in power_table(records)}
    assert rows[("all", "editing", "true")]["supported"]["hits"] == 1
    assert rows[("all", "editing", "true")]["supported"]["n"] == 2
    assert rows[("all", "editing", "decoy")]["p_at_most_alpha"]["hits"] == 1
    assert rows[("all", "editing", "decoy")]["supported"]["n"] == 3
    assert rows[("all", "necessity", "true")]["supported"]["hits"] == 2
    assert rows[("all", "overall", "true")]["supported"]["hits"] == 1
    assert "p_at_most_alpha" not in rows[("all", "overall", "true")]
    ci = binomtest(1, 2).proportion_ci(0.95, method="exact")
    assert rows[("all", "editing", "true")]["supported"]["ci95"] == [ci.low, ci.high]
    # per kind: the head implant's claims only, and the MLP implant's
    assert {k: rows[("head", "editing", "true")]["supported"][k] for k in ("hits", "n")} == {"hits": 1, "n": 1}
    assert rows[("head", "editing", "true")]["supported"]["ci95"] == pytest.approx([0.025, 1.0])
    assert rows[("head", "editing", "decoy")]["supported"]["n"] == 2
    assert rows[("mlp", "editing", "true")]["supported"]["hits"] == 0
    assert rows[("mlp", "necessity", "true")]["supported"]["hits"] == 1


def test_a_table_of_no_implant_that_took_is_empty_not_invented():
    rows = power_table([{"implant": None, "failed": "x"}])
    assert all(r["supported"] == {"hits": 0, "n": 0, "ci95": None} for r in rows)
