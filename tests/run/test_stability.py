"""Claim and verdict stability on a tiny model (issue 27, items 2 and 3): the heuristic rerun
on bootstrap resamples inside a verification (its selections are what the heuristic gives on
those resamples, recomputed here; no forward pass or cache file per resample; replayed from the
evidence bundle), and `loccheck stability --splits` (each seed shift a whole verification, the
first the claim as written, the combined p-values from theirs)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from loccheck.cli import main
from loccheck.locations import HeadLoc

pytestmark = pytest.mark.slow   # runs probes and fits on a tiny torch model

WORDS = ["red", "blue", "green", "small", "large", "old", "new", "fast", "slow", "warm"]


@pytest.fixture(scope="module")
def claim_file(tmp_path_factory, one_torch_thread):
    """A probed claim on the 8-head known model, with answers the probes separate only in part:
    chosen words from one half of WORDS, rejected from the other, with overlap."""
    from loccheck.testing import claim_text, write_model_dir

    root = tmp_path_factory.mktemp("stability")
    model_dir = write_model_dir(root / "model", "llama", [HeadLoc(1, 2)])
    rng = np.random.default_rng(0)
    with open(root / "pairs.jsonl", "w") as f:
        for i in range(40):
            chosen, rejected = WORDS[int(rng.integers(0, 7))], WORDS[int(rng.integers(3, 10))]
            if chosen == rejected:
                rejected = WORDS[(WORDS.index(chosen) + 1) % len(WORDS)]
            f.write(json.dumps({"prompt": f"q{i} is?", "chosen": chosen, "rejected": rejected, "group": f"g{i}"}) + "\n")
    text = claim_text(model_dir, root / "pairs.jsonl", ["L0H0"], n=4, alpha=0.2, stop="full",
                      extra="heuristic: {method: probe, top_k: 2}\nstability: {bootstrap: 6, seed: 3}\n"
                            "tests: [editing, necessity]\nnecessity: {n: 9}\n")
    path = root / "claims" / "probed.yaml"
    path.parent.mkdir()
    path.write_text(text.replace("location: {sites: [L0H0]}", "location: {from_heuristic: true}"))
    return path


def test_the_bootstrap_selections_are_the_heuristics_on_those_resamples(claim_file, tmp_path):
    from loccheck.claim import load_claim
    from loccheck.heuristics import HEURISTICS
    from loccheck.locations import format_location
    from loccheck.run.testbed import prepare_testbed
    from loccheck.run.verify import verify

    cache = tmp_path / "cache"
    result = verify(claim_file, out_dir=tmp_path / "out", cache_dir=cache, progress=False)
    s = result.payload["claim_stability"]
    print("\nselections:", s["selections"], "\nper site:", {k: v["count"] for k, v in s["per_site"].items()})
    assert (s["bootstrap"], s["seed"], len(s["selections"])) == (6, 3, 6)
    assert s["claimed"] == result.payload["location"] and s["n_train_questions"] == 20
    assert list((cache / "activations").iterdir()).__len__() == 1     # one forward pass, one file
    # recomputed outside verify: the heuristic on the same six resamples selects the same sites
    claim = load_claim(claim_file)
    testbed = prepare_testbed(claim, cache)
    data = testbed.data.without_test(testbed.prompt_format, testbed.system_prompt)
    again = [format_location(HEURISTICS["probe"].propose(
        claim.heuristic, testbed.loaded, data.resampled(np.random.default_rng(np.random.SeedSequence(3, spawn_key=(b,)))),
        cache, seed=claim.behavior.split.seed).top(2)) for b in range(6)]
    assert again == s["selections"]
    counts = {site: sum(site in sel for sel in again) for site in s["claimed"]}
    assert {k: v["count"] for k, v in s["per_site"].items()} == counts
    assert s["whole_set"]["count"] == sum(sel == s["claimed"] for sel in again)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## How stable the claim is" in report and f"of 6 resamples" in report
    assert "claim_stability_s" in json.loads((tmp_path / "out" / "timings.json").read_text())


def test_claim_stability_replays_from_the_bundle(claim_file, tmp_path):
    args = ["--evidence", str(tmp_path / "evidence"), "--report-dir", str(tmp_path / "out")]
    assert main(["verify", str(claim_file), *args, "--cache-dir", str(tmp_path / "cache"), "--quiet"]) in (0, 1)
    recorded = json.loads((tmp_path / "out" / "probed" / "result.json").read_text())
    assert main(["check", str(claim_file), *args]) in (0, 1)
    assert json.loads((tmp_path / "out" / "probed" / "result.json").read_text()) == recorded
    assert recorded["claim_stability"]["whole_set"]["count"] >= 0


def test_verdict_stability_runs_each_seed_and_combines_their_pvalues(claim_file, tmp_path, capsys):
    from loccheck.run.stability import combined_pvalue

    out = tmp_path / "stab"
    assert main(["stability", str(claim_file), "--splits", "2", "--bootstrap", "3", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    record = json.loads((out / "stability.json").read_text())
    v = record["verdict_stability"]
    assert [r["split_seed"] for r in v["runs"]] == [0, 1] and v["splits"] == 2
    for r in v["runs"]:
        result = json.loads((out / f"seed_shift_{r['shift']}" / "result.json").read_text())
        assert (result["verdict"], result["seeds"]["split"]) == (r["verdict"], r["split_seed"])
        assert result["seeds"]["random_locations"] == r["shift"] and result["config"]["necessity"]["seed"] == r["shift"]
        assert r["claim_gain"] == result["tests"]["optimal"]["claim_gain"]
    for name in ("editing", "necessity"):
        ps = [r["tests"][name]["p_value"] for r in v["runs"]]
        assert v["combined"][name] == {"pvalues": ps, **combined_pvalue(ps)}
    assert record["claim_stability"]["bootstrap"] == 3
    assert record["command"] == f"loccheck stability {claim_file} --bootstrap 3 --splits 2"
    text = (out / "stability.md").read_text()
    assert "## How stable the verdict is" in text and "## How stable the claim is" in text
    # alpha = 0.2 and N = 4: each run's least p is 1/5, so twice the median cannot reach alpha
    assert "editing: no run's p-value can be below 0.2" in text
    assert "verdicts on 2 seeds" in capsys.readouterr().out
