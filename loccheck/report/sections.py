"""The report's sections that belong to one edit method or one heuristic, and the side-by-side
table of several edit methods. A new method or heuristic adds its section here (optional)."""
from __future__ import annotations

from loccheck.report.format import edit_name, edits_of, fmt, site_noun, sites, table
from loccheck.report.markdown import METHODS_NAME, PROBE_HEATMAP_NAME, TRACING_HEATMAP_NAME, method_order


def methods_lines(r: dict) -> list[str]:
    """The side-by-side evidence: the same claimed and random sites under each edit method."""
    if len(r["tests"]) < 2:
        return []
    rows = []
    for m in method_order(r):
        t = r["tests"][m]
        rows.append([m, fmt(t.get("claim_gain")), fmt(t.get("ceiling_gain")),
                     f"{fmt(t.get('null_mean'))} ± {fmt(t.get('null_std'))}",
                     fmt(t.get("p_value")), fmt(t.get("n_null_effective")), t.get("verdict")])
    kind = site_noun(r)
    return [f"## The same {kind}s under each edit", "",
            f"Each row tests the same claimed {kind}s against the same random locations; only the "
            f"edit differs, and the verdict follows `{r['primary_method']}`. A location that looks "
            "special under a heuristic edit but not under the optimal one is special to the "
            "heuristic, not to the behaviour.", "",
            table(rows, ["edit", "claim gain", "whole-model gain", "null mean ± std",
                         "p-value", "null >= rho x whole", "verdict"]), "",
            f"![{r['metric']} gain of the claimed {kind}s against the random locations under each "
            f"edit method]({METHODS_NAME})"]


def _optimal_lines(r: dict) -> list[str]:
    edits = edits_of(r, "optimal")
    kind = site_noun(r)
    rows = [[edit_name(e), sites(e.get("location") or [], kind=kind), fmt(e.get("n_params")),
             fmt(e.get("learning_rate")), fmt(e.get("epochs")), fmt(e.get("steps")),
             f"{fmt(e.get('initial_objective'))} -> {fmt(e.get('final_objective'))}",
             fmt(e.get("attained")), "yes" if e.get("converged") else f"**no** ({e.get('stopped')})"]
            for e in edits]
    capped = [f"{edit_name(e)} ({e.get('stopped')})" for e in edits if not e.get("converged")]
    if any(e.get("stopped") == "budget" for e in edits):
        note = (f"DPO has no optimum (its loss only approaches 0 as the margin grows), so these edits "
                f"are a budget-matched comparison: each trained exactly `max_epochs` epochs, none is "
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
            "", table(rows, headers), "", note]


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


def _iti_lines(r: dict) -> list[str]:
    iti = edits_of(r, "iti")
    by_role = {e.get("role"): e for e in iti}
    alphas = [e.get("alpha") for e in iti if e.get("role") == "random"]
    kind = site_noun(r)
    return ["## The ITI edits", "",
            f"`iti` adds alpha * sigma * u (ITI's mass-mean-shift direction, sigma the spread of "
            f"the activations along it) to each {kind}, at the last prompt token and every answer "
            "token when scoring an answer, with alpha picked on the validation questions for each "
            "location alike.", "",
            f"ITI's alpha chosen on validation: claim {fmt(by_role.get('claim', {}).get('alpha'))}, "
            f"whole model {fmt(by_role.get('ceiling', {}).get('alpha'))}, random locations "
            + ", ".join(fmt(a) for a in alphas) + "."]


def _probe_lines(r: dict) -> list[str]:
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
    return lines + _reselected(probe.get("pinned_heads_reselected"), probe.get("selected"), "Probing", "heads")


def _reselected(again: bool | None, selected, who: str, what: str) -> list[str]:
    """Whether the heuristic, re-run, selects the sites the claim pins."""
    if again is False:
        return ["", f"**Note:** the claim pins its {what}, and {who.lower()} on this data now selects "
                    f"others: {', '.join(selected or [])}."]
    return ["", f"{who} on this data selects exactly the pinned {what}."] if again else []


def _tracing_lines(r: dict) -> list[str]:
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
    return lines + _reselected(ev.get("pinned_layers_reselected"), ev.get("selected"), "Tracing", "layers")


def _rome_lines(r: dict) -> list[str]:
    rome = edits_of(r, "rome")
    claim = next((e for e in rome if e.get("role") == "claim"), {})
    return ["## The ROME edits", "",
            f"`rome` applies ROME's closed-form rank-one update (Meng et al. 2022) for each of the "
            f"{fmt(claim.get('n_facts_edited'))} train facts in turn, at every location alike: the key is "
            "the down projection's input at the subject's last token, the value is optimised to make the "
            "counterfactual target likely, and the update is weighted by the inverse of the keys' second "
            f"moment over {fmt(claim.get('stats_tokens'))} tokens of the stated text sample. At a location "
            "of several layers the value is split in equal shares, one rank-one update per layer "
            "(MEMIT's spreading); the whole-model edit spreads over every layer."]


EDIT_SECTIONS = {"optimal": _optimal_lines, "iti": _iti_lines, "rome": _rome_lines}
HEURISTIC_SECTIONS = {"probe": _probe_lines, "causal_tracing": _tracing_lines}
