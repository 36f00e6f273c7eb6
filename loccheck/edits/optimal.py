"""`method: optimal`: the optimal localized edit (METHOD.md), fitted by preference optimisation.

At a location of MLP sites it is rank-1 LoRA on each site's down projection (`MlpEdit`), and
its ceiling the same on every layer. At neurons it is the heads' masked edit at the down
projection's input, its hidden units (`NeuronEdit`), its ceiling every unit of every layer. At a
subspace of the residual stream after a layer, or at SAE latents (the span of their decoder
rows), it writes only inside that span, h <- h + <a, h> U^T c (`SubspaceEdit`), and its ceiling is
the same edit with U the identity: the whole stream at that layer. Any of them may act at the
answer's positions only (`positions: answer`, `AtPositions`).

At a location of heads it is the rank-1 LoRA reparameterized so it can be restricted to those
heads: o^l <- o^l + <a^l, o^l> (m^l * b^l) at the input of W^l (o_proj), m^l masking the
location's heads in layer l. Its ceiling, the whole-model edit, is the same edit with every
head unmasked (METHOD.md: "equivalently the same reparameterization with every head
unmasked"); rank-1 LoRA with peft on every output projection (`FullLoraEdit`) reaches the same
functions and is kept as an independent cross-check (tests/edits/test_training.py). Every edit
starts from the identity (b = 0) with the same random read vector a for each layer, drawn once
from the edit seed, and gets the same data, order, convergence rule and cap. The claim and its
null share `learning_rate`; the ceiling has its own, `ceiling_learning_rate`, which no claim's
size changes, so every claim on the same model, data and settings gets the same ceiling.

Every location's edit is a special case of the ceiling's (its rows, masked, in the ceiling's
layers: `absorb`), so the ceiling's training objective can be no worse than any location's:
when a location's edit fits better, the ceiling is continued from it (`loccheck.run.verify`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Sequence

import numpy as np
from pydantic import AfterValidator, Field, StrictInt

from loccheck.edits import EditMethod, EditSettings, Fitted, register_edit_method
from loccheck.edits.rank_one import HeadEdit, MlpEdit, NeuronEdit, SubspaceEdit, initial_read_vectors
from loccheck.locations import RESIDUAL_KINDS
from loccheck.render.format import edit_name, edits_of, fmt, site_noun, sites, table
from loccheck.schema import Number, Section, Seed

if TYPE_CHECKING:
    from loccheck.edits.training import TrainConfig

MAX_LEARNING_RATE = 1e6


def _adamw_rate(value: float) -> float:
    if value > MAX_LEARNING_RATE:
        raise ValueError(f"{value:g} is more than {MAX_LEARNING_RATE:g}: AdamW moves each parameter by "
                         "about the rate per step, so a rate this large only overflows float32")
    return value


class OptimalEditSection(Section):
    method: Literal["optimal"] = Field(
        "optimal", description="The rank-1 edit restricted to the location, fitted by preference "
                               "optimisation until it converges; its ceiling is the same edit with "
                               "every head unmasked.")
    objective: Literal["ipo", "dpo"] = Field("ipo", description="Preference objective the edit is trained with.")
    tau: Number = Field(0.1, gt=0, description="IPO regularization strength.")
    beta: Number = Field(0.1, gt=0, description="DPO inverse temperature.")
    batch_size: StrictInt = Field(4, ge=1, description="Preference pairs per step.")
    learning_rate: Annotated[Number, AfterValidator(_adamw_rate)] = Field(
        5e-4, gt=0, description="Learning rate of edits at locations of the claim's size (the claim "
                                "and the null); at most 1e6.")
    ceiling_learning_rate: Annotated[Number, AfterValidator(_adamw_rate)] = Field(
        1e-4, gt=0, description="Learning rate of the whole-model edit (the ceiling), the same whichever "
                                "claim asks for it (the paper used 1e-4 for all heads of Alpaca-7B, 5e-4 "
                                "for 16, 2e-3 for one); at most 1e6.")
    weight_decay: Number = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: Number = Field(0.0, ge=0, lt=1, description="Share of the first epoch's steps with linear warmup.")
    init_std: Number = Field(0.01, gt=0, description="Std of the random init of the LoRA 'a' vector.")
    read: Literal["all", "location"] = Field("all", description="Edit reads from all of the layer's sites (every head, "
                                                               "hidden unit or direction of the stream) or only the location's.")
    positions: Literal["all", "answer"] = Field(
        "all", description="Token positions the edit acts at: every position, or the prompt's last token "
                           "and every answer token (as ITI edits); 'answer' is trained on unpacked "
                           "pairs (each prompt computed for both answers), about twice the cost.")
    max_epochs: StrictInt = Field(10, ge=1, description="Cap on passes over the training pairs; an edit "
                                                        "that has not converged by then is reported capped.")
    convergence_tol: Number = Field(0.02, gt=0, lt=1, description=(
        "Converged when an epoch improves the whole-training-set objective by at most this share "
        "of the improvement made so far, or the objective is within this share of its optimum."))
    seed: Seed = Field(0, description="Seed of edit initialization and batch order.")


@dataclass(frozen=True)
class OptimalSettings(EditSettings):
    train: TrainConfig           # how it is trained (objective, rate, budget, convergence, seed)
    read: str                    # "all" or "location"
    init_std: float
    site_kind: str               # "head", "mlp", "neuron", "subspace" or "latent"
    positions: str = "all"       # "all", or "answer": the prompt's last token and the answer's


def _settings(section: OptimalEditSection, *, verdict_metric: str, site_kind: str = "head",
              ceiling: bool = False) -> OptimalSettings:
    """One procedure for every location: the same settings; the ceiling's own learning rate,
    which does not depend on the claim (nor, then, does its cache key)."""
    from loccheck.edits.training import TrainConfig

    train = TrainConfig(objective=section.objective, tau=section.tau, beta=section.beta,
                        batch_size=section.batch_size,
                        learning_rate=section.ceiling_learning_rate if ceiling else section.learning_rate,
                        weight_decay=section.weight_decay, warmup_ratio=section.warmup_ratio,
                        max_epochs=section.max_epochs, convergence_tol=section.convergence_tol,
                        seed=section.seed)
    return OptimalSettings(train, section.read, section.init_std, site_kind, section.positions)


def _make(testbed, settings: OptimalSettings, location):
    """The edit before training (the identity); `location` None is the whole model, every site
    of the kind unmasked: the same parameterization as at a location, so the ceiling is a fair one.
    A subspace's ceiling is a location too: the whole residual stream at its layer
    (`ceiling_location`)."""
    kind = location[0].kind if location else settings.site_kind
    a_init = initial_read_vectors(testbed.adapter, settings.train.seed, settings.init_std, kind)
    adapter, positions = testbed.adapter, settings.positions
    if kind == "mlp":
        return MlpEdit(adapter, location, a_init, positions=positions)
    if kind in RESIDUAL_KINDS:
        return SubspaceEdit(adapter, location[0].layer, testbed.basis_of(location), a_init,
                            read=settings.read, positions=positions)
    edit = NeuronEdit if kind == "neuron" else HeadEdit
    return edit(adapter, location, a_init, read=settings.read, positions=positions)


def _fit(testbed, settings: OptimalSettings, location, on_step=None, start=None) -> Fitted:
    """`start`: (settings, location, state) of a fitted edit whose location lies inside this
    one's, to continue from instead of the identity."""
    from loccheck.edits.training import train_edit

    edit = _make(testbed, settings, location)
    if start is not None:
        edit.absorb(_restore(testbed, *start))
    reference = testbed.reference          # the unedited model's: computed before the edit is attached
    with edit.attached(testbed.model):
        fit = train_edit(testbed.model, edit, testbed.train, reference, settings.train, testbed.pad_id,
                         on_step=on_step, warm=start is not None)
    return Fitted(edit, {"learning_rate": settings.train.learning_rate, "steps": len(fit.loss_curve),
                         "epochs": fit.epochs, "initial_objective": fit.initial_objective,
                         "final_objective": fit.final_objective, "attained": fit.attained,
                         "converged": fit.converged, "stopped": fit.stopped,
                         "backtracks": fit.backtracks,
                         "objective_curve": list(fit.objective_curve),
                         "loss_curve": list(fit.loss_curve)})


def _restore(testbed, settings: OptimalSettings, location, state: dict):
    return _make(testbed, settings, location).load_state(state)


# --- its part of the report (from result.json alone; matplotlib is imported when it draws) ---

LOSS_CURVES_NAME = "loss_curves.png"


def _report_lines(r: dict) -> list[str]:
    edits = edits_of(r, "optimal")
    kind = site_noun(r)
    rows = [[edit_name(e), sites(e.get("location") or [], kind=kind), fmt(e.get("n_params")),
             fmt(e.get("learning_rate")), fmt(e.get("epochs")), fmt(e.get("steps")),
             f"{fmt(e.get('initial_objective'))} -> {fmt(e.get('final_objective'))}",
             fmt(e.get("attained")), "yes" if e.get("converged") else f"**no** ({e.get('stopped')})"]
            for e in edits]
    capped = [f"{edit_name(e)} ({e.get('stopped')})" for e in edits if not e.get("converged")]
    if any(e.get("stopped") == "budget" for e in edits):
        note = ("DPO has no optimum (its loss only approaches 0 as the margin grows), so these edits "
                "are a budget-matched comparison: each trained exactly `max_epochs` epochs, none is "
                "an optimum.")
    elif capped:
        note = (f"**Warning:** the verdict rests on {len(capped)} of {len(edits)} edits that did not "
                "converge (capped: still improving at the cap; stalled: steps lost in round-off; "
                "diverged), so they may not be optimal: " + ", ".join(capped) + ".")
    else:
        note = (f"All {len(edits)} edits converged: each came within `convergence_tol` of the "
                "objective's optimum, or got stuck (two epochs improving its whole-training-set "
                "objective by at most `convergence_tol` of the improvement made so far, or three "
                "undone ones, since its last real improvement) after improving it (plateau), or "
                "never received a gradient at all (stationary).")
    note += _continued_note(edits)
    diverged = [edit_name(e) for e in edits if e.get("diverged")]
    if diverged:
        note += (f" **{len(diverged)} diverged** ({', '.join(diverged)}): a diverged edit has no "
                 "optimum to compare, so the test counts a diverged random location as editing at "
                 "least as well as the claim, a diverged claim as beaten by every random location "
                 "(FALSIFIED) and a diverged whole-model edit as no effect to localize (NO_EFFECT); "
                 "none of them is cached, so the next run fits them again.")
    headers = ["edit", "location", "params", "learning rate", "epochs", "steps",
               "objective (start -> end)", "share of attainable", "converged?"]
    return ["## Convergence of the optimal edits", "",
            "`optimal` fits the best rank-1 edit at each location by preference optimisation: the "
            "same data, order, convergence rule and cap everywhere; the claim and the random "
            "locations share `learning_rate`, the whole-model edit has its own "
            "(`ceiling_learning_rate`), the same for every claim. \"Share of attainable\" is "
            "(start - end) / (start - optimum), from the identity edit.",
            "", table(rows, headers), "", note, "",
            f"![Training loss per step of the claimed-location edit, the whole-model edit and the "
            f"{r.get('n_null')} random-location edits]({LOSS_CURVES_NAME})"]


def _continued_note(edits: list[dict]) -> str:
    """What was done to make the ceiling the optimum of the whole-model edit."""
    ceiling = next((e for e in edits if e.get("role") == "ceiling"), None)
    if ceiling is None or not ceiling.get("continued_from"):
        return ""
    src, first = ceiling["continued_from"], ceiling.get("first_fit") or {}
    name = "the claim" if src.get("role") == "claim" else f"random location {src.get('index')}"
    return (f" **The ceiling was continued:** fitted from the identity, the whole-model edit "
            f"stopped ({first.get('stopped')}) at training objective {fmt(first.get('final_objective'))}, "
            f"above the {fmt(src.get('final_objective'))} of {name}'s edit by more than the rule's "
            "tolerance. Every location's edit is a whole-model edit with the other sites' write "
            "vectors at zero, so the whole-model optimum can be no worse: it was fitted again "
            f"starting from {name}'s parameters, by the same rule, and reached "
            f"{fmt(ceiling.get('final_objective'))} ({ceiling.get('stopped')}). The table's "
            "whole-model row is that continued fit.")


def _report_figures(r: dict, out_dir: Path) -> None:
    plot_loss_curves(edits_of(r, "optimal"), out_dir / LOSS_CURVES_NAME, site=site_noun(r))


def plot_loss_curves(edits: Sequence[dict], path: str | os.PathLike, *, site: str = "head") -> Path:
    """Training loss per optimizer step for every edit in `edits` (the result dict's list).

    The claim and the whole-model edit are bold; random locations are thin grey lines with
    one legend entry. The y axis is logarithmic when every finite loss is positive.
    """
    from loccheck.render.figures import CLAIM_COLOR, FIGSIZE, FULL_COLOR, NULL_COLOR, RC, legend_below, plt, save_figure, ticker

    randoms = [e for e in edits if e.get("role") == "random"]
    styles = {"claim": dict(color=CLAIM_COLOR, lw=2.4, label=f"claimed {site}s", zorder=3),
              "ceiling": dict(color=FULL_COLOR, lw=2.0, ls="--", label="whole model", zorder=3)}
    all_losses = []
    with plt.style.context("default"), plt.rc_context(RC):
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
            legend_below(fig)
        else:
            ax.text(0.5, 0.5, "no loss curves recorded", transform=ax.transAxes, ha="center")
        return save_figure(fig, path)


register_edit_method(EditMethod("optimal", OptimalEditSection, _settings, _fit, _restore, _make,
                                "rank-1 edit restricted to the location, fitted by IPO/DPO",
                                site_kinds=("head", "mlp", "neuron", "subspace", "latent"),
                                continues_ceiling=True,
                                report_lines=_report_lines, report_figures=_report_figures))
