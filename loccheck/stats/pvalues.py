"""Exact empirical p-values against a null of random locations (numpy only, no torch).

Convention everywhere in this module: one-sided, alternative "greater" (a larger statistic,
e.g. a larger held-out gain, is more in favour of the claim), p = (1 + k) / (N + 1) with
k = #{i : null_i >= statistic}. Ties and near-ties count against the claim.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

# Relative tolerance under which a null value counts as a tie with the statistic: two gains
# that differ only by round-off must not make the claim look better than it is. Gains come from
# float32 scores, and two edits that are the same function are fitted by different arithmetic
# (a frozen prefix from another block; another CPU's kernels), whose round-off training carries
# along: measured with AVX2 kernels, 6e-7 relative after 2 epochs, 1.0e-5 after 40
# (tests/end_to_end/test_known_answers.py, test_known_mlp.py). 1e-4 leaves a margin; counting a near-tie
# against the claim can only make p larger, never invalid.
_TIE_RTOL = 1e-4


def _iv_statistic(statistic) -> float:
    """Validate the observed statistic; return it as a float."""
    try:
        value = float(statistic)
    except (TypeError, ValueError):
        raise TypeError(f"`statistic` must be a real number, got {statistic!r}") from None
    if not np.isfinite(value):
        raise ValueError(f"`statistic` must be finite, got {value}")
    return value


def _iv_null(null) -> np.ndarray:
    """Validate the null distribution; return a float64 copy, in draw order."""
    arr = np.array(null, dtype=float)  # copy: callers may reuse their buffer
    if arr.ndim != 1:
        raise ValueError(f"`null` must be 1-D, got an array of shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("`null` must contain at least one value, got an empty array")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`null` must be finite, got {int(np.sum(~np.isfinite(arr)))} non-finite value(s)")
    return arr


def _tie_threshold(statistic: float) -> float:
    """Null values at or above this count as >= statistic (monotone in `statistic`)."""
    return statistic - _TIE_RTOL * abs(statistic)


def _pvalue(statistic: float, null: np.ndarray) -> float:
    k = int(np.count_nonzero(null >= _tie_threshold(statistic)))
    return (k + 1) / (null.size + 1)


def empirical_pvalue(statistic: float, null: ArrayLike) -> float:
    """Exact one-sided empirical p-value of `statistic` against a null sample.

    Parameters
    ----------
    statistic : float
        The observed statistic (e.g. the held-out gain of the edit at the claimed location).
        Must be finite.
    null : array_like, shape (N,)
        The same statistic at N random locations. Must be 1-D, non-empty and finite.

    Returns
    -------
    float
        ``p = (1 + k) / (N + 1)`` with ``k = #{i : null_i >= statistic}``.

    Notes
    -----
    The alternative is "greater": small p means the claim's statistic is larger than the
    null's. The +1 in numerator and denominator counts the observed statistic as one draw of
    the null, which makes the test exact under exchangeability (P(p <= alpha) <= alpha) and
    bounds p below by ``1 / (N + 1)``: with N = 19, the smallest reachable p is 0.05.
    Ties count against the claim: a null value equal to the statistic, or below it by at
    most a relative 1e-4 (round-off of float32 scores carried through training), is counted in k.

    Examples
    --------
    >>> empirical_pvalue(2.0, [0.0] * 19)
    0.05
    >>> empirical_pvalue(1.0, [0.0] * 18 + [1.0])
    0.1
    """
    return _pvalue(_iv_statistic(statistic), _iv_null(null))


@dataclass(frozen=True)
class NullTestResult:
    """Result of testing a statistic against a null of random locations.

    Attributes
    ----------
    statistic : float
        The observed statistic (the claim's gain).
    null_distribution : np.ndarray, shape (n_null,)
        The raw null sample, in draw order (a read-only copy).
    pvalue : float
        ``(1 + #{null >= statistic}) / (n_null + 1)``, alternative "greater", ties
        (within a relative 1e-4) counted against the claim.
    n_null : int
        Number of null draws N.
    n_at_least : int
        k, the number of null values at or above the statistic (ties included).
    min_pvalue : float
        ``1 / (n_null + 1)``, the smallest p-value this null can produce.
    null_mean : float
        Mean of the null.
    null_std : float
        Standard deviation of the null with ``ddof=1``; nan when ``n_null == 1``.
    percentile : float
        Percentile of the statistic within the null, in percent: the share of null values
        strictly below it plus half the share of ties (same tie tolerance as `pvalue`).
        100 means above every null value, 50 means level with all of them.
    """

    statistic: float
    null_distribution: np.ndarray
    pvalue: float
    n_null: int
    n_at_least: int
    min_pvalue: float
    null_mean: float
    null_std: float
    percentile: float


def null_test(statistic: float, null: ArrayLike) -> NullTestResult:
    """Test `statistic` against a null sample and summarise the null.

    Parameters
    ----------
    statistic : float
        The observed statistic (the claim's gain). Must be finite.
    null : array_like, shape (N,)
        The same statistic at N random locations, in draw order. 1-D, non-empty, finite.

    Returns
    -------
    NullTestResult
        p-value by :func:`empirical_pvalue` (one-sided "greater", +1 convention, ties
        against the claim), plus the null's mean, spread and the claim's percentile.
    """
    stat = _iv_statistic(statistic)
    arr = _iv_null(null)
    arr.flags.writeable = False
    n = arr.size
    tol = _TIE_RTOL * abs(stat)
    n_below = int(np.count_nonzero(arr < stat - tol))
    n_ties = int(np.count_nonzero((arr >= stat - tol) & (arr <= stat + tol)))
    return NullTestResult(
        statistic=stat,
        null_distribution=arr,
        pvalue=_pvalue(stat, arr),
        n_null=n,
        n_at_least=int(np.count_nonzero(arr >= _tie_threshold(stat))),
        min_pvalue=1.0 / (n + 1),
        null_mean=float(np.mean(arr)),
        null_std=float(np.std(arr, ddof=1)) if n > 1 else float("nan"),
        percentile=100.0 * (n_below + 0.5 * n_ties) / n,
    )


@dataclass(frozen=True)
class Description:
    """Summary of a sample of values (the finite ones): what the report prints as
    ``mean ± std [min, max]``. std has ``ddof=1`` (a spread estimate); nan for fewer than 2."""
    n: int
    mean: float
    std: float
    min: float
    max: float

    def to_json(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max}


def describe(values: ArrayLike) -> Description:
    """Mean, sample std (ddof=1), min and max of the finite values; nan where there are none."""
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        nan = float("nan")
        return Description(0, nan, nan, nan, nan)
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else float("nan")
    return Description(int(arr.size), float(np.mean(arr)), std, float(np.min(arr)), float(np.max(arr)))


def sequential_stop_count(n_null: int, alpha: float) -> int:
    """h: how many null values at or above the statistic decide the test at `alpha` whatever
    the rest of a null of `n_null` would show: the smallest h with h / n_null > alpha. Then a
    stopped sequential test's p-value h / l (l <= n_null draws) is above alpha, and so is the
    full null's, (k + 1) / (n_null + 1) with k >= h."""
    if n_null < 1 or not 0 < alpha < 1:
        raise ValueError(f"`n_null` must be >= 1 and `alpha` in (0, 1), got {n_null} and {alpha}")
    h = int(np.floor(alpha * n_null)) + 1
    while h > 1 and (h - 1) / n_null > alpha:   # float round-off in the floor
        h -= 1
    while h / n_null <= alpha:
        h += 1
    return h


@dataclass(frozen=True)
class SequentialResult:
    """A sequential Monte Carlo p-value (Besag and Clifford, Biometrika 1991).

    Null values are drawn in their seeded order and the drawing stops at the h-th value at or
    above the statistic. Stopped after l draws: p = h / l. Not stopped after all n_max draws,
    with g < h values at or above it: p = (g + 1) / (n_max + 1), the full null's p-value.
    P(p <= alpha) <= alpha under exchangeability, and with h from `sequential_stop_count` a
    stopped test's p-value is above alpha, as the full null's would be."""
    pvalue: float
    n_drawn: int          # l: null values used (the first l of the draw order)
    n_at_least: int       # among them, at or above the statistic (ties included)
    stopped_early: bool
    h: int
    n_max: int


def sequential_pvalue(statistic: float, null: ArrayLike, *, n_max: int, h: int) -> SequentialResult:
    """Besag-Clifford p-value of `statistic` from the null values drawn so far, in draw order
    (at most `n_max`); ties count against the claim, as in `empirical_pvalue`. When the h-th
    value at or above the statistic is among them, the values after it are not used."""
    stat = _iv_statistic(statistic)
    arr = _iv_null(null)
    if not 1 <= h <= n_max or arr.size > n_max:
        raise ValueError(f"need 1 <= h <= n_max and at most n_max values, got h={h}, "
                         f"n_max={n_max}, {arr.size} values")
    hits = np.flatnonzero(arr >= _tie_threshold(stat))
    if hits.size >= h:
        l = int(hits[h - 1]) + 1
        return SequentialResult(h / l, l, h, True, h, n_max)
    if arr.size < n_max:
        raise ValueError(f"undecided: {hits.size} of {arr.size} values at or above the statistic, "
                         f"fewer than h = {h}, and fewer than n_max = {n_max} drawn")
    return SequentialResult((hits.size + 1) / (n_max + 1), n_max, int(hits.size), False, h, n_max)


def sequential_decided(statistic: float, null: ArrayLike, *, n_max: int, h: int) -> bool:
    """Whether the values drawn so far decide the sequential test (h at or above it, or all)."""
    arr = np.asarray(null, dtype=float)
    return arr.size >= n_max or int(np.count_nonzero(arr >= _tie_threshold(float(statistic)))) >= h


def needed_statistic(null: ArrayLike, *, n_null: int, alpha: float) -> tuple[float | None, bool]:
    """What a statistic had to exceed to be significant at `alpha` against this null: (X, exact).

    p = (1 + k) / (n_null + 1) <= alpha allows at most m null values at or above the statistic,
    so it must exceed the (m + 1)-th largest null value X (ties count against it: it must beat X
    by more than the tie tolerance). A draw without a value (nan: a diverged edit, a tie with
    anything) counts against every statistic. With fewer draws than `n_null` (a sequential null
    that stopped), the draws not made could only add to k: X from the drawn ones is a lower bound
    (`exact` False). None when no statistic could be significant (m < 0, or m + 1 drawn values
    are not there)."""
    arr = np.sort(np.where(np.isnan(np.asarray(null, dtype=float)), np.inf, np.asarray(null, dtype=float)))[::-1]
    m = int(alpha * (n_null + 1)) + 1
    while m >= 0 and (m + 1) / (n_null + 1) > alpha:     # the p-value's own comparison, not a rounded one
        m -= 1
    if m < 0 or m >= arr.size or not np.isfinite(arr[m]):
        return None, arr.size >= n_null
    return float(arr[m]), arr.size >= n_null
