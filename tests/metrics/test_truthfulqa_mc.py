"""TruthfulQA's MC1 and MC2, against values computed by hand and, on a tiny model, against
log-probabilities of each answer computed one at a time."""
from __future__ import annotations

import math

import numpy as np
import pytest

from loccheck.metrics import METRICS


def _q(true, false):
    return np.array(true, float), np.array(false, float)


def test_mc1_is_the_best_answer_above_every_false_one():
    choices = [_q([-1.0, -9.0], [-2.0, -3.0]),     # best beats both false answers: 1
               _q([-5.0, -0.5], [-4.0, -6.0]),     # another true answer is best-scoring, not the Best Answer: 0
               _q([-2.0], [-2.0])]                 # a tie is not a win: 0
    assert METRICS["mc1"].fn(choices) == pytest.approx(1 / 3)


def test_mc2_is_the_normalised_mass_of_the_true_answers():
    choices = [_q([math.log(0.2), math.log(0.1)], [math.log(0.3)]),   # 0.3 / 0.6
               _q([-1000.0], [-1001.0])]                               # e / (e + 1), no underflow
    expected = (0.5 + math.e / (math.e + 1)) / 2
    assert METRICS["mc2"].fn(choices) == pytest.approx(expected, rel=1e-12)
    assert METRICS["mc1"].higher_is_better and METRICS["mc2"].higher_is_better


@pytest.mark.slow
def test_on_a_tiny_model_they_score_every_answer_of_every_test_question(known_llama, tmp_path):
    from loccheck.run.testbed import prepare_testbed
    from loccheck.claim import parse_claim
    from loccheck.models.scoring import answer_logprobs
    from loccheck.testing import claim_text

    model_dir, pairs = known_llama
    claim = parse_claim(claim_text(model_dir, pairs, ["L1H2"], n=19), path=tmp_path / "c.yaml")
    testbed = prepare_testbed(claim, tmp_path / "cache")
    questions = testbed.choices("test")
    assert len(questions) == len(testbed.data.groups["test"])
    by_hand = []
    for q in questions:   # one answer per forward: no batching, no padding
        true, false = ([float(answer_logprobs(testbed.model, [q.prompt], [a], testbed.pad_id)[0]) for a in group]
                       for group in (q.true, q.false))
        by_hand.append(_q(true, false))
    scores = testbed.score(["mc1", "mc2"])
    assert scores["mc1"] == pytest.approx(METRICS["mc1"].fn(by_hand))
    assert scores["mc2"] == pytest.approx(METRICS["mc2"].fn(by_hand), rel=1e-5)
    assert 0 <= scores["mc1"] <= 1 and 0 < scores["mc2"] < 1


@pytest.mark.slow
def test_a_claim_can_be_judged_on_mc2_and_reports_each_metrics_p_value(known_llama, tmp_path):
    from loccheck.claim import parse_claim
    from loccheck.testing import claim_text
    from loccheck.run.verify import verify

    model_dir, pairs = known_llama
    text = claim_text(model_dir, pairs, ["L1H2"], n=19, stop="full").replace(
        "verdict: {alpha: 0.05", "metrics: [preference_margin, mc1, mc2]\nverdict: {alpha: 0.05, metric: mc2")
    result = verify(parse_claim(text, path=tmp_path / "mc.yaml"), out_dir=tmp_path / "out", progress=False,
                    cache_dir=tmp_path / "cache")                # its own cache: every score is computed here
    summaries = result.payload["metric_summaries"]["optimal"]
    assert result.metric == "mc2" and set(summaries) == {"mc2", "preference_margin", "mc1"}
    assert summaries["mc2"]["p_value"] == result.p_value                 # the verdict's own test
    gains = [e["gains"]["preference_margin"] for e in result.edits if e["role"] == "random"]
    claim_gain = summaries["preference_margin"]["claim"]["gain"]
    assert summaries["preference_margin"]["p_value"] == (1 + sum(g >= claim_gain for g in gains)) / 20
    report = (tmp_path / "out" / "report.md").read_text()
    assert "claim vs null on this metric: p" in report and "null_hist_mc1.png" in report
    assert (tmp_path / "out" / "null_hist_preference_margin.png").read_bytes()[:4] == b"\x89PNG"
    import json
    costs = json.loads((tmp_path / "out" / "timings.json").read_text())   # what each metric cost
    assert set(costs["scoring_seconds"]) == {"mc2", "preference_margin", "mc1"}
    assert all(v >= 0 for v in costs["scoring_seconds"].values()) and costs["n_fitted"] == result.n_fitted
