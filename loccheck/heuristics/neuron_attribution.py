"""`heuristic: {method: neuron_attribution}`: which MLP hidden units (neurons) carry a preference.

A neuron L{layer}N{unit} is coordinate `unit` of the input of layer `layer`'s MLP down
projection (`adapter.mlp_out(layer)`; loccheck.locations.NeuronLoc). Every unit of the ranked
layers (`layers`, default all) gets one score from the **train pairs only** (never the
validation or the test questions), each pair's prompt and answers tokenized in the claim's
prompt format, as its edits read them (a known fact's prompt as written, `text`):

* `activation_difference`: per pair, the unit's activation averaged over the positions that
  predict an answer token (the prompt's last token up to the answer's second-to-last one, as
  `models.scoring.answer_logprobs` reads them) for the chosen answer, minus the same for the
  rejected one; the score is |mean| / (std + eps) of those per-pair differences (std with
  ddof = 1): a standardised effect (eps: `neuron_scores`).
* `gradient_x_activation`: per pair, d(log p(chosen) - log p(rejected)) / d(activation) x
  activation, summed over the same positions of both sequences (the rejected one's with the
  sign of -log p(rejected)): minus the first-order change of the pair's log-odds were the unit
  set to zero at those positions; the score is |mean over pairs|.

Units are ranked by score, best first, ties broken by (layer, unit); the top `top_k` are the
proposed location. Nothing is cached: one forward (and, for gradients, one backward) per batch
of train pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Sequence

import os

import numpy as np
from pydantic import AfterValidator, Field, StrictInt

from loccheck.errors import AdapterError, LoccheckError
from loccheck.heuristics import Heuristic, Proposal, register_heuristic
from loccheck.locations import NeuronLoc, format_location
from loccheck.render.format import fmt, reselected_lines, table
from loccheck.schema import FLOAT32_TINY, Number, Section

SCORES = ("activation_difference", "gradient_x_activation")
EPS_REL = 1e-4       # activation_difference's eps, in units of its layer's RMS per-pair difference
BATCH_PAIRS = 8      # pairs per forward: 2 x 8 sequences
TOP_SHOWN = 20       # units listed in the evidence and the report
HEATMAP_COLUMNS = 256  # at most this many unit columns per layer in the evidence and the heatmap


def _neuron(text: str) -> str:
    return str(NeuronLoc.parse(text))


def _distinct(layers):
    repeated = sorted({l for l in layers if layers.count(l) > 1})
    if repeated:
        raise ValueError(f"layer(s) {repeated} listed more than once")
    return layers


# the `layers` field of a heuristic's section: distinct layers, at least one
Layers = Annotated[tuple[Annotated[StrictInt, Field(ge=0)], ...], Field(min_length=1), AfterValidator(_distinct)]


class NeuronAttributionSection(Section):
    method: Literal["neuron_attribution"] = Field(
        description="Rank MLP hidden units by how they separate chosen from rejected answers on the train pairs.")
    citation: str | None = Field(None, description="Where the localization claim was published.")
    notes: str | None = Field(None, description="Free-text notes.")
    top_k: StrictInt | None = Field(None, ge=1, description="Number of neurons the heuristic proposes.")
    score: Literal[SCORES] = Field(
        "activation_difference",
        description="'activation_difference': |mean| / std over train pairs of the unit's mean activation "
                    "(at the positions that predict answer tokens) for the chosen answer minus for the "
                    "rejected one; 'gradient_x_activation': |mean over pairs| of d(log p(chosen) - "
                    "log p(rejected)) / d(activation) x activation, summed over those positions.")
    layers: Layers | None = Field(None, description="Rank only these layers' units (0-based); default: every layer.")
    neuron_scores: dict[Annotated[str, AfterValidator(_neuron)], Annotated[Number, Field(ge=0)]] | None = Field(
        None, description="Score of each pinned neuron keyed by 'L{layer}N{unit}' (written by `loccheck localize`).")


@dataclass(frozen=True, eq=False)   # eq=False: ndarray fields
class NeuronAttribution:
    """Scores of every hidden unit of the ranked layers.

    Ranking is by score, descending; ties are broken by (layer, unit) ascending, so the
    ranking is a total order and `top_k` is deterministic.
    """
    score: str                  # which score (SCORES)
    layers: tuple[int, ...]     # the ranked layers, ascending
    scores: np.ndarray          # (len(layers), width) float64, >= 0
    mean: np.ndarray            # (len(layers), width) float64: the signed mean per-pair statistic
    n_pairs: int                # train pairs used

    @property
    def width(self) -> int:
        return self.scores.shape[1]

    def ranked(self) -> list[tuple[NeuronLoc, float]]:
        """Every unit with its score, best first (ties: lower (layer, unit) first)."""
        flat = self.scores.ravel()
        # np.lexsort sorts by its last key first: -score, then layer, then unit (the row-major index)
        order = np.lexsort((np.arange(flat.size), -flat))
        return [(NeuronLoc(self.layers[i // self.width], int(i % self.width)), float(flat[i])) for i in order]


def neuron_scores(stats: np.ndarray, score: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores, signed means), each (n_layers, width), from per-pair statistics `stats`
    (n_pairs, n_layers, width).

    activation_difference: |mean| / (std + eps), std over pairs with ddof = 1 (n_pairs >= 2),
    eps = EPS_REL x the layer's RMS per-pair difference (over its pairs and units; 1e-300 when
    that is 0). Why standardised: units of different layers (and of one SwiGLU layer) differ in
    scale by orders of magnitude, and |mean| alone would rank the largest-scale units first
    whatever their consistency; |mean| / std is the paired t statistic divided by sqrt(n_pairs),
    which says how reliably a unit separates the two answers, in its own units. Why this eps:
    a unit whose difference never varies (one that reads only the current token, in a layer that
    sees the answer's own tokens) keeps a finite, large score, while one whose differences are
    float rounding (a dead unit's, far below its layer's scale) stays near 0 instead of being
    divided by a rounding-sized std. (The gradient score needs no such scaling: it is in units of
    the log-odds already.)
    gradient_x_activation: |mean|."""
    stats = np.asarray(stats, dtype=np.float64)
    if score not in SCORES:
        raise ValueError(f"`score` must be one of {', '.join(SCORES)}, got {score!r}")
    if stats.ndim != 3:
        raise ValueError(f"`stats` must have shape (n_pairs, n_layers, width), got {stats.shape}")
    mean = stats.mean(axis=0)
    if score == "gradient_x_activation":
        return np.abs(mean), mean
    if stats.shape[0] < 2:
        raise ValueError(f"activation_difference needs at least 2 pairs for a spread, got {stats.shape[0]}")
    eps = np.maximum(EPS_REL * np.sqrt((stats ** 2).mean(axis=(0, 2))), 1e-300)     # (n_layers,)
    return np.abs(mean) / (stats.std(axis=0, ddof=1) + eps[:, None]), mean


def pair_statistics(model, adapter, pairs: Sequence, layers: Sequence[int], *, score: str, pad_id: int,
                    batch_pairs: int = BATCH_PAIRS) -> np.ndarray:
    """Per-pair statistic of every hidden unit of `layers`: float64 (n_pairs, len(layers), width).

    `pairs` are TokenizedPairs. Each batch is one right-padded forward of the chosen sequences
    (prompt + chosen) and then the rejected ones; a unit's value at a position is the input of
    its layer's down projection there, in float32. The positions read in a row are the last
    prompt token up to the answer's second-to-last token (those whose output predicts an answer
    token). activation_difference: mean over those positions, chosen minus rejected, under
    no_grad; gradient_x_activation: sum over them of gradient x activation, where the gradient is
    that of sum(log p(chosen)) - sum(log p(rejected)) over the batch (rows do not interact)."""
    import torch

    from loccheck.models.hooks import displaced_inputs, read_outputs
    from loccheck.models.scoring import answer_logprobs, padded

    device = next(model.parameters()).device
    modules = [adapter.mlp_out(layer) for layer in layers]
    body = getattr(model, model.base_model_prefix)
    width = adapter.mlp_width
    out = np.empty((len(pairs), len(layers), width), dtype=np.float64)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].prompt) + max(len(pairs[i].chosen),
                                                                               len(pairs[i].rejected)))
    for start in range(0, len(order), batch_pairs):
        rows = order[start:start + batch_pairs]
        b = len(rows)
        prompts = [pairs[i].prompt for i in rows] * 2
        answers = [pairs[i].chosen for i in rows] + [pairs[i].rejected for i in rows]
        n_prompt = torch.tensor([len(p) for p in prompts], device=device)
        n_answer = torch.tensor([len(a) for a in answers], device=device)
        pos = torch.arange(max(len(p) + len(a) for p, a in zip(prompts, answers)), device=device)
        read = ((pos >= n_prompt[:, None] - 1) & (pos < (n_prompt + n_answer)[:, None] - 1)).float()  # (2b, T)
        if score == "activation_difference":
            means: dict[int, torch.Tensor] = {}

            def keep(row, x, y):
                # x: (2b, T, width) the down projection's input; mean over the read positions
                means[row] = (x.float() * read[..., None]).sum(1) / n_answer[:, None]    # (2b, width)

            ids, mask = padded([list(p) + list(a) for p, a in zip(prompts, answers)], pad_id, device)
            with torch.no_grad(), read_outputs(modules, keep):
                body(input_ids=ids, attention_mask=mask)
            stat = torch.stack([means[r] for r in range(len(layers))], 1)              # (2b, L, width)
            out[rows] = (stat[:b] - stat[b:]).double().cpu().numpy()
        else:
            acts: dict[int, torch.Tensor] = {}
            zeros: dict[int, torch.Tensor] = {}

            def displacement(row, o):
                # a zero added to the input: its gradient is the input's, and nothing changes
                zeros[row] = torch.zeros(o.shape, dtype=torch.float32, device=o.device, requires_grad=True)
                acts[row] = o.detach().float()                                         # (2b, T, width)
                return zeros[row]

            with torch.enable_grad():
                with displaced_inputs(adapter, list(layers), displacement, modules=modules):
                    lp = answer_logprobs(model, prompts, answers, pad_id)             # (2b,)
                objective = lp[:b].sum() - lp[b:].sum()
                grads = torch.autograd.grad(objective, [zeros[r] for r in range(len(layers))])
            gx = torch.stack([(g * acts[r] * read[..., None]).sum(1) for r, g in enumerate(grads)], 1)
            out[rows] = (gx[:b] + gx[b:]).double().cpu().numpy()                       # (b, L, width)
    return out


def binned_scores(scores: np.ndarray, columns: int = HEATMAP_COLUMNS) -> tuple[np.ndarray, int]:
    """(binned, bin width): each row of `scores` (n_layers, width) cut into runs of
    ceil(width / columns) consecutive units (the last run may be shorter), each run's maximum."""
    scores = np.asarray(scores, dtype=np.float64)
    step = -(-scores.shape[1] // columns)
    return np.maximum.reduceat(scores, np.arange(0, scores.shape[1], step), axis=1), step


def ranked_layers(section, adapter) -> tuple[int, ...]:
    """The section's `layers`, ascending (default: every layer); one outside the model is an
    error about heuristic.layers."""
    if section.layers is None:
        return tuple(range(adapter.n_layers))
    bad = [l for l in section.layers if l >= adapter.n_layers]
    if bad:
        raise LoccheckError(f"layer {bad[0]} is outside the model: it has {adapter.n_layers} layers (0-based)",
                            key="heuristic.layers")
    return tuple(sorted(section.layers))


def _run(section: NeuronAttributionSection, model, data, cache: Path, seed: int = 0) -> Proposal:
    """Score every unit of the ranked layers of `model` (a LoadedModel) on `data`'s train pairs."""
    from loccheck.data.prompts import tokenize_pairs

    adapter = model.adapter
    try:
        adapter.sites("neuron")
    except AdapterError as err:
        raise LoccheckError(err.msg, key="heuristic.method") from None
    layers = ranked_layers(section, adapter)
    n_units = len(layers) * adapter.mlp_width
    if section.top_k is not None and section.top_k > n_units:
        raise LoccheckError(f"top_k {section.top_k} is more than the {n_units} units of the ranked layers",
                            key="heuristic.top_k")
    pairs = tokenize_pairs(model.tokenizer, data.train, data.prompt_format, data.system_prompt)
    need = 2 if section.score == "activation_difference" else 1
    if len(pairs) < need:
        raise LoccheckError(f"neuron attribution ({section.score}) needs at least {need} train pair(s), "
                            f"got {len(pairs)}", key="behavior.split")
    pad_id = model.tokenizer.pad_token_id
    stats = pair_statistics(model.model, adapter, pairs, layers, score=section.score,
                            pad_id=0 if pad_id is None else int(pad_id))
    if not np.isfinite(stats).all():
        raise LoccheckError("the model's hidden units (or their gradients) are not finite on the train "
                            "pairs; try model.dtype: float32", key="heuristic.score")
    scores, mean = neuron_scores(stats, section.score)
    result = NeuronAttribution(section.score, layers, scores, mean, len(pairs))
    return Proposal(tuple(result.ranked()), raw=result)


def _evidence(section, proposal: Proposal, location, pinned: bool) -> dict:
    """The top units' scores, the claimed units' scores (None outside the ranked layers), every
    unit's score binned as the report's heatmap draws it (`binned_scores`), and for pinned units
    whether the heuristic selects them again."""
    raw: NeuronAttribution = proposal.raw
    rank = {s: i for i, (s, _) in enumerate(proposal.ranked)}       # 0-based
    k = len(location)
    selected = format_location(proposal.top(k)) if k <= len(proposal.ranked) else None
    binned, step = binned_scores(raw.scores)

    def mean(s: NeuronLoc) -> float:
        return float(raw.mean[raw.layers.index(s.layer), s.unit])

    record = {"score": raw.score, "layers": list(raw.layers), "width": raw.width, "n_pairs": raw.n_pairs,
              "top": [{"site": str(s), "score": v, "mean": mean(s)} for s, v in proposal.ranked[:TOP_SHOWN]],
              "layer_max": [float(row.max()) for row in raw.scores],
              # the heatmap's cells, rows as `layers`: 4 significant digits keep result.json small
              "binned_scores": [[float(f"{v:.4g}") for v in row] for row in binned], "bin_width": step,
              "top_k": k, "selected": selected,
              "claimed_scores": {str(s): proposal.ranked[rank[s]][1] if s in rank else None for s in location},
              "claimed_ranks": {str(s): rank[s] + 1 if s in rank else None for s in location}}
    if pinned:
        record["pinned_units_reselected"] = selected == format_location(location)
    return record


def _pinnable(x: float) -> float:
    """A score as the claim's Number takes it: 6 significant digits, a float32 underflow as 0."""
    x = float(f"{x:.6g}")
    return 0.0 if abs(x) < FLOAT32_TINY else x


def _pinned(proposal: Proposal, sites, scores: dict) -> tuple[dict, str]:
    raw: NeuronAttribution = proposal.raw
    what = {"activation_difference": "standardised chosen-minus-rejected activation difference",
            "gradient_x_activation": "mean gradient x activation of the log-odds"}[raw.score]
    return ({"neuron_scores": {s: _pinnable(v) for s, v in scores.items()}},
            f"the {len(sites)} MLP neurons with the largest\n# {what} ({raw.n_pairs} train pairs; "
            f"validation and test questions unseen), pinned.")


# --- its part of the report (from result.json alone; matplotlib is imported when it draws) ---

HEATMAP_NAME = "neuron_attribution_heatmap.png"


def _report_lines(r: dict) -> list[str]:
    ev = r["heuristic_evidence"]
    claimed = set(r.get("location") or [])
    how = ("the unit's activation averaged over the positions that predict answer tokens, for the chosen "
           "answer minus for the rejected one; score |mean| / std over pairs (a standardised effect)"
           if ev.get("score") == "activation_difference" else
           "d(log p(chosen) - log p(rejected)) / d(activation) x activation, summed over the positions that "
           "predict answer tokens; score |mean| over pairs")
    rows = [[str(i + 1), t["site"] + (" (claimed)" if t["site"] in claimed else ""), fmt(t["score"]),
             fmt(t["mean"])] for i, t in enumerate(ev.get("top") or [])]
    listed = {t["site"] for t in ev.get("top") or []}
    rows += [[fmt((ev.get("claimed_ranks") or {}).get(s)), f"{s} (claimed)",
              fmt((ev.get("claimed_scores") or {}).get(s)), "n/a"] for s in sorted(claimed - listed)]
    layers = ev.get("layers") or []
    lines = ["## The heuristic: neuron attribution", "",
             f"Every hidden unit (the input of the MLP's down projection) of layer(s) "
             f"{', '.join(map(str, layers))} ({ev.get('width')} units each) is scored on "
             f"{ev.get('n_pairs')} train pairs (never the validation or test questions), \"Q: {{question}} A:\" "
             f"then the answer: {how}. The top {ev.get('top_k')} units are the proposed location.", ""]
    if ev.get("binned_scores"):                 # absent from results written before the heatmap
        lines += [f"![{ev.get('score')} score of every unit (ranked layers by units), claimed units "
                  f"marked]({HEATMAP_NAME})", ""]
    lines.append(table(rows, ["rank", "unit", f"score ({ev.get('score')})", "signed mean"]))
    return lines + reselected_lines(ev.get("pinned_units_reselected"), ev.get("selected"),
                                    "Neuron attribution", "neurons")


def _report_figures(r: dict, out_dir: Path) -> None:
    ev = r["heuristic_evidence"]
    if ev.get("binned_scores"):
        plot_neuron_heatmap(ev["binned_scores"], ev["bin_width"], ev["layers"], ev["width"],
                            [NeuronLoc.parse(s) for s in r.get("location") or []], out_dir / HEATMAP_NAME,
                            score=ev["score"], title=f"Neuron attribution: {ev['score']} of every unit "
                                                     f"({ev['n_pairs']} train pairs)")


def plot_neuron_heatmap(binned, bin_width: int, layers: Sequence[int], width: int, claimed: Sequence,
                        path: str | os.PathLike, *, score: str, title: str) -> Path:
    """Score per (ranked layer, column of `bin_width` consecutive units, coloured by their maximum),
    the first ranked layer at the bottom. `claimed` holds NeuronLocs: one of a ranked layer is a red
    ring (white halo) on its column; the others are only counted in the legend."""
    from matplotlib import patheffects

    from loccheck.render.figures import CLAIM_COLOR, RC, legend_below, plt, save_figure, ticker

    grid, layers = np.asarray(binned, dtype=float), list(layers)
    if grid.ndim != 2 or grid.shape[0] != len(layers) or 0 in grid.shape:
        raise ValueError(f"`binned` must be a non-empty ({len(layers)}, columns) array, got shape {grid.shape}")
    n, cols = grid.shape
    inside = {c for c in claimed if c.layer in layers and 0 <= c.unit < width}
    off = len(set(claimed) - inside)
    cells = sorted({(layers.index(c.layer), c.unit // bin_width) for c in inside})
    step = -(-n // 20)                                            # at most 20 layer labels
    with plt.style.context("default"), plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(8.0, max(3.2, n * min(0.3, 6.0 / n) + 2.2)), layout="constrained")
        im = ax.imshow(grid, origin="lower", aspect="auto", interpolation="nearest", cmap="viridis",
                       vmin=0.0, vmax=max(float(grid.max()), 1e-12),
                       extent=(-0.5, cols * bin_width - 0.5, -0.5, n - 0.5))   # x in units
        if claimed:
            ax.plot([b * bin_width + (bin_width - 1) / 2 for _, b in cells], [l for l, _ in cells], ls="none",
                    marker="o", ms=7, mfc="none", mec=CLAIM_COLOR, mew=1.6, clip_on=False,
                    path_effects=[patheffects.withStroke(linewidth=3.5, foreground="white")],
                    label=f"claimed units ({len(inside)})" + (f"; {off} outside the ranked layers, not drawn"
                                                              if off else ""))
            legend_below(fig)
        fig.colorbar(im, ax=ax).set_label(f"score ({score})")
        ax.set_yticks(range(0, n, step), [str(l) for l in layers[::step]])
        ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=16, integer=True))
        ax.set_xlabel("MLP hidden unit" + (f" (binned: each column is the max of {bin_width} units)"
                                           if bin_width > 1 else ""))
        ax.set_ylabel("layer (the ranked ones)")
        ax.set_title(title)
        return save_figure(fig, path)


register_heuristic(Heuristic("neuron_attribution", NeuronAttributionSection, kind="neuron", run=_run,
                             evidence=_evidence, pinned=_pinned, report_lines=_report_lines,
                             report_figures=_report_figures))
