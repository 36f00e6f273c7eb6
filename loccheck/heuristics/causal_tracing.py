"""`heuristic: {method: causal_tracing}`: the MLP layers where restoring a clean state brings a
corrupted fact back (ROME's causal tracing; `corruption: subject_flip` is Reber's variant).

It traces the train facts only (never validation or test), every MLP layer at every token
(loccheck.heuristics.tracing), and ranks layers by the claim's `aggregate`: the mean indirect effect over
facts at one of ROME's token groups (by default the last subject token, where ROME finds its
MLP peak). The top `top_k` layers are the location it proposes. The report shows the heatmap
(layers by token groups) averaged over facts, with the claimed layers outlined.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Literal, Sequence

import numpy as np
from pydantic import AfterValidator, Field, StrictInt

from loccheck.errors import LoccheckError
from loccheck.heuristics import Heuristic, Proposal, register_heuristic
from loccheck.locations import MlpLoc, format_location
from loccheck.render.format import fmt, reselected_lines, table
from loccheck.schema import Number, Section, Seed

PROGRESS_EVERY_S = 30
AGGREGATES = {"last_subject_token": 2, "first_subsequent_token": 3, "last_token": 5}
ARRAYS = ("effects", "per_fact", "per_fact_peak")         # the record's arrays (stored as lists)


def _mlp(text: str) -> str:
    return str(MlpLoc.parse(text))


class CausalTracingSection(Section):
    method: Literal["causal_tracing"] = Field(description="Causal tracing of MLP layers (ROME).")
    citation: str | None = Field(None, description="Where the localization claim was published.")
    notes: str | None = Field(None, description="Free-text notes.")
    top_k: StrictInt | None = Field(None, ge=1, description="Number of MLP layers the heuristic proposes.")
    corruption: Literal["noise", "subject_flip"] = Field(
        "noise", description="'noise': Gaussian noise on the subject tokens' embeddings (ROME); "
                             "'subject_flip': another subject of the same relation with as many "
                             "tokens (Reber).")
    noise_scale: Number = Field(3.0, ge=0, description="Noise std in units of the subject embeddings' std (ROME: 3).")
    samples: StrictInt = Field(10, ge=1, le=100, description="Noise samples, or flip partners, per fact.")
    window: StrictInt = Field(10, ge=1, description="MLP layers restored together around each layer (ROME: 10).")
    aggregate: Literal[tuple(AGGREGATES)] = Field(
        "last_subject_token", description="What ranks a layer: its mean indirect effect over the "
                                          "traced facts at this token group.")
    max_facts: StrictInt = Field(50, ge=1, description="Trace at most this many train facts (in split order).")
    seed: Seed = Field(0, description="Seed of the noise and of the flip partners.")
    layer_effects: dict[Annotated[str, AfterValidator(_mlp)], Number] | None = Field(
        None, description="Mean indirect effect of each pinned layer (written by `loccheck localize`).")


def trace_inputs(loaded, data, max_facts: int):
    """(facts, TraceInputs) of the train facts the tracing can use: the subject's tokens are
    found in the prompt; the answer is the attribute's first token."""
    from loccheck.data.known_facts import fact_tokens
    from loccheck.heuristics.tracing import TraceInput

    facts, items = [], []
    for pair in data.train:
        fact = data.facts.get(pair.prompt)
        tokens = None if fact is None else fact_tokens(loaded.tokenizer, fact, "text", None)
        if tokens is None or not tokens.attribute:
            continue
        facts.append(fact)
        items.append(TraceInput(tokens.ids, tokens.span, tokens.attribute[0]))
        if len(items) == max_facts:
            break
    return facts, items


def flip_partners(loaded, facts, items, i: int, n: int, seed: int, pool=None) -> list[tuple[int, ...]]:
    """Up to `n` corrupted prompts for fact i: its subject replaced by another subject of the
    same relation among `pool` (train facts; default: the traced ones), kept only when it takes
    as many tokens and every other token stays as it was (so every position means what it meant)."""
    from loccheck.data.prompts import prompt_ids

    fact, item = facts[i], items[i]
    s, e = item.span
    others = sorted({f.subject for f in (facts if pool is None else pool)
                     if f.relation == fact.relation and f.subject != fact.subject})
    order = np.random.default_rng([seed, i]).permutation(len(others))
    out = []
    at = fact.prompt.find(fact.subject)
    for j in order:
        text = fact.prompt[:at] + others[j] + fact.prompt[at + len(fact.subject):]
        ids = prompt_ids(loaded.tokenizer, text, "text", None)
        if len(ids) == len(item.ids) and ids[:s] == item.ids[:s] and ids[e:] == item.ids[e:] \
                and ids[s:e] != item.ids[s:e]:
            out.append(ids)
            if len(out) == n:
                break
    return out


def trace_facts(section: CausalTracingSection, loaded, data) -> dict:
    """Every usable train fact traced; the raw record the proposal and the report use."""
    import torch

    from loccheck.heuristics.tracing import embedding_spread, grouped, noise_for, trace_fact

    facts, items = trace_inputs(loaded, data, section.max_facts)
    if not items:
        raise LoccheckError("causal tracing found no train fact whose subject it can locate in the "
                            "prompt's tokens (dataset: known_facts, with a tokenizer that gives offsets)",
                            key="heuristic.method")
    spread = embedding_spread(loaded.model, items)
    width = loaded.model.get_input_embeddings().weight.shape[1]
    # flip partners come from every train fact of the relation, traced or not (more have the length)
    pool = [data.facts[p.prompt] for p in data.train if p.prompt in data.facts]
    grids, peaks, totals, cleans, corrupts, traced, skipped = [], [], [], [], [], [], 0
    start = last = time.monotonic()
    for i, item in enumerate(items):
        if time.monotonic() - last > PROGRESS_EVERY_S:       # a line now and then, for CI logs too
            last = time.monotonic()
            print(f"loccheck: causal tracing ({section.corruption}): {i} of {len(items)} facts traced, "
                  f"{last - start:.0f} s", file=sys.stderr, flush=True)
        if section.corruption == "noise":
            ids = [item.ids] * section.samples
            noise = noise_for(item, section.samples, section.noise_scale, spread, width,
                              seed=[section.seed, i])
        else:
            ids, noise = flip_partners(loaded, facts, items, i, section.samples, section.seed, pool), None
            if not ids:
                skipped += 1
                continue
        trace = trace_fact(loaded.model, loaded.adapter, item, torch.tensor(ids), noise,
                           window=section.window)
        traced.append(facts[i].prompt)
        grids.append(grouped(trace.effects, item.span))
        peaks.append(trace.effects.max(axis=1))              # per layer, over every token (Hase et al.)
        totals.append(trace.total_effect)
        cleans.append(trace.p_clean)
        corrupts.append(trace.p_corrupt)
    if not grids:
        raise LoccheckError(f"subject_flip tracing found no flip partner for any of {len(items)} train "
                            "facts (another subject of the same relation with as many tokens)",
                            key="heuristic.corruption")
    stack = np.stack(grids)                                   # (n_facts, n_layers, n_groups)
    with warnings.catch_warnings():
        # a token group no fact has (no token after a subject that ends the prompt) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(stack, axis=0)
    return {"effects": mean, "per_fact": stack, "per_fact_peak": np.stack(peaks), "per_fact_total": totals,
            "prompts": traced, "n_facts": len(grids),
            "n_skipped": skipped, "p_clean": float(np.mean(cleans)), "p_corrupt": float(np.mean(corrupts)),
            "total_effect": float(np.mean(totals)), "spread": spread}


def _run(section: CausalTracingSection, loaded, data, cache: Path, seed: int = 0) -> Proposal:
    raw = cached_trace(section, loaded, data, cache)
    column = np.nan_to_num(raw["effects"][:, AGGREGATES[section.aggregate]], nan=-np.inf)
    order = sorted(range(len(column)), key=lambda l: (-column[l], l))
    return Proposal(tuple((MlpLoc(l), float(column[l])) for l in order), raw=raw)


def cached_trace(section: CausalTracingSection, loaded, data, cache: Path) -> dict:
    """The trace of these facts by this model and these settings, computed once."""
    from loccheck.cache import FitCache, content_key
    from loccheck.numerics import numerics_identity

    settings = section.model_dump(mode="json", exclude={"citation", "notes", "top_k", "layer_effects",
                                                        "aggregate"})
    key = content_key({"what": "causal tracing", "weights": loaded.weights_id, "dtype": loaded.info["dtype"],
                       "code": numerics_identity("models", "data", "scoring", "heuristics.causal_tracing"),
                       "settings": settings, "data": data.sha256,
                       "prompts": [p.prompt for p in data.train]})
    store = FitCache(cache)
    record = store.get(key)
    if not isinstance(record, dict) or "per_fact_peak" not in record:
        record = trace_facts(section, loaded, data)
        store.put(key, {**record, **{k: record[k].tolist() for k in ARRAYS}})
    return {**record, **{k: _floats(record[k]) for k in ARRAYS}}


def _floats(values) -> np.ndarray:
    """A stored array back (strict JSON spells NaN as null)."""
    return np.array(values, dtype=object).astype(float) if values is not None else None


def _evidence(section: CausalTracingSection, proposal: Proposal, location, pinned: bool) -> dict:
    from loccheck.heuristics.tracing import GROUPS

    raw, k = proposal.raw, len(location)
    selected = format_location(proposal.top(k))
    record = {"corruption": section.corruption, "aggregate": section.aggregate, "window": section.window,
              "samples": section.samples, "noise_scale": section.noise_scale, "groups": list(GROUPS),
              "effects": np.where(np.isnan(raw["effects"]), None, raw["effects"]).tolist(),
              "n_facts": raw["n_facts"], "n_skipped": raw["n_skipped"], "p_clean": raw["p_clean"],
              "p_corrupt": raw["p_corrupt"], "total_effect": raw["total_effect"], "top_k": k,
              "selected": selected, "peak": str(proposal.ranked[0][0]),
              "claimed_effects": {str(s): proposal.score(s) for s in location}}
    if pinned:
        record["pinned_layers_reselected"] = selected == format_location(location)
    return record


def _pinned(proposal: Proposal, sites, scores: dict) -> tuple[dict, str]:
    raw = proposal.raw
    return ({"layer_effects": scores},
            f"the {len(sites)} MLP layers with the largest mean indirect effect of causal tracing\n"
            f"# ({raw['n_facts']} train facts traced; validation and test facts unseen), pinned.")


# --- its part of the report (from result.json alone; matplotlib is imported when it draws) ---

TRACING_HEATMAP_NAME = "tracing_heatmap.png"


def _report_lines(r: dict) -> list[str]:
    ev = r["heuristic_evidence"]
    groups, effects = ev.get("groups") or [], ev.get("effects") or []
    how = ("Gaussian noise of {:g} x the spread of the subject tokens' embeddings on the subject "
           "tokens, {} samples".format(ev.get("noise_scale"), ev.get("samples"))
           if ev.get("corruption") == "noise" else
           f"the subject replaced by another train subject of the same relation with as many tokens "
           f"(up to {ev.get('samples')} per fact; {ev.get('n_skipped')} facts had none and were skipped)")
    rows = [[f"L{layer}M", *(fmt(v) for v in row)] for layer, row in enumerate(effects)]
    lines = ["## The heuristic: causal tracing", "",
             f"Each of {ev.get('n_facts')} train facts (never the validation or test facts) is run clean, then "
             f"corrupted ({how}); then, for every MLP layer and token, corrupted again with the outputs of "
             f"the {ev.get('window')} MLP layers around it set to their clean values at that token. The "
             "indirect effect is the answer's restored probability minus its corrupted probability; "
             f"mean clean probability {fmt(ev.get('p_clean'))}, corrupted {fmt(ev.get('p_corrupt'))} "
             f"(total effect {fmt(ev.get('total_effect'))}).", "",
             f"The claimed location is defined by this aggregate: the top {ev.get('top_k')} layer(s) by "
             f"the mean indirect effect at the **{str(ev.get('aggregate')).replace('_', ' ')}**. "
             f"The peak is {ev.get('peak')}.", "",
             f"![Mean indirect effect of restoring each MLP layer at each token group, claimed layers "
             f"outlined]({TRACING_HEATMAP_NAME})", "",
             table(rows, ["layer", *groups])]
    return lines + reselected_lines(ev.get("pinned_layers_reselected"), ev.get("selected"), "Tracing", "layers")


def _report_figures(r: dict, out_dir: Path) -> None:
    ev = r["heuristic_evidence"]
    effects = np.array([[np.nan if v is None else v for v in row] for row in ev["effects"]], dtype=float)
    plot_tracing_heatmap(effects, ev["groups"], [MlpLoc.parse(s).layer for s in r.get("location") or []],
                         out_dir / TRACING_HEATMAP_NAME,
                         title=f"Causal tracing ({ev['corruption']}), {ev['n_facts']} train facts")


def plot_tracing_heatmap(effects, groups: Sequence[str], claimed_layers: Sequence[int],
                         path: str | os.PathLike, *, title: str) -> Path:
    """Mean indirect effect per (layer, token group), layer 0 at the bottom, the claimed layers'
    rows outlined; a diverging scale centred on 0 (restoring can also lower the answer's
    probability); empty groups grey."""
    import matplotlib.patches as mpatches
    from matplotlib import patheffects

    from loccheck.render.figures import CLAIM_COLOR, RC, plt, save_figure, ticker

    eff = np.asarray(effects, dtype=float)
    if eff.ndim != 2 or eff.shape[1] != len(groups) or 0 in eff.shape:
        raise ValueError(f"`effects` must be a non-empty (n_layers, {len(groups)}) array, got shape {eff.shape}")
    n_layers = eff.shape[0]
    finite = eff[np.isfinite(eff)]
    limit = max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-6)
    cell = min(0.32, 9.0 / n_layers)
    outline = [patheffects.withStroke(linewidth=4.0, foreground="white")]
    with plt.style.context("default"), plt.rc_context(RC):
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


register_heuristic(Heuristic("causal_tracing", CausalTracingSection, kind="mlp", run=_run,
                             evidence=_evidence, pinned=_pinned, datasets=("known_facts",),
                             report_lines=_report_lines, report_figures=_report_figures))
