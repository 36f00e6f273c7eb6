import math

import numpy as np

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loccheck.stats import verdict
from loccheck.stats.verdict import Verdict, VerdictResult, decide_verdict, min_null_size, optimality_ratio

BASE = dict(pvalue=0.01, n_null=99, alpha=0.05, claim_gain=0.95, ceiling_gain=1.0, rho=0.9)


def decide(**kw):
    return decide_verdict(**{**BASE, **kw})


def test_verdict_values_equal_names():
    assert [v.value for v in Verdict] == ["SUPPORTED", "SPECIFIC", "SPECIFIC_BUT_WEAK", "FALSIFIED",
                                         "NO_EFFECT", "UNDERPOWERED"]
    assert Verdict("FALSIFIED") is Verdict.FALSIFIED
    assert Verdict.SUPPORTED == "SUPPORTED"


# --- min_null_size -----------------------------------------------------------------------------

@pytest.mark.parametrize("alpha, n", [(0.05, 19), (0.1, 9), (0.25, 3), (0.5, 1), (0.99, 1),
                                      (0.01, 99), (0.001, 999), (1 / 3, 2), (0.3, 3), (0.2, 4)])
def test_min_null_size(alpha, n):
    assert min_null_size(alpha) == n


@given(alpha=st.floats(min_value=1e-6, max_value=1.0, exclude_max=True, exclude_min=True))
def test_min_null_size_is_the_smallest(alpha):
    n = min_null_size(alpha)
    assert 1 / (n + 1) <= alpha
    assert n == 1 or 1 / n > alpha


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_min_null_size_validation(alpha):
    with pytest.raises(ValueError, match="`alpha` must be in"):
        min_null_size(alpha)


# --- optimality_ratio --------------------------------------------------------------------------

def test_optimality_ratio():
    assert optimality_ratio(0.5, 2.0) == 0.25
    assert optimality_ratio(-1.0, 2.0) == -0.5
    assert math.isnan(optimality_ratio(0.5, 0.0))
    assert math.isnan(optimality_ratio(0.5, -1.0))
    with pytest.raises(ValueError, match="`claim_gain` must be finite"):
        optimality_ratio(math.nan, 1.0)
    with pytest.raises(ValueError, match="`ceiling_gain` must be finite"):
        optimality_ratio(1.0, math.inf)


# --- decide_verdict: each branch by hand --------------------------------------------------------

def test_supported():
    res = decide(location_size=16)
    assert isinstance(res, VerdictResult) and res.supported
    assert res.verdict is Verdict.SUPPORTED
    assert res.optimality_ratio == pytest.approx(0.95)
    assert "p = 0.01 <= alpha = 0.05" in res.reason
    assert "0 of 99 random 16-head locations" in res.reason
    assert "95.0%" in res.reason


def test_supported_at_exactly_rho_and_exactly_alpha():
    res = decide(pvalue=0.05, n_null=19, claim_gain=0.9, ceiling_gain=1.0)
    assert res.verdict is Verdict.SUPPORTED


def test_falsified_reason_counts_the_null():
    res = decide(pvalue=7 / 20, n_null=19, location_size=16)
    assert res.verdict is Verdict.FALSIFIED and not res.supported
    assert res.reason == ("p = 0.35 > alpha = 0.05: 6 of 19 random 16-head locations edit the "
                          "behaviour at least as well as the claimed heads.")


def test_falsified_even_when_effective():
    # the paper's finding: as good as the whole model, but so are random heads
    res = decide(pvalue=0.5, n_null=23, claim_gain=1.0, ceiling_gain=1.0, location_size=1)
    assert res.verdict is Verdict.FALSIFIED
    assert "11 of 23 random 1-head locations" in res.reason
    assert res.optimality_ratio == 1.0


def test_falsified_without_location_size():
    res = decide(pvalue=2 / 20, n_null=19)
    assert "1 of 19 random locations of the same size edits" in res.reason


def test_specific_but_weak_short_of_ceiling():
    res = decide(claim_gain=0.4, ceiling_gain=1.0)
    assert res.verdict is Verdict.SPECIFIC_BUT_WEAK
    assert "reach only 40.0% of the whole-model gain" in res.reason
    assert res.optimality_ratio == pytest.approx(0.4)


@pytest.mark.parametrize("ceiling_gain", [0.0, -0.2])
def test_no_effect_when_whole_model_does_not_improve(ceiling_gain):
    # checked before p: with no effect to localize, beating random locations means nothing
    for pvalue in (0.05, 1.0):
        res = decide(pvalue=pvalue, claim_gain=0.4, ceiling_gain=ceiling_gain)
        assert res.verdict is Verdict.NO_EFFECT
        assert math.isnan(res.optimality_ratio)
        assert f"did not improve the behaviour (gain = {ceiling_gain:.3g})" in res.reason


@pytest.mark.parametrize("claim_gain", [0.0, -0.3])
def test_a_location_that_does_not_improve_is_never_specific(claim_gain):
    # every random location did worse (p at its minimum), yet the claim did not move the behaviour
    res = decide(pvalue=1 / 20, claim_gain=claim_gain, ceiling_gain=1.0)
    assert res.verdict is Verdict.FALSIFIED
    assert "did not improve the behaviour" in res.reason and "<= 0" in res.reason


def test_diverged_edits_never_support_the_claim():
    res = decide(pvalue=1 / 20, claim_gain=1.0, ceiling_gain=1.0, ceiling_diverged=True)
    assert res.verdict is Verdict.NO_EFFECT and "whole-model edit diverged" in res.reason
    res = decide(pvalue=1 / 20, claim_gain=1.0, ceiling_gain=1.0, claim_diverged=True)
    assert res.verdict is Verdict.FALSIFIED and "claimed heads diverged" in res.reason
    assert math.isnan(res.optimality_ratio)


def test_a_diverged_random_location_counts_against_the_claim():
    # 19 draws below the claim: p = 1/20. One of them diverged: it counts as a tie, p = 2/20,
    # and its gain leaves the null's summary.
    gains = [0.1 * i for i in range(19)]
    clean = verdict.examine_location(2.0, 2.0, gains, alpha=0.05, rho=0.9)
    assert clean.verdict is Verdict.SUPPORTED and clean.pvalue == pytest.approx(1 / 20)
    flags = [i == 3 for i in range(19)]
    hit = verdict.examine_location(2.0, 2.0, gains, alpha=0.05, rho=0.9, null_diverged=flags)
    assert hit.verdict is Verdict.FALSIFIED and hit.pvalue == pytest.approx(2 / 20)
    assert hit.n_at_least == 1 and hit.n_null_diverged == 1
    assert hit.null_gains[3] is None and hit.null_mean == pytest.approx(np.mean(gains[:3] + gains[4:]))
    claim_hit = verdict.examine_location(2.0, 2.0, gains, alpha=0.05, rho=0.9, claim_diverged=True)
    assert claim_hit.verdict is Verdict.FALSIFIED and claim_hit.pvalue == 1.0
    assert claim_hit.n_at_least == 19 and claim_hit.claim_diverged


def test_underpowered_is_checked_first_and_says_what_is_needed():
    # 18 null draws: min p = 1/19 > 0.05, even though p is as small as it can be
    res = decide(pvalue=1 / 19, n_null=18)
    assert res.verdict is Verdict.UNDERPOWERED
    assert "needs at least 19 random locations" in res.reason
    assert "1/19" in res.reason
    res = decide(pvalue=1.0, n_null=5, alpha=0.1, claim_gain=0.0, ceiling_gain=0.0)
    assert res.verdict is Verdict.UNDERPOWERED
    assert "at least 9 random locations" in res.reason


def test_boundary_n_null_equal_to_min_null_size_is_not_underpowered():
    assert decide(pvalue=1 / 20, n_null=19).verdict is Verdict.SUPPORTED
    assert decide(pvalue=1 / 10, n_null=9, alpha=0.1).verdict is Verdict.SUPPORTED
    assert decide(pvalue=1 / 9, n_null=8, alpha=0.1).verdict is Verdict.UNDERPOWERED


@given(n_null=st.integers(1, 2000),
       alpha=st.floats(min_value=1e-4, max_value=1.0, exclude_min=True, exclude_max=True))
def test_underpowered_exactly_when_min_pvalue_above_alpha(n_null, alpha):
    # the best possible outcome (p at its minimum, claim as good as the whole model)
    res = decide(pvalue=1 / (n_null + 1), n_null=n_null, alpha=alpha, claim_gain=1.0, ceiling_gain=1.0)
    underpowered = 1 / (n_null + 1) > alpha
    assert (res.verdict is Verdict.UNDERPOWERED) == underpowered
    assert underpowered == (n_null < min_null_size(alpha))
    if not underpowered:
        assert res.verdict is Verdict.SUPPORTED


@given(pvalue=st.floats(0.0, 1.0, exclude_min=True), n_null=st.integers(19, 500),
       claim=st.floats(-2, 2), full=st.floats(-2, 2).filter(lambda x: x <= 0 or x >= 1e-6))
def test_verdict_follows_the_rules(pvalue, n_null, claim, full):
    pvalue = max(pvalue, 1 / (n_null + 1))
    res = decide(pvalue=pvalue, n_null=n_null, claim_gain=claim, ceiling_gain=full)
    if full <= 0:
        expected = Verdict.NO_EFFECT
    elif pvalue > 0.05 or claim <= 0:
        expected = Verdict.FALSIFIED
    elif claim / full >= 0.9:
        expected = Verdict.SUPPORTED
    else:
        expected = Verdict.SPECIFIC_BUT_WEAK
    assert res.verdict is expected
    assert res.reason.endswith(".") and res.reason.count("\n") == 0


# --- input validation --------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(alpha=0.0), "`alpha` must be in"), (dict(alpha=1.0), "`alpha` must be in"),
    (dict(alpha=math.nan), "`alpha` must be in"),
    (dict(rho=0.0), "`rho` must be in"), (dict(rho=1.01), "`rho` must be in"),
    (dict(n_null=0), "`n_null` must be >= 1"),
    (dict(pvalue=0.0), "`pvalue` must be in"), (dict(pvalue=1.2), "`pvalue` must be in"),
    (dict(pvalue=0.001, n_null=99), "`pvalue` must be >= 1/"),
    (dict(claim_gain=math.nan), "`claim_gain` must be finite"),
    (dict(location_size=0), "`location_size` must be >= 1"),
])
def test_input_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        decide(**kw)


def test_input_validation_types():
    with pytest.raises(TypeError):
        decide(n_null=19.5)
    with pytest.raises(TypeError):
        decide_verdict(0.01, 99, 0.05, 1.0, 1.0, 0.9)   # keyword-only


def test_a_claim_can_expect_every_verdict():
    import typing

    from loccheck.claim.model import Verdicts

    assert list(typing.get_args(Verdicts)) == [v.value for v in Verdict]


def test_a_ceiling_that_is_no_optimum_cannot_make_a_claim_effective():
    """SUPPORTED needs a ceiling that converged and is not beaten by the claim beyond noise;
    otherwise a specific claim that reaches rho of it is SPECIFIC, one that does not is still
    SPECIFIC_BUT_WEAK (a better ceiling would only raise the bar on the training pairs)."""
    gains = [0.1 * i for i in range(19)]
    ok = verdict.examine_location(2.0, 2.1, gains, alpha=0.05, rho=0.9)
    assert ok.verdict is Verdict.SUPPORTED and ok.ceiling_converged and not ok.ceiling_short
    capped = verdict.examine_location(2.0, 2.1, gains, alpha=0.05, rho=0.9, ceiling_converged=False,
                                      ceiling_stopped="capped")
    assert capped.verdict is Verdict.SPECIFIC
    assert "did not converge (capped)" in capped.reason and "effective is not decided" in capped.reason
    short = verdict.examine_location(2.0, 1.2, gains, alpha=0.05, rho=0.9)   # 0.8 above, std 0.56
    assert short.ceiling_short and short.verdict is Verdict.SPECIFIC
    assert "gains less than the claim" in short.reason
    weak = verdict.examine_location(1.9, 4.0, gains, alpha=0.05, rho=0.9, ceiling_converged=False)
    assert weak.verdict is Verdict.SPECIFIC_BUT_WEAK


def test_a_score_that_is_not_finite_is_a_missing_value_that_counts_against_the_claim():
    gains = [0.1 * i for i in range(18)] + [float("nan")]
    res = verdict.examine_location(2.0, 2.0, gains, alpha=0.05, rho=0.9)
    assert res.n_null_diverged == 1 and res.null_gains[-1] is None and res.pvalue == pytest.approx(2 / 20)
    claim, null = verdict.compared_gains(float("nan"), [1.0, float("inf")], null_diverged=[False, False])
    assert (claim, null) == (0.0, [1.0, 0.0])


def test_the_sequential_reason_is_only_for_a_verdict_the_null_decided():
    """An early stop words the FALSIFIED reason; it must not replace NO_EFFECT's."""
    gains = [3.0] + [0.1] * 18
    falsified = verdict.examine_location(2.0, 2.0, gains[:1], alpha=0.05, rho=0.9, n_null=19, stop="sequential")
    assert falsified.stopped_early and "Besag-Clifford" in falsified.reason
    no_effect = verdict.examine_location(2.0, -1.0, gains[:1], alpha=0.05, rho=0.9, n_null=19, stop="sequential")
    assert no_effect.verdict is Verdict.NO_EFFECT and no_effect.reason.startswith("The whole-model edit did not")
