"""The figures of the claim's tests beyond editing (`report.evidence`): the necessity null's drops
with the claim's marked, and the size curve. Drawn from the result dict alone, deterministically
(`render.figures`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from loccheck.render.figures import CLAIM_COLOR, FIGSIZE, NULL_COLOR, RC, is_finite, plt, save_figure, ticker
from loccheck.render.format import location_words, site_noun
from loccheck.report.plots import marked_histogram
from loccheck.report.evidence import (NECESSITY_HIST_NAME, SIZE_CURVE_NAME, STATISTIC, VERDICT_TESTS,
                                      evidence_of)


def plot_necessity_histogram(null_drops: Sequence[float | None], claim_drop: float | None, metric: str,
                             path: str | os.PathLike, *, location_size: int, n_planned: int | None = None,
                             ablation: str = "mean", site: str = "head") -> Path:
    """Histogram of the random locations' ablation drops, the claim's drop marked. Drops that are
    not finite are left out of the histogram (the title still counts every ablated location)."""
    n = len(null_drops)
    planned = f" of {n_planned} planned" if n_planned is not None and n_planned != n else ""
    return marked_histogram(
        null_drops, f"random {location_size}-{site} locations (N = {n}{planned})",
        [(claim_drop, f"claimed {site}s", dict(color=CLAIM_COLOR, lw=2.5))],
        f"Necessity ({ablation} ablation): {metric} drop at N = {n} random {location_size}-{site} locations",
        f"behaviour lost when ablated ({metric} drop)", path, empty="no finite drops")


def plot_size_curve(panels: Sequence[tuple[str, dict]], metric: str, path: str | os.PathLike, *,
                    site: str = "head", claimed: str = "claimed heads") -> Path:
    """One panel per test: the random locations' median statistic against their size, the q1-q3
    band, min and max; the claim as a point at its size and a horizontal line. The x axis is log2
    when the sizes span more than 8x."""
    with plt.style.context("default"), plt.rc_context(RC):
        fig, axes = plt.subplots(1, len(panels), figsize=(FIGSIZE[0], 3.6), layout="constrained",
                                 squeeze=False)
        for ax, (test, d) in zip(axes[0], panels):
            rows = [row for row in d.get("rows") or [] if is_finite(row.get("median"))]
            x = [row["size"] for row in rows]
            if rows:
                ax.fill_between(x, [row["q1"] for row in rows], [row["q3"] for row in rows], color=NULL_COLOR,
                                alpha=0.35, lw=0, label="random locations: q1-q3")
                ax.vlines(x, [row["min"] for row in rows], [row["max"] for row in rows], color=NULL_COLOR,
                          lw=1, label="min-max")
                ax.plot(x, [row["median"] for row in rows], color="0.3", marker="o", ms=4, label="median")
            else:
                ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center")
            claim, size = d.get("claim"), d.get("claim_size")
            if is_finite(claim):
                ax.axhline(claim, color=CLAIM_COLOR, lw=1.2, ls=":")
                if size is not None:
                    ax.plot([size], [claim], color=CLAIM_COLOR, marker="D", ms=7, ls="none",
                            label=claimed)
            sizes = sorted({row["size"] for row in d.get("rows") or []} | ({size} if size else set()))
            if sizes and max(sizes) / min(sizes) > 8:
                ax.set_xscale("log", base=2)
            if sizes:
                ax.set_xticks(sizes)
                ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%d"))
                ax.xaxis.set_minor_locator(ticker.NullLocator())
            ax.set_title(f"{test}: {STATISTIC.get(test, test)}")
            ax.set_xlabel(f"location size ({site}s)")
            ax.set_ylabel(f"{metric} {STATISTIC.get(test, test)}")
        handles, labels = axes[0][0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)
        return save_figure(fig, path)


def draw_evidence_figures(result: dict, out_dir: str | os.PathLike) -> list[Path]:
    """The figures the evidence sections link to (none when the claim lists editing only)."""
    ev, out_dir, site = evidence_of(result), Path(out_dir), site_noun(result)
    size = len(result.get("location") or [])
    drawn = []
    n = ev.get("necessity")
    if n is not None:
        drawn.append(plot_necessity_histogram(n.get("null_drops") or [], n.get("claim_drop"), result["metric"],
                                              out_dir / NECESSITY_HIST_NAME, location_size=size,
                                              n_planned=n.get("n_null"), ablation=str(n.get("ablation")),
                                              site=site))
    c = ev.get("size_curve")
    if c is not None:
        panels = [(t, c[t]) for t in VERDICT_TESTS if c.get(t) is not None]
        unit = "dimension" if result.get("site_kind") == "subspace" else site
        if panels:
            drawn.append(plot_size_curve(panels, result["metric"], out_dir / SIZE_CURVE_NAME, site=unit,
                                         claimed=location_words(result)["claimed"]))
    return drawn
