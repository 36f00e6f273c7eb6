"""The necessity test's statistics (loccheck/stats/necessity.py, numpy only): Holm's adjustment,
the verdict rules of `examine_necessity`, and its calibration.

Conventions under test: the claim's drop (the behaviour lost when the location is ablated) is
compared with the drops of N random locations, p = (1 + k) / (N + 1), k = #{null drop >= claim
drop}, ties (within the p-value module's relative 1e-4) against the claim; with `stop:
sequential` the null stops at the h-th drop at or above the claim's (Besag and Clifford 1991:
p = h / l after l drops, h the smallest with h / N > alpha). The listed tests' p-values are
adjusted by Holm's step-down method, and the adjusted p-value decides.

Why the calibration holds, and what is computed exactly here:

* Full stop. When the claim's drop and the N null drops are exchangeable, the claim's rank is
  uniform, so P(p <= alpha) <= alpha, ties included (they only raise p). Leave-one-out states it
  for any sample: of M values, each tested against the other M - 1, at most floor(alpha M) get
  p <= alpha (the property tests/stats/test_calibration.py checks for gains).
* Sequential stop. A stopped test's p = h / l >= h / N > alpha, and a test that is not stopped
  saw every draw and has the full p-value. So at every level t <= alpha the sequential test
  rejects exactly when the full test does, draw for draw (property-tested below): it inherits
  the full test's calibration at alpha and at Holm's alpha / m.
* Exact rates. Claim and null drops i.i.d. from a distribution with atoms (dead sites all drop
  exactly 0): given the claim's drop v, k ~ Binomial(N, S(v)), S(v) = P(drop >= v), and
  p <= alpha iff k <= k_max = floor(alpha (N + 1)) - 1, so P(p <= alpha) = sum_v P(v) *
  BinomCDF(k_max; N, S(v)). Continuous draws: floor(alpha (N + 1)) / (N + 1).
* Holm over two tests. The family rejects something iff 2 min(p1, p2) <= alpha (Holm's first
  step). With F = P(p <= alpha / 2) of each test: FWER = 1 - (1 - F)^2 for independent p-values,
  F for identical ones, 2F (the worst case) for counter-monotone ones; F <= alpha / 2 for a
  valid p-value, so every case is <= alpha.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.stats import binom
from statsmodels.stats.multitest import multipletests

from loccheck.stats.necessity import examine_necessity, holm
from loccheck.stats.pvalues import sequential_stop_count
from loccheck.stats.verdict import Verdict, min_null_size

ALPHA = 0.05
SIMULATED = 2000                 # replicates per simulated rate


def _necessity(claim, null, *, n_null=None, alpha=ALPHA, stop="full", holm_p=None):
    return examine_necessity(claim, list(null), alpha=alpha, n_null=len(null) if n_null is None else n_null,
                             stop=stop, holm_p=holm_p)


# --- Holm ----------------------------------------------------------------------------------------

pvalue_lists = st.lists(st.sampled_from([0.0, 0.01, 0.02, 0.025, 0.05, 0.5, 1.0]) | st.floats(0, 1),
                        min_size=1, max_size=30)


@settings(max_examples=40)          # statsmodels runs gc.collect() in every call: 16 ms each
@given(pvalues=pvalue_lists)
@example(pvalues=[0.02, 0.02, 0.5, 0.02])
@example(pvalues=[0.0, 1.0, 0.025, 0.05, 0.01])
@example(pvalues=[0.6, 0.6, 0.6])
def test_holm_equals_statsmodels(pvalues):
    ours = np.asarray(holm(pvalues))
    theirs = multipletests(pvalues, method="holm")[1]
    np.testing.assert_allclose(ours, theirs, rtol=1e-15, atol=0)


@given(pvalues=pvalue_lists, alpha=st.sampled_from([0.01, 0.05, 0.1, 0.5]))
def test_holm_rejects_what_the_step_down_procedure_rejects(pvalues, alpha):
    """Holm (1979) written out: sort ascending, reject H_(i) while p_(i) <= alpha / (m - i + 1)
    (i from 1), stop at the first that is not. Adjusted p <= alpha must reject the same set."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    rejected = set()
    for rank, i in enumerate(order):
        if pvalues[i] * (m - rank) > alpha:      # the product, as the adjusted p-values compute it
            break
        rejected.add(i)
    adjusted = holm(pvalues)
    assert {i for i in range(m) if adjusted[i] <= alpha} == rejected
    # and the adjusted p-values are p-values: at least the raw one, at most Bonferroni's, in the
    # raw order, in [0, 1]
    for i in range(m):
        assert pvalues[i] <= adjusted[i] <= min(1.0, m * pvalues[i])
        for j in range(m):
            if pvalues[i] <= pvalues[j]:
                assert adjusted[i] <= adjusted[j]


def test_holm_examples():
    assert holm([0.3]) == [0.3]                                     # one test: unchanged
    assert holm([0.05, 0.02]) == [0.05, 0.04]                       # 2 x 0.02, then max(0.04, 0.05)
    assert holm([0.02, 0.02]) == [0.04, 0.04]                       # ties: the same adjusted value
    assert holm([0.6, 0.01, 0.03]) == pytest.approx([0.6, 0.03, 0.06])
    assert holm([0.9, 0.8]) == [1.0, 1.0]                           # capped at 1


@pytest.mark.parametrize("bad", [[], [[0.1, 0.2]], [-0.1], [1.5], [float("nan")], [0.1, float("inf")]])
def test_holm_input_validation(bad):
    with pytest.raises(ValueError, match="`pvalues` must be"):
        holm(bad)


# --- examine_necessity: the verdict rules --------------------------------------------------------

def test_supported_when_no_random_location_loses_as_much():
    test = _necessity(0.3, [0.0] * 19)
    assert test.verdict is Verdict.SUPPORTED
    assert test.pvalue == 1 / 20 == ALPHA
    assert (test.n_at_least, test.n_null, test.n_null_fitted) == (0, 19, 19)
    assert test.claim_drop == 0.3 and test.null_drops == (0.0,) * 19
    assert (test.null_mean, test.null_median) == (0.0, 0.0)
    assert "only 0 of 19" in test.reason
    record = test.to_json()
    assert record["verdict"] == "SUPPORTED" and record["min_p_value"] == 1 / 20
    assert record["null_drops"] == [0.0] * 19 and record["stop"] == "full"


@pytest.mark.parametrize("alpha, n_min", [(0.05, 19), (0.1, 9), (0.2, 4), (0.01, 99)])
def test_underpowered_below_the_smallest_null_that_reaches_alpha(alpha, n_min):
    assert min_null_size(alpha) == n_min
    small = _necessity(1.0, [0.0] * (n_min - 1), alpha=alpha)
    assert small.verdict is Verdict.UNDERPOWERED and small.pvalue == 1 / n_min > alpha
    assert f"at least {n_min} random locations" in small.reason
    # first rule: a claim that loses nothing is UNDERPOWERED too, and so is a sequential test
    assert _necessity(0.0, [0.0] * (n_min - 1), alpha=alpha).verdict is Verdict.UNDERPOWERED
    seq = _necessity(1.0, [0.0] * (n_min - 1), alpha=alpha, stop="sequential")
    assert seq.verdict is Verdict.UNDERPOWERED and seq.stop == "full"      # no sequential rule below n_min
    assert _necessity(1.0, [0.0] * n_min, alpha=alpha).verdict is Verdict.SUPPORTED


@pytest.mark.parametrize("drop", [0.0, -0.5])
def test_falsified_when_ablating_the_claim_loses_nothing(drop):
    # every random location gains from its ablation (negative drops): p is the smallest there is,
    # but a claim whose removal costs nothing is not necessary
    test = _necessity(drop, [-1.0] * 19)
    assert test.pvalue == 1 / 20 <= ALPHA
    assert test.verdict is Verdict.FALSIFIED
    assert "loses nothing" in test.reason and f"drop = {drop:.3g}" in test.reason


def test_falsified_when_p_is_above_alpha():
    test = _necessity(1.0, [2.0] + [0.0] * 18)
    assert test.n_at_least == 1 and test.pvalue == 2 / 20 > ALPHA
    assert test.verdict is Verdict.FALSIFIED
    assert "1 of 19" in test.reason and "loses at least as much" in test.reason


@pytest.mark.parametrize("tie, counted", [(1.0, True), (1.0 - 5e-5, True), (1.0 - 1e-3, False)])
def test_ties_count_against_the_claim(tie, counted):
    """A random location that loses exactly as much (the claim drawn again; a dead claim against
    dead draws), or within the p-value module's relative 1e-4, counts in k."""
    test = _necessity(1.0, [tie] + [0.0] * 18)
    assert test.n_at_least == int(counted)
    assert test.pvalue == (1 + counted) / 20
    assert test.verdict is (Verdict.FALSIFIED if counted else Verdict.SUPPORTED)


@pytest.mark.parametrize("drop", [math.nan, math.inf, -math.inf, None])
@pytest.mark.parametrize("stop", ["full", "sequential"])
def test_a_claim_drop_that_is_not_finite_is_falsified(drop, stop):
    test = _necessity(drop, [0.0] * 19, stop=stop)
    assert test.verdict is Verdict.FALSIFIED
    assert test.pvalue == 1.0 and test.claim_drop is None
    assert test.n_at_least == test.n_null_fitted          # every drop counts against it
    assert "not finite" in test.reason


def test_a_random_drop_that_is_not_finite_counts_against_the_claim():
    test = _necessity(1.0, [math.nan] + [0.0] * 17 + [math.inf])
    assert test.n_at_least == 2 and test.pvalue == 3 / 20
    assert test.null_drops[0] is None and test.null_drops[-1] is None
    assert test.null_mean == 0.0                           # the spread is over the finite drops
    assert test.verdict is Verdict.FALSIFIED


def _null_with_hits(hits, n=99, value=2.0):
    null = [0.0] * n
    for i in hits:
        null[i] = value
    return null


def test_the_sequential_stop_gives_h_over_l():
    h = sequential_stop_count(99, ALPHA)
    assert h == 5                                          # the smallest h with h / 99 > 0.05
    hits = [3, 10, 20, 30, 40, 50, 60]
    null = _null_with_hits(hits)
    l = hits[h - 1] + 1
    for given_drops in (null, null[:l]):                   # all drawn, or only up to the stop
        test = _necessity(1.0, given_drops, n_null=99, stop="sequential")
        assert test.stop == "sequential" and test.stopped_early
        assert (test.n_null, test.n_null_fitted, test.n_at_least) == (99, l, h)
        assert test.pvalue == h / l == 5 / 41
        assert len(test.null_drops) == l
        assert test.verdict is Verdict.FALSIFIED
        assert f"{h} of the first {l} of 99" in test.reason
    # the full test over the same draws: more of the null, the same verdict
    full = _necessity(1.0, null)
    assert full.pvalue == (1 + len(hits)) / 100 and full.verdict is Verdict.FALSIFIED


def test_a_sequential_null_that_never_stops_gives_the_full_p_value():
    null = _null_with_hits([3, 10, 20])
    seq = _necessity(1.0, null, stop="sequential")
    full = _necessity(1.0, null)
    assert not seq.stopped_early and seq.stop == "sequential" and seq.n_null_fitted == 99
    assert seq.pvalue == full.pvalue == 4 / 100
    assert seq.verdict is full.verdict is Verdict.SUPPORTED


def test_the_null_must_be_complete_or_decided():
    with pytest.raises(ValueError, match="needs all 99 null drops"):
        _necessity(1.0, [0.0] * 50, n_null=99)
    with pytest.raises(ValueError, match="undecided"):              # 1 hit of 50, h = 5
        _necessity(1.0, _null_with_hits([3], n=50), n_null=99, stop="sequential")


def test_the_holm_adjusted_p_value_decides():
    null = _null_with_hits([24])                           # k = 1: p = 2 / 100
    raw = _necessity(1.0, null)
    assert raw.pvalue == 0.02 and raw.verdict is Verdict.SUPPORTED
    # with an editing test at p = 0.05 beside it: Holm gives 2 x 0.02 = 0.04 <= alpha
    p_holm = holm([0.05, raw.pvalue])[1]
    assert p_holm == 0.04
    kept = _necessity(1.0, null, holm_p=(p_holm, 2))
    assert kept.verdict is Verdict.SUPPORTED and kept.pvalue == 0.02    # the raw p is reported
    assert "Holm-adjusted over 2 tests: 0.04" in kept.reason
    # k = 2: p = 0.03 alone would pass, adjusted 0.06 does not
    two = _null_with_hits([24, 50])
    lost = _necessity(1.0, two, holm_p=(holm([0.05, 0.03])[1], 2))
    assert lost.pvalue == 0.03 and lost.verdict is Verdict.FALSIFIED
    assert "Holm-adjusted over 2 tests: 0.06" in lost.reason
    # the rules before the p-value stay first
    assert _necessity(0.0, null, holm_p=(0.0, 2)).verdict is Verdict.FALSIFIED
    assert _necessity(1.0, [0.0] * 18, holm_p=(0.0, 2)).verdict is Verdict.UNDERPOWERED


# --- calibration -----------------------------------------------------------------------------------

def _loo(values, alpha, stop):
    """Each value as the claim, the others (in pool order) as its null."""
    values = list(values)
    return [_necessity(values[j], values[:j] + values[j + 1:], alpha=alpha, stop=stop)
            for j in range(len(values))]


drops = st.sampled_from([0.0, 0.0, 0.0, 0.5, 1.0]) | st.floats(-5, 5)   # dead sites: many exact zeros


@settings(max_examples=60)
@given(values=st.lists(drops, min_size=2, max_size=50), alpha=st.sampled_from([0.05, 0.1, 0.2]),
       stop=st.sampled_from(["full", "sequential"]))
def test_leave_one_out_pvalues_are_super_uniform(values, alpha, stop):
    # For ANY sample (ties included), at most alpha * M of its members get p <= alpha against the
    # others: when the claim's drop is exchangeable with the null's, P(p <= alpha) <= alpha.
    tests = _loo(values, alpha, stop)
    assert sum(t.pvalue <= alpha for t in tests) <= math.floor(alpha * len(values) + 1e-9)
    assert sum(t.verdict is Verdict.SUPPORTED for t in tests) <= math.floor(alpha * len(values) + 1e-9)


@settings(max_examples=50)
@given(claim=drops, null=st.lists(drops, min_size=19, max_size=19) | st.lists(drops, min_size=99, max_size=99),
       alpha=st.sampled_from([0.05, 0.1]))
def test_the_sequential_stop_rejects_exactly_when_the_full_test_does(claim, null, alpha):
    """At every level t <= alpha (alpha itself, Holm's alpha / 2 and alpha / 3): what makes the
    sequential p-value valid wherever Holm uses it."""
    seq = _necessity(claim, null, alpha=alpha, stop="sequential")
    full = _necessity(claim, null, alpha=alpha)
    for t in (alpha, alpha / 2, alpha / 3):
        assert (seq.pvalue <= t) == (full.pvalue <= t)
    assert seq.verdict is full.verdict
    if seq.stopped_early:
        assert seq.pvalue > alpha


def _exact_rate(atoms, probs, n_null, alpha) -> float:
    """P(p <= alpha) for a claim and `n_null` null drops i.i.d. from the distribution `atoms` with
    `probs`: given the claim's drop v, k ~ Binomial(N, P(drop >= v))."""
    atoms, probs = np.asarray(atoms, float), np.asarray(probs, float)
    k_max = math.floor(alpha * (n_null + 1) + 1e-9) - 1           # p <= alpha iff k <= k_max
    return float(sum(p_v * binom.cdf(k_max, n_null, probs[atoms >= v].sum()) for v, p_v in zip(atoms, probs)))


def _simulated_rate(draw, n_null, alpha, stop, rng, replicates=SIMULATED) -> tuple[float, float]:
    """The rate of p <= alpha, and of SUPPORTED, over `replicates` claims and nulls drawn i.i.d."""
    hits = supported = 0
    for _ in range(replicates):
        x = draw(rng, n_null + 1)
        test = _necessity(float(x[0]), x[1:].tolist(), alpha=alpha, stop=stop)
        hits += test.pvalue <= alpha
        supported += test.verdict is Verdict.SUPPORTED
    return hits / replicates, supported / replicates


def _close(rate, exact, replicates=SIMULATED) -> bool:
    """Within 4 binomial standard deviations (and 1e-3) of the exact rate."""
    return abs(rate - exact) <= 4 * math.sqrt(exact * (1 - exact) / replicates) + 1e-3


@pytest.mark.parametrize("stop", ["full", "sequential"])
@pytest.mark.parametrize("n_null, alpha", [(19, 0.05), (39, 0.05), (29, 0.1)])
def test_exact_and_simulated_rate_for_continuous_drops(n_null, alpha, stop):
    exact = math.floor(alpha * (n_null + 1) + 1e-9) / (n_null + 1)
    assert exact <= alpha
    rate, supported = _simulated_rate(lambda rng, n: rng.standard_normal(n), n_null, alpha, stop,
                                      np.random.default_rng(n_null))
    print(f"\ncontinuous drops, N = {n_null}, alpha = {alpha}, {stop}: P(p <= alpha) = {exact:.4f} "
          f"exact, {rate:.4f} simulated ({supported:.4f} SUPPORTED)")
    assert _close(rate, exact)
    assert supported <= rate            # SUPPORTED also needs a positive drop


# Dead sites: 70% of random single heads drop exactly 0; the live ones drop one of a few values.
TIED_ATOMS = [0.0, 0.25, 0.5, 1.0]
TIED_PROBS = [0.7, 0.1, 0.1, 0.1]


@pytest.mark.parametrize("stop", ["full", "sequential"])
@pytest.mark.parametrize("n_null, alpha", [(19, 0.05), (99, 0.05), (9, 0.1)])
def test_exact_and_simulated_rate_with_many_ties(n_null, alpha, stop):
    exact = _exact_rate(TIED_ATOMS, TIED_PROBS, n_null, alpha)
    assert exact <= alpha
    rate, supported = _simulated_rate(lambda rng, n: rng.choice(TIED_ATOMS, size=n, p=TIED_PROBS), n_null,
                                      alpha, stop, np.random.default_rng(n_null))
    print(f"\ntied drops, N = {n_null}, alpha = {alpha}, {stop}: P(p <= alpha) = {exact:.5f} exact, "
          f"{rate:.5f} simulated ({supported:.5f} SUPPORTED)")
    assert _close(rate, exact)
    assert supported <= rate


def test_the_exact_rate_formula():
    # many equally likely distinct values: near the continuous floor(alpha (N + 1)) / (N + 1) = 1/20,
    # a little below it (a draw equal to the claim is a tie, against it)
    rate = _exact_rate(np.arange(200.0), np.full(200, 1 / 200), 19, 0.05)
    assert 1 / 20 - 1 / 200 < rate < 1 / 20
    # every site dead: every draw ties with the claim, p = 1
    assert _exact_rate([0.0], [1.0], 19, 0.05) == 0.0
    # N = 19, alpha = 0.05: p <= alpha only with k = 0, no null drop at or above the claim's, so
    # a claim at 0 never passes, one at v > 0 with probability P(drop < v)^19
    assert _exact_rate(TIED_ATOMS, TIED_PROBS, 19, 0.05) == pytest.approx(0.1 * (0.7 ** 19 + 0.8 ** 19 + 0.9 ** 19))


# --- Holm across two tests: the family-wise error ---------------------------------------------------

def _empirical_p(k: int, n_null: int) -> float:
    return (1 + k) / (n_null + 1)


@pytest.mark.parametrize("n1, n2", [(19, 99), (99, 99), (39, 19)])
def test_holm_family_wise_error_exact(n1, n2):
    """Both tests null, continuous drops: each k is uniform on 0..N. Enumerated through `holm`
    itself: independent, identical (one rank for both), and counter-monotone (opposite ranks)."""
    alpha = ALPHA

    def rejects(k1, k2):
        return min(holm([_empirical_p(k1, n1), _empirical_p(k2, n2)])) <= alpha

    independent = np.mean([rejects(k1, k2) for k1 in range(n1 + 1) for k2 in range(n2 + 1)])
    F1 = math.floor(alpha / 2 * (n1 + 1) + 1e-9) / (n1 + 1)           # P(p1 <= alpha / 2)
    F2 = math.floor(alpha / 2 * (n2 + 1) + 1e-9) / (n2 + 1)
    assert independent == pytest.approx(1 - (1 - F1) * (1 - F2))
    assert independent <= alpha
    if n1 == n2:
        n = n1
        identical = np.mean([rejects(k, k) for k in range(n + 1)])
        opposite = np.mean([rejects(k, n - k) for k in range(n + 1)])
        assert identical == pytest.approx(F1) and opposite == pytest.approx(2 * F1)
        print(f"\nHolm over 2 tests of N = {n}, alpha = {alpha}: FWER = {independent:.4f} independent, "
              f"{identical:.4f} identical, {opposite:.4f} opposite (exact)")
        assert identical <= opposite <= alpha


@pytest.mark.parametrize("dependence", ["independent", "identical", "opposite"])
def test_holm_family_wise_error_simulated(dependence):
    """The decision chain as verify runs it: two null tests (N = 99 each, sequential), their raw
    p-values Holm-adjusted, each decided by `examine_necessity` on its adjusted p. A family-wise
    error is any SUPPORTED. Exact rates of rejection (an adjusted p <= alpha): 1 - 0.98^2 = 0.0396,
    0.02 and 0.04 (F = P(p <= 0.025) = 2/100); a rejected claim ranks first or second of 100
    normal draws, so it is positive (SUPPORTED) all but never."""
    n, alpha, replicates = 99, ALPHA, 1000
    rng = np.random.default_rng(7)
    rejections = errors = 0
    for _ in range(replicates):
        x = rng.standard_normal(n + 1)
        y = {"independent": rng.standard_normal(n + 1), "identical": x, "opposite": -x}[dependence]
        raw = [_necessity(float(v[0]), v[1:].tolist(), alpha=alpha, stop="sequential") for v in (x, y)]
        adjusted = holm([t.pvalue for t in raw])
        decided = [_necessity(float(v[0]), v[1:].tolist(), alpha=alpha, stop="sequential", holm_p=(a, 2))
                   for v, a in zip((x, y), adjusted)]
        rejections += min(adjusted) <= alpha
        errors += any(t.verdict is Verdict.SUPPORTED for t in decided)
    F = 2 / 100
    exact = {"independent": 1 - (1 - F) ** 2, "identical": F, "opposite": 2 * F}[dependence]
    print(f"\nHolm, {dependence}: FWER {errors / replicates:.4f} simulated ({rejections / replicates:.4f} "
          f"rejections), {exact:.4f} exact")
    assert exact <= alpha
    assert _close(rejections / replicates, exact, replicates)
    assert errors <= rejections


def test_the_drop_a_claim_needed_is_the_null_s_and_never_below_zero():
    from loccheck.stats.necessity import examine_necessity

    test = examine_necessity(0.5, [0.1, 0.6, 0.2] + [0.0] * 16, alpha=0.05, n_null=19)
    assert (test.needed_drop, test.needed_drop_exact) == (0.6, True) and test.to_json()["needed_drop"] == 0.6
    losing = examine_necessity(0.5, [-0.3] * 19, alpha=0.05, n_null=19)
    assert losing.needed_drop == 0.0 and losing.verdict.value == "SUPPORTED"   # the drop must also be > 0
    stopped = examine_necessity(0.1, [0.9], alpha=0.05, n_null=19, stop="sequential")
    assert (stopped.needed_drop, stopped.needed_drop_exact) == (0.9, False)
