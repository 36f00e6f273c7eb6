"""Claim and verdict stability without a model: bootstrap resamples of the train questions,
the re-selection summary, the combined p-values, and the one-line refusals of bad counts."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import binomtest

from loccheck.claim import parse_claim
from loccheck.cli import main
from loccheck.data.pairs import HeuristicData, PreferencePair
from loccheck.errors import ClaimError
from loccheck.run.stability import combined_pvalue, seed_shifted, stability_summary


def _data(n_train=12, n_val=4, pairs_per=3) -> HeuristicData:
    def group(split, i):
        g = f"{split}{i}"
        return [PreferencePair(f"q {g}", f"yes {j}", f"no {j}", g) for j in range(pairs_per)]
    train = [p for i in range(n_train) for p in group("t", i)]
    val = [p for i in range(n_val) for p in group("v", i)]
    answers = {p.group: (p.prompt, (f"yes {p.group}",), (f"no {p.group}",)) for p in train + val}
    return HeuristicData(train=tuple(train), validation=tuple(val),
                         groups={"train": tuple(f"t{i}" for i in range(n_train)),
                                 "validation": tuple(f"v{i}" for i in range(n_val))},
                         source="x", sha256="0" * 64, answers=answers)


@given(seed=st.integers(0, 2**32 - 1))
def test_a_resample_draws_whole_questions_with_replacement(seed):
    data = _data()
    again = data.resampled(np.random.default_rng(seed))
    assert again.validation == data.validation and again.groups["validation"] == data.groups["validation"]
    names = again.groups["train"]
    assert len(names) == len(set(names)) == 12                     # as many questions, each named once
    origin = {n: n.split("#")[0] for n in names}
    drawn = Counter(origin.values())
    for name in names:                                               # every pair of a drawn question, renamed
        pairs = [p for p in again.train if p.group == name]
        assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == \
            [(p.prompt, p.chosen, p.rejected) for p in data.train if p.group == origin[name]]
        assert again.answers[name] == data.answers[origin[name]]
    assert len(again.train) == 3 * 12 and sum(drawn.values()) == 12
    assert set(again.answers) == set(names) | set(data.groups["validation"])
    assert again.labelled("train")[0][0] == names[0]
    assert again == data.resampled(np.random.default_rng(seed))      # a function of the generator


def test_resamples_repeat_questions_as_a_bootstrap_does():
    # over many resamples each question is drawn once per resample on average, and about
    # 1 - (1 - 1/n)^n = 65% of the questions appear in a resample
    data = _data(n_train=40)
    shares = [len({n.split("#")[0] for n in data.resampled(np.random.default_rng(s)).groups["train"]}) / 40
              for s in range(300)]
    assert abs(np.mean(shares) - (1 - (1 - 1 / 40) ** 40)) < 0.01


def test_the_summary_counts_reselections_with_exact_intervals():
    record = {"bootstrap": 4, "claimed": ["L1H0", "L2H3"], "selected_on_all": ["L1H0", "L2H3"],
              "selections": [["L1H0", "L2H3"], ["L1H0", "L5H5"], ["L1H0", "L2H3"], ["L0H0", "L5H5"]]}
    s = stability_summary(record)
    assert {k: v["count"] for k, v in s["per_site"].items()} == {"L1H0": 3, "L2H3": 2}
    assert s["whole_set"]["count"] == 2 and s["mean_share_reselected"] == (1 + 0.5 + 1 + 0) / 4
    assert [(o["site"], o["count"]) for o in s["others"]] == [("L5H5", 2), ("L0H0", 1)]
    ci = binomtest(3, 4).proportion_ci(0.95, method="exact")
    assert s["per_site"]["L1H0"]["ci95"] == [ci.low, ci.high] and s["all_selects_claimed"]


def test_combined_pvalues():
    c = combined_pvalue([0.01, 0.2, 0.03])
    assert c["twice_median"] == 0.06 and c["bonferroni"] == pytest.approx(0.03)
    t = np.mean([math.tan((0.5 - p) * math.pi) for p in (0.01, 0.2, 0.03)])
    assert c["cauchy"] == pytest.approx(0.5 - math.atan(t) / math.pi)
    assert combined_pvalue([1.0, 1.0])["twice_median"] == 1.0
    assert combined_pvalue([0.05, 0.05])["cauchy"] == pytest.approx(0.05)     # equal p's: the same p
    with pytest.raises(ValueError, match="at least 2"):
        combined_pvalue([0.5])


@pytest.mark.parametrize("dependence", ["independent", "identical", "half"])
def test_twice_the_median_is_valid_however_the_runs_depend(dependence):
    # P(2 x median <= alpha) <= alpha for uniform p-values: independent, all equal, or two groups
    rng = np.random.default_rng(0)
    u = rng.uniform(size=(40000, 5))
    if dependence == "identical":
        u[:] = u[:, :1]
    elif dependence == "half":
        u[:, 1:3] = u[:, :1]
    rates = {a: np.mean([combined_pvalue(list(row))["twice_median"] <= a for row in u[:8000]]) for a in (0.05, 0.1)}
    for alpha, rate in rates.items():
        assert rate <= alpha + 3 * math.sqrt(alpha / 8000)


MINIMAL = "claim: Heads carry it.\nlocation: {sites: [L0H1]}\n"


def test_seed_shift_moves_every_seed_together():
    claim = parse_claim(MINIMAL + "behavior: {split: {seed: 4}}\nedits: [{seed: 2}, {method: iti}]\n"
                                  "random_locations: {seed: 7}\ntests: [editing, necessity]\nnecessity: {seed: 1}\n")
    moved = seed_shifted(claim, 3)
    assert (moved.behavior.split.seed, moved.edits[0].seed, moved.random_locations.seed, moved.necessity.seed) == \
        (7, 5, 10, 4)
    assert seed_shifted(claim, 0) == claim


def test_bootstrap_in_the_claim_is_checked():
    assert parse_claim(MINIMAL.replace("{sites: [L0H1]}", "{from_heuristic: true}") +
                       "heuristic: {method: probe, top_k: 2}\nstability: {bootstrap: 20}\n").stability.bootstrap == 20
    for bad, says in (("stability: {bootstrap: 1}", "bootstrap must be 0 (not measured) or between 2 and 1000"),
                      ("stability: {bootstrap: 5000}", "got 5000"),
                      ("stability: {bootstrap: 20}", "heuristic 'manual' selects nothing, so there is no selection")):
        with pytest.raises(ClaimError) as info:
            parse_claim(MINIMAL + bad + "\n")
        assert "stability.bootstrap: " in str(info.value) and says in str(info.value)


@pytest.mark.parametrize("args, says", [
    (["--bootstrap", "1"], "argument --bootstrap: must be a whole number from 2 to 1000, got '1'"),
    (["--bootstrap", "100000"], "argument --bootstrap: must be a whole number from 2 to 1000, got '100000'"),
    (["--splits", "1"], "argument --splits: must be a whole number from 2 to 20, got '1'"),
    (["--splits", "21"], "argument --splits: must be a whole number from 2 to 20, got '21'"),
    (["--splits", "two"], "argument --splits: must be a whole number from 2 to 20, got 'two'"),
    ([], "stability needs --bootstrap B (the claim's stability), --splits S (the verdict's), or both"),
    (["--bootstrap", "20"], "stability.bootstrap: heuristic 'manual' selects nothing"),
])
def test_bad_counts_are_one_line_and_exit_2(tmp_path, capsys, args, says):
    claim = tmp_path / "c.yaml"
    claim.write_text(MINIMAL)
    try:
        code = main(["stability", str(claim), "--out", str(tmp_path / "out"), *args])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("loccheck: error: ") and says in err[0], err
    assert not (tmp_path / "out").exists()
