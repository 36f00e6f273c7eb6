"""Heuristics: how a claimed location was found (a registry).

A heuristic ranks a model's sites of one kind by how likely each is to carry the behaviour;
the top k can be the claimed location (`location.from_heuristic: true`), and the report shows
its evidence beside the verdict. Every heuristic receives `HeuristicData` (the behaviour data
without its test split), so "the heuristic never sees the test questions" holds by
construction, and `Heuristic.propose` refuses anything else.

To add a heuristic: a module in this folder with its claim section (`method: <name>`), a
`run`, an `evidence` and a `pinned` function, registered with `register_heuristic` and imported below.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from loccheck.registry import Registry
from loccheck.schema import Section


@dataclass(frozen=True)
class Proposal:
    """A heuristic's ranking of sites, best first, with a score each, and its raw result."""
    ranked: tuple[tuple[Any, float], ...]
    raw: Any = None

    def top(self, k: int) -> tuple:
        """The k best sites, as a location (sorted)."""
        if not 1 <= k <= len(self.ranked):
            raise ValueError(f"`k` must be in [1, {len(self.ranked)}], got {k!r}")
        return tuple(sorted(site for site, _ in self.ranked[:k]))

    def score(self, site) -> float:
        return dict(self.ranked)[site]


@dataclass(frozen=True)
class Heuristic:
    name: str
    section: type[Section]          # the claim's `heuristic:` section for this method
    kind: str | None                # the site kind it ranks; None: it ranks nothing (manual)
    run: Callable[..., Proposal] | None = None         # (section, model, data, cache, seed)
    evidence: Callable[..., dict] | None = None        # (section, proposal, location, pinned) -> JSON
    # (proposal, sites, {site: score}) -> (what `loccheck localize` writes into the heuristic
    # section, the comment above the written claim)
    pinned: Callable[..., tuple[dict, str]] | None = None
    datasets: tuple[str, ...] | None = None           # the behaviour datasets it can read (None: any)
    report_lines: Callable[[dict], list[str]] | None = None      # its report section, from result.json
    report_figures: Callable[[dict, Path], None] | None = None   # draws its figures into the report folder

    def propose(self, section, model, data, cache: Path, seed: int = 0) -> Proposal | None:
        """Rank the model's sites from `data`, which must be HeuristicData (no test split);
        `seed` seeds whatever the heuristic draws at random."""
        from loccheck.data.pairs import HeuristicData

        if not isinstance(data, HeuristicData):
            raise TypeError(f"heuristic {self.name!r} takes HeuristicData (BehaviorData.without_test()), "
                            f"got {type(data).__name__}: heuristics never see the test questions")
        return None if self.run is None else self.run(section, model, data, cache, seed)


HEURISTICS: Registry[Heuristic] = Registry("heuristic")


def register_heuristic(heuristic: Heuristic) -> Heuristic:
    return HEURISTICS.register(heuristic.name, heuristic)


from loccheck.heuristics import causal_tracing, direction_probe, manual, neuron_attribution, probe  # noqa: E402,F401  (register the built-ins)
