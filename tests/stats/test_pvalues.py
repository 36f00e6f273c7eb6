import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loccheck.stats.pvalues import NullTestResult, empirical_pvalue, null_test

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
nulls = st.lists(finite, min_size=1, max_size=30)


# --- empirical_pvalue: exact cases by hand ---------------------------------------------------

def test_above_every_null_value_gives_min_pvalue():
    assert empirical_pvalue(1.0, np.arange(19) / 100) == 0.05


def test_equal_to_max_counts_the_tie_against_the_claim():
    null = np.arange(19) / 100
    assert empirical_pvalue(null.max(), null) == 2 / 20


def test_below_every_null_value_gives_one():
    assert empirical_pvalue(-1.0, [0.0, 0.5, 2.0]) == 1.0


def test_counts_by_hand():
    # null >= 0.3: 0.3 (tie), 0.4, 0.9 -> k = 3, N = 5
    assert empirical_pvalue(0.3, [0.1, 0.4, 0.3, -2.0, 0.9]) == pytest.approx(4 / 6)


def test_near_tie_from_round_off_counts_against_the_claim():
    x = 0.1 + 0.2                      # 0.30000000000000004
    assert x > 0.3
    assert empirical_pvalue(x, [0.3, 0.0, 0.0]) == 2 / 4
    # float32 round-off of the scores a gain comes from, carried through training, is a tie too
    # (1e-5 relative) ...
    assert empirical_pvalue(0.3 * (1 + 1e-5), [0.3, 0.0, 0.0]) == 2 / 4
    # ... a real difference is not
    assert empirical_pvalue(0.3 * (1 + 1e-3), [0.3, 0.0, 0.0]) == 1 / 4


def test_negative_statistic_near_tie():
    assert empirical_pvalue(-0.3, [-0.3 * (1 + 1e-15), 1.0]) == 1.0


# --- empirical_pvalue: properties ------------------------------------------------------------

@given(a=finite, b=finite, null=nulls, data=st.data())
def test_pvalue_properties(a, b, null, data):
    n = len(null)
    lo, hi = min(a, b), max(a, b)
    p_lo, p_hi = empirical_pvalue(lo, null), empirical_pvalue(hi, null)
    # in [1/(N+1), 1], on the grid k/(N+1)
    assert 1 / (n + 1) <= p_hi <= p_lo <= 1          # also: non-increasing in the statistic
    assert p_lo * (n + 1) == pytest.approx(round(p_lo * (n + 1)))
    # invariant to the order of the null
    assert empirical_pvalue(a, data.draw(st.permutations(null))) == empirical_pvalue(a, null)
    # null_test reports the same p-value
    res = null_test(a, null)
    assert res.pvalue == empirical_pvalue(a, null) and res.min_pvalue == 1 / (n + 1)
    assert 0.0 <= res.percentile <= 100.0
    # the definition, away from (near-)ties
    arr = np.asarray(null)
    if not np.any(np.abs(arr - a) <= 2e-4 * max(1.0, abs(a))):
        assert empirical_pvalue(a, arr) == (int(np.sum(arr > a)) + 1) / (n + 1)


@given(value=finite, n=st.integers(1, 50))
def test_statistic_equal_to_every_null_value_gives_one(value, n):
    assert empirical_pvalue(value, [value] * n) == 1.0


# --- null_test ---------------------------------------------------------------------------------

def test_null_test_by_hand():
    null = [3.0, 1.0, 2.0, 2.0]
    res = null_test(2.0, null)
    assert isinstance(res, NullTestResult)
    assert res.statistic == 2.0
    np.testing.assert_array_equal(res.null_distribution, null)   # raw, in draw order
    assert res.pvalue == 4 / 5                  # 3.0, 2.0, 2.0 are >= 2.0
    assert res.n_null == 4
    assert res.min_pvalue == 1 / 5
    assert res.null_mean == 2.0
    assert res.null_std == pytest.approx(math.sqrt(2 / 3))
    assert res.percentile == 50.0               # 1 below + half of 2 ties = 2 of 4


def test_null_test_percentile_extremes():
    assert null_test(10.0, [1.0, 2.0]).percentile == 100.0
    assert null_test(-10.0, [1.0, 2.0]).percentile == 0.0
    assert null_test(1.0, [1.0, 1.0]).percentile == 50.0


def test_null_test_single_draw_has_nan_std():
    res = null_test(1.0, [0.5])
    assert math.isnan(res.null_std)
    assert res.pvalue == 0.5 and res.min_pvalue == 0.5


def test_null_test_keeps_a_read_only_copy():
    buf = np.array([0.1, 0.2, 0.3])
    res = null_test(0.25, buf)
    buf[0] = 99.0
    assert res.null_distribution[0] == 0.1
    with pytest.raises(ValueError):
        res.null_distribution[0] = 5.0
    with pytest.raises(AttributeError):
        res.pvalue = 0.0


# --- input validation --------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [empirical_pvalue, null_test])
def test_input_validation(fn):
    with pytest.raises(ValueError, match="`null` must be 1-D"):
        fn(0.0, [[0.0, 1.0]])
    with pytest.raises(ValueError, match="`null` must be 1-D"):
        fn(0.0, 1.0)
    with pytest.raises(ValueError, match="`null` must contain at least one"):
        fn(0.0, [])
    with pytest.raises(ValueError, match="`null` must be finite"):
        fn(0.0, [0.0, np.nan])
    with pytest.raises(ValueError, match="`null` must be finite"):
        fn(0.0, [np.inf])
    with pytest.raises(ValueError, match="`statistic` must be finite"):
        fn(np.nan, [0.0])
    with pytest.raises(ValueError, match="`statistic` must be finite"):
        fn(-np.inf, [0.0])
    with pytest.raises(TypeError, match="`statistic` must be a real number"):
        fn("high", [0.0])


# --- the sequential null (Besag and Clifford 1991) ------------------------------------------

from loccheck.stats.pvalues import sequential_decided, sequential_pvalue, sequential_stop_count  # noqa: E402


@pytest.mark.parametrize("n, alpha, h", [(19, 0.05, 1), (20, 0.05, 2), (99, 0.05, 5), (9, 0.1, 1),
                                         (39, 0.05, 2), (999, 0.01, 10), (199, 0.05, 10)])
def test_stop_count_is_the_fewest_hits_that_decide(n, alpha, h):
    assert sequential_stop_count(n, alpha) == h
    assert h / n > alpha and (h + 1) / (n + 1) > alpha   # h hits: neither p can reach alpha
    assert h == 1 or (h - 1) / n <= alpha                 # with h - 1 the sequential one could


@settings(max_examples=300)
@given(null=st.lists(st.floats(-5, 5), min_size=19, max_size=99),
       statistic=st.floats(-5, 5), alpha=st.sampled_from([0.05, 0.1, 0.2]))
def test_sequential_agrees_with_the_full_null_wherever_it_stops(null, statistic, alpha):
    n = len(null)
    h = sequential_stop_count(n, alpha)
    full = empirical_pvalue(statistic, null)
    # the sequence is drawn in order and stops once decided
    for l in range(1, n + 1):
        if sequential_decided(statistic, null[:l], n_max=n, h=h):
            break
    seq = sequential_pvalue(statistic, null[:l], n_max=n, h=h)
    if seq.stopped_early:
        assert seq.n_drawn == l and seq.pvalue == h / l
        assert seq.pvalue > alpha and full > alpha          # the same verdict at alpha
    else:
        assert l == n and seq.pvalue == full                 # all drawn: the full test itself


def test_sequential_pvalue_is_valid_under_exchangeability():
    """P(p <= alpha) <= alpha when the statistic is one more exchangeable draw: exact for the
    h that loccheck uses, and by simulation for other h (the Besag-Clifford guarantee)."""
    rng = np.random.default_rng(0)
    n, sims = 19, 20000
    for h in (1, 2, 3, 5):
        values = rng.random((sims, n + 1))
        ps = np.array([sequential_pvalue(v[0], v[1:], n_max=n, h=h).pvalue for v in values])
        for alpha in (0.05, 0.1, 0.25):
            rate = float(np.mean(ps <= alpha + 1e-12))
            assert rate <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / sims), (h, alpha, rate)
    # exact, for the h loccheck uses (sequential_stop_count): under exchangeability the number k
    # of null values at or above the statistic is uniform on 0..n, and p <= alpha exactly when
    # k + 1 <= alpha (n + 1), wherever in the draw order those k values fall (first or last
    # here), so the rate is floor(alpha (n + 1)) / (n + 1) <= alpha
    for alpha in (0.05, 0.1, 0.25):
        h = sequential_stop_count(n, alpha)
        for first in (True, False):
            rejected = [k for k in range(n + 1) if sequential_pvalue(
                0.5, [1.0] * k + [0.0] * (n - k) if first else [0.0] * (n - k) + [1.0] * k,
                n_max=n, h=h).pvalue <= alpha]
            assert rejected == list(range(int(np.floor(alpha * (n + 1) + 1e-9)))), (alpha, first, rejected)


def test_sequential_input_validation():
    with pytest.raises(ValueError, match="undecided"):
        sequential_pvalue(1.0, [0.0, 0.5], n_max=19, h=1)
    with pytest.raises(ValueError, match="h <= n_max"):
        sequential_pvalue(1.0, [2.0], n_max=19, h=0)
    with pytest.raises(ValueError, match="`n_null`"):
        sequential_stop_count(0, 0.05)


# --- what a claim's statistic had to exceed (issue 27, item 4) ------------------------------

def test_the_needed_statistic_is_the_null_value_the_p_value_allows_above_it():
    from loccheck.stats.pvalues import needed_statistic

    null = [0.1, 0.5, 0.3] + [0.0] * 16
    assert needed_statistic(null, n_null=19, alpha=0.05) == (0.5, True)       # m = 0: beat the largest
    assert needed_statistic(null + [0.0] * 80, n_null=99, alpha=0.05) == (0.0, True)   # m = 4: the 5th largest
    assert needed_statistic([0.9, 2.0], n_null=19, alpha=0.05) == (2.0, False)   # stopped: a lower bound
    assert needed_statistic([0.1] * 9, n_null=9, alpha=0.05) == (None, True)     # 1/10 > alpha: nothing can
    assert needed_statistic([float("nan"), 0.2] + [0.0] * 17, n_null=19, alpha=0.05) == (None, True)  # a tie with all


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=60), st.sampled_from([0.05, 0.1, 0.29, 0.5]))
def test_just_above_the_needed_statistic_is_significant_and_at_it_is_not(null, alpha):
    from loccheck.stats.pvalues import _TIE_RTOL, needed_statistic, null_test

    needed, exact = needed_statistic(null, n_null=len(null), alpha=alpha)
    assert exact
    if needed is None:
        assert null_test(max(null) * 2 + 1, null).pvalue > alpha
        return
    assert null_test(needed, null).pvalue > alpha                             # a tie counts against it
    assert null_test(needed + 3 * _TIE_RTOL * abs(needed) + 1e-9, null).pvalue <= alpha
