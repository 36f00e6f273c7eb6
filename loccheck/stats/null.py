"""Random locations for the null distribution (numpy only, no torch).

Locations are drawn from a model's sites of one kind (its adapter's `sites(kind)`: heads or
MLP layers), uniformly, or stratified so that each draw has as many sites in each layer as the
claimed location.

Draw i uses its own generator, seeded by (seed, i) only, so asking for more draws never changes
the earlier ones, and draws can be computed in any order or in parallel. Draws are i.i.d. and
may repeat each other: that is what keeps the empirical p-value exact. Where the space is small,
`every_other_location` replaces the draws with every other location once (a permutation test).
"""
from __future__ import annotations

import itertools
import math
import operator
from collections import Counter
from collections.abc import Sequence

import numpy as np

from loccheck.errors import LoccheckError
from loccheck.locations import outside

# Each random location is one fitted edit, so a null of millions would run for months; and
# 10000 draws already resolve p to 1e-4 (p >= 1/(n + 1)). The claim schema and the options apply it.
MAX_N_NULL = 10_000
MAX_N_NULL_WHY = (f"each random location is a fitted edit, and {MAX_N_NULL} of them resolve p "
                  "to 1e-4")


def _draw_rng(seed: int, i: int) -> np.random.Generator:
    """The generator of draw i: a function of (seed, i) only."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))


def _iv_sites(name: str, location, sites: Sequence) -> tuple:
    """Validate a location against the model's sites; return it sorted."""
    location = tuple(location)
    bad = outside(location, sites)
    if bad:
        raise ValueError(f"`{name}` has {bad[0]}, which is not among the model's {len(sites)} sites")
    if len(set(location)) != len(location):
        raise ValueError(f"`{name}` must not repeat a site, got {[str(s) for s in location]}")
    return tuple(sorted(location))


def _strata(sites: Sequence, matched: tuple) -> list[tuple[list, int]]:
    """[(the model's sites of one layer, how many of them the matched location holds)]."""
    counts = sorted(Counter(s.layer for s in matched).items())
    return [([s for s in sites if s.layer == layer], c) for layer, c in counts]


def _iv_sample(sites, size, n, seed) -> tuple:
    """Validate sample_null_locations' shape arguments; return them normalised."""
    sites = tuple(sites)
    size, n, seed = operator.index(size), operator.index(n), operator.index(seed)
    if not sites:
        raise ValueError("`sites` must not be empty")
    if len({s.kind for s in sites}) > 1:
        raise ValueError("`sites` must all be of one kind")
    if not 1 <= size <= len(sites):
        raise ValueError(f"`size` must be in [1, {len(sites)}] (the number of sites), got {size}")
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
    if seed < 0:
        raise ValueError(f"`seed` must be >= 0, got {seed}")
    return sites, size, n, seed


def count_locations(sites: Sequence, size: int, match_layers_of: Sequence | None = None) -> int:
    """How many distinct locations the null draws from."""
    if match_layers_of is None:
        return math.comb(len(sites), size)
    return math.prod(math.comb(len(layer), c) for layer, c in _strata(sites, tuple(match_layers_of)))


def sample_null_locations(
    sites: Sequence,
    *,
    size: int,
    n: int,
    seed: int,
    match_layers_of: Sequence | None = None,
) -> list[tuple]:
    """Draw `n` random locations of `size` sites for the null distribution.

    Every location of the shape is drawn with the same probability, the claimed one included:
    under the null hypothesis the claim is one more uniform draw, so the claim and its null
    are exchangeable and p = (1 + #{null >= claim}) / (N + 1) is exact (a draw equal to the
    claim gets the claim's own fit, a tie, which counts against it).

    Parameters
    ----------
    sites : sequence of sites
        Every site of one kind in the model, in the adapter's order (`adapter.sites(kind)`,
        sorted layer-major). Draws index into this order.
    size : int
        Number of sites per location, in ``[1, len(sites)]``.
    n : int
        Number of locations to draw, >= 1.
    seed : int
        Seed, >= 0. Draw i uses ``default_rng(SeedSequence(seed, spawn_key=(i,)))``, so draw i
        depends on (seed, i) only and growing `n` keeps the earlier draws.
    match_layers_of : sequence of sites, optional
        If given (typically the claimed location, ``len == size``), each draw has as many sites
        in each layer as this one, drawn uniformly without replacement within the layer.
        Otherwise sites are drawn uniformly without replacement from all of `sites`.

    Returns
    -------
    list of tuple
        `n` locations, each a sorted tuple of `size` distinct sites. Different draws may be
        equal (i.i.d. draws keep the empirical p-value exact).

    Raises
    ------
    LoccheckError
        When only one location has the shape (for example every site of the matched layers),
        so every draw would be the claim itself and no null exists.
    """
    sites, size, n, seed = _iv_sample(sites, size, n, seed)
    if match_layers_of is None:
        strata = None
    else:
        matched = _iv_sites("match_layers_of", match_layers_of, sites)
        if len(matched) != size:
            raise ValueError(f"`match_layers_of` has {len(matched)} sites but `size` is {size}")
        strata = _strata(sites, matched)
    if count_locations(sites, size, match_layers_of) == 1 and size < len(sites):
        raise LoccheckError(
            f"only one location has this shape: the claim takes all {size} {sites[0].kind}s of "
            "the claimed layers, so every random location would be the claim itself and there "
            "is no null to compare it against")
    return [_draw(_draw_rng(seed, i), sites, size, strata) for i in range(n)]


def every_other_location(sites: Sequence, location: Sequence, *, seed: int,
                         match_layers: bool = False) -> list[tuple]:
    """Every location of `location`'s shape but `location` itself, once each, in a seeded random
    order (`random_locations.draw: every`): the null of an exact permutation test.

    Under the null hypothesis the claim is a uniform pick among the `count_locations` locations,
    so p = (1 + #{others >= claim}) / count_locations is exact, with no draw of the claim itself
    (a tie that only random draws can make) and min p = 1 / count_locations. The order is a
    uniformly random permutation (seeded), so the sequential stop (Besag and Clifford) stays
    valid: the claim and its first k others are exchangeable. Shape: the same number of sites
    of the same kind, and with `match_layers` as many in each of the claim's layers.

    Raises LoccheckError when there is no other location, or more than MAX_N_NULL of them.
    """
    sites = tuple(sites)
    location = _iv_sites("location", location, sites)
    seed = operator.index(seed)
    if seed < 0:
        raise ValueError(f"`seed` must be >= 0, got {seed}")
    matched = location if match_layers else None
    others = count_locations(sites, len(location), matched) - 1
    shape = (f"{len(location)}-{sites[0].kind} location" + (" in the claimed layers" if match_layers else ""))
    if others < 1:
        raise LoccheckError(f"the claim is the only {shape} of the model: there is no other location to "
                            "compare it with")
    if others > MAX_N_NULL:
        raise LoccheckError(f"draw: every would fit all {others:,} other {shape}s, more than {MAX_N_NULL:,} "
                            f"({MAX_N_NULL_WHY}); draw at random (draw: sites) with n random locations")
    if matched is None:
        every = (tuple(sorted(c)) for c in itertools.combinations(sites, len(location)))
    else:
        every = (tuple(sorted(itertools.chain.from_iterable(parts))) for parts in itertools.product(
            *(itertools.combinations(layer, c) for layer, c in _strata(sites, matched))))
    out = [loc for loc in every if loc != location]
    order = np.random.default_rng(np.random.SeedSequence(seed)).permutation(len(out))
    return [out[int(i)] for i in order]


def _draw(rng: np.random.Generator, sites: tuple, size: int, strata) -> tuple:
    """One uniform location: from all sites, or `count` sites within each matched layer."""
    if strata is None:
        picked = [sites[int(i)] for i in rng.choice(len(sites), size=size, replace=False)]
    else:
        picked = [layer[int(i)] for layer, c in strata
                  for i in rng.choice(len(layer), size=c, replace=False)]
    return tuple(sorted(picked))


# --- subspaces of the residual stream: the Haar null ---

def haar_basis(width: int, dim: int, seed: int, draw: int) -> np.ndarray:
    """(dim, width) orthonormal rows spanning a uniformly random (Haar) `dim`-dimensional
    subspace of R^width: draw `draw` of `seed`, a function of (width, dim, seed, draw) only.
    The Q of a Gaussian matrix's QR, its columns' signs fixed by R's diagonal, is Haar
    distributed (Mezzadri 2007); without the fix QR's sign convention would bias it."""
    width, dim = operator.index(width), operator.index(dim)
    if not 1 <= dim < width:
        raise ValueError(f"`dim` must be in [1, {width - 1}] (below the width {width}), got {dim}")
    gaussian = _draw_rng(seed, draw).standard_normal((width, dim))
    q, r = np.linalg.qr(gaussian)
    return (q * np.sign(np.diag(r))).T


def sample_null_subspaces(site, *, n: int, seed: int) -> list[tuple]:
    """`n` random locations for a claimed subspace `site` (`locations.SubspaceLoc`) or a claimed
    set of `site.dim` directions at `site.layer`: subspaces of the same dimension at the same
    layer, each uniformly distributed (Haar), draw i seeded by (seed, i) only. The claim is no
    draw of this null (it is a point of a continuum), but under the null hypothesis, that its
    subspace edits as a uniformly random one does, its gain and the N draws' are exchangeable, so
    p = (1 + #{null >= claim}) / (N + 1) is exact, as for sites."""
    from loccheck.locations import SubspaceLoc

    n, seed = operator.index(n), operator.index(seed)
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
    if seed < 0:
        raise ValueError(f"`seed` must be >= 0, got {seed}")
    return [(SubspaceLoc(site.layer, site.dim, f"haar:{seed}:{i}"),) for i in range(n)]
