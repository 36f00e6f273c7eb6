"""The report's common figures: the null distribution of a metric's gain, and the edit methods side
by side. Each edit method's and heuristic's own figure is drawn by its module."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from loccheck.render.figures import (CLAIM_COLOR, FIGSIZE, FULL_COLOR, NULL_COLOR, RC, finite_values, is_finite,
                                     legend_below, plt, save_figure)


def plot_null_histogram(null_gains: Sequence[float], claim_gain: float, full_gain: float,
                        metric: str, path: str | os.PathLike, *, location_size: int,
                        site: str = "head") -> Path:
    """Histogram of the null gains with the claim's and the whole model's gain marked.

    Non-finite null gains are left out of the histogram (the title still counts all N).
    """
    n = len(null_gains)
    return marked_histogram(
        null_gains, f"random {location_size}-{site} locations (N = {n})",
        [(claim_gain, f"claimed {site}s", dict(color=CLAIM_COLOR, lw=2.5)),
         (full_gain, "whole-model edit (ceiling)", dict(color=FULL_COLOR, lw=2.0, ls="--"))],
        f"Null distribution: {metric} gain at N = {n} random {location_size}-{site} locations",
        f"{metric} gain over the unedited model", path, empty="no finite null gains")


def marked_histogram(values: Sequence[float | None], label: str, marks: Sequence[tuple], title: str,
                     xlabel: str, path: str | os.PathLike, *, empty: str) -> Path:
    """A histogram of a null's finite values (`label` in the legend), with vertical lines at
    `marks`, (value, label, line style) each, those that are finite; `empty` says when no value is."""
    g = finite_values(values)
    with plt.style.context("default"), plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
        if g.size:
            bins = max(5, min(40, math.ceil(2 * math.sqrt(g.size))))
            ax.hist(g, bins=bins, color=NULL_COLOR, edgecolor="white", label=label)
        else:
            ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center")
        # axvline widens the x-limits when a marked value lies outside the null's range.
        for value, name, style in marks:
            if is_finite(value):
                ax.axvline(value, label=f"{name}: {float(value):.4g}", **style)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("number of random locations")
        ax.yaxis.get_major_locator().set_params(integer=True)  # counts, not fractions
        legend_below(fig)
        return save_figure(fig, path)


def plot_methods(methods: dict, metric: str, path: str | os.PathLike, *, site: str = "head") -> Path:
    """One panel per edit method: its null gains as dots (one per random location, the same
    locations in every panel), the claimed heads' gain and the whole-model gain as lines."""
    order = [m for m in ("iti", "optimal") if m in methods] + sorted(set(methods) - {"iti", "optimal"})
    with plt.style.context("default"), plt.rc_context(RC):
        fig, axes = plt.subplots(1, len(order), figsize=(FIGSIZE[0], 3.2), layout="constrained",
                                 squeeze=False)
        for ax, name in zip(axes[0], order):
            s = methods[name]
            g = finite_values(s.get("null_gains") or [])
            # Deterministic jitter: spread equal values so every location stays visible.
            jitter = (np.arange(g.size) % 7 - 3) * 0.04
            ax.scatter(jitter, g, s=14, color=NULL_COLOR, label="random locations")
            if is_finite(s.get("claim_gain")):
                ax.axhline(s["claim_gain"], color=CLAIM_COLOR, lw=2.5, label=f"claimed {site}s")
            if is_finite(s.get("ceiling_gain")):
                ax.axhline(s["ceiling_gain"], color=FULL_COLOR, lw=2.0, ls="--", label="whole model")
            p = s.get("p_value")
            ax.set_title(f"{name}: p = {p:.3g}" if is_finite(p) else name)
            ax.set_xticks([])
            ax.set_xlim(-0.5, 0.5)
            ax.set_ylabel(f"{metric} gain")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False)
        return save_figure(fig, path)
