"""Calibration: when the claimed location is itself a random draw, the p-value must be
(super-)uniform, so p <= alpha (and with it a false SUPPORTED) happens at rate <= alpha.

Measured without new fits: one run fits every pair of heads of a tiny model in which every head
is live (28 locations), then
* leave-one-out over a pool of M i.i.d. random pairs: each pool member is the claim and the
  other M - 1 the null (the issue's measurement);
* the exact rate for the null `verify` draws: every one of the 28 pairs as the claim, and the
  probability, over the null's seed, that N = 19 draws put it at p <= alpha (binomial, exact).

The p-value's convention (ties against the claim, order of the null irrelevant, [1/(N+1), 1],
non-increasing in the claim's gain) is property-tested in tests/stats/test_pvalues.py; here the
property is the one calibration rests on: leave-one-out p-values of any exchangeable sample.
"""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import binom

from loccheck.testing import claim_text, write_model_dir, write_pairs
from loccheck.claim import parse_claim
from loccheck.locations import HeadLoc
from loccheck.locations import head_sites
from loccheck.stats.null import sample_null_locations
from loccheck.stats.pvalues import empirical_pvalue
from loccheck.run.verify import verify


def draw_null(*args, n_layers=None, n_heads=None, **kw):
    """sample_null_locations over the head sites of an n_layers x n_heads model."""
    if args:
        return sample_null_locations(*args, **kw)
    return sample_null_locations(head_sites(n_layers, n_heads), **kw)


ALPHAS = (0.05, 0.1)
M = 59                       # pool size for leave-one-out: each null has 58 draws
N = 19                       # the null size verify uses for alpha = 0.05
SHAPE = dict(n_layers=2, n_heads=4)
ALL_PAIRS = [tuple(p) for p in combinations(
    [HeadLoc(l, h) for l in range(SHAPE["n_layers"]) for h in range(SHAPE["n_heads"])], 2)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def gains(tmp_path_factory):
    """Held-out gain of the optimal edit at each of the 28 pairs, from one verify run whose null
    is large enough to draw every other pair (the claim's own fit is the same function: fits
    are cached by location, whatever their role)."""
    root = tmp_path_factory.mktemp("calibration")
    every_head = [HeadLoc(l, h) for l in range(2) for h in range(4)]
    model_dir = write_model_dir(root / "model", "llama", every_head)
    pairs = write_pairs(root / "pairs.jsonl")
    # 72 draws with seed 3 cover the other 27 pairs (asserted below); repeats are cached
    text = claim_text(model_dir, pairs, ["L0H0", "L0H1"], n=72, alpha=0.05, random_seed=3, stop="full")
    result = verify(parse_claim(text, path=root / "pool.yaml"), write_report=False, progress=False)
    table = {tuple(HeadLoc.parse(h) for h in e["location"]): e["gains"][result.metric]
             for e in result.edits if e["role"] in ("claim", "random")}
    assert set(table) == set(ALL_PAIRS)
    assert len(set(table.values())) == len(table)       # distinct gains: no accidental ties
    return table, result


def _rate(pvalues, alpha) -> float:
    return float(np.mean(np.asarray(pvalues) <= alpha))


def _loo_pvalues(values) -> list[float]:
    values = np.asarray(values, dtype=float)
    return [empirical_pvalue(values[j], np.delete(values, j)) for j in range(values.size)]


@pytest.mark.slow
def test_leave_one_out_false_positive_rate(gains):
    table, _ = gains
    pool = draw_null(**SHAPE, size=2, n=M, seed=1)   # i.i.d. over all 28 pairs
    pvalues = _loo_pvalues([table[loc] for loc in pool])
    rates = {alpha: _rate(pvalues, alpha) for alpha in ALPHAS}
    print(f"\nleave-one-out over M = {M} random pairs ({len(set(pool))} distinct; null of "
          f"{M - 1} each): " + ", ".join(f"P(p <= {a}) = {r:.3f}" for a, r in rates.items()))
    for alpha, rate in rates.items():
        assert rate <= alpha


def _exact_rate(table, alpha: float, include_claim: bool) -> float:
    """P(p <= alpha) for a claim drawn uniformly from all locations and N null draws, i.i.d.
    uniform over all of them (include_claim=True, what `sample_null_locations` does: a draw
    equal to the claim ties with it) or over the other locations (False: the claimed set
    redrawn, what loccheck did before the null was made exact). Exact: the count of null gains
    >= the claim's is binomial."""
    values = list(table.values())
    k_max = max(k for k in range(N + 1) if (1 + k) / (N + 1) <= alpha)   # p <= alpha iff k <= k_max
    total = 0.0
    for j, g in enumerate(values):
        others = values[:j] + values[j + 1:]
        n_ge = round(empirical_pvalue(g, others) * len(values)) - 1      # ties as stats counts them
        q = (n_ge + 1) / len(values) if include_claim else n_ge / len(others)
        total += binom.cdf(k_max, N, q)
    return total / len(values)


@pytest.fixture(scope="module")
def simulated(gains):
    """The same rate by simulation with the real sampler: every pair as the claim, null seeds
    0..49 (checks that _exact_rate models sample_null_locations)."""
    table, _ = gains
    return [empirical_pvalue(g, [table[d] for d in draw_null(**SHAPE, size=2, n=N, seed=seed)])
            for g in table.values() for seed in range(50)]


@pytest.mark.slow
@pytest.mark.parametrize("alpha", ALPHAS)
def test_exact_rate_of_verify_null_for_a_random_claim(gains, simulated, alpha, tmp_path):
    table, pool_run = gains
    inclusive, exclusive = _exact_rate(table, alpha, True), _exact_rate(table, alpha, False)
    simulated_rate = _rate(simulated, alpha)     # 1400 claims x nulls
    print(f"\nrandom claim among {len(table)} pairs, N = {N}, alpha = {alpha}: P(p <= alpha) = "
          f"{inclusive:.4f} (exact), {simulated_rate:.4f} (simulated with sample_null_locations); "
          f"{exclusive:.4f} if the null excluded the claimed set")
    assert abs(simulated_rate - inclusive) < 4 * math.sqrt(inclusive * (1 - inclusive) / 1400) + 1e-3
    assert inclusive <= alpha          # exchangeable: super-uniform, whatever the gains

    # verify draws that null: rerun (everything cached) the best pair as the claim with a seed
    # whose i.i.d. draws contain it; the draw equal to the claim reuses the claim's fit and ties.
    best = max(table, key=table.get)
    seed = next(s for s in range(200) if best in draw_null(**SHAPE, size=2, n=N, seed=s))
    model_dir, pairs = pool_run.payload["model"]["resolved"], pool_run.payload["data"]["source"]
    text = claim_text(model_dir, pairs, [str(h) for h in best], n=N, alpha=alpha, random_seed=seed, stop="full")
    result = verify(parse_claim(text, path=tmp_path / "best.yaml"), write_report=False, progress=False)
    # nothing fitted but, perhaps, the ceiling continued from an edit of this run's that fits
    # better than it (which edit that is depends on which were fitted; cached after the first)
    assert result.n_fitted <= sum("continued_from" in e for e in result.edits) <= 1
    drawn = [tuple(HeadLoc.parse(h) for h in e["location"]) for e in result.edits if e["role"] == "random"]
    assert drawn == draw_null(**SHAPE, size=2, n=N, seed=seed) and best in drawn
    ties = [g for d, g in zip(drawn, result.null_gains) if d == best]
    assert ties and all(g == result.claim_gain for g in ties)
    assert result.p_value == (1 + sum(g >= result.claim_gain for g in result.null_gains)) / (N + 1)
    assert result.p_value >= (1 + len(ties)) / (N + 1)


# --- the property calibration rests on -----------------------------------------------------------

@given(values=st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0]) | st.floats(-10, 10),
                       min_size=2, max_size=60),
       alpha=st.sampled_from([0.01, 0.05, 0.1, 0.2, 0.5]))
@pytest.mark.slow
def test_leave_one_out_pvalues_are_super_uniform(values, alpha):
    # For ANY sample (ties included), at most alpha * M of its members get p <= alpha against
    # the others: so when the claim is exchangeable with its null, P(p <= alpha) <= alpha.
    pvalues = _loo_pvalues(values)
    assert sum(p <= alpha for p in pvalues) <= math.floor(alpha * len(values) + 1e-9)


# --- draw: every: the exact permutation test of a small space ------------------------------------

@pytest.mark.slow
def test_every_other_location_gives_the_permutation_pvalue(gains, tmp_path):
    """With draw: every each pair is tested against the other 27 once: p = its rank / 28, so a
    random claim gets p <= alpha with probability floor(28 alpha) / 28 <= alpha exactly, and no
    draw is the claim itself. verify runs it (every fit cached by the pool run): the best pair,
    whose i.i.d. null of 19 could draw it (test above), reaches the permutation test's min p."""
    table, pool_run = gains
    order = sorted(table, key=table.get, reverse=True)
    for alpha in ALPHAS:
        rate = sum((rank + 1) / len(order) <= alpha for rank in range(len(order))) / len(order)
        assert rate == math.floor(len(order) * alpha) / len(order) <= alpha
    model_dir, pairs = pool_run.payload["model"]["resolved"], pool_run.payload["data"]["source"]
    for rank, stop in ((0, "full"), (3, "full"), (3, "sequential")):
        text = claim_text(model_dir, pairs, [str(h) for h in order[rank]], n=None, draw="every", alpha=0.05,
                          random_seed=5, stop=stop)
        result = verify(parse_claim(text, path=tmp_path / f"every{rank}.yaml"), write_report=False,
                        progress=False)
        drawn = [tuple(HeadLoc.parse(h) for h in e["location"]) for e in result.edits if e["role"] == "random"]
        assert result.n_null == 27 and result.payload["null_draw"] == "every"
        assert result.n_fitted <= sum("continued_from" in e for e in result.edits) <= 1   # all cached
        if stop == "full":
            assert sorted(drawn) == sorted(set(ALL_PAIRS) - {order[rank]})     # each other pair once
            assert result.p_value == (rank + 1) / 28
        else:     # 4 pairs at or above it decide the test (p >= 4/28 > alpha) as soon as they are drawn
            assert result.test["stopped_early"] and result.p_value > 0.05 and len(drawn) < 27
            assert drawn == [tuple(HeadLoc.parse(h) for h in e["location"]) for e in
                             full.edits if e["role"] == "random"][:len(drawn)]
        assert (result.verdict == "FALSIFIED") == (rank > 0)
        full = result
