"""The necessity test and the sharing of alpha between a claim's tests (numpy only, no torch).

Necessity: the statistic is the behaviour's drop when a location is ablated on the test
questions (the verdict metric's improvement of the unedited model over the ablated one, so
larger means more is lost). The claim's drop is tested against the drops of random locations of
the same size by the editing test's convention: p = (1 + #{null >= claim}) / (N + 1), one-sided,
ties against the claim, with the same Besag-Clifford sequential stop. A drop that is not
finite counts against the claim, as a diverged edit does.

Several tests on one claim are several hypotheses: their p-values are adjusted by Holm's
step-down method (`holm`), which keeps the family-wise error at alpha whatever their dependence,
and each test is decided on its adjusted p-value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loccheck.stats.verdict import Verdict, compared_gains, min_null_size, sequential_h, underpowered_reason


def holm(pvalues) -> list[float]:
    """Holm's (1979) step-down adjusted p-values, in the input order: the i-th smallest of m is
    multiplied by m - i + 1 (i from 1), made non-decreasing in that order, and capped at 1.
    Rejecting every hypothesis whose adjusted p-value is <= alpha keeps the family-wise error
    rate at alpha under any dependence between the tests."""
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or p.size == 0 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"`pvalues` must be a non-empty 1-D sequence in [0, 1], got {pvalues!r}")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return [float(a) for a in adjusted]


@dataclass(frozen=True)
class NecessityTest:
    """The necessity test of one claim: its drop, the null's, the p-value and the verdict."""
    verdict: Verdict
    reason: str
    pvalue: float
    n_null: int                          # planned
    n_null_fitted: int                   # ablated (fewer when stopped early)
    n_at_least: int
    claim_drop: float | None             # None when not finite
    null_drops: tuple[float | None, ...]
    null_mean: float
    null_std: float
    null_median: float
    stopped_early: bool
    stop: str
    # what the claim's drop had to exceed (and 0) to be significant at alpha (`pvalues.needed_statistic`)
    needed_drop: float | None = None
    needed_drop_exact: bool = True

    def to_json(self) -> dict:
        return {"verdict": self.verdict.value, "verdict_reason": self.reason, "p_value": self.pvalue,
                "n_null": self.n_null, "n_null_fitted": self.n_null_fitted, "n_at_least": self.n_at_least,
                "min_p_value": 1 / (self.n_null + 1), "claim_drop": self.claim_drop,
                "null_drops": list(self.null_drops), "null_mean": self.null_mean,
                "null_std": self.null_std, "null_median": self.null_median,
                "stopped_early": self.stopped_early, "stop": self.stop,
                "needed_drop": self.needed_drop, "needed_drop_exact": self.needed_drop_exact}


def examine_necessity(claim_drop: float, null_drops, *, alpha: float, n_null: int, stop: str = "full",
                      random_what: str = "random locations of the same size", site: str = "head",
                      holm_p: tuple[float, int] | None = None, exhaustive: bool = False) -> NecessityTest:
    """Test the claim's ablation drop against the null's (in draw order; with `stop="sequential"`
    they may end early, as `verdict.examine_location`'s gains). `holm_p`: (the p-value adjusted
    over the claim's tests, how many tests), which then decides in place of the raw p-value;
    `exhaustive`: the null is every other location (`random_locations.draw: every`).

    UNDERPOWERED when 1 / (n_null + 1) > alpha; FALSIFIED when the claim's drop is not positive
    (ablating it loses nothing) or p > alpha; SUPPORTED otherwise."""
    from loccheck.stats.pvalues import describe, needed_statistic, null_test, sequential_pvalue

    usable = claim_drop is not None and math.isfinite(claim_drop)
    claim, null = compared_gains(claim_drop if usable else math.nan, list(null_drops), claim_diverged=not usable,
                                 null_diverged=[d is None or not math.isfinite(d) for d in null_drops])
    seq = None
    if (h := sequential_h(stop, n_null, alpha)) is not None:
        seq = sequential_pvalue(claim, null, n_max=n_null, h=h)
        null = null[:seq.n_drawn]
    elif len(null) != n_null:
        raise ValueError(f"the full test needs all {n_null} null drops, got {len(null)}")
    test = null_test(claim, null)
    pvalue = 1.0 if not usable else (seq.pvalue if seq is not None else test.pvalue)
    n_at_least = test.n_null if not usable else (seq.n_at_least if seq is not None else test.n_at_least)
    kept = [d for d in list(null_drops)[:len(null)] if d is not None and math.isfinite(d)]
    spread = describe(kept)
    decided = holm_p[0] if holm_p is not None else pvalue
    verdict, reason = _decide(claim_drop if usable else None, pvalue, decided, holm_p, n_null, len(null),
                              n_at_least, alpha, random_what, site, seq is not None and seq.stopped_early,
                              exhaustive)
    needed, exact = needed_statistic([math.nan if d is None else d for d in list(null_drops)[:len(null)]],
                                     n_null=n_null, alpha=alpha)
    return NecessityTest(verdict, reason, pvalue, n_null, len(null), n_at_least,
                         float(claim_drop) if usable else None,
                         tuple(float(d) if d is not None and math.isfinite(d) else None
                               for d in list(null_drops)[:len(null)]),
                         spread.mean, spread.std, float(np.median(kept)) if kept else math.nan,
                         seq is not None and seq.stopped_early, "sequential" if seq is not None else "full",
                         None if needed is None else max(needed, 0.0), exact)


def _decide(drop, pvalue, decided, holm_p, n_null, n_used, k, alpha, what, site, stopped, exhaustive) -> tuple:
    if 1 / (n_null + 1) > alpha:
        return Verdict.UNDERPOWERED, underpowered_reason(n_null, alpha, exhaustive)
    if drop is None or drop <= 0:
        lost = "could not be measured (its score is not finite)" if drop is None else \
            f"loses nothing (drop = {drop:.3g} <= 0)"
        return Verdict.FALSIFIED, (f"The behaviour with the claimed {site}s ablated {lost}: "
                                   "the behaviour does not need them.")
    p_text = f"p = {pvalue:.3g}" + (f" (Holm-adjusted over {holm_p[1]} tests: {holm_p[0]:.3g})" if holm_p else "")
    counted = f"{k} of the first {n_used} of {n_null}" if stopped else f"{k} of {n_null}"
    verb = "loses" if k == 1 else "lose"
    if decided > alpha:
        return Verdict.FALSIFIED, (
            f"{p_text} > alpha = {alpha:g}: ablating {counted} {what} {verb} at least as much of the "
            f"behaviour (drop {drop:.3g}) as ablating the claimed {site}s.")
    return Verdict.SUPPORTED, (
        f"{p_text} <= alpha = {alpha:g}: only {counted} {what} {verb} as much of the behaviour as "
        f"ablating the claimed {site}s (drop {drop:.3g}): the behaviour needs them more than it "
        f"needs random {site}s.")
