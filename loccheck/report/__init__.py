"""The evidence report: `render_report(result, out_dir)` writes report.md and its figures from
the result dict alone (result.json), so a stored result re-renders without a model; a result
of an earlier schema is upgraded first. `render_index` writes the pytest session's index.md.

- markdown.py: the common sections (verdict, claim, interpretation, statistics, the edit methods
  side by side, reproducibility); each edit method and heuristic adds its own section and figure
  (`report_lines`, `report_figures` in its registry entry), written in its own module
- evidence.py: the sections of the claim's tests beyond editing (necessity, without, minimality,
  the size curve) and the table of the listed tests' verdicts; evidence_plots.py: their figures
- plots.py: the common figures; answers.py: generated answers; index.py: index.md;
  upgrade.py: older result.json layouts
"""
from __future__ import annotations

import os
from pathlib import Path

from loccheck.files import write_text_atomic
from loccheck.render.format import edits_of, method_order, primary, site_noun
from loccheck.report.index import render_index
from loccheck.report.markdown import (METHODS_NAME, NULL_HIST_NAME, REPORT_NAME, metric_hist_name, other_metrics,
                                      render_markdown)
from loccheck.report.upgrade import upgrade

__all__ = ["render_report", "render_markdown", "render_index", "upgrade"]


def render_report(result: dict, out_dir: str | os.PathLike) -> Path:
    """Write report.md, null_hist.png and the other figures into `out_dir`; return report.md's
    path. `result` is the content of result.json (any schema version this loccheck reads)."""
    from loccheck.edits import EDIT_METHODS
    from loccheck.heuristics import HEURISTICS
    from loccheck.report.evidence_plots import draw_evidence_figures
    from loccheck.report.plots import plot_methods, plot_null_histogram

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
    if len(result["tests"]) > 1:
        plot_methods(result["tests"], result["metric"], out_dir / METHODS_NAME, site=site)
    for name in method_order(result):
        method = EDIT_METHODS.get(name)
        if method is not None and method.report_figures is not None and edits_of(result, name):
            method.report_figures(result, out_dir)
    heuristic = HEURISTICS.get((result.get("heuristic") or {}).get("method"))
    if heuristic is not None and heuristic.report_figures is not None and result.get("heuristic_evidence"):
        heuristic.report_figures(result, out_dir)
    draw_evidence_figures(result, out_dir)   # the claim's tests beyond editing, when listed
    return write_text_atomic(render_markdown(result), out_dir / REPORT_NAME)
