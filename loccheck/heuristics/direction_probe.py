"""`heuristic: {method: direction_probe}`: a subspace of the residual stream that separates true
from false answers (ITI's mass-mean direction, read where a subspace claim edits).

For every ranked layer l (`layers`, default all), the residual stream after decoder layer l
(the output of `adapter.blocks[l]`, or its [0] where a block returns a tuple) at the last token
of the prompt then the answer, in the claim's prompt format (as its edits read the pairs;
"Q: {question} A:" then " {answer}" for `qa`; prompt and answer tokenized apart, as answers are
scored), for the chosen (true) and the rejected (false) answer of every pair. Then, per layer
(`mass_mean_directions`):

* the mass-mean direction of the **train** pairs, d = mean(true) - mean(false), normalised;
* its **validation** accuracy as a 1-D classifier: project an answer's activation on d, call it
  true when the projection is above the midpoint of the two train class means' projections;
  both answers of every validation pair count, so chance is 0.5;
* a k-dimensional basis, k = `top_k`: d first; for k > 1 then the k - 1 leading right singular
  vectors of the train per-pair differences (true - false) after d's component has been
  projected out of each difference: the directions of largest spread of the differences
  beside d, orthogonal to d and to each other by construction. (Not Gram-Schmidt over the raw
  singular vectors: the leading one mostly lies almost along d, and orthogonalising it against
  d would keep mostly rounding and noise.) Each singular vector's sign makes its
  largest-magnitude coordinate positive, so the basis is deterministic.

The best layer by validation accuracy (ties: the lower layer) is the proposal: one SubspaceLoc
`L{layer}S{k}@sha256:<hex>`, where <hex> is the sha256 of the .npy bytes of its (k, width)
float64 basis (`direction_file_bytes`), the file `loccheck localize` writes beside the claim.
Test questions are never seen (HeuristicData). Nothing is cached: one forward per batch.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Sequence

import numpy as np
from pydantic import AfterValidator, Field, StrictInt

from loccheck.errors import LoccheckError
from loccheck.heuristics import Heuristic, Proposal, register_heuristic
from loccheck.heuristics.neuron_attribution import Layers, ranked_layers
from loccheck.locations import SubspaceLoc
from loccheck.render.format import fmt, table
from loccheck.schema import Number, Section

RANK_RTOL = 1e-6    # a singular value under this fraction of the differences' largest is no direction
BATCH = 16          # sequences per forward


def _layer_key(text: str) -> str:
    m = re.fullmatch(r"L([0-9]+)", text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"a layer must look like 'L12' (0-based), got {text!r}")
    return f"L{int(m[1])}"


LayerKey = Annotated[str, AfterValidator(_layer_key)]


class DirectionProbeSection(Section):
    method: Literal["direction_probe"] = Field(
        description="Mass-mean direction (true minus false answers) of the residual stream after each layer; "
                    "the layer whose direction best separates validation answers is proposed.")
    citation: str | None = Field(None, description="Where the localization claim was published.")
    notes: str | None = Field(None, description="Free-text notes.")
    top_k: StrictInt = Field(1, ge=1, description="Dimension k of the proposed subspace: the mass-mean direction, "
                                                  "then k - 1 leading singular directions of the train pairs' "
                                                  "differences orthogonal to it.")
    layers: Layers | None = Field(None, description="Probe only these layers' residual streams (0-based); "
                                                    "default: every layer.")
    layer_accuracies: dict[LayerKey, Annotated[Number, Field(ge=0, le=1)]] | None = Field(
        None, description="Validation accuracy of each layer's direction keyed by 'L{layer}' "
                          "(written by `loccheck localize`).")


# ---------------------------------------------------------------- the numeric core (numpy only)

def direction_file_bytes(vectors) -> bytes:
    """The bytes of the .npy file of a basis: `np.save` of its float64 (k, width) array. The one
    place they are made, so the file `loccheck localize` writes and the basis id
    ("sha256:" + their sha256) a SubspaceLoc names agree."""
    array = np.ascontiguousarray(np.asarray(vectors, dtype=np.float64))
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"`vectors` must be a non-empty (k, width) array, got shape {array.shape}")
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def basis_id(vectors) -> str:
    """"sha256:<hex>", the sha256 of `direction_file_bytes(vectors)`."""
    return "sha256:" + hashlib.sha256(direction_file_bytes(vectors)).hexdigest()


@dataclass(frozen=True, eq=False)   # eq=False: ndarray fields
class DirectionFit:
    """One layer's mass-mean direction, its basis and its accuracy."""
    basis: np.ndarray            # (k, width) float64 orthonormal rows; row 0 is the direction
    threshold: float             # midpoint of the train class means' projections on the direction
    train_accuracy: float        # of the 1-D classifier on the train answers
    val_accuracy: float          # on the validation answers (both answers of each pair)
    val_true: np.ndarray         # (n_val_true,) validation projections on the direction
    val_false: np.ndarray        # (n_val_false,)

    @property
    def direction(self) -> np.ndarray:
        return self.basis[0]


def _sign_fixed(rows: np.ndarray) -> np.ndarray:
    """Each row times the sign of its largest-magnitude coordinate (the first such one)."""
    at = np.abs(rows).argmax(axis=1)
    return rows * np.where(rows[np.arange(len(rows)), at] < 0, -1.0, 1.0)[:, None]


def _accuracy(true_proj: np.ndarray, false_proj: np.ndarray, threshold: float) -> float:
    """Share of answers on their side: true above the threshold, false at or below it."""
    right = int(np.count_nonzero(true_proj > threshold)) + int(np.count_nonzero(false_proj <= threshold))
    return right / (true_proj.size + false_proj.size)


def mass_mean_directions(train_true, train_false, val_true, val_false, k: int) -> DirectionFit:
    """The mass-mean direction of one layer, its k-dimensional basis and its accuracy.

    Parameters
    ----------
    train_true, train_false : (n_train, width) arrays, paired: row i of each is pair i's true
        (chosen) and false (rejected) answer's activation.
    val_true, val_false : (n_val_true, width), (n_val_false, width) arrays (paired or not).
    k : the basis dimension, 1 <= k < width.

    The direction is d = (mean(train_true) - mean(train_false)) / its norm. The classifier
    calls x true iff x . d > t, t = (mean(train_true) + mean(train_false)) / 2 . d; its accuracy
    is the share of answers it gets right, true and false answers weighted alike (ties at t
    count as false). For k > 1 the basis is d, then the k - 1 leading right singular vectors of
    D - (D d) d^T, D = train_true - train_false (n_train, width); singular values under
    RANK_RTOL times D's largest do not count, and fewer than k - 1 left raise LoccheckError.
    Computed in float64.
    """
    tt, tf, vt, vf = (np.asarray(a, dtype=np.float64) for a in (train_true, train_false, val_true, val_false))
    if tt.ndim != 2 or tt.shape != tf.shape or tt.shape[0] == 0:
        raise ValueError(f"`train_true` and `train_false` must be paired non-empty (n, width) arrays, "
                         f"got {tt.shape} and {tf.shape}")
    width = tt.shape[1]
    for name, a in (("val_true", vt), ("val_false", vf)):
        if a.ndim != 2 or a.shape[1] != width or a.shape[0] == 0:
            raise ValueError(f"`{name}` must be a non-empty (n, {width}) array, got {a.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < width:
        raise ValueError(f"`k` must be an int in [1, {width - 1}], got {k!r}")
    if not all(np.isfinite(a).all() for a in (tt, tf, vt, vf)):
        raise ValueError("the activations must be finite")
    mu_true, mu_false = tt.mean(axis=0), tf.mean(axis=0)
    shift = mu_true - mu_false
    norm = float(np.linalg.norm(shift))
    if norm == 0.0:
        raise LoccheckError("the true and the false answers' mean activations are equal: there is no "
                            "mass-mean direction", key="heuristic.layers")
    d = shift / norm                                                     # (width,)
    rows = [d[None, :]]
    if k > 1:
        diffs = tt - tf                                                  # (n_train, width)
        rest = diffs - np.outer(diffs @ d, d)                            # d projected out of each
        _, s, vh = np.linalg.svd(rest, full_matrices=False)
        top = np.linalg.svd(diffs, compute_uv=False)[0]
        usable = int(np.count_nonzero(s > RANK_RTOL * top))
        if usable < k - 1:
            raise LoccheckError(f"top_k {k} asks for {k - 1} direction(s) beside the mass-mean one, but the "
                                f"{tt.shape[0]} train pairs' differences span only {usable} more",
                                key="heuristic.top_k")
        rows.append(_sign_fixed(vh[:k - 1]))
    basis = np.concatenate(rows)                                         # (k, width)
    # one more Gram-Schmidt pass (QR, R's diagonal made positive): orthonormal to float64 rounding
    q, r = np.linalg.qr(basis.T)
    basis = (q * np.sign(np.diag(r))).T
    threshold = float(0.5 * (mu_true + mu_false) @ basis[0])
    p = [a @ basis[0] for a in (tt, tf, vt, vf)]
    return DirectionFit(basis, threshold, _accuracy(p[0], p[1], threshold), _accuracy(p[2], p[3], threshold),
                        p[2], p[3])


@dataclass(frozen=True, eq=False)
class DirectionProbeResult:
    """Every ranked layer's direction probe. `bases` maps each layer's basis id (dimension k) to
    its (k, width) float64 orthonormal rows; a smaller dimension's basis is a prefix of it."""
    layers: tuple[int, ...]               # ranked layers, ascending
    k: int
    fits: tuple[DirectionFit, ...]        # per ranked layer
    n_train: int                          # train pairs
    n_val: int                            # validation pairs
    bases: dict                           # basis id -> (k, width) float64 orthonormal rows

    @property
    def val_accuracy(self) -> np.ndarray:
        return np.array([f.val_accuracy for f in self.fits])

    @property
    def train_accuracy(self) -> np.ndarray:
        return np.array([f.train_accuracy for f in self.fits])

    @property
    def best_layer(self) -> int:
        """The layer of the highest validation accuracy (ties: the lower layer)."""
        return self.layers[int(np.argmax(self.val_accuracy))]   # argmax takes the first maximum

    def fit(self, layer: int) -> DirectionFit:
        return self.fits[self.layers.index(layer)]

    def basis(self, layer: int, k: int | None = None) -> np.ndarray:
        """(k, width) orthonormal rows of layer `layer`'s subspace of dimension k (default: self.k)."""
        k = self.k if k is None else k
        if layer not in self.layers:
            raise ValueError(f"`layer` {layer} was not probed (layers {list(self.layers)})")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.k:
            raise ValueError(f"`k` must be an int in [1, {self.k}] (the heuristic's top_k), got {k!r}")
        return self.fit(layer).basis[:k]

    def site(self, layer: int, k: int | None = None) -> SubspaceLoc:
        vectors = self.basis(layer, k)
        return SubspaceLoc(layer, vectors.shape[0], basis_id(vectors))

    def basis_of(self, site: SubspaceLoc) -> np.ndarray:
        """The vectors of one of this result's subspaces (KeyError for any other)."""
        if site.layer in self.layers and 1 <= site.dim <= self.k and self.site(site.layer, site.dim) == site:
            return self.basis(site.layer, site.dim)
        raise KeyError(f"{site} is not a subspace this direction probe found")

    def ranked(self) -> list[tuple[SubspaceLoc, float]]:
        """One subspace (dimension k) per layer with its validation accuracy, best first (ties:
        lower layer)."""
        acc = self.val_accuracy
        order = sorted(range(len(self.layers)), key=lambda i: (-acc[i], self.layers[i]))
        return [(self.site(self.layers[i]), float(acc[i])) for i in order]


@dataclass(frozen=True)
class DirectionProposal(Proposal):
    """A proposal of one subspace: `top(k)` is the best layer's subspace of dimension k (a
    location of one site), not k sites."""

    def top(self, k: int) -> tuple:
        raw: DirectionProbeResult = self.raw
        return (raw.site(raw.best_layer, k),)

    def score(self, site) -> float:
        """The validation accuracy of the layer of one of this proposal's subspaces."""
        raw: DirectionProbeResult = self.raw
        raw.basis_of(site)
        return float(raw.fit(site.layer).val_accuracy)


# ---------------------------------------------------------------- activations (torch)

def residual_last_token(model, adapter, sequences: Sequence[Sequence[int]], layers: Sequence[int], *,
                        pad_id: int, batch_size: int = BATCH) -> np.ndarray:
    """The residual stream after each of `layers` at each sequence's last token: float32
    (n_sequences, len(layers), model width), in the order of `sequences` (token id lists).

    Sequences are sorted by length into right-padded, masked batches (a sequence's values do not
    depend on its batch-mates); a block's output is read with a forward hook (its [0] when it is
    a tuple), under no_grad; the forward runs through the model's base (no LM head)."""
    import torch

    from loccheck.models.hooks import read_outputs
    from loccheck.models.scoring import padded

    device = next(model.parameters()).device
    body = getattr(model, model.base_model_prefix)
    out = np.empty((len(sequences), len(layers), adapter.model_width), dtype=np.float32)
    batch: dict = {}

    def read(row, x, y):
        h = y[0] if isinstance(y, tuple) else y                         # (batch, pos, width)
        picked = h[torch.arange(h.shape[0], device=h.device), batch["last"]]
        out[batch["rows"], row] = picked.detach().float().cpu().numpy()

    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    with torch.no_grad(), read_outputs([adapter.blocks[l] for l in layers], read):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, mask = padded([sequences[i] for i in rows], pad_id, device)
            batch["rows"] = np.asarray(rows)
            batch["last"] = torch.tensor([len(sequences[i]) - 1 for i in rows], device=device)
            body(input_ids=ids, attention_mask=mask)
    return out


def _run(section: DirectionProbeSection, model, data, cache: Path, seed: int = 0) -> Proposal:
    """Probe the residual stream after every ranked layer of `model` (a LoadedModel) on `data`'s
    train (direction, basis) and validation (accuracy) pairs."""
    from loccheck.data.prompts import tokenize_pairs

    adapter = model.adapter
    layers = ranked_layers(section, adapter)
    width = adapter.model_width
    if section.top_k >= width:
        raise LoccheckError(f"top_k {section.top_k} is not below the residual stream's width {width}: a "
                            "subspace that large is the whole stream", key="heuristic.top_k")
    split = {s: tokenize_pairs(model.tokenizer, getattr(data, s), data.prompt_format, data.system_prompt) for s in ("train", "validation")}
    for s, pairs in split.items():
        if not pairs:
            raise LoccheckError(f"the direction probe needs {s} pairs (its direction is fitted on the train "
                                "questions and scored on the validation ones), and this split has none",
                                key="behavior.split")
    # every distinct sequence once: both answers of each pair, prompt then answer
    seqs = list(dict.fromkeys(tuple(p.prompt) + tuple(a) for s in split.values() for p in s
                              for a in (p.chosen, p.rejected)))
    index = {q: i for i, q in enumerate(seqs)}
    pad_id = model.tokenizer.pad_token_id
    acts = residual_last_token(model.model, adapter, seqs, layers, pad_id=0 if pad_id is None else int(pad_id))

    def rows(pairs, answer):                                             # (n_pairs, len(layers), width)
        return acts[[index[tuple(p.prompt) + tuple(getattr(p, answer))] for p in pairs]]

    tt, tf = rows(split["train"], "chosen"), rows(split["train"], "rejected")
    vt, vf = rows(split["validation"], "chosen"), rows(split["validation"], "rejected")
    fits = []
    for i, layer in enumerate(layers):
        try:
            fits.append(mass_mean_directions(tt[:, i], tf[:, i], vt[:, i], vf[:, i], section.top_k))
        except LoccheckError as err:
            raise LoccheckError(f"layer {layer}: {err.msg}", key=err.key) from None
    bases = {basis_id(f.basis): f.basis for f in fits}
    result = DirectionProbeResult(layers, section.top_k, tuple(fits), len(split["train"]),
                                  len(split["validation"]), bases)
    return DirectionProposal(tuple(result.ranked()), raw=result)


# ---------------------------------------------------------------- evidence and pinning

def _evidence(section, proposal: Proposal, location, pinned: bool) -> dict:
    """Per-layer accuracies, the best layer, and at the claimed layer the validation answers'
    projections on that layer's mass-mean direction (what the report's histogram draws)."""
    raw: DirectionProbeResult = proposal.raw
    site = location[0]
    k = site.dim
    selected = str(proposal.top(k)[0]) if k <= raw.k else None
    record = {"k": k, "top_k": raw.k, "layers": list(raw.layers),
              "val_accuracy": raw.val_accuracy.tolist(), "train_accuracy": raw.train_accuracy.tolist(),
              "best_layer": raw.best_layer, "claimed_layer": site.layer, "claimed": str(site),
              "selected": selected, "n_train": raw.n_train, "n_val": raw.n_val,
              "claimed_accuracy": None, "projections": None}
    if site.layer in raw.layers:
        fit = raw.fit(site.layer)
        record["claimed_accuracy"] = fit.val_accuracy
        record["projections"] = {"layer": site.layer, "threshold": fit.threshold,
                                 "val_true": fit.val_true.tolist(), "val_false": fit.val_false.tolist()}
    if pinned:
        record["pinned_subspace_reselected"] = selected == str(site)
    return record


def _pinned(proposal: Proposal, sites, scores: dict) -> tuple[dict, str]:
    raw: DirectionProbeResult = proposal.raw
    site = sites[0]
    return ({"layer_accuracies": {f"L{l}": float(a) for l, a in zip(raw.layers, raw.val_accuracy)}},
            f"the residual stream after layer {site.layer}, whose mass-mean direction (true minus\n"
            f"# false answers, {raw.n_train} train pairs) best separates {raw.n_val} validation pairs' "
            f"answers (test questions\n# unseen); a {site.dim}-dimensional subspace, pinned.")


# --- its part of the report (from result.json alone; matplotlib is imported when it draws) ---

LAYERS_FIGURE_NAME = "direction_probe_layers.png"
PROJECTIONS_FIGURE_NAME = "direction_probe_projections.png"


def _report_lines(r: dict) -> list[str]:
    ev = r["heuristic_evidence"]
    claimed = ev.get("claimed_layer")
    rows = [[f"L{l}" + (" (claimed)" if l == claimed else ""), fmt(v), fmt(t)]
            for l, v, t in zip(ev.get("layers") or [], ev.get("val_accuracy") or [], ev.get("train_accuracy") or [])]
    k = ev.get("k")
    basis = ("the mass-mean direction" if k == 1 else
             f"the mass-mean direction and the {fmt((k or 1) - 1)} leading singular directions of the train pairs' "
             "true-minus-false differences orthogonal to it")
    lines = ["## The heuristic: direction probe", "",
             f"For every layer, the residual stream after it at the last token of \"Q: {{question}} A: {{answer}}\" "
             f"for the true and the false answer of {ev.get('n_train')} train pairs gives a mass-mean direction "
             f"(mean true minus mean false, normalised); it classifies the answers of {ev.get('n_val')} validation "
             "pairs (never the test questions) by their projection on it, against the midpoint of the train "
             f"classes' mean projections. The best layer is L{ev.get('best_layer')}; the proposed subspace "
             f"({k}-dimensional) is {basis}.", "",
             f"![Validation accuracy of each layer's mass-mean direction, claimed layer marked]({LAYERS_FIGURE_NAME})"]
    if ev.get("projections"):
        lines += ["", f"![Validation answers' projections on the mass-mean direction at layer {claimed}, true vs "
                      f"false]({PROJECTIONS_FIGURE_NAME})"]
    lines += ["", table(rows, ["layer", "validation accuracy", "train accuracy"])]
    again = ev.get("pinned_subspace_reselected")
    if again is False:
        lines += ["", f"**Note:** the claim pins its subspace, and the direction probe on this data now selects "
                      f"another: {ev.get('selected')}."]
    elif again:
        lines += ["", "The direction probe on this data selects exactly the pinned subspace."]
    return lines


def _report_figures(r: dict, out_dir: Path) -> None:
    ev = r["heuristic_evidence"]
    plot_layer_accuracy(ev["layers"], ev["val_accuracy"], ev.get("claimed_layer"), out_dir / LAYERS_FIGURE_NAME)
    proj = ev.get("projections")
    if proj:
        plot_projections(proj["val_true"], proj["val_false"], proj["threshold"], out_dir / PROJECTIONS_FIGURE_NAME,
                         title=f"Validation answers on the mass-mean direction at layer {proj['layer']}")


def plot_layer_accuracy(layers: Sequence[int], accuracy: Sequence[float], claimed_layer: int | None,
                        path: str | os.PathLike) -> Path:
    """Validation accuracy of each layer's direction, chance (0.5) dashed, the claimed layer red."""
    from loccheck.render.figures import CLAIM_COLOR, FIGSIZE, NULL_COLOR, RC, legend_below, plt, save_figure, ticker

    layers, acc = list(layers), np.asarray(accuracy, dtype=float)
    if not layers or acc.shape != (len(layers),):
        raise ValueError(f"`layers` and `accuracy` must be non-empty and of one length, got {len(layers)} "
                         f"and {acc.shape}")
    with plt.style.context("default"), plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
        ax.plot(layers, acc, marker="o", color="tab:blue", label="validation accuracy")
        ax.axhline(0.5, color=NULL_COLOR, ls="--", lw=1, label="chance")
        if claimed_layer in layers:
            ax.plot([claimed_layer], [acc[layers.index(claimed_layer)]], marker="o", ms=11, ls="none",
                    mfc="none", mec=CLAIM_COLOR, mew=2, label=f"claimed layer ({claimed_layer})")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=min(len(layers), 20), integer=True))
        ax.set_ylim(min(0.0, float(acc.min()) - 0.05), 1.02)
        ax.set_xlabel("layer (0 = first): residual stream after it")
        ax.set_ylabel("validation accuracy")
        ax.set_title("Mass-mean direction per layer")
        legend_below(fig)
        return save_figure(fig, path)


def plot_projections(val_true: Sequence[float], val_false: Sequence[float], threshold: float,
                     path: str | os.PathLike, *, title: str) -> Path:
    """Histograms of the true and the false answers' projections, on shared bins, and the
    classifier's threshold."""
    from loccheck.render.figures import FIGSIZE, RC, legend_below, plt, save_figure

    t, f = np.asarray(val_true, dtype=float), np.asarray(val_false, dtype=float)
    if t.size == 0 or f.size == 0:
        raise ValueError("`val_true` and `val_false` must be non-empty")
    both = np.concatenate([t, f, [threshold]])
    bins = np.histogram_bin_edges(both, bins=min(30, max(5, both.size // 4)))
    with plt.style.context("default"), plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
        ax.hist(t, bins=bins, alpha=0.6, color="tab:green", label=f"true answers ({t.size})")
        ax.hist(f, bins=bins, alpha=0.6, color="tab:purple", label=f"false answers ({f.size})")
        ax.axvline(threshold, color="black", ls="--", lw=1, label="threshold (midpoint of the train means)")
        ax.set_xlabel("projection on the mass-mean direction")
        ax.set_ylabel("answers")
        ax.set_title(title)
        legend_below(fig)
        return save_figure(fig, path)


register_heuristic(Heuristic("direction_probe", DirectionProbeSection, kind="subspace", run=_run,
                             evidence=_evidence, pinned=_pinned, report_lines=_report_lines,
                             report_figures=_report_figures))
