import math
from collections import Counter
from itertools import combinations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import chisquare

from loccheck.errors import LoccheckError
from loccheck.locations import HeadLoc, head_sites
from loccheck.stats.null import MAX_N_NULL, count_locations, every_other_location, sample_null_locations


def draw_null(*args, n_layers=None, n_heads=None, **kw):
    """sample_null_locations over the head sites of an n_layers x n_heads model."""
    if args:
        return sample_null_locations(*args, **kw)
    return sample_null_locations(head_sites(n_layers, n_heads), **kw)



def H(text):
    return HeadLoc.parse(text)


@st.composite
def shapes(draw, max_layers=6, max_heads=6):
    n_layers = draw(st.integers(1, max_layers))
    n_heads = draw(st.integers(1, max_heads))
    size = draw(st.integers(1, n_layers * n_heads))
    return n_layers, n_heads, size


@st.composite
def claims(draw):
    n_layers, n_heads, _ = draw(shapes())
    heads = [HeadLoc(l, h) for l in range(n_layers) for h in range(n_heads)]
    mask = draw(st.integers(1, 2 ** len(heads) - 1))   # bit j set: heads[j] is claimed
    return n_layers, n_heads, [h for j, h in enumerate(heads) if mask >> j & 1]


# --- shape of the output ------------------------------------------------------------------------

@given(shape=shapes(), n=st.integers(1, 5), seed=st.integers(0, 2**63))
def test_draws_are_sorted_sets_of_valid_distinct_heads(shape, n, seed):
    n_layers, n_heads, size = shape
    draws = draw_null(n_layers=n_layers, n_heads=n_heads, size=size, n=n, seed=seed)
    assert len(draws) == n
    for d in draws:
        assert isinstance(d, tuple) and len(d) == size
        assert list(d) == sorted(set(d))
        assert all(isinstance(h, HeadLoc) and 0 <= h.layer < n_layers and 0 <= h.head < n_heads for h in d)


def test_size_equal_to_every_head_returns_the_full_set():
    every = tuple(HeadLoc(l, h) for l in range(2) for h in range(2))
    assert draw_null(n_layers=2, n_heads=2, size=4, n=3, seed=0) == [every] * 3


# --- determinism and prefix stability -------------------------------------------------------------

def test_deterministic_for_a_seed_and_different_across_seeds():
    kw = dict(n_layers=8, n_heads=8, size=4, n=20)
    a = draw_null(**kw, seed=7)
    assert a == draw_null(**kw, seed=7)
    assert a != draw_null(**kw, seed=8)
    assert len(set(a)) > 1                      # different draws differ (64 choose 4 sets)


@given(shape=shapes(), k=st.integers(1, 10), seed=st.integers(0, 2**32), matched=st.booleans())
def test_prefix_stability(shape, k, seed, matched):
    n_layers, n_heads, size = shape
    kw = dict(n_layers=n_layers, n_heads=n_heads, size=size, seed=seed)
    if matched:                                 # also with a claim's layers to match
        claim = draw_null(**kw, n=1)[0]
        kw.update(match_layers_of=claim)
        if size < n_layers * n_heads and all(c == n_heads for c in Counter(h.layer for h in claim).values()):
            return                              # no null exists; tested below
    assert draw_null(**kw, n=10)[:k] == draw_null(**kw, n=k)


# --- the claim is a location like any other (the exact null) -------------------------------------

def test_the_claimed_set_is_drawn_as_often_as_any_other():
    # 1 layer x 4 heads, size 2: 6 sets, each drawn with probability 1/6, the claim's too
    claim = (H("L0H1"), H("L0H3"))
    draws = draw_null(n_layers=1, n_heads=4, size=2, n=3000, seed=11)
    sets = [tuple(HeadLoc(0, h) for h in c) for c in combinations(range(4), 2)]
    counts = Counter(draws)
    assert set(counts) == set(sets) and counts[claim] > 0
    assert chisquare([counts[s] for s in sets]).pvalue > 1e-3


# --- matched layers -------------------------------------------------------------------------------

@given(claim=claims(), seed=st.integers(0, 2**32))
def test_match_layers_keeps_per_layer_counts(claim, seed):
    n_layers, n_heads, heads = claim
    kw = dict(n_layers=n_layers, n_heads=n_heads, size=len(heads), n=6, seed=seed,
              match_layers_of=heads)
    want = Counter(h.layer for h in heads)
    if len(heads) < n_layers * n_heads and all(c == n_heads for c in want.values()):   # fills its layers
        with pytest.raises(LoccheckError, match="all .* heads of the claimed layers"):
            draw_null(**kw)
        return
    for d in draw_null(**kw):
        assert Counter(h.layer for h in d) == want


def test_match_layers_is_uniform_within_the_layer():
    draws = draw_null(n_layers=3, n_heads=5, size=1, n=2500, seed=2,
                                  match_layers_of=[H("L1H3")])
    assert {d[0].layer for d in draws} == {1}
    counts = Counter(d[0].head for d in draws)
    assert chisquare([counts[h] for h in range(5)]).pvalue > 1e-3


# --- uniformity -----------------------------------------------------------------------------------

def test_single_heads_are_uniform_over_the_model():
    draws = draw_null(n_layers=4, n_heads=3, size=1, n=3000, seed=123)
    counts = Counter(d[0] for d in draws)
    cells = [HeadLoc(l, h) for l in range(4) for h in range(3)]
    assert set(counts) == set(cells)
    assert chisquare([counts[c] for c in cells]).pvalue > 1e-3


def test_pairs_are_uniform_over_all_sets():
    draws = draw_null(n_layers=2, n_heads=3, size=2, n=3000, seed=5)
    sets = list(combinations([HeadLoc(l, h) for l in range(2) for h in range(3)], 2))
    counts = Counter(draws)
    assert len(sets) == math.comb(6, 2) and set(counts) == set(sets)
    assert chisquare([counts[s] for s in sets]).pvalue > 1e-3


# --- errors ---------------------------------------------------------------------------------------

BASE = dict(n_layers=2, n_heads=3, size=2, n=5, seed=0)


@pytest.mark.parametrize("kw, match", [
    (dict(size=0), r"`size` must be in \[1, 6\]"),
    (dict(size=7), r"`size` must be in \[1, 6\]"),
    (dict(n=0), "`n` must be >= 1"),
    (dict(seed=-1), "`seed` must be >= 0"),
    (dict(n_layers=0), "`sites` must not be empty"),
    (dict(n_heads=0), "`sites` must not be empty"),
    (dict(match_layers_of=[H("L0H0")]), "`match_layers_of` has 1 sites but `size` is 2"),
    (dict(match_layers_of=[H("L0H0"), H("L2H0")]), "`match_layers_of` has L2H0, which is not among the model's 6 sites"),
    (dict(match_layers_of=[H("L0H0"), H("L0H3")]), "`match_layers_of` has L0H3, which is not"),
    (dict(match_layers_of=[H("L0H0"), H("L0H0")]), "`match_layers_of` must not repeat a site"),
    (dict(match_layers_of=["L0H0", "L0H1"]), "`match_layers_of` has L0H0, which is not"),   # spellings are not sites
])
def test_input_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        draw_null(**{**BASE, **kw})


def test_input_validation_types():
    with pytest.raises(TypeError):
        draw_null(**{**BASE, "n": 2.5})
    with pytest.raises(TypeError):
        draw_null(2, 3, 2, 5, 0)    # keyword-only


def test_no_null_when_the_claim_fills_its_layers():
    claim = [H("L1H0"), H("L1H1"), H("L1H2")]
    with pytest.raises(LoccheckError, match="all 3 heads of the claimed layers"):
        draw_null(**{**BASE, "size": 3}, match_layers_of=claim)
    # without matching layers, other 3-head sets exist
    draws = draw_null(**{**BASE, "size": 3, "n": 200})
    assert len(set(draws)) == math.comb(6, 3)


# --- draw: every, the exhaustive null of a small space ------------------------------------------

@given(claim=claims(), seed=st.integers(0, 2**32 - 1), matched=st.booleans())
def test_every_other_location_is_each_other_location_once(claim, seed, matched):
    n_layers, n_heads, location = claim
    sites = head_sites(n_layers, n_heads)
    total = count_locations(sites, len(location), location if matched else None)
    if total == 1 or total - 1 > MAX_N_NULL:
        with pytest.raises(LoccheckError, match="the claim is the only" if total == 1 else "more than 10,000"):
            every_other_location(sites, location, seed=seed, match_layers=matched)
        return
    others = every_other_location(sites, location, seed=seed, match_layers=matched)
    assert len(others) == len(set(others)) == total - 1          # each once
    assert tuple(sorted(location)) not in others                  # never the claim: no self-tie
    shapes = {len(o) for o in others}
    assert shapes == {len(location)} and all(list(o) == sorted(o) for o in others)
    if matched:
        want = Counter(s.layer for s in location)
        assert all(Counter(s.layer for s in o) == want for o in others)
    assert others == every_other_location(sites, list(reversed(location)), seed=seed, match_layers=matched)


def test_every_other_location_is_in_a_seeded_order():
    sites, claim = head_sites(2, 4), [H("L1H2")]
    a, b = (every_other_location(sites, claim, seed=s) for s in (0, 1))
    assert set(a) == set(b) == {(s,) for s in sites if s != H("L1H2")}
    assert a == every_other_location(sites, claim, seed=0) and a != b
    # the order is a uniform permutation: over seeds, each other head comes first equally often
    firsts = Counter(every_other_location(sites, claim, seed=s)[0] for s in range(7000))
    assert chisquare(list(firsts.values())).pvalue > 1e-3 and len(firsts) == 7


def test_every_other_location_refuses_a_space_too_large_to_fit_whole():
    sites = head_sites(30, 9)                    # SmolLM2: 270 heads; 2-head sets: 36,315
    with pytest.raises(LoccheckError, match=r"would fit all 36,314 other 2-head locations, more than 10,000"):
        every_other_location(sites, [H("L0H0"), H("L1H1")], seed=0)
    assert len(every_other_location(sites, [H("L0H0")], seed=0)) == 269
    with pytest.raises(ValueError, match="`location` has L30H0, which is not among"):
        every_other_location(sites, [H("L30H0")], seed=0)
