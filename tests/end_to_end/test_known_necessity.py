"""Known answers for the necessity test (`tests: [editing, necessity]`): planted tiny Llamas in
which only chosen heads reach the residual stream (`loccheck.testing.many_heads_model`: 4
layers x 16 heads, so 64 head sites; every other head's columns of its output projection are
zero), on data built so that the unedited model HAS the behaviour the claim is about.

The data. A random model's preference between " yes" and " no" need not depend on the live head
in any direction, and "ablating it loses the behaviour" means nothing then. So the pairs are
oriented by the head (`write_favoured_pairs`): each question's chosen answer is the one whose
log-probability margin falls when the live head is zeroed. By construction zeroing the head
lowers every pair's preference margin; mean and resample ablations replace its output by
something else than zero, and their drops are measured (printed), not built in.

Why each answer is forced:

* A dead head's columns of W_O are zero: whatever an ablation puts in its slice of W_O's input
  is multiplied by zero weights (0 * x = 0 adds nothing to a float sum), so the model computes
  exactly what it computed unablated: its drop is exactly 0.0, bit for bit, on any kernels.
* The live claim {L2H5}: every random single head but L2H5 itself drops exactly 0; a draw of
  L2H5 is the same ablation (the same cached score) and ties. So p = (1 + k) / (N + 1), k the
  draws of L2H5: about N / 64. Null seed 3 draws it once in 99 (index 24), after the editing
  null's 19 (the necessity null starts with the editing null's draws): p = 2/100 = 0.02, the
  editing test's p = 1/20 (all its 19 random heads dead), and Holm over the two gives the
  necessity test 2 x 0.02 = 0.04 <= 0.05: SUPPORTED.
* A dead claim {L1H3}: drop 0.0, FALSIFIED whatever the null (it loses nothing).
* Minimality of {L1H3, L2H5}: ablating both is ablating L2H5 (the dead head adds exact zeros),
  so leaving L1H3 out costs exactly 0.0 of the drop (free), leaving L2H5 out costs all of it.
* Redundancy: two live heads of one layer made identical (twins, `many_heads_model(twins=...)`),
  pairs of one-letter answers chosen per question so that the model prefers the chosen letter
  with both heads, with either one zeroed, and prefers the other with both zeroed
  (`write_redundant_pairs`), and the saturating metric preference_accuracy with a zero
  ablation: accuracy 1 unedited, 1 with either head ablated (drop exactly 0: FALSIFIED for each
  head), 0 with both (drop 1; every random pair holding at most one of them drops exactly 0:
  SUPPORTED for the pair). Necessity tests "the behaviour needs this location", and a
  redundant head is not needed.
* Calibration: in a 2 x 4 model whose every head is live, the necessity statistic of each of
  the 28 pairs of heads (ablations train nothing, so all 28 are cheap): a claim drawn at random
  is exchangeable with the null's draws, and P(p <= alpha) <= alpha, measured leave-one-out and
  computed exactly (binomial) for the null `verify` draws.
"""
from __future__ import annotations

import json
import math
from itertools import combinations

import numpy as np
import pytest
from scipy.stats import binom

from loccheck.claim import parse_claim
from loccheck.locations import HeadLoc, head_sites
from loccheck.run.verify import verify
from loccheck.stats.necessity import examine_necessity, holm
from loccheck.stats.null import sample_null_locations
from loccheck.stats.pvalues import empirical_pvalue, sequential_stop_count
from loccheck.testing import (claim_text, write_favoured_pairs, write_many_heads_model_dir, write_model_dir,
                              write_pairs, write_redundant_pairs)

pytestmark = pytest.mark.slow   # ablates and fits on tiny models (torch)

SHAPE = dict(n_layers=4, n_heads=16)            # 64 head sites
LIVE, DEAD = HeadLoc(2, 5), HeadLoc(1, 3)
TWIN = HeadLoc(2, 9)                            # LIVE's twin in the redundant model
ALPHA, N_EDIT, N_NEC = 0.05, 19, 99
NULL_SEED = 3                                   # draws LIVE once in 99 single heads, at index 24
SPLIT = "{train: 0.5, validation: 0.0, test: 0.5, seed: 0}"
# The necessity verdicts do not depend on how far the edits get: a short budget.
BUDGET = "{max_epochs: 2, batch_size: 4, learning_rate: 0.05, ceiling_learning_rate: 0.05, init_std: 0.1}"
SITES = head_sites(**SHAPE)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


def _load(model_dir):
    from loccheck.models.loading import load_model

    return load_model(str(model_dir), device="cpu").model


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The 64-head model whose only live head is L2H5, and 48 questions oriented by it."""
    root = tmp_path_factory.mktemp("necessity-live")
    model_dir = write_many_heads_model_dir(root / "model", "llama", [LIVE], **SHAPE)
    return model_dir, write_favoured_pairs(root / "pairs.jsonl", _load(model_dir), [LIVE], n_questions=48)


def _text(model_dir, pairs, heads, necessity: str, tests="editing, necessity", seed=NULL_SEED, n=N_EDIT,
          metric=None, budget=BUDGET):
    text = claim_text(model_dir, pairs, [str(h) for h in heads], n=n, alpha=ALPHA, edit=budget, split=SPLIT,
                      random_seed=seed, extra=f"tests: [{tests}]\nnecessity: {necessity}\n")
    if metric is not None:
        text = text.replace("verdict: {alpha:", f"verdict: {{metric: {metric}, alpha:")
    return text


def _verify(text, tmp_path, name="claim"):
    result = verify(parse_claim(text, path=tmp_path / f"{name}.yaml"), write_report=False, progress=False)
    nec = result.evidence["necessity"]
    print(f"\n{'+'.join(result.payload['location'])}: {result.verdict}; necessity {nec['verdict']} drop "
          f"{nec['claim_drop']} p = {nec['p_value']:.4g} (Holm {nec['p_holm']}), editing p = "
          f"{result.evidence['editing']['p_value']:.4g}")
    return result


def _draws(size, n, seed=NULL_SEED, sites=SITES):
    return sample_null_locations(sites, size=size, n=n, seed=seed)


# --- a. the live head is necessary, a dead one is not -------------------------------------------

def test_the_null_seed_draws_the_live_head_once_after_the_editing_null():
    draws = _draws(1, N_NEC)
    assert draws[:N_EDIT] == _draws(1, N_EDIT)                    # the editing null's draws come first
    assert [i for i, d in enumerate(draws) if d == (LIVE,)] == [24]


def test_the_live_head_is_necessary(live, tmp_path):
    result = _verify(_text(*live, [LIVE], "{ablation: mean, n: 99, stop: full}"), tmp_path)
    nec, editing = result.evidence["necessity"], result.evidence["editing"]
    draws = _draws(1, N_NEC)
    assert nec["locations"] == [[str(s) for s in d] for d in draws]
    assert nec["claim_drop"] > 0                                   # ablating it loses the behaviour
    for d, drop in zip(draws, nec["null_drops"], strict=True):
        # dead heads lose exactly nothing; the live head drawn again is the claim's own ablation
        assert drop == (nec["claim_drop"] if d == (LIVE,) else 0.0), d
    k = sum(d == (LIVE,) for d in draws)
    assert k == 1 and nec["n_at_least"] == k
    assert nec["p_value"] == (1 + k) / (N_NEC + 1) == 0.02
    # the editing null's 19 heads are dead: p = 1/20; Holm gives necessity 2 x 0.02
    assert result.null_gains == [0.0] * N_EDIT and editing["p_value"] == 1 / 20
    assert nec["p_holm"] == holm([editing["p_value"], nec["p_value"]])[1] == 0.04 <= ALPHA
    assert nec["holm"] == [0.04, 2]
    assert nec["verdict"] == "SUPPORTED"
    assert (nec["ablation"], nec["stop"], nec["n_null_fitted"], nec["stopped_early"]) == ("mean", "full", 99, False)


def test_a_dead_head_is_not_necessary(live, tmp_path):
    result = _verify(_text(*live, [DEAD], "{ablation: mean, n: 99}"), tmp_path)
    nec = result.evidence["necessity"]
    assert nec["claim_drop"] == 0.0                                # exactly: W_O's columns are zero
    # sequential: the first h = 5 draws (all dead, all 0.0) tie with it, and decide
    h = sequential_stop_count(N_NEC, ALPHA)
    assert nec["null_drops"] == [0.0] * h and nec["stopped_early"]
    assert nec["p_value"] == h / h == 1.0
    assert nec["verdict"] == "FALSIFIED" and "loses nothing" in nec["verdict_reason"]
    assert result.verdict == "FALSIFIED"


def test_the_behaviour_as_the_rejected_answers_turns_the_drop_around(live, tmp_path):
    """`necessity.behavior: rejected` (known facts' counterfactual pairs): what ablation loses is
    the preference for the rejected answers, so the drop is the metric's rise: here the live
    head's ablation lowers the margin, which is no loss of that behaviour."""
    chosen = _verify(_text(*live, [LIVE], "{ablation: mean, n: 19, stop: full}"), tmp_path, "chosen")
    rejected = _verify(_text(*live, [LIVE], "{ablation: mean, n: 19, stop: full, behavior: rejected}"),
                       tmp_path, "rejected")
    a, b = chosen.evidence["necessity"], rejected.evidence["necessity"]
    assert (a["behavior"], b["behavior"]) == ("chosen", "rejected")
    assert a["claim_value"] == b["claim_value"] and b["claim_drop"] == -a["claim_drop"] < 0
    assert b["null_drops"] == [-d for d in a["null_drops"]]
    assert b["verdict"] == "FALSIFIED" and "loses nothing" in b["verdict_reason"]


# --- c. minimality: the dead head is free, the live one is not --------------------------------------

def test_minimality_names_the_dead_head_free(live, tmp_path):
    # null seed 40's first random pair holds L2H5: it edits as well as the claim (ties within
    # round-off), and the sequential editing null stops there (h = 1)
    assert LIVE in _draws(2, N_EDIT, seed=40)[0]
    text = _text(*live, [DEAD, LIVE], "{ablation: mean, n: 99, stop: sequential}",
                 tests="editing, necessity, minimality", seed=40)
    result = _verify(text, tmp_path)
    mini, nec = result.evidence["minimality"], result.evidence["necessity"]
    single = _verify(_text(*live, [LIVE], "{ablation: mean, n: 99, stop: full}"), tmp_path, "single")
    drop = nec["claim_drop"]
    assert drop == single.evidence["necessity"]["claim_drop"] > 0  # the dead head adds exact zeros
    by_site = {row["site"]: row for row in mini["necessity"]}
    assert by_site[str(DEAD)] == {"site": str(DEAD), "without_it": drop, "cost": 0.0, "free": True}
    assert by_site[str(LIVE)] == {"site": str(LIVE), "without_it": 0.0, "cost": drop, "free": False}
    # editing: the edit at {L2H5} is the edit at {L1H3, L2H5} (the dead head's parameters get no
    # gradient), to float32 round-off; the edit at {L1H3} gains exactly nothing
    gain = result.claim_gain
    edits = {row["site"]: row for row in mini["editing"]}
    assert edits[str(DEAD)]["free"] and edits[str(DEAD)]["cost"] == pytest.approx(0.0, abs=1e-4 * gain)
    assert edits[str(LIVE)]["without_it"] == 0.0 and edits[str(LIVE)]["cost"] == gain > 0
    assert not edits[str(LIVE)]["free"]
    print(f"minimality: necessity {mini['necessity']}, editing {mini['editing']}")


# --- d. every ablation kind: the live head loses, a dead one exactly nothing -------------------------

@pytest.fixture(scope="module")
def live_testbed(live, tmp_path_factory):
    from loccheck.run.testbed import prepare_testbed

    root = tmp_path_factory.mktemp("necessity-testbed")
    claim = parse_claim(_text(*live, [LIVE], "{ablation: mean, n: 99}"), path=root / "testbed.yaml")
    return prepare_testbed(claim, root / "cache")


def _drop(testbed, location, ablation, metric="preference_margin", seed=0):
    from loccheck.ablations.ablate import ablated

    base = testbed.score([metric])[metric]
    with ablated(testbed, tuple(location), ablation, seed):
        return base - testbed.score([metric])[metric]


@pytest.mark.parametrize("ablation", ["mean", "resample", "zero"])
def test_each_ablation_removes_the_live_head_and_nothing_else(live_testbed, ablation):
    drop = _drop(live_testbed, [LIVE], ablation)
    print(f"\n{ablation}: drop of L2H5 {drop:.4f}")
    assert drop > 0
    assert _drop(live_testbed, [DEAD], ablation) == 0.0
    assert _drop(live_testbed, [DEAD, LIVE], ablation) == drop        # the dead head adds exact zeros


def test_the_resample_seed_draws_other_train_tokens(live_testbed):
    """`necessity.seed` seeds the resample draws: another seed, other source tokens, another drop
    (of the live head; a dead head's stays exactly 0 whatever is drawn)."""
    drops = [_drop(live_testbed, [LIVE], "resample", seed=seed) for seed in (0, 1)]
    print(f"\nresample drops of L2H5, seeds 0 and 1: {drops}")
    assert drops[0] != drops[1] and min(drops) > 0
    assert _drop(live_testbed, [DEAD], "resample", seed=1) == 0.0


def test_zeroing_the_live_head_lowers_every_pair_margin(live_testbed):
    """What the data is built for: the zero ablation lowers the margin of every test pair."""
    from loccheck.ablations.ablate import ablated
    from loccheck.models.scoring import all_pair_logprobs

    def margins():
        lp = all_pair_logprobs(live_testbed.model, live_testbed.test, live_testbed.pad_id).numpy()
        return lp[:, 0] - lp[:, 1]
    before = margins()
    with ablated(live_testbed, (LIVE,), "zero"):
        after = margins()
    assert len(before) == 24 and np.all(after < before)


def test_verify_scores_the_ablation_the_testbed_scores(live, live_testbed, tmp_path):
    result = _verify(_text(*live, [LIVE], "{ablation: mean, n: 99, stop: full}"), tmp_path)
    assert result.evidence["necessity"]["claim_drop"] == pytest.approx(_drop(live_testbed, [LIVE], "mean"),
                                                                       rel=1e-9)


# --- b. redundancy: each of two twin heads is unnecessary, the pair is necessary ---------------------

@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("necessity-twins")
    model_dir = write_many_heads_model_dir(root / "model", "llama", [LIVE, TWIN], twins=[(LIVE, TWIN)], **SHAPE)
    pairs = write_redundant_pairs(root / "pairs.jsonl", _load(model_dir), [LIVE, TWIN], n_questions=24)
    return model_dir, pairs, root


def _verify_to_disk(twins, heads, necessity, name):
    """The real pipeline, claim file to result.json."""
    model_dir, pairs, root = twins
    path = root / f"{name}.yaml"
    path.write_text(_text(model_dir, pairs, heads, necessity, metric="preference_accuracy"))
    verify(path, out_dir=root / name, progress=False)
    payload = json.loads((root / name / "result.json").read_text())
    nec = payload["evidence"]["necessity"]
    print(f"\n{name}: {payload['verdict']}; necessity {nec['verdict']} drop {nec['claim_drop']} "
          f"p = {nec['p_value']:.4g} (Holm {nec['p_holm']}), editing p = {payload['evidence']['editing']['p_value']}")
    return payload


@pytest.mark.parametrize("head", [LIVE, TWIN])
def test_each_of_two_redundant_heads_is_not_necessary(twins, head):
    payload = _verify_to_disk(twins, [head], "{ablation: zero, n: 99}", f"twin-{head}")
    nec = payload["evidence"]["necessity"]
    assert payload["metric"] == "preference_accuracy"
    assert nec["claim_value"] == 1.0 and nec["claim_drop"] == 0.0   # the other head keeps every pair
    h = sequential_stop_count(N_NEC, ALPHA)
    assert nec["null_drops"] == [0.0] * h and nec["p_value"] == 1.0
    assert nec["verdict"] == "FALSIFIED"


def test_two_redundant_heads_together_are_necessary(twins):
    payload = _verify_to_disk(twins, [LIVE, TWIN], "{ablation: zero, n: 99, stop: full}", "twins")
    nec, editing = payload["evidence"]["necessity"], payload["evidence"]["editing"]
    assert nec["claim_value"] == 0.0 and nec["claim_drop"] == 1.0   # every pair flips
    draws = _draws(2, N_NEC)
    assert nec["locations"] == [[str(s) for s in d] for d in draws]
    for d, drop in zip(draws, nec["null_drops"], strict=True):
        assert drop == (1.0 if d == (LIVE, TWIN) else 0.0), d       # one twin left suffices
    k = sum(d == (LIVE, TWIN) for d in draws)
    assert nec["p_value"] == (1 + k) / (N_NEC + 1)
    assert nec["p_holm"] == holm([editing["p_value"], nec["p_value"]])[1]
    assert k == 0 and nec["p_value"] == 0.01 and nec["p_holm"] <= 0.02
    assert nec["verdict"] == "SUPPORTED"
    # the unedited model already gets every pair right: no edit can improve the accuracy
    assert editing["verdict"] != "SUPPORTED" and payload["verdict"] == editing["verdict"]


# --- e. calibration on a model whose every head is live ----------------------------------------------

ALL_LIVE = dict(n_layers=2, n_heads=4)
ALL_PAIRS = [tuple(p) for p in combinations(list(head_sites(**ALL_LIVE)), 2)]
M = 59                       # leave-one-out pool: each null has 58 draws
ALPHAS = (0.05, 0.1)


def _calibration_text(model_dir, pairs, heads, seed=0) -> str:
    """A claim on the every-head-live model: necessity over 19 random pairs (mean ablation, full);
    the editing test at its smallest (one random location, one epoch: it is not what is measured)."""
    return claim_text(model_dir, pairs, [str(h) for h in heads], n=1, split=SPLIT, random_seed=seed,
                      edit=BUDGET.replace("max_epochs: 2", "max_epochs: 1"),
                      extra="tests: [editing, necessity]\nnecessity: {ablation: mean, n: 19, stop: full}\n")


@pytest.fixture(scope="module")
def all_live(tmp_path_factory):
    """The mean-ablation drop of each of the 28 pairs of heads of a 2 x 4 Llama with every head
    live, by location, and the model and data."""
    from loccheck.run.testbed import prepare_testbed

    root = tmp_path_factory.mktemp("necessity-calibration")
    model_dir = write_model_dir(root / "model", "llama", list(head_sites(**ALL_LIVE)))
    pairs = write_pairs(root / "pairs.jsonl", n_questions=24)
    claim = parse_claim(_calibration_text(model_dir, pairs, ALL_PAIRS[0]), path=root / "pool.yaml")
    testbed = prepare_testbed(claim, root / "cache")
    table = {loc: _drop(testbed, loc, "mean") for loc in ALL_PAIRS}
    assert len(set(table.values())) == len(table)          # distinct drops: no accidental ties
    return table, model_dir, pairs


def _rate(pvalues, alpha) -> float:
    return float(np.mean(np.asarray(pvalues) <= alpha))


@pytest.mark.parametrize("stop", ["full", "sequential"])
def test_leave_one_out_rate_on_real_drops(all_live, stop):
    table = all_live[0]
    pool = sample_null_locations(head_sites(**ALL_LIVE), size=2, n=M, seed=1)   # i.i.d. over the 28
    values = [table[loc] for loc in pool]
    for alpha in ALPHAS:
        tests = [examine_necessity(values[j], values[:j] + values[j + 1:], alpha=alpha, n_null=M - 1, stop=stop)
                 for j in range(M)]
        rate = _rate([t.pvalue for t in tests], alpha)
        print(f"\nleave-one-out, {stop}, M = {M} ({len(set(pool))} distinct pairs): P(p <= {alpha}) = {rate:.3f}")
        assert rate <= alpha


def _exact_rate(table, n_null: int, alpha: float) -> float:
    """P(p <= alpha) for a claim drawn uniformly from the 28 pairs and `n_null` null draws i.i.d.
    uniform over all 28 (a draw of the claim ties with it): k ~ Binomial(N, q), q the share of
    pairs whose drop is at or above the claim's (itself included, ties as the p-value counts
    them). The sequential test rejects exactly when the full one does (tests/stats/test_necessity.py)."""
    values = list(table.values())
    k_max = math.floor(alpha * (n_null + 1) + 1e-9) - 1
    total = 0.0
    for j, v in enumerate(values):
        others = values[:j] + values[j + 1:]
        q = round(empirical_pvalue(v, others) * len(values)) / len(values)
        total += binom.cdf(k_max, n_null, q)
    return total / len(values)


@pytest.mark.parametrize("n_null, alpha", [(19, 0.05), (99, 0.05), (19, 0.1)])
def test_exact_rate_of_the_verify_null(all_live, n_null, alpha):
    table = all_live[0]
    exact = _exact_rate(table, n_null, alpha)
    # the same rate by simulation with the real sampler and test: every pair as the claim, seeds 0..29
    simulated = [examine_necessity(v, [table[d] for d in sample_null_locations(
        head_sites(**ALL_LIVE), size=2, n=n_null, seed=seed)], alpha=alpha, n_null=n_null, stop="sequential").pvalue
        for v in table.values() for seed in range(30)]
    rate, m = _rate(simulated, alpha), len(simulated)
    print(f"\nrandom claim among 28 pairs, N = {n_null}, alpha = {alpha}: P(p <= alpha) = {exact:.4f} exact, "
          f"{rate:.4f} simulated ({m})")
    assert abs(rate - exact) <= 4 * math.sqrt(exact * (1 - exact) / m) + 1e-3
    assert exact <= alpha


def test_verify_ablates_the_drops_of_the_table(all_live, tmp_path):
    """The table is what verify measures: the best pair as the claim, with a null seed whose 19
    draws hold it; the draw of the claim ties with it."""
    table, model_dir, pairs = all_live
    best = max(table, key=table.get)
    seed = next(s for s in range(200) if best in _draws(2, 19, seed=s, sites=head_sites(**ALL_LIVE)))
    text = _calibration_text(model_dir, pairs, best, seed)
    result = _verify(text, tmp_path, "best")
    assert result.payload["location"] == [str(h) for h in best]
    nec = result.evidence["necessity"]
    draws = _draws(2, 19, seed=seed, sites=head_sites(**ALL_LIVE))
    assert nec["locations"] == [[str(s) for s in d] for d in draws]
    assert nec["claim_drop"] == pytest.approx(table[best], rel=1e-9)
    assert nec["null_drops"] == pytest.approx([table[d] for d in draws], rel=1e-9)
    ties = [drop for d, drop in zip(draws, nec["null_drops"]) if d == best]
    assert ties and all(t == nec["claim_drop"] for t in ties)
    assert nec["p_value"] == (1 + len(ties)) / 20 > ALPHA        # the best pair, drawn again, ties
