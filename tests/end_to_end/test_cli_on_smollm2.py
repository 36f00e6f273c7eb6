"""End to end through the CLI on the bundled SmolLM2 and a handful of TruthfulQA questions,
and the CLI's answers to bad input (one line, exit 2, nothing written)."""
import json
import math

import numpy as np
import pytest

from loccheck.cli import main

SMALL_CLAIM = """\
claim: "A handful of TruthfulQA questions, end to end."
model: {{name: smollm2-135m-instruct, device: cpu}}
behavior:
  prompt_format: qa
  max_questions: 8
  max_pairs_per_question: 1
  split: {{train: 0.5, validation: 0.0, test: 0.5, seed: 1}}
location:
  sites: [L3H1, L20H2]
edits: [{{max_epochs: 2, batch_size: 2, learning_rate: 1.0e-2, ceiling_learning_rate: 2.0e-3}}]
random_locations: {{n: {n}, seed: 0}}
verdict: {{alpha: 0.25}}
{expect}
"""
FIELDS = ["schema_version", "primary_method", "tests", "n_null", "metric", "metrics", "expect",
          "matches_expectation", "edits", "base_metrics", "metric_summaries"]
TEST_FIELDS = ["verdict", "verdict_reason", "p_value", "n_at_least", "claim_gain", "ceiling_gain",
               "null_gains", "optimality_ratio"]


@pytest.fixture
def claim_file(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("LOCCHECK_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)

    def write(n, expect=""):
        path = tmp_path / "claims" / "small.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(SMALL_CLAIM.format(n=n, expect=expect))
        return path
    return write


@pytest.mark.slow
def test_verify_end_to_end_on_smollm2(claim_file, tmp_path, capsys):
    status = main(["verify", str(claim_file(3)), "--quiet"])
    out_dir = tmp_path / "reports" / "small"
    result = json.loads((out_dir / "result.json").read_text())
    for field in FIELDS:
        assert field in result
    assert result["schema_version"] == 2 and result["primary_method"] == "optimal"
    test = result["tests"]["optimal"]
    for field in TEST_FIELDS:
        assert field in test

    # The exit code follows the verdict: no expectation means SUPPORTED is expected.
    assert result["expect"] is None
    assert result["matches_expectation"] == (test["verdict"] == "SUPPORTED")
    assert status == (0 if result["matches_expectation"] else 1)

    # Every number is consistent with the fitted edits it came from.
    edits = result["edits"]
    assert [e["role"] for e in edits] == ["claim", "ceiling", "random", "random", "random"]
    assert result["n_null"] == len(result["tests"]["optimal"]["null_gains"]) == 3
    metric = result["metric"]
    assert test["claim_gain"] == edits[0]["gains"][metric]
    assert test["ceiling_gain"] == edits[1]["gains"][metric]
    assert test["null_gains"] == [e["gains"][metric] for e in edits[2:]]
    null = np.array(test["null_gains"])
    assert test["p_value"] == (1 + np.sum(null >= test["claim_gain"])) / 4
    assert test["n_at_least"] == np.sum(null >= test["claim_gain"])
    if test["ceiling_gain"] > 0:
        assert test["optimality_ratio"] == pytest.approx(test["claim_gain"] / test["ceiling_gain"])
    else:
        assert test["optimality_ratio"] is None                    # undefined: strict JSON's null
    for e in edits:
        assert e["steps"] == 2 * e["epochs"] == len(e["loss_curve"])   # 4 pairs, batch 2
        assert 1 <= e["epochs"] <= 2 and len(e["objective_curve"]) == e["epochs"] + 1
        assert e["gains"][metric] == pytest.approx(e["metrics"][metric] - result["base_metrics"][metric])
    assert all(e["location"] != ["L3H1", "L20H2"] for e in edits[2:])
    assert result["data"]["n_questions"] == {"train": 4, "validation": 0, "test": 4}
    assert result["model"]["n_layers"] == 30 and result["model"]["n_heads"] == 9

    report = (out_dir / "report.md").read_text()
    assert f"**Verdict: {test['verdict']}**" in report.splitlines()[2]
    for png in ("null_hist.png", "loss_curves.png"):
        assert (out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"{test['verdict']} (p = {test['p_value']:.4g}, N = 3" in printed


@pytest.mark.slow
def test_too_small_a_null_is_underpowered_and_can_be_expected(claim_file, tmp_path):
    # 1/(2+1) > alpha = 0.25: no outcome of the edits can reach significance.
    status = main(["verify", str(claim_file(2, "expect: UNDERPOWERED")), "--quiet"])
    result = json.loads((tmp_path / "reports" / "small" / "result.json").read_text())
    assert result["tests"]["optimal"]["verdict"] == "UNDERPOWERED" and result["matches_expectation"] is True
    assert status == 0


def _run_bad(args, capsys):
    status = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return status, err


def test_missing_claim_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, err = _run_bad(["verify", "nope.yaml"], capsys)
    assert status == 2 and len(err) == 1
    assert err[0].startswith("loccheck: error: nope.yaml") and "cannot read claim file" in err[0]
    assert not (tmp_path / "reports").exists()


def test_misspelled_key_names_file_line_and_suggestion(claim_file, tmp_path, capsys):
    path = claim_file(3)
    path.write_text(path.read_text().replace("random_locations:", "random_location:"))
    status, err = _run_bad(["verify", str(path)], capsys)
    assert status == 2 and len(err) == 1
    assert f"{path}:11:" in err[0] and "did you mean 'random_locations'" in err[0]
    assert not (tmp_path / "reports").exists()


@pytest.mark.slow
def test_head_out_of_range_for_the_model(claim_file, tmp_path, capsys):
    path = claim_file(3)
    path.write_text(path.read_text().replace("L20H2", "L30H2"))   # SmolLM2 has layers 0..29
    status, err = _run_bad(["verify", str(path)], capsys)
    assert status == 2 and len(err) == 1
    assert f"{path}:9:" in err[0] and "location.sites[1]" in err[0] and "30 layers x 9 heads" in err[0]
    assert not (tmp_path / "reports").exists()


@pytest.mark.slow
def test_empty_dataset_is_a_clear_error(claim_file, tmp_path, capsys):
    empty = tmp_path / "pairs.jsonl"
    empty.write_text("")
    path = claim_file(3)
    path.write_text(path.read_text().replace("prompt_format: qa", f"dataset: jsonl\n  path: {empty}\n  prompt_format: qa"))
    status, err = _run_bad(["verify", str(path)], capsys)
    assert status == 2 and len(err) == 1 and str(empty) in err[0]
    assert not (tmp_path / "reports").exists()


@pytest.mark.slow
def test_model_that_is_no_folder_file_or_hub_id_is_a_clear_error(claim_file, capsys):
    # Not a folder, not a .gguf file, and not a valid hub id: refused before any network call
    # (a real hub id would need the network this machine does not have).
    path = claim_file(3)
    path.write_text(path.read_text().replace("name: smollm2-135m-instruct", "name: 'no/such/model'"))
    status, err = _run_bad(["verify", str(path)], capsys)
    assert status == 2 and len(err) == 1
    assert "model.name: cannot load 'no/such/model'" in err[0]
