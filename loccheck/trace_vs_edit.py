"""`loccheck trace-vs-edit CLAIM`: does localization inform editing? (Hase et al. 2023)

For a claim of MLP layers found by causal tracing: each traced train fact's tracing effect at
every layer (the claim's aggregate token group, for each corruption asked for), and the success
of editing that one fact at every layer with ROME's edit (the claim's `rome` settings, else
ROME's defaults), the same settings at every layer. Success is how much the edit raises the
counterfactual target's log-probability over the true attribute's (after minus before); the
report also gives the share of edits after which the new target beats the old one. Then the
regressions of `loccheck.analysis`. Facts x layers is many small edits: each is one job on the
executor, and each result is cached by content hash like a fit.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from loccheck.cache import content_key
from loccheck.jobs import BenchRunner
from loccheck.locations import MlpLoc


@dataclass(frozen=True)
class FactEditJob:
    prompt: str
    layer: int
    settings: dict               # the rome settings
    bench_key: str
    index: int                   # position in the run, for progress

    @property
    def key(self) -> str:
        return content_key({"what": "one-fact edit", "bench": self.bench_key, "prompt": self.prompt,
                            "layer": self.layer, "settings": self.settings})

    @property
    def label(self) -> str:
        return f"fact {self.prompt!r} at L{self.layer}M"


class FactEditRunner(BenchRunner):
    """Edits one fact at one layer (or finds the result in the cache)."""

    def __call__(self, job: FactEditJob) -> dict:
        import math

        stored = self.cache.get(job.key)
        if isinstance(stored, dict) and all(isinstance(stored.get(k), float) for k in ("before", "after")):
            return stored
        record = edit_one_fact(self.bench_for(job), job.prompt, job.layer, job.settings)
        if all(math.isfinite(v) for v in record.values()):
            self.cache.put(job.key, record)
        return record


def edit_one_fact(bench, prompt: str, layer: int, settings: dict) -> dict:
    """ROME's edit of one fact at one layer: the target's log-probability margin over the true
    attribute before and after."""
    from loccheck.edits.rome import RomeEdit, edit_fact, fact_item, inverse_statistics
    from loccheck.scoring import answer_logprobs

    pair = next(p for p in bench.data.train if p.prompt == prompt)
    ids, position, target, true = fact_item(bench, pair)

    def margin() -> float:
        import torch

        with torch.no_grad():
            lp = answer_logprobs(bench.model, [ids, ids], [target, true], bench.pad_id)
        return float(lp[0] - lp[1])
    before = margin()
    edit = RomeEdit(bench.adapter, (MlpLoc(layer),))
    edit_fact(bench, edit, inverse_statistics(bench, settings, [layer]), ids, position, target, settings)
    with edit.attached(bench.model):
        after = margin()
    return {"before": before, "after": after}


def rome_settings(claim) -> dict:
    from loccheck.edits import EDIT_METHODS

    section = next((e for e in claim.edits if e.method == "rome"), None) or EDIT_METHODS["rome"].section()
    return EDIT_METHODS["rome"].settings(section, size=1, claim_size=1, verdict_metric=claim.verdict.metric,
                                         site_kind="mlp")


def trace_vs_edit(claim, *, corruptions: Sequence[str] | None = None, out_dir: Path,
                  cache_dir=None, executor="serial", layers: Sequence[int] | None = None,
                  write_line=None) -> dict:
    """Tracing effects and one-fact edit success per (fact, layer), their regressions, a report."""
    from functools import partial

    from loccheck.analysis import regress
    from loccheck.bench import prepare_bench
    from loccheck.cache import FitCache, cache_dir as resolve_cache
    from loccheck.executors import get_executor
    from loccheck.heuristics.causal_tracing import AGGREGATES, _cached_trace

    if claim.heuristic.method != "causal_tracing" or claim.site_kind != "mlp":
        raise claim.error("heuristic.method", "trace-vs-edit needs a claim of MLP layers whose heuristic "
                          "is causal_tracing")
    corruptions = list(corruptions or [claim.heuristic.corruption])
    root = resolve_cache(cache_dir).absolute()
    bench = prepare_bench(claim, root)
    layers = list(range(bench.adapter.n_layers)) if layers is None else list(layers)
    bench.adapter.check_inside([MlpLoc(l) for l in layers])
    data, column = bench.data.without_test(), AGGREGATES[claim.heuristic.aggregate]
    traces = {c: _cached_trace(claim.heuristic.model_copy(update={"corruption": c}), bench.loaded, data, root)
              for c in corruptions}
    prompts = [p for p in traces[corruptions[0]]["prompts"] if all(p in t["prompts"] for t in traces.values())]
    if not prompts:
        raise claim.error("heuristic.corruption", f"no train fact was traced by every corruption asked for "
                          f"({', '.join(corruptions)}): nothing to compare")
    settings = rome_settings(claim)
    jobs = [FactEditJob(p, l, settings, bench.key, i * len(layers) + j)
            for i, p in enumerate(prompts) for j, l in enumerate(layers)]
    executor = get_executor(executor)
    runner = FactEditRunner(bench, FitCache(root), bench_factory=partial(prepare_bench, claim, root))
    write = write_line or _stderr
    results = [None] * len(jobs)
    for done, (i, record) in enumerate(executor.imap(runner, jobs), 1):
        results[i] = record
        if done % max(1, len(jobs) // 10) == 0 or done == len(jobs):
            write(f"loccheck: trace-vs-edit: {done} of {len(jobs)} one-fact edits")
    success = [r["after"] - r["before"] for r in results]
    out = {"claim": str(claim.path), "corruptions": corruptions, "aggregate": claim.heuristic.aggregate,
           "layers": layers, "n_facts": len(prompts), "rome": settings, "analyses": {},
           "beats": {str(l): sum(results[k]["after"] > 0 for k, j in enumerate(jobs) if j.layer == l) / len(prompts)
                     for l in layers},
           "rows": []}
    for c in corruptions:
        at = {p: i for i, p in enumerate(traces[c]["prompts"])}
        tracing = [float(traces[c]["per_fact"][at[j.prompt], j.layer, column]) for j in jobs]
        tracing = [0.0 if t != t else t for t in tracing]           # an empty token group: no effect
        out["analyses"][c] = regress([j.layer for j in jobs], tracing, success)
        out["rows"].append({"corruption": c, "tracing": tracing})
    out["success"], out["row_layers"] = success, [j.layer for j in jobs]
    out["row_prompts"] = [j.prompt for j in jobs]          # which fact each row is
    from loccheck.report.trace_vs_edit import write_report

    write_report(out, Path(out_dir))
    return out


def _stderr(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)
