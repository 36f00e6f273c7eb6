"""Which code's numbers a cached result holds: one integer version per component whose code
computes numbers that are cached (a fit, a score, activations, a trace), and the versions of the
libraries that compute them. A cache key holds these, never a hash of loccheck's source, so a
release that changes a comment, a message or the report keeps every user's fits.

The rule: bump a component's version in the same commit that changes its numbers. The golden
numbers (tests/ground/test_numerics_golden.py) fail until it is bumped and they are regenerated.

Ground layer: imports no torch, transformers or numpy, so a replay can compare a recorded table
with the installed one without them.
"""
from __future__ import annotations

NUMERICS: dict[str, int] = {
    # what every fit shares (the testbed's identity)
    "models": 1,                  # loading and GGUF conversion, adapters' sites, hooks, frozen prefix, sliding windows
    "data": 1,                    # pairs, splits by question, prompt formats, tokenization, known facts
    "scoring": 1,                 # log-probabilities, batching, greedy answers, side-effect KL
    "training": 1,                # edits/training.py and its objectives
    # one per edit method (EDIT_METHODS)
    "edits.optimal": 1,           # edits/optimal.py and its rank-one edits (edits/rank_one.py)
    "edits.iti": 1,
    "edits.rome": 1,
    # one per metric (METRICS): what a score is computed from its inputs
    "metrics.preference_margin": 1,
    "metrics.preference_accuracy": 1,
    "metrics.mc1": 1,
    "metrics.mc2": 1,
    "metrics.kl": 1,
    "metrics.log_likelihood": 1,
    "metrics.truth": 1,
    "metrics.info": 1,
    "metrics.truth_info": 1,
    "metrics.truth_and_info": 1,
    # the other cached computations
    "ablations": 1,               # ablations/: the train statistics and what replaces a location
    "activations": 1,             # models/activations.py: head activations at the last token (probe, ITI)
    "heuristics.causal_tracing": 1,   # heuristics/causal_tracing.py and its engine, tracing.py
    "judges": 1,                  # metrics/judges.py: embeddings, reading a reply, refusals
    "studies.trace_vs_edit": 1,   # studies/trace_vs_edit: one fact's edit and its measures
}

# The components a component's numbers are also computed with, beyond the testbed's
# (ITI's directions are means of cached head activations; the study edits with ROME).
ALSO_USES: dict[str, tuple[str, ...]] = {
    "edits.iti": ("activations",),
    "studies.trace_vs_edit": ("edits.rome",),
}

TESTBED = ("models", "data", "scoring", "training")      # in every fit's key, through the testbed's
LIBRARIES = ("torch", "transformers", "peft", "numpy")    # their versions change numbers too


def versions(*components: str) -> dict[str, int]:
    """{component: version} for `components` and what they also use (`ALSO_USES`), sorted."""
    todo, out = list(components), {}
    while todo:
        name = todo.pop()
        if name not in NUMERICS:
            raise ValueError(f"`component` must be one of loccheck.numerics.NUMERICS, got {name!r}")
        if name not in out:
            out[name] = NUMERICS[name]
            todo.extend(ALSO_USES.get(name, ()))
    return dict(sorted(out.items()))


_LIBRARY_VERSIONS: dict[str, str | None] | None = None


def library_versions() -> dict[str, str | None]:
    """The installed versions of the libraries that compute (None for one not installed), read
    from their metadata: nothing is imported."""
    global _LIBRARY_VERSIONS
    if _LIBRARY_VERSIONS is None:
        from importlib.metadata import PackageNotFoundError, version

        found: dict[str, str | None] = {}
        for name in LIBRARIES:
            try:
                found[name] = version(name)
            except PackageNotFoundError:
                found[name] = None
        _LIBRARY_VERSIONS = found
    return dict(_LIBRARY_VERSIONS)


def numerics_identity(*components: str) -> dict:
    """What, besides its inputs, decides a cached number computed by `components`: their versions
    and the libraries'. Part of a cache key."""
    return {"numerics": versions(*components), **library_versions()}

