"""Random head locations for the null distribution (numpy only, no torch).

Draw i uses its own generator, seeded by (seed, i) only, so asking for more draws never changes
the earlier ones, and draws can be computed in any order or in parallel. Draws are i.i.d. and
may repeat each other: that is what keeps the empirical p-value exact.
"""
from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Collection, Sequence

import numpy as np

from loccheck.errors import LoccheckError
from loccheck.locations import HeadLoc


def _draw_rng(seed: int, i: int) -> np.random.Generator:
    """The generator of draw i: a function of (seed, i) only."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))


def draw_seed(seed: int, i: int) -> int:
    """A 32-bit integer that depends on (seed, i) only, e.g. to label draw i in a cache.

    Parameters
    ----------
    seed : int
        The null's seed, >= 0.
    i : int
        Index of the draw, >= 0.

    Returns
    -------
    int
        ``SeedSequence(seed, spawn_key=(i,)).generate_state(1)[0]``: the entropy behind draw i
        of :func:`sample_null_locations`. Training seeds do not come from here; they are the
        same for every edit.
    """
    seed, i = operator.index(seed), operator.index(i)
    if seed < 0 or i < 0:
        raise ValueError(f"`seed` and `i` must be >= 0, got seed={seed}, i={i}")
    return int(np.random.SeedSequence(seed, spawn_key=(i,)).generate_state(1)[0])


def _iv_heads(name: str, heads, n_layers: int, n_heads: int) -> tuple[HeadLoc, ...]:
    """Validate a set of heads against the model; return it sorted."""
    heads = tuple(heads)
    for h in heads:
        if not isinstance(h, HeadLoc):
            raise TypeError(f"`{name}` must contain HeadLoc values, got {h!r}")
        if not (0 <= h.layer < n_layers and 0 <= h.head < n_heads):
            raise ValueError(f"`{name}` has {h}, outside a model of {n_layers} layers x {n_heads} heads")
    if len(set(heads)) != len(heads):
        raise ValueError(f"`{name}` must not repeat a head, got {[str(h) for h in heads]}")
    return tuple(sorted(heads))


def sample_null_locations(
    *,
    n_layers: int,
    n_heads: int,
    size: int,
    n: int,
    seed: int,
    exclude: Collection[HeadLoc] | None = None,
    match_layers_of: Sequence[HeadLoc] | None = None,
) -> list[tuple[HeadLoc, ...]]:
    """Draw `n` random head sets of `size` heads for the null distribution.

    Parameters
    ----------
    n_layers, n_heads : int
        The model's shape: heads are ``HeadLoc(layer, head)`` with ``layer < n_layers`` and
        ``head < n_heads`` (query heads).
    size : int
        Number of heads per set, in ``[1, n_layers * n_heads]``.
    n : int
        Number of sets to draw, >= 1.
    seed : int
        Seed, >= 0. Draw i uses ``default_rng(SeedSequence(seed, spawn_key=(i,)))``, so draw i
        depends on (seed, i) only and growing `n` keeps the earlier draws.
    exclude : collection of HeadLoc, optional
        The claimed set. A draw equal to it is redrawn from the same per-draw generator, so
        each draw is uniform over the other sets.
    match_layers_of : sequence of HeadLoc, optional
        If given (typically the claimed heads, ``len == size``), each set has as many heads
        in each layer as this one, drawn uniformly without replacement within the layer.
        Otherwise heads are drawn uniformly without replacement from all heads.

    Returns
    -------
    list of tuple of HeadLoc
        `n` sets, each a sorted tuple of `size` distinct heads. Different draws may be equal
        (i.i.d. draws keep the empirical p-value exact).

    Raises
    ------
    LoccheckError
        When the only possible set is `exclude` (for example `size` is every head, or every
        head of the matched layers is claimed), so no null exists.
    """
    n_layers, n_heads = operator.index(n_layers), operator.index(n_heads)
    size, n, seed = operator.index(size), operator.index(n), operator.index(seed)
    if n_layers < 1 or n_heads < 1:
        raise ValueError(f"`n_layers` and `n_heads` must be >= 1, got {n_layers} and {n_heads}")
    total = n_layers * n_heads
    if not 1 <= size <= total:
        raise ValueError(f"`size` must be in [1, {total}] (n_layers * n_heads), got {size}")
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
    if seed < 0:
        raise ValueError(f"`seed` must be >= 0, got {seed}")
    excluded = None if exclude is None else _iv_heads("exclude", exclude, n_layers, n_heads)

    if match_layers_of is None:
        per_layer = None
        n_sets = math.comb(total, size)
    else:
        matched = _iv_heads("match_layers_of", match_layers_of, n_layers, n_heads)
        if len(matched) != size:
            raise ValueError(f"`match_layers_of` has {len(matched)} heads but `size` is {size}")
        per_layer = sorted(Counter(h.layer for h in matched).items())   # [(layer, count)]
        n_sets = math.prod(math.comb(n_heads, c) for _, c in per_layer)
    if n_sets == 1 and excluded is not None and len(excluded) == size:
        only = _draw(_draw_rng(seed, 0), n_heads, total, size, per_layer)
        if only == excluded:
            where = "of the claimed layers" if per_layer else "of the model"
            raise LoccheckError(
                f"no random location differs from the claimed one: the claim takes all {size} "
                f"heads {where}, so there is no null to compare it against")

    draws = []
    for i in range(n):
        rng = _draw_rng(seed, i)
        heads = _draw(rng, n_heads, total, size, per_layer)
        while heads == excluded:   # at least 2 sets exist, so this ends quickly
            heads = _draw(rng, n_heads, total, size, per_layer)
        draws.append(heads)
    return draws


def _draw(rng: np.random.Generator, n_heads: int, total: int, size: int,
          per_layer: list[tuple[int, int]] | None) -> tuple[HeadLoc, ...]:
    """One uniform set: from all heads, or `count` heads within each matched layer."""
    if per_layer is None:
        flat = rng.choice(total, size=size, replace=False)   # (size,) indices layer * n_heads + head
        heads = [HeadLoc(int(f) // n_heads, int(f) % n_heads) for f in flat]
    else:
        heads = [HeadLoc(layer, int(h)) for layer, c in per_layer
                 for h in rng.choice(n_heads, size=c, replace=False)]
    return tuple(sorted(heads))
