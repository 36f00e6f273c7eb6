"""Figures for the evidence report: one function per figure, each returns the path it wrote.

Rendering is deterministic: the default style (a user's matplotlibrc cannot leak in), a fixed
dpi, and no "Software" PNG chunk, so the same input gives byte-identical PNGs and reruns give
clean diffs. Files are written atomically (temp file in the same folder, then os.replace).
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # headless and deterministic; must precede the pyplot import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from loccheck.files import write_bytes_atomic  # noqa: E402

DPI = 120
FIGSIZE = (7.0, 4.2)
CLAIM_COLOR = "tab:red"
FULL_COLOR = "black"
NULL_COLOR = "0.6"
_RC = {"font.size": 10, "axes.titlesize": 11, "legend.fontsize": 9, "figure.dpi": DPI}


def _finite(values: Iterable) -> np.ndarray:
    a = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return a[np.isfinite(a)]


def _is_finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


def _legend(fig) -> None:
    # Below the axes, so it never hides a marked gain or a curve.
    # One entry per row: three long labels side by side run off a 7-inch figure.
    fig.legend(loc="outside lower center", ncols=1, frameon=False)


def save_figure(fig, path) -> Path:
    """Render `fig` to PNG bytes, close it, and write the bytes atomically."""
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    finally:
        plt.close(fig)  # many claims in one pytest session would otherwise leak figures
    return write_bytes_atomic(buf.getvalue(), path)


def plot_null_histogram(null_gains: Sequence[float], claim_gain: float, full_gain: float,
                        metric: str, path: str | os.PathLike, *, location_size: int,
                        site: str = "head") -> Path:
    """Histogram of the null gains with the claim's and the whole model's gain marked.

    Non-finite null gains are left out of the histogram (the title still counts all N).
    """
    n = len(null_gains)
    g = _finite(null_gains)
    with plt.style.context("default"), plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
        if g.size:
            bins = max(5, min(40, math.ceil(2 * math.sqrt(g.size))))
            ax.hist(g, bins=bins, color=NULL_COLOR, edgecolor="white",
                    label=f"random {location_size}-{site} locations (N = {n})")
        else:
            ax.text(0.5, 0.5, "no finite null gains", transform=ax.transAxes, ha="center")
        # axvline widens the x-limits when a marked gain lies outside the null's range.
        if _is_finite(claim_gain):
            ax.axvline(claim_gain, color=CLAIM_COLOR, lw=2.5,
                       label=f"claimed {site}s: {float(claim_gain):.4g}")
        if _is_finite(full_gain):
            ax.axvline(full_gain, color=FULL_COLOR, lw=2.0, ls="--",
                       label=f"whole-model edit (ceiling): {float(full_gain):.4g}")
        ax.set_title(f"Null distribution: {metric} gain at N = {n} random "
                     f"{location_size}-{site} locations")
        ax.set_xlabel(f"{metric} gain over the unedited model")
        ax.set_ylabel("number of random locations")
        ax.yaxis.get_major_locator().set_params(integer=True)  # counts, not fractions
        _legend(fig)
        return save_figure(fig, path)


def plot_loss_curves(edits: Sequence[dict], path: str | os.PathLike, *, site: str = "head") -> Path:
    """Training loss per optimizer step for every edit in `edits` (the result dict's list).

    The claim and the whole-model edit are bold; random locations are thin grey lines with
    one legend entry. The y axis is logarithmic when every finite loss is positive.
    """
    randoms = [e for e in edits if e.get("role") == "random"]
    styles = {"claim": dict(color=CLAIM_COLOR, lw=2.4, label=f"claimed {site}s", zorder=3),
              "ceiling": dict(color=FULL_COLOR, lw=2.0, ls="--", label="whole model", zorder=3)}
    all_losses = []
    with plt.style.context("default"), plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
        labelled = False
        # Random curves first so the claim and the ceiling are drawn on top of them.
        for e in sorted(edits, key=lambda e: e.get("role") != "random"):
            y = np.asarray([np.nan if v is None else v for v in e.get("loss_curve") or []], float)
            if y.size == 0:
                continue
            all_losses.append(y[np.isfinite(y)])
            x = np.arange(1, y.size + 1)
            if e.get("role") == "random":
                ax.plot(x, y, color=NULL_COLOR, lw=0.8, alpha=0.6, zorder=1,
                        label=None if labelled else f"random ({len(randoms)})")
                labelled = True
            else:
                ax.plot(x, y, **styles.get(e.get("role"), dict(lw=1.5, label=str(e.get("role")))))
        finite = np.concatenate(all_losses) if all_losses else np.empty(0)
        if finite.size and np.all(finite > 0):
            ax.set_yscale("log")
            # Plain tick labels at 1, 2, 5 x 10^k: a loss spanning under a decade would
            # otherwise get one or two scientific-notation labels.
            ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0), numticks=12))
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title("Edit training loss per step")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        if all_losses:
            _legend(fig)
        else:
            ax.text(0.5, 0.5, "no loss curves recorded", transform=ax.transAxes, ha="center")
        return save_figure(fig, path)


def plot_probe_heatmap(val_accuracy, claimed: Sequence, path: str | os.PathLike, *,
                       title: str | None = None) -> Path:
    """Probe validation accuracy per head, with the claimed heads outlined.

    Heads on the x axis, layers on the y axis with **layer 0 at the bottom** (deeper layers
    higher up); a colour bar gives the accuracy, whose range starts at chance (0.5) unless an
    accuracy is lower. `claimed` holds HeadLoc-like objects (`.layer`, `.head`); each is drawn
    as a red rectangle with a white halo, so it shows on any colour. Non-finite cells are grey.
    """
    import matplotlib.patches as mpatches
    from matplotlib import patheffects

    acc = np.asarray(val_accuracy, dtype=float)
    if acc.ndim != 2 or 0 in acc.shape:
        raise ValueError(f"`val_accuracy` must be a non-empty (n_layers, n_heads) array, got shape {acc.shape}")
    n_layers, n_heads = acc.shape
    from loccheck.locations import head_sites, outside

    bad = [str(c) for c in outside(sorted(set(claimed)), head_sites(n_layers, n_heads))]
    if bad:
        raise ValueError(f"`claimed` heads {bad} are outside the {n_layers} x {n_heads} accuracy grid")
    claimed = sorted({(int(c.layer), int(c.head)) for c in claimed})
    finite = acc[np.isfinite(acc)]
    vmin = min(0.5, float(finite.min())) if finite.size else 0.5
    vmax = max(float(finite.max()), vmin + 0.05) if finite.size else 1.0
    # ~0.3 inch cells, shrunk so a 32 x 32 model still fits in about 9 x 10 inches
    cell = min(0.32, 7.0 / n_heads, 9.0 / n_layers)
    figsize = (max(4.5, n_heads * cell + 2.4), max(3.0, n_layers * cell + 1.6))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.75")
    outline = [patheffects.withStroke(linewidth=4.0, foreground="white")]
    with plt.style.context("default"), plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        im = ax.imshow(np.ma.masked_invalid(acc), origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                       aspect="equal", interpolation="nearest")
        for l, h in claimed:
            # inset a little, so two neighbouring claimed heads keep two visible outlines;
            # unclipped, so an outline on the grid's edge is drawn whole
            ax.add_patch(mpatches.Rectangle((h - 0.44, l - 0.44), 0.88, 0.88, fill=False,
                                            edgecolor=CLAIM_COLOR, lw=2.0, path_effects=outline,
                                            zorder=3, clip_on=False))
        bar = fig.colorbar(im, ax=ax, shrink=min(1.0, max(0.4, 12 / n_layers)) if n_layers > 12 else 1.0)
        bar.set_label("probe validation accuracy")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=min(n_heads, 16), integer=True))
        ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=min(n_layers, 20), integer=True))
        ax.set_xlim(-0.5, n_heads - 0.5)
        ax.set_ylim(-0.5, n_layers - 0.5)
        ax.set_xlabel("head")
        ax.set_ylabel("layer (0 = first)")
        ax.set_title(title or f"Probe accuracy per head ({len(claimed)} claimed outlined)")
        if claimed:
            fig.legend(handles=[mpatches.Patch(fill=False, edgecolor=CLAIM_COLOR, lw=2.0,
                                               label=f"claimed heads ({len(claimed)})")],
                       loc="outside lower center", frameon=False)
        return save_figure(fig, path)


def plot_methods(methods: dict, metric: str, path: str | os.PathLike, *, site: str = "head") -> Path:
    """One panel per edit method: its null gains as dots (one per random location, the same
    locations in every panel), the claimed heads' gain and the whole-model gain as lines."""
    order = [m for m in ("iti", "optimal") if m in methods] + sorted(set(methods) - {"iti", "optimal"})
    with plt.style.context("default"), plt.rc_context(_RC):
        fig, axes = plt.subplots(1, len(order), figsize=(FIGSIZE[0], 3.2), layout="constrained",
                                 squeeze=False)
        for ax, name in zip(axes[0], order):
            s = methods[name]
            g = _finite(s.get("null_gains") or [])
            # Deterministic jitter: spread equal values so every location stays visible.
            jitter = (np.arange(g.size) % 7 - 3) * 0.04
            ax.scatter(jitter, g, s=14, color=NULL_COLOR, label="random locations")
            if _is_finite(s.get("claim_gain")):
                ax.axhline(s["claim_gain"], color=CLAIM_COLOR, lw=2.5, label=f"claimed {site}s")
            if _is_finite(s.get("ceiling_gain")):
                ax.axhline(s["ceiling_gain"], color=FULL_COLOR, lw=2.0, ls="--", label="whole model")
            p = s.get("p_value")
            ax.set_title(f"{name}: p = {p:.3g}" if _is_finite(p) else name)
            ax.set_xticks([])
            ax.set_xlim(-0.5, 0.5)
            ax.set_ylabel(f"{metric} gain")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False)
        return save_figure(fig, path)


def plot_tracing_heatmap(effects, groups: Sequence[str], claimed_layers: Sequence[int],
                         path: str | os.PathLike, *, title: str) -> Path:
    """Mean indirect effect per (layer, token group), layer 0 at the bottom, the claimed layers'
    rows outlined; a diverging scale centred on 0 (restoring can also lower the answer's
    probability); empty groups grey."""
    import matplotlib.patches as mpatches
    from matplotlib import patheffects

    eff = np.asarray(effects, dtype=float)
    if eff.ndim != 2 or eff.shape[1] != len(groups) or 0 in eff.shape:
        raise ValueError(f"`effects` must be a non-empty (n_layers, {len(groups)}) array, got shape {eff.shape}")
    n_layers = eff.shape[0]
    finite = eff[np.isfinite(eff)]
    limit = max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-6)
    cell = min(0.32, 9.0 / n_layers)
    outline = [patheffects.withStroke(linewidth=4.0, foreground="white")]
    with plt.style.context("default"), plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(6.0, max(3.0, n_layers * cell + 1.8)), layout="constrained")
        im = ax.imshow(np.ma.masked_invalid(eff), origin="lower", aspect="auto", interpolation="nearest",
                       cmap=plt.get_cmap("RdBu_r").with_extremes(bad="0.75"), vmin=-limit, vmax=limit)
        for layer in sorted(set(claimed_layers)):
            ax.add_patch(mpatches.Rectangle((-0.46, layer - 0.44), len(groups) - 0.08, 0.88, fill=False,
                                            edgecolor=CLAIM_COLOR, lw=2.0, path_effects=outline,
                                            zorder=3, clip_on=False))
        fig.colorbar(im, ax=ax).set_label("mean indirect effect")
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
        ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=min(n_layers, 20), integer=True))
        ax.set_ylabel("MLP layer (0 = first)")
        ax.set_title(title)
        return save_figure(fig, path)
