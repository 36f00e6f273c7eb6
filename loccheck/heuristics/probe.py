"""`heuristic: {method: probe}`, ITI probing: which heads carry a behaviour.

One logistic-regression probe per (layer, head) on that head's last-token activation, trained
on the train questions' answers and scored on the validation questions' answers; the top-K
heads by validation accuracy are the claimed location (METHOD.md, "The heuristic"). It
receives HeuristicData, which has no test split. The probes themselves are numpy and
scikit-learn only, tested without torch.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Sequence

import numpy as np
from pydantic import AfterValidator, Field, StrictInt

from loccheck.errors import LoccheckError, LoccheckWarning
from loccheck.heuristics import Heuristic, Proposal, register_heuristic
from loccheck.locations import HeadLoc, format_location, head_sites, outside
from loccheck.render.format import fmt, reselected_lines, table
from loccheck.schema import Number, Section


def _head(text: str) -> str:
    return str(HeadLoc.parse(text))


class ProbeHeuristicSection(Section):
    method: Literal["probe"] = Field(description="Per-head logistic-regression probes (ITI).")
    citation: str | None = Field(None, description="Where the localization claim was published.")
    notes: str | None = Field(None, description="Free-text notes.")
    top_k: StrictInt | None = Field(None, ge=1, description="Number of heads the heuristic proposes.")
    C: Number = Field(1.0, gt=0, description="Inverse regularization strength of each logistic-regression probe.")
    probe_accuracies: dict[Annotated[str, AfterValidator(_head)], Annotated[Number, Field(ge=0, le=1)]] | None = Field(
        None, description="Per-head probe accuracies keyed by 'L{layer}H{head}' (as pinned by `loccheck localize`).")


@dataclass(frozen=True)
class ProbeResult:
    """Accuracy of one linear probe per head.

    Ranking is by validation accuracy, descending; ties are broken by (layer, head) ascending,
    so the ranking is a total order and `top_k` is deterministic.
    """
    val_accuracy: np.ndarray    # (n_layers, n_heads): accuracy on the validation examples
    train_accuracy: np.ndarray  # (n_layers, n_heads): accuracy on the training examples
    n_train: int
    n_val: int

    @property
    def n_layers(self) -> int:
        return self.val_accuracy.shape[0]

    @property
    def n_heads(self) -> int:
        return self.val_accuracy.shape[1]

    def ranked(self) -> list[tuple[HeadLoc, float]]:
        """Every head with its validation accuracy, best first (ties: lower (layer, head) first)."""
        acc = self.val_accuracy
        order = sorted(np.ndindex(acc.shape), key=lambda lh: (-acc[lh], lh))
        return [(HeadLoc(int(l), int(h)), float(acc[l, h])) for l, h in order]

    def top_k(self, k: int) -> list[HeadLoc]:
        """The k best heads by validation accuracy, returned sorted by (layer, head)."""
        total = self.n_layers * self.n_heads
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= total:
            raise ValueError(f"`k` must be an int in [1, {total}] (n_layers * n_heads), got {k!r}")
        return sorted(loc for loc, _ in self.ranked()[:k])

    def accuracy_of(self, loc: HeadLoc) -> float:
        if outside([loc], head_sites(self.n_layers, self.n_heads)):
            raise ValueError(f"`loc` {loc} is outside the probed heads "
                             f"({self.n_layers} layers x {self.n_heads} heads)")
        return float(self.val_accuracy[loc.layer, loc.head])


def _labels(y, n: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"`{name}` must have shape ({n},) to match the activations, got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"`{name}` must contain only labels 0 and 1, got {sorted(set(y.tolist()))[:5]}")
    return y.astype(np.int64)


def _check_both_labels(y: np.ndarray, split: str) -> None:
    for label, meaning in ((1, "true"), (0, "false")):
        if not (y == label).any():
            raise LoccheckError(f"probing needs both labels in the {split} split, but it has no "
                                f"label {label} ({meaning} answer) among its {y.size} examples")


def probe_heads(train_x, train_y, val_x, val_y, *, seed: int = 0, C: float = 1.0,
                max_iter: int = 1000) -> ProbeResult:
    """Fit ``LogisticRegression(C=C, max_iter=max_iter, random_state=seed)`` per head.

    Parameters
    ----------
    train_x, val_x : arrays of shape (n, n_layers, n_heads, head_dim)
        Last-token head activations (activations.collect_head_activations).
    train_y, val_y : arrays of shape (n,), labels 1 (true answer) / 0 (false answer)
        Each split needs both labels.

    The probe of head (l, h) sees only ``train_x[:, l, h]``; its score is its accuracy on
    ``val_x[:, l, h]``. Activations are used as they are (no scaling), as ITI does.
    Probes that hit `max_iter` without converging are counted and reported in one
    LoccheckWarning instead of one sklearn warning each.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    train_x, val_x = np.asarray(train_x), np.asarray(val_x)
    for name, x in (("train_x", train_x), ("val_x", val_x)):
        if x.ndim != 4:
            raise ValueError(f"`{name}` must have shape (n, n_layers, n_heads, head_dim), got {x.shape}")
    if train_x.shape[1:] != val_x.shape[1:]:
        raise ValueError(f"`train_x` and `val_x` must agree on (n_layers, n_heads, head_dim), "
                         f"got {train_x.shape[1:]} and {val_x.shape[1:]}")
    train_y = _labels(train_y, train_x.shape[0], "train_y")
    val_y = _labels(val_y, val_x.shape[0], "val_y")
    _check_both_labels(train_y, "train")
    _check_both_labels(val_y, "validation")
    if not np.isfinite(train_x).all() or not np.isfinite(val_x).all():
        raise ValueError("`train_x` and `val_x` must be finite")

    n_layers, n_heads = train_x.shape[1:3]
    val_acc = np.empty((n_layers, n_heads))
    train_acc = np.empty((n_layers, n_heads))
    n_unconverged = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for l in range(n_layers):
            for h in range(n_heads):
                clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
                n_before = len(caught)
                clf.fit(train_x[:, l, h], train_y)                  # (n_train, head_dim)
                n_unconverged += any(issubclass(w.category, ConvergenceWarning)
                                     for w in caught[n_before:])
                train_acc[l, h] = clf.score(train_x[:, l, h], train_y)
                val_acc[l, h] = clf.score(val_x[:, l, h], val_y)
    for w in caught:   # pass on anything that is not a convergence report
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if n_unconverged:
        warnings.warn(f"{n_unconverged} of {n_layers * n_heads} head probes did not converge in "
                      f"max_iter={max_iter} iterations (their accuracies are still reported)",
                      LoccheckWarning, stacklevel=2)
    return ProbeResult(val_acc, train_acc, int(train_x.shape[0]), int(val_x.shape[0]))


def _run(section: ProbeHeuristicSection, model, data, cache: Path, seed: int = 0) -> Proposal:
    """Probe every head of `model` (a LoadedModel) on `data` (HeuristicData)."""
    from loccheck.models.activations import labelled_activations

    probe = probe_heads(*labelled_activations(model, data, cache), seed=seed, C=section.C)
    return Proposal(tuple(probe.ranked()), raw=probe)


def _evidence(section, proposal: Proposal, location, pinned: bool) -> dict:
    """Probe accuracies for the report; for pinned heads, whether probing still selects them."""
    probe: ProbeResult = proposal.raw
    k = len(location)
    selected = format_location(probe.top_k(k))
    record = {"val_accuracy": probe.val_accuracy.tolist(),
              "train_accuracy": probe.train_accuracy.tolist(),
              "n_train": probe.n_train, "n_val": probe.n_val, "top_k": k,
              "selected": selected,
              "claimed_accuracy": {str(h): probe.accuracy_of(h) for h in location}}
    if pinned:
        record["pinned_heads_reselected"] = selected == format_location(location)
    return record


def _pinned(proposal: Proposal, sites, scores: dict) -> tuple[dict, str]:
    probe: ProbeResult = proposal.raw
    return ({"probe_accuracies": scores},
            f"the {len(sites)} heads with the best\n# validation accuracy of per-head logistic probes "
            f"({probe.n_train} train and\n# {probe.n_val} validation answers; test questions unseen), pinned.")


# --- its part of the report (from result.json alone; matplotlib is imported when it draws) ---

PROBE_HEATMAP_NAME = "probe_heatmap.png"


def _report_lines(r: dict) -> list[str]:
    probe = r["heuristic_evidence"]
    acc = probe.get("claimed_accuracy") or {}
    rows = [[h, fmt(acc.get(h))] for h in r.get("location") or []]
    lines = ["## The heuristic: probing", "",
             f"One logistic-regression probe per head, trained on the activations of "
             f"{probe.get('n_train')} answers of the train questions and scored on "
             f"{probe.get('n_val')} answers of the validation questions (never the test "
             "questions), at the last token of \"Q: {question} A: {answer}\".", "",
             f"![Validation accuracy of the probe of every head (layers by heads), claimed heads "
             f"outlined]({PROBE_HEATMAP_NAME})", "",
             table(rows, ["claimed head", "probe validation accuracy"])]
    return lines + reselected_lines(probe.get("pinned_heads_reselected"), probe.get("selected"), "Probing", "heads")


def _report_figures(r: dict, out_dir: Path) -> None:
    plot_probe_heatmap(np.asarray(r["heuristic_evidence"]["val_accuracy"]),
                       [HeadLoc.parse(h) for h in r.get("location") or []], out_dir / PROBE_HEATMAP_NAME)


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

    from loccheck.render.figures import CLAIM_COLOR, RC, plt, save_figure, ticker

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
    with plt.style.context("default"), plt.rc_context(RC):
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


register_heuristic(Heuristic("probe", ProbeHeuristicSection, kind="head", run=_run, evidence=_evidence,
                             pinned=_pinned, report_lines=_report_lines, report_figures=_report_figures))
