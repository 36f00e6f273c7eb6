"""The evidence report: `render_report(result, out_dir)` writes report.md and its figures from
the result dict alone (result.json), so a stored result re-renders without a model; a result
of an earlier schema is upgraded first. `render_index` writes the pytest session's index.md.

- markdown.py: the common sections (verdict, claim, interpretation, statistics, reproducibility)
- sections.py: one section per edit method and per heuristic, and the side-by-side table
- plots.py: the figures; index.py: index.md; upgrade.py: older result.json layouts
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from loccheck.files import write_text_atomic
from loccheck.report.format import edits_of, site_noun
from loccheck.report.index import render_index
from loccheck.report.markdown import (LOSS_CURVES_NAME, METHODS_NAME, NULL_HIST_NAME,
                                      PROBE_HEATMAP_NAME, REPORT_NAME, TRACING_HEATMAP_NAME, metric_hist_name,
                                      other_metrics, primary, render_markdown)
from loccheck.report.upgrade import upgrade

__all__ = ["render_report", "render_markdown", "render_index", "upgrade"]


def render_report(result: dict, out_dir: str | os.PathLike) -> Path:
    """Write report.md, null_hist.png and the other figures into `out_dir`; return report.md's
    path. `result` is the content of result.json (any schema version this loccheck reads)."""
    from loccheck.report.plots import (plot_loss_curves, plot_methods, plot_null_histogram,
                                       plot_probe_heatmap, plot_tracing_heatmap)

    result = upgrade(result)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t, site = primary(result), site_noun(result)
    plot_null_histogram(t["null_gains"], t["claim_gain"], t["ceiling_gain"], result["metric"],
                        out_dir / NULL_HIST_NAME, location_size=len(result.get("location") or []),
                        site=site)
    randoms = [e for e in edits_of(result, result["primary_method"]) if e.get("role") == "random"]
    randoms = randoms[:t.get("n_null_fitted", len(randoms))]
    for m in other_metrics(result):
        s = result["metric_summaries"][result["primary_method"]][m]
        plot_null_histogram([e["gains"].get(m) for e in randoms], s["claim"]["gain"], s["ceiling"]["gain"],
                            m, out_dir / metric_hist_name(m), location_size=len(result.get("location") or []),
                            site=site)
    if edits_of(result, "optimal"):
        plot_loss_curves(edits_of(result, "optimal"), out_dir / LOSS_CURVES_NAME, site=site)
    if len(result["tests"]) > 1:
        plot_methods(result["tests"], result["metric"], out_dir / METHODS_NAME, site=site)
    if (result.get("heuristic") or {}).get("method") == "probe" and result.get("heuristic_evidence"):
        from loccheck.locations import HeadLoc

        plot_probe_heatmap(np.asarray(result["heuristic_evidence"]["val_accuracy"]),
                           [HeadLoc.parse(h) for h in result.get("location") or []],
                           out_dir / PROBE_HEATMAP_NAME)
    if (result.get("heuristic") or {}).get("method") == "causal_tracing" and result.get("heuristic_evidence"):
        from loccheck.locations import MlpLoc

        ev = result["heuristic_evidence"]
        effects = np.array([[np.nan if v is None else v for v in row] for row in ev["effects"]], dtype=float)
        plot_tracing_heatmap(effects, ev["groups"], [MlpLoc.parse(s).layer for s in result.get("location") or []],
                             out_dir / TRACING_HEATMAP_NAME,
                             title=f"Causal tracing ({ev['corruption']}), {ev['n_facts']} train facts")
    return write_text_atomic(render_markdown(result), out_dir / REPORT_NAME)
