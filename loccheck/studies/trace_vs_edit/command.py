"""`loccheck trace-vs-edit CLAIM`: does localization inform editing? (Hase et al. 2023)

For a claim of MLP layers found by causal tracing: each traced train fact's tracing effect at
every layer (for each corruption asked for) and the success of editing that one fact at every
layer with ROME's edit (the claim's `rome` settings, else ROME's defaults; the same settings at
every layer), then the regressions of `loccheck.studies.trace_vs_edit.regression`. Two sets of measures:

- `hase` (the default, and the only one whose R^2 stands beside Hase et al.'s GPT-J figures),
  as their code (google/belief-localization) measures: success is the rewrite score
  (p_post - p_pre) / (1 - p_pre) of the counterfactual target's probability (the whole
  target's, its tokens' log-probabilities summed), floored at 0 (their code floors it at
  2e-8); the tracing effect is the share of the corruption's effect that restoring recovers,
  max(0, (p_restored - p_corrupt) / |p_clean - p_corrupt|) (0 when the corruption changes
  nothing), its largest value over the prompt's tokens, restoring a window of 5 MLP layers;
  and the joint model is layer x tracing (a tracing slope per layer).
- `loccheck` (the measures this command had first): success is how much the edit raises the
  target's log-probability over the true attribute's (after minus before); the tracing effect
  is the indirect effect p_restored - p_corrupt at the claim's aggregate token group, with the
  claim's window; the joint model is layer + tracing (one slope).

Both report the share of edits after which the new target beats the old one. Facts x layers is
many small edits: each is one job on the executor, and each result is cached like a fit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from loccheck.cache import content_key
from loccheck.errors import LoccheckError
from loccheck.run.jobs import TestbedRunner
from loccheck.locations import MlpLoc
from loccheck.numerics import versions

MEASURES = ("hase", "loccheck")
HASE_WINDOW = 5            # the trace window of Hase et al.'s regressions (their notebook's TRACE_WINDOW_SIZE)
_RECORD = ("before", "after", "target_before", "target_after")


@dataclass(frozen=True)
class FactEditJob:
    prompt: str
    layer: int
    settings: Any                # the rome edit's RomeSettings
    testbed_key: str
    index: int                   # position in the run, for progress

    @property
    def key(self) -> str:
        return content_key({"what": "one-fact edit", "testbed": self.testbed_key,
                            "numerics": versions("studies.trace_vs_edit"), "prompt": self.prompt,
                            "layer": self.layer, "settings": self.settings.to_json()})

    @property
    def label(self) -> str:
        return f"fact {self.prompt!r} at L{self.layer}M"


class FactEditRunner(TestbedRunner):
    """Edits one fact at one layer (or finds the result in the cache)."""

    def __call__(self, job: FactEditJob) -> dict:
        stored = self.cache.get(job.key)
        if isinstance(stored, dict) and all(isinstance(stored.get(k), float) for k in _RECORD):
            return stored
        record = edit_one_fact(self.testbed_for(job), job.prompt, job.layer, job.settings)
        if all(math.isfinite(v) for v in record.values()):
            self.cache.put(job.key, record)
        return record


def edit_one_fact(testbed, prompt: str, layer: int, settings) -> dict:
    """ROME's edit of one fact at one layer: before and after it, the target's log-probability
    margin over the true attribute (`before`, `after`) and the target's log-probability
    (`target_before`, `target_after`; summed over its tokens)."""
    from loccheck.edits.rome import RomeEdit, edit_fact, fact_item, inverse_statistics
    from loccheck.models.scoring import answer_logprobs

    pair = next(p for p in testbed.data.train if p.prompt == prompt)
    ids, position, target, true = fact_item(testbed, pair)

    def logprobs() -> tuple[float, float]:
        import torch

        with torch.no_grad():
            lp = answer_logprobs(testbed.model, [ids, ids], [target, true], testbed.pad_id)
        return float(lp[0]), float(lp[1])
    target_before, true_before = logprobs()
    edit = RomeEdit(testbed.adapter, (MlpLoc(layer),))
    edit_fact(testbed, edit, inverse_statistics(testbed, settings, [layer]), ids, position, target, settings)
    with edit.attached(testbed.model):
        target_after, true_after = logprobs()
    return {"before": target_before - true_before, "after": target_after - true_after,
            "target_before": target_before, "target_after": target_after}


def rewrite_score(logp_before: float, logp_after: float) -> float:
    """Hase et al.'s rewrite score of a target: (p_post - p_pre) / (1 - p_pre), floored at 0."""
    pre, post = math.exp(logp_before), math.exp(logp_after)
    return max(0.0, (post - pre) / (1.0 - pre)) if pre < 1.0 else 0.0


def fraction_restored(peak: float, total: float) -> float:
    """Hase et al.'s tracing effect: the share of the corruption's effect that restoring
    recovers, max(0, (p_restored - p_corrupt) / |p_clean - p_corrupt|); 0 when the corruption
    changed nothing (there is nothing to recover)."""
    return max(0.0, peak / abs(total)) if total != 0 and math.isfinite(peak) else 0.0


def rome_settings(claim):
    """The claim's `rome` settings, else ROME's defaults."""
    from loccheck.edits import EDIT_METHODS
    from loccheck.run.inspect import edit_settings

    at = next((i for i, e in enumerate(claim.edits) if e.method == "rome"), None)
    section = claim.edits[at] if at is not None else EDIT_METHODS["rome"].section()
    return edit_settings(claim, section, at, site_kind="mlp")


def trace_vs_edit(claim, *, corruptions: Sequence[str] | None = None, out_dir: Path,
                  cache_dir=None, executor="serial", layers: Sequence[int] | None = None,
                  measures: str = "hase", window: int | None = None, write_line=None) -> dict:
    """Tracing effects and one-fact edit success per (fact, layer), their regressions, a report.
    `window`: the MLP layers restored together in tracing (default: 5 for `hase`, the claim's
    `heuristic.window` for `loccheck`)."""
    from functools import partial

    from loccheck.studies.trace_vs_edit.regression import regress
    from loccheck.run.testbed import prepare_testbed
    from loccheck.cache import FitCache, cache_root as resolve_cache, check_store
    from loccheck.run.executors import get_executor
    from loccheck.heuristics.causal_tracing import AGGREGATES, cached_trace

    if measures not in MEASURES:
        raise ValueError(f"`measures` must be one of {MEASURES}, got {measures!r}")
    if claim.heuristic.method != "causal_tracing" or claim.site_kind != "mlp":
        raise claim.error("heuristic.method", "trace-vs-edit needs a claim of MLP layers whose heuristic "
                          "is causal_tracing")
    hase = measures == "hase"
    settings = rome_settings(claim)                       # its text sample is read before any work
    corruptions = list(corruptions or [claim.heuristic.corruption])
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise LoccheckError(f"--window: the MLP layers restored together must be 1 or more, got {window!r}")
    window = window if window is not None else HASE_WINDOW if hase else claim.heuristic.window
    root = resolve_cache(cache_dir)
    check_store(root)                                     # a shared store answers, before any work
    testbed = prepare_testbed(claim, root)
    layers = list(range(testbed.adapter.n_layers)) if layers is None else list(layers)
    testbed.adapter.check_inside([MlpLoc(l) for l in layers])
    data, column = testbed.data.without_test(), AGGREGATES[claim.heuristic.aggregate]
    traces = {}
    for c in corruptions:
        try:
            traces[c] = cached_trace(claim.heuristic.model_copy(update={"corruption": c, "window": window}),
                                      testbed.loaded, data, root)
        except LoccheckError as err:
            raise claim.error(err.key or "heuristic", err.msg) from None
    prompts = [p for p in traces[corruptions[0]]["prompts"] if all(p in t["prompts"] for t in traces.values())]
    if not prompts:
        raise claim.error("heuristic.corruption", f"no train fact was traced by every corruption asked for "
                          f"({', '.join(corruptions)}): nothing to compare")
    jobs = [FactEditJob(p, l, settings, testbed.key, i * len(layers) + j)
            for i, p in enumerate(prompts) for j, l in enumerate(layers)]
    executor = get_executor(executor)
    runner = FactEditRunner(testbed, FitCache(root), testbed_factory=partial(prepare_testbed, claim, root))
    write = write_line or _stderr
    results = [None] * len(jobs)
    for done, (i, record) in enumerate(executor.imap(runner, jobs), 1):
        results[i] = record
        if done % max(1, len(jobs) // 10) == 0 or done == len(jobs):
            write(f"loccheck: trace-vs-edit: {done} of {len(jobs)} one-fact edits")
    if hase:
        success = [rewrite_score(r["target_before"], r["target_after"]) for r in results]
    else:
        success = [r["after"] - r["before"] for r in results]
    out = {"claim": str(claim.path), "measures": measures, "corruptions": corruptions,
           "aggregate": claim.heuristic.aggregate, "window": window, "layers": layers, "n_facts": len(prompts),
           "rome": settings.to_json(), "analyses": {},
           "beats": {str(l): sum(results[k]["after"] > 0 for k, j in enumerate(jobs) if j.layer == l) / len(prompts)
                     for l in layers},
           "rows": []}
    for c in corruptions:
        at = {p: i for i, p in enumerate(traces[c]["prompts"])}
        if hase:
            tracing = [fraction_restored(float(traces[c]["per_fact_peak"][at[j.prompt], j.layer]),
                                         float(traces[c]["per_fact_total"][at[j.prompt]])) for j in jobs]
        else:
            tracing = [float(traces[c]["per_fact"][at[j.prompt], j.layer, column]) for j in jobs]
            tracing = [0.0 if t != t else t for t in tracing]       # an empty token group: no effect
        out["analyses"][c] = regress([j.layer for j in jobs], tracing, success, interaction=hase)
        out["rows"].append({"corruption": c, "tracing": tracing})
    out["success"], out["row_layers"] = success, [j.layer for j in jobs]
    out["row_prompts"] = [j.prompt for j in jobs]          # which fact each row is
    out["edits"] = results                                 # each row's raw before / after numbers
    from loccheck.studies.trace_vs_edit.report import write_report

    write_report(out, Path(out_dir))
    return out


def _stderr(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)
