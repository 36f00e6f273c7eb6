"""From statistics to a verdict on a localization claim (numpy only, no torch).

Rules (METHOD.md, "Statistics and the verdict"), checked in this order:

1. UNDERPOWERED when ``1 / (n_null + 1) > alpha``: no outcome of the null could reject;
2. NO_EFFECT when the whole-model edit does not improve the behaviour (gain <= 0) or diverged:
   there is no effect to localize, so the experiment cannot test the claim;
3. FALSIFIED when ``p > alpha`` (random locations of the same size edit as well), or when the
   claimed location's edit did not improve the behaviour (gain <= 0) or diverged: a location
   that does not move the behaviour is never "specific";
4. SPECIFIC_BUT_WEAK when ``claim_gain / ceiling_gain < rho``: beats random locations, falls
   short of the whole model;
5. SPECIFIC when the claim reaches rho of the ceiling but the ceiling cannot anchor "effective":
   the whole-model edit did not converge, or it gains less than the claim on held-out data by
   more than noise (`ceiling_short`);
6. SUPPORTED otherwise: specific, and effective against a ceiling that is the optimum.

A diverged edit (its training blew up, or a score is not finite) has no optimum to compare, and
is treated so that it can only count against the claim: a diverged random location counts as
editing at least as well as the claim (`examine_location`), a diverged claim is FALSIFIED, a
diverged ceiling is NO_EFFECT. None of them can make a claim SUPPORTED.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from enum import Enum


class Verdict(str, Enum):
    """The outcome of testing a localization claim."""

    SUPPORTED = "SUPPORTED"
    SPECIFIC = "SPECIFIC"                    # beats the null; the ceiling cannot tell "effective"
    SPECIFIC_BUT_WEAK = "SPECIFIC_BUT_WEAK"
    FALSIFIED = "FALSIFIED"
    NO_EFFECT = "NO_EFFECT"
    UNDERPOWERED = "UNDERPOWERED"


@dataclass(frozen=True)
class VerdictResult:
    """A verdict, the one-sentence reason for it, and the optimality ratio behind it.

    Attributes
    ----------
    verdict : Verdict
    reason : str
        One plain-language sentence with the numbers that decided the verdict.
    optimality_ratio : float
        ``claim_gain / ceiling_gain``; nan when the whole-model gain is not positive.
    """

    verdict: Verdict
    reason: str
    optimality_ratio: float

    @property
    def supported(self) -> bool:
        return self.verdict is Verdict.SUPPORTED


def _iv_alpha(alpha) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha}")
    return alpha


def _iv_finite(name: str, value) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value}")
    return value


def min_null_size(alpha: float) -> int:
    """Smallest number of null draws N with ``1 / (N + 1) <= alpha``.

    Below this N the smallest reachable p-value ``1 / (N + 1)`` exceeds `alpha`, so the test
    can never reject. The comparison is the float one used by :func:`decide_verdict`, so
    ``n_null < min_null_size(alpha)`` exactly when the verdict is UNDERPOWERED.

    Parameters
    ----------
    alpha : float
        Significance level, in (0, 1).

    Returns
    -------
    int
        For example 19 for ``alpha=0.05``, 9 for 0.1, 3 for 0.25, 1 for 0.5.
    """
    alpha = _iv_alpha(alpha)
    inv = 1.0 / alpha
    if not math.isfinite(inv):
        raise ValueError(f"`alpha` is too small to need a finite null, got {alpha}")
    n = max(1, math.ceil(inv) - 1)   # a guess; fix float round-off in both directions
    while 1.0 / (n + 1) > alpha:
        n += 1
    while n > 1 and 1.0 / n <= alpha:
        n -= 1
    return n


def sequential_h(stop: str, n_null: int, alpha: float) -> int | None:
    """The sequential rule's h (`pvalues.sequential_stop_count`) when a null of `n_null` is
    drawn with `stop: sequential` and can reach alpha at all; None when every draw is fitted.
    The one place this switch is made: the fitting loops, the tests and replay share it."""
    from loccheck.stats.pvalues import sequential_stop_count

    if stop != "sequential" or n_null < min_null_size(alpha):
        return None
    return sequential_stop_count(n_null, alpha)


def optimality_ratio(claim_gain: float, ceiling_gain: float) -> float:
    """Share of the whole-model gain that the edit at the claimed location reaches.

    Parameters
    ----------
    claim_gain, ceiling_gain : float
        Held-out gains (edited metric minus unedited metric) of the optimal edit at the
        claimed location and of the optimal whole-model edit.

    Returns
    -------
    float
        ``claim_gain / ceiling_gain`` when ``ceiling_gain > 0``, else nan: a ceiling that does not
        improve the metric cannot anchor "effective".
    """
    claim_gain = _iv_finite("claim_gain", claim_gain)
    ceiling_gain = _iv_finite("ceiling_gain", ceiling_gain)
    return claim_gain / ceiling_gain if ceiling_gain > 0 else float("nan")


def _iv_decide(pvalue, n_null, alpha, rho, location_size):
    """Validate decide_verdict's inputs; return them normalised."""
    n_null = operator.index(n_null)
    if n_null < 1:
        raise ValueError(f"`n_null` must be >= 1, got {n_null}")
    alpha = _iv_alpha(alpha)
    rho = float(rho)
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"`rho` must be in (0, 1], got {rho}")
    pvalue = float(pvalue)
    if not 0.0 < pvalue <= 1.0:
        raise ValueError(f"`pvalue` must be in (0, 1], got {pvalue}")
    min_p = 1.0 / (n_null + 1)
    if pvalue < min_p * (1 - 1e-9):
        raise ValueError(f"`pvalue` must be >= 1/(n_null + 1) = {min_p:.3g} for an empirical p-value, got {pvalue}")
    if location_size is not None:
        location_size = operator.index(location_size)
        if location_size < 1:
            raise ValueError(f"`location_size` must be >= 1, got {location_size}")
    return pvalue, n_null, alpha, rho, location_size


def decide_verdict(
    *,
    pvalue: float,
    n_null: int,
    alpha: float,
    claim_gain: float,
    ceiling_gain: float,
    rho: float,
    location_size: int | None = None,
    site: str = "head",
    random_what: str | None = None,
    claim_diverged: bool = False,
    ceiling_diverged: bool = False,
    ceiling_unfit: str | None = None,
    sequential: tuple[int, int] | None = None,
    holm_p: tuple[float, int] | None = None,
    exhaustive: bool = False,
) -> VerdictResult:
    """Decide the verdict on a localization claim.

    Parameters
    ----------
    pvalue : float
        Empirical p-value of the claim's gain against the null, one-sided "greater",
        ``(1 + #{null >= claim}) / (n_null + 1)`` (see :func:`loccheck.stats.pvalues.empirical_pvalue`).
    n_null : int
        Number of random locations in the null, >= 1.
    alpha : float
        Significance level, in (0, 1).
    claim_gain, ceiling_gain : float
        Held-out gains of the edits at the claimed location and at the whole model.
    rho : float
        Share of the whole-model gain the claim must reach to count as effective, in (0, 1].
    location_size : int, optional
        Number of sites in the location; only used to word the reason.
    site : str
        The sites' kind ("head"), to word the reason.
    random_what : str, optional
        What the random locations are, to word the reason (default "random 16-head locations").
    claim_diverged, ceiling_diverged : bool
        Whether the claim's or the whole model's edit diverged (its gain is then not used).
    ceiling_unfit : str, optional
        Why the whole-model edit cannot anchor "effective" (it did not converge, or it gains
        less than the claim beyond noise), as a clause; None when it can.
    sequential : (h, l), optional
        The sequential null stopped at its h-th draw at or above the claim after l draws
        (Besag-Clifford p = h / l); only used to word the reason.
    holm_p : (float, int), optional
        The p-value adjusted by Holm's method over the claim's tests, and how many tests: it
        decides in place of `pvalue` (`stats.necessity.holm`).
    exhaustive : bool
        The null is every other location of the claim's shape (`random_locations.draw: every`),
        not a draw; only used to word an UNDERPOWERED reason.

    Returns
    -------
    VerdictResult
        UNDERPOWERED exactly when ``1 / (n_null + 1) > alpha`` (checked first); else
        NO_EFFECT when the ceiling diverged or ``ceiling_gain <= 0``; else FALSIFIED when the
        claim diverged, ``claim_gain <= 0`` or ``pvalue > alpha``; else SPECIFIC_BUT_WEAK when
        ``claim_gain / ceiling_gain < rho``; else SPECIFIC when `ceiling_unfit`; else SUPPORTED.
    """
    pvalue, n_null, alpha, rho, location_size = _iv_decide(pvalue, n_null, alpha, rho, location_size)
    min_p = 1.0 / (n_null + 1)
    ratio = float("nan") if claim_diverged or ceiling_diverged else optimality_ratio(claim_gain, ceiling_gain)

    what = random_what or (f"random {location_size}-{site} locations" if location_size else
                           "random locations of the same size")
    k = max(0, round(pvalue * (n_null + 1)) - 1)   # null draws at least as good as the claim

    if min_p > alpha:
        return VerdictResult(Verdict.UNDERPOWERED, underpowered_reason(n_null, alpha, exhaustive), ratio)
    no_gain = _without_gain(claim_gain, ceiling_gain, claim_diverged, ceiling_diverged, site, ratio)
    if no_gain is not None:
        return no_gain
    adjusted = "" if holm_p is None else f" (Holm-adjusted over {holm_p[1]} tests: {holm_p[0]:.3g})"
    if (pvalue if holm_p is None else holm_p[0]) > alpha:
        return _beaten(pvalue, alpha, n_null, k, what, site, sequential, ratio, adjusted)
    verb = "edits" if k == 1 else "edit"
    beats = (f"p = {pvalue:.3g}{adjusted} <= alpha = {alpha:g} ({k} of {n_null} {what} {verb} the "
             f"behaviour at least as well)")
    return _specific(beats, ratio, rho, site, ceiling_unfit)


def underpowered_reason(n_null: int, alpha: float, exhaustive: bool = False) -> str:
    """Why a null of `n_null` cannot reject at alpha (1 / (n_null + 1) > alpha): too few draws,
    or, when it is every other location (`exhaustive`), too few locations of the claim's shape."""
    min_p = f"1/{n_null + 1} = {1.0 / (n_null + 1):.3g} > alpha = {alpha:g}"
    if exhaustive:
        return (f"The model has only {n_null + 1} locations of the claim's shape, and the null is every "
                f"one of them but the claim, so the smallest reachable p-value is {min_p}: no location "
                "of this shape can be shown special at this alpha, whatever it does.")
    return (f"With {n_null} random locations the smallest reachable p-value is {min_p}, so the test "
            f"cannot reject: alpha = {alpha:g} needs at least {min_null_size(alpha)} random locations.")


def _beaten(pvalue: float, alpha: float, n_null: int, k: int, what: str, site: str,
            sequential: tuple[int, int] | None, ratio: float, adjusted: str = "") -> VerdictResult:
    """FALSIFIED by the null: p > alpha, worded by how p was reached."""
    if sequential is not None:
        h, l = sequential
        return VerdictResult(Verdict.FALSIFIED, (
            f"p = {h / l:.3g}{adjusted} > alpha = {alpha:g} (sequential, Besag-Clifford p = h / l): {h} of the "
            f"first {l} of {n_null} {what} edit the behaviour at least as well as the claimed "
            f"{site}s, which decides the test: whatever the other {n_null - l} would give, the full "
            "null's p-value would be above alpha."), ratio)
    verb = "edits" if k == 1 else "edit"
    return VerdictResult(Verdict.FALSIFIED, (
        f"p = {pvalue:.3g}{adjusted} > alpha = {alpha:g}: {k} of {n_null} {what} {verb} the behaviour "
        f"at least as well as the claimed {site}s."), ratio)


def _specific(beats: str, ratio: float, rho: float, site: str, ceiling_unfit: str | None) -> VerdictResult:
    """A claim that beats the null: weak, specific, or supported, by the whole-model gain."""
    if ratio < rho:
        return VerdictResult(Verdict.SPECIFIC_BUT_WEAK, (
            f"{beats}, but the claimed {site}s reach only {ratio:.1%} of the whole-model gain "
            f"(rho = {rho:g})."), ratio)
    if ceiling_unfit is not None:
        return VerdictResult(Verdict.SPECIFIC, (
            f"{beats}, and the claimed {site}s reach {ratio:.1%} of the whole-model gain, but the "
            f"whole-model edit {ceiling_unfit}, so it is no optimum to measure \"effective\" "
            "against: the location is specific; whether it is effective is not decided."), ratio)
    return VerdictResult(Verdict.SUPPORTED, (
        f"{beats} and the claimed {site}s reach {ratio:.1%} of the whole-model gain "
        f"(rho = {rho:g}): the location is specific and effective."), ratio)


def _without_gain(claim_gain: float, ceiling_gain: float, claim_diverged: bool,
                  ceiling_diverged: bool, site: str, ratio: float) -> VerdictResult | None:
    """NO_EFFECT when the whole model gains nothing; FALSIFIED when the claimed location gains
    nothing, whatever the null did; None when both edits improved the behaviour."""
    if ceiling_diverged or ceiling_gain <= 0:
        what_happened = ("diverged" if ceiling_diverged else
                         f"did not improve the behaviour (gain = {ceiling_gain:.3g})")
        return VerdictResult(Verdict.NO_EFFECT, (
            f"The whole-model edit {what_happened}, so there is no effect to localize: the "
            f"experiment cannot test whether the claimed {site}s carry the behaviour."), ratio)
    if claim_diverged or claim_gain <= 0:
        what_happened = ("diverged, so it has no optimum to compare" if claim_diverged else
                         f"did not improve the behaviour (gain = {claim_gain:.3g} <= 0)")
        return VerdictResult(Verdict.FALSIFIED, (
            f"The edit at the claimed {site}s {what_happened}, while the whole-model edit "
            f"gains {ceiling_gain:.3g}: editing the location does not show the behaviour lives "
            f"there."), ratio)
    return None


def count_effective(null_gains, ceiling_gain: float, rho: float) -> int | None:
    """How many null locations reach rho of the whole-model gain (None when that gain <= 0)."""
    import numpy as np

    if not ceiling_gain > 0:
        return None
    return int(np.sum(np.asarray(null_gains) >= rho * ceiling_gain))


CEILING_SLACK = 0.1   # an optimality ratio up to 1.1 is within what optimisation noise gives


def ceiling_short(claim_gain: float, ceiling_gain: float, null_std: float) -> bool:
    """Whether the claimed location gains more than the whole model beyond noise: by more than
    `CEILING_SLACK` of the ceiling's gain and by more than the null's standard deviation. The
    ceiling can do everything a location can, so that means it failed to reach its optimum."""
    noise = max(null_std if math.isfinite(null_std) else 0.0, CEILING_SLACK * abs(ceiling_gain))
    return bool(claim_gain - ceiling_gain > noise)


@dataclass(frozen=True)
class LocationTest:
    """Everything the verdict on one edit method rests on, computed once (the report only
    formats these numbers). Gains are improvements: the metric's change, signed so that
    larger is better (`loccheck.metrics.Metric.improvement`).

    p = (1 + n_at_least) / (n_null + 1), one-sided "greater", ties count against the claim."""
    verdict: Verdict
    reason: str
    pvalue: float
    n_null: int
    n_at_least: int
    min_pvalue: float
    min_null_size: int
    claim_gain: float
    ceiling_gain: float
    null_gains: tuple[float | None, ...]   # in draw order; None where the draw's edit diverged
    null_mean: float
    null_std: float
    null_min: float
    null_max: float
    claim_percentile: float
    optimality_ratio: float
    n_null_effective: int | None      # null locations reaching rho x the ceiling's gain
    ceiling_short: bool               # the claim beats the ceiling by more than the null's spread
    ceiling_converged: bool           # the whole-model edit reached its optimum by the training rule
    n_null_fitted: int                # null locations the test used (fewer when stopped early)
    stop: str                         # "full", or "sequential" (Besag-Clifford)
    stopped_early: bool
    n_null_diverged: int = 0          # counted as ties with the claim, not in null_gains
    claim_diverged: bool = False
    ceiling_diverged: bool = False
    # what the claim's gain had to exceed to be significant at alpha against this null (None: no
    # gain could be); exact, or a lower bound when the sequential null stopped (`needed_statistic`)
    needed_gain: float | None = None
    needed_gain_exact: bool = True

    def to_json(self) -> dict:
        return {"verdict": self.verdict.value, "verdict_reason": self.reason,
                "p_value": self.pvalue, "n_null": self.n_null, "n_at_least": self.n_at_least,
                "min_p_value": self.min_pvalue, "min_null_size": self.min_null_size,
                "claim_gain": self.claim_gain, "ceiling_gain": self.ceiling_gain,
                "null_gains": list(self.null_gains), "null_mean": self.null_mean,
                "null_std": self.null_std, "null_min": self.null_min, "null_max": self.null_max,
                "claim_percentile": self.claim_percentile,
                "optimality_ratio": self.optimality_ratio,
                "n_null_effective": self.n_null_effective, "ceiling_short": self.ceiling_short,
                "ceiling_converged": self.ceiling_converged,
                "n_null_fitted": self.n_null_fitted, "stop": self.stop,
                "stopped_early": self.stopped_early, "n_null_diverged": self.n_null_diverged,
                "claim_diverged": self.claim_diverged, "ceiling_diverged": self.ceiling_diverged,
                "needed_gain": self.needed_gain, "needed_gain_exact": self.needed_gain_exact}


def compared_gains(claim_gain: float, null_gains, *, claim_diverged: bool = False,
                   null_diverged=None) -> tuple[float, list[float]]:
    """The statistics the null test compares, the one definition the sequential stop and the
    test share: a claim without a usable gain (its edit diverged, or its score is not finite) is
    scored 0 (it is FALSIFIED whatever the null does); a random location without one counts as a
    tie with the claim."""
    usable = not claim_diverged and claim_gain is not None and math.isfinite(claim_gain)
    claim = float(claim_gain) if usable else 0.0
    flags = [False] * len(null_gains) if null_diverged is None else list(null_diverged)
    return claim, [claim if d or g is None or not math.isfinite(g) else float(g)
                   for g, d in zip(null_gains, flags)]


def examine_location(claim_gain: float, ceiling_gain: float, null_gains, *, alpha: float, rho: float,
                     location_size: int | None = None, site: str = "head", n_null: int | None = None,
                     random_what: str | None = None,
                     stop: str = "full", null_diverged=None, claim_diverged: bool = False,
                     ceiling_diverged: bool = False, ceiling_converged: bool = True,
                     ceiling_stopped: str | None = None, holm_p: tuple[float, int] | None = None,
                     exhaustive: bool = False) -> LocationTest:
    """Test the claim's gain against the null's and decide the verdict.

    `null_gains` are the null's gains in draw order, `n_null` the planned null size (default:
    all of them). With `stop="full"` every planned gain is there and p = (1 + k) / (n_null + 1)
    (`null_test`). With `stop="sequential"` the gains may stop early: when the h-th gain at or
    above the claim's is among them (h from `pvalues.sequential_stop_count`), the test uses the
    first l of them and p = h / l (Besag and Clifford 1991), which is above alpha, as the full
    null's p-value would be: the verdict is FALSIFIED either way. Otherwise all n_null are needed
    and the test is the full one.

    Diverged edits (flags `null_diverged`, one per null gain, `claim_diverged`,
    `ceiling_diverged`) and gains that are not finite can only count against the claim
    (`compared_gains`): such a random location counts as a tie with the claim (ties count
    against it) and is left out of the null's mean and spread; a diverged claim or ceiling
    decides the verdict as `decide_verdict` says. A ceiling that did not converge
    (`ceiling_converged`, with its `ceiling_stopped` label) or falls short (`ceiling_short`)
    cannot make the claim SUPPORTED (`decide_verdict`'s SPECIFIC). `holm_p`: the p-value adjusted
    over the claim's tests and their number, which decides in place of p (`decide_verdict`);
    `exhaustive`: the null is every other location (`random_locations.draw: every`)."""
    from loccheck.stats.pvalues import describe, needed_statistic, null_test, sequential_pvalue

    n_null = len(null_gains) if n_null is None else n_null
    diverged = [False] * len(null_gains) if null_diverged is None else [bool(d) for d in null_diverged]
    if len(diverged) != len(null_gains):
        raise ValueError(f"`null_diverged` has {len(diverged)} flags for {len(null_gains)} null gains")
    diverged = [d or g is None or not math.isfinite(g) for g, d in zip(null_gains, diverged)]
    claim_diverged = claim_diverged or claim_gain is None or not math.isfinite(claim_gain)
    claim_gain, null_gains = compared_gains(claim_gain, null_gains, claim_diverged=claim_diverged,
                                            null_diverged=diverged)
    ceiling_diverged = ceiling_diverged or ceiling_gain is None or not math.isfinite(ceiling_gain)
    ceiling_gain = 0.0 if ceiling_diverged else float(ceiling_gain)
    seq = None
    if (h := sequential_h(stop, n_null, alpha)) is not None:
        seq = sequential_pvalue(claim_gain, null_gains, n_max=n_null, h=h)
        null_gains = list(null_gains)[:seq.n_drawn]
    elif len(null_gains) != n_null:
        raise ValueError(f"the full test needs all {n_null} null gains, got {len(null_gains)}")
    test = null_test(claim_gain, null_gains)
    pvalue = seq.pvalue if seq is not None else test.pvalue
    used = test.null_distribution
    kept = [g for g, d in zip(used, diverged) if not d]   # the diverged draws have no gain to describe
    spread = describe(kept)
    short = not (claim_diverged or ceiling_diverged) and ceiling_short(claim_gain, ceiling_gain, spread.std)
    unfit = (f"did not converge ({ceiling_stopped or 'not converged'})" if not ceiling_converged else
             f"gains less than the claim on the held-out questions ({ceiling_gain:.3g} against "
             f"{claim_gain:.3g}) by more than noise" if short else None)
    decision = decide_verdict(pvalue=max(pvalue, 1 / (n_null + 1)), n_null=n_null, alpha=alpha,
                              claim_gain=claim_gain, ceiling_gain=ceiling_gain, rho=rho,
                              location_size=location_size, site=site, random_what=random_what,
                              claim_diverged=claim_diverged, ceiling_diverged=ceiling_diverged,
                              ceiling_unfit=unfit, holm_p=holm_p, exhaustive=exhaustive,
                              sequential=(seq.h, seq.n_drawn) if seq is not None and seq.stopped_early else None)
    reason = decision.reason
    needed, exact = needed_statistic([math.nan if d else g for g, d in zip(used, diverged)], n_null=n_null,
                                     alpha=alpha)
    if claim_diverged:   # beaten by every draw
        pvalue, test = 1.0, replace(test, n_at_least=test.n_null)
    return LocationTest(
        verdict=decision.verdict, reason=reason, pvalue=pvalue, n_null=n_null,
        n_at_least=seq.n_at_least if seq is not None else test.n_at_least,
        min_pvalue=1 / (n_null + 1), min_null_size=min_null_size(alpha),
        claim_gain=float(claim_gain), ceiling_gain=float(ceiling_gain),
        null_gains=tuple(None if d else float(g) for g, d in zip(used, diverged)), null_mean=spread.mean,
        null_std=spread.std, null_min=spread.min, null_max=spread.max,
        claim_percentile=test.percentile, optimality_ratio=decision.optimality_ratio,
        n_null_effective=None if ceiling_diverged else count_effective(kept, ceiling_gain, rho),
        ceiling_short=short, ceiling_converged=ceiling_converged,
        n_null_diverged=sum(diverged[:test.n_null]), claim_diverged=claim_diverged,
        ceiling_diverged=ceiling_diverged,
        n_null_fitted=test.n_null, stop="sequential" if seq is not None else "full",
        stopped_early=bool(seq is not None and seq.stopped_early), needed_gain=needed, needed_gain_exact=exact)
