"""The report's common sections, rendered only from the result dict (result.json, schema 2).

Output is deterministic: no timestamps, numbers formatted here (4 significant digits), every
dict iterated in a fixed order, so rendering the in-memory result and rendering it again from
result.json (whose keys json.dumps sorted) give byte-identical files. Every number comes from
the result: nothing is re-derived here.
"""
from __future__ import annotations

import math

import yaml

from loccheck.render.format import (P_CONVENTION, canonical, edits_of, fence, fmt, location_words, method_order, needed,
                                    ordered, primary, site_noun, spread, table, value)
from loccheck.report.answers import answers_lines
from loccheck.report.stability import claim_stability_lines
from loccheck.report.evidence import editing_lead, evidence_sections, expectation_note, verdict_table_lines

REPORT_NAME, NULL_HIST_NAME, METHODS_NAME = "report.md", "null_hist.png", "methods.png"
# Claim-file section order; json.dumps(sort_keys=True) loses it, so we restore it here.
_CONFIG_ORDER = ("model", "behavior", "location", "heuristic", "edits", "metrics",
                 "random_locations", "tests", "necessity", "size_curve", "verdict", "expect")
_SPLITS = ("train", "validation", "test")


def _verdict_lines(r: dict) -> list[str]:
    """The overall verdict over every listed test (a result older than `tests:` has only the
    primary test's), the expectation, and, when tests beyond editing are listed, their table."""
    t = primary(r)
    verdict = r.get("verdict") or t["verdict"]
    reason = r.get("verdict_reason") or t.get("verdict_reason", "")
    return [f"**Verdict: {verdict}** ({expectation_note(r)})", "", str(reason), *verdict_table_lines(r)]


def _claim_lines(r: dict) -> list[str]:
    quote = "\n".join("> " + ln if ln else ">" for ln in str(r.get("claim_text", "")).splitlines())
    loc = r.get("location") or []
    heur = r.get("heuristic") or {}
    found = fmt(heur.get("method"))
    if heur.get("citation"):
        found += f" ({heur['citation']})"
    lines = ["## Claim", "", quote, "", f"- Claim file: `{r.get('claim_file')}`",
             *_passed_in_lines(r.get("model") or {}),
             f"- Location ({location_words(r)['location']}): " + ", ".join(f"`{h}`" for h in loc),
             *_ceiling_line(r),
             f"- Found by: {found}"]
    extra = [k for k in ordered(heur) if k not in ("method", "citation") and heur[k] is not None]
    lines += [f"  - {k}: {value(heur[k])}" for k in extra]
    return lines


def _ceiling_line(r: dict) -> list[str]:
    """Where a location in one layer's residual stream is compared to: that whole stream."""
    if r.get("site_kind") not in ("subspace", "latent"):
        return []
    lines = [f"- Ceiling: {location_words(r)['ceiling']}, the same edit with nothing restricted, in "
             "whose family every subspace of that layer lies; it gives the verdict, and \"whole "
             "model\" below means it"]
    whole = primary(r).get("whole_model")
    if whole is not None:
        share = whole.get("claim_share")
        lines.append(f"- Beside it, the whole-model edit (every head, as a head claim's ceiling) gains "
                     f"{fmt(whole.get('gain'))}" + (f"; the claim reaches {share:.0%} of that" if share is not None
                                                    else "") + ("" if whole.get("converged", True) else
                                                                " (it did not converge)")
                     + ": reported, not tested (an edit of another form and other layers)")
    return lines


def _passed_in_lines(model: dict) -> list[str]:
    """For a model passed to `loccheck.verify(model=...)`: what it was, and its identity."""
    if model.get("resolved") != "passed in":
        return []
    return [f"- Model: {model.get('source')}, weights sha256 `{model.get('weights_sha256')}` "
            f"(model, config and tokenizer: `{model.get('sha256')}`); the claim's model.name "
            f"`{model.get('name')}` is its label, and model.device and model.dtype did not apply"]


def _interpretation(r: dict) -> str:
    t, metric, n = primary(r), r["metric"], r.get("n_null")
    if t.get("stopped_early"):   # the sequential null: say how many were fitted
        n = f"the first {t['n_null_fitted']} (of {n} planned)"
    v, kind, size = t["verdict"], site_noun(r), len(r.get("location") or [])
    p, alpha, rho, ratio = fmt(t.get("p_value")), fmt(r.get("alpha")), fmt(r.get("rho")), \
        t.get("optimality_ratio")
    pct = "n/a" if ratio is None or not math.isfinite(ratio) else f"{ratio:.0%}"
    k = t.get("n_at_least")
    beaten = "None of the" if k == 0 else f"{k} of"
    space = (f" out of about {float(r['n_locations']):.2g} possible {size}-{kind} sets"
             if r.get("n_locations") else "")
    scope = (f"The test uses `{metric}` only; other metrics in the tables are descriptive, and "
             "nothing here speaks to other behaviours, datasets or models.")
    words = location_words(r)
    what, them = words["random"], words["claimed"]
    claim_gain = t.get("claim_gain")
    if v == "NO_EFFECT":
        happened = ("diverged" if t.get("ceiling_diverged") else
                    f"did not improve `{metric}` (gain {fmt(t.get('ceiling_gain'))})")
        text = (f"The whole-model edit {happened}, so there is no effect of editing to localize: "
                f"this experiment can neither support nor falsify the claim. Check that the data "
                "express the behaviour and that the edits' training worked (the convergence "
                "table below), then rerun.")
    elif v == "FALSIFIED" and (t.get("claim_diverged") or claim_gain is None or claim_gain <= 0):
        happened = ("diverged, so it has no optimum to compare" if t.get("claim_diverged") else
                    f"did not improve `{metric}` (gain {fmt(claim_gain)})")
        text = (f"The optimal edit of {them} {happened}, while the whole-model edit gains "
                f"{fmt(t.get('ceiling_gain'))}. Whatever random locations did, editing {them} does "
                "not move the behaviour, so it gives no evidence that the behaviour lives in them.")
    elif v == "FALSIFIED":
        text = (f"{beaten} {n} {what} reached a `{metric}` gain at least as large as {them} "
                f"(p = {p} > alpha = {alpha}); {them} {words['reach']} {pct} of the whole-model effect. "
                f"{words['random_sets']} edit the behaviour as well, so success at "
                "editing it through these sites is no evidence that it lives in them. This does "
                "not show that they are irrelevant to the behaviour: they may carry it, but so, "
                f"apparently, do many {words['others']}.")
    elif v == "SUPPORTED":
        text = (f"{beaten} {n} {what} matched {words['their']} `{metric}` gain (p = {p} <= alpha = "
                f"{alpha}), and {them} {words['reach']} {pct} of the whole-model effect (rho = {rho}). Among "
                "locations of this size they are special for this behaviour, and editing them "
                "alone gets close to the best any edit of the whole model achieves. This does not "
                f"show uniqueness beyond the sampled null ({n} random sets{space}), that the "
                f"behaviour is absent from {words['others']}, or that an edit of another kind would agree.")
    elif v == "SPECIFIC_BUT_WEAK":
        text = (f"{them[0].upper() + them[1:]} {words['beat']} {n} {what} (p = {p} <= alpha = {alpha}), but "
                f"{words['reach']} only {pct} of the whole-model effect, short of rho = {rho}. They are "
                f"specific: editing them works better than editing {words['random']}. "
                "They are not sufficient: the rest of the achievable effect needs parts of the "
                "model outside them, so the behaviour is not localized in them alone.")
    elif v == "SPECIFIC":
        text = (f"{them[0].upper() + them[1:]} {words['beat']} {n} {what} (p = {p} <= alpha = {alpha}): they "
                f"are specific. Whether they are effective is not decided: they reach {pct} of the "
                "whole-model gain, but the whole-model edit is no optimum to measure that against ("
                + _ceiling_state(t) + "). A ceiling that converges (a larger `max_epochs`, another "
                "`ceiling_learning_rate`) would decide it.")
    elif v == "UNDERPOWERED":
        text = (f"With N = {n} random locations the smallest reachable p-value is 1/(N + 1) = "
                f"{fmt(t.get('min_p_value'))} > alpha = {alpha}, so no outcome could have rejected "
                f"the null; at least {t.get('min_null_size')} random locations are needed for "
                f"alpha = {alpha}. The numbers below are descriptive only: they neither support "
                "nor falsify the claim.")
    else:
        text = f"Verdict {v} has no standard interpretation; see the numbers below."
    short = _ceiling_sentence(r) if t.get("ceiling_short") else ""
    return " ".join([text, effective_sentence(r, r["primary_method"]), short, scope]).replace("  ", " ")


def _ceiling_state(t: dict) -> str:
    if not t.get("ceiling_converged", True):
        return "it did not converge by the training rule"
    return "it gains less than the claimed location on the held-out questions, by more than noise"


def _ceiling_sentence(r: dict) -> str:
    """Why the claim beat the whole model on held-out data by more than noise: the ceiling did
    not fit its training pairs as well (an optimisation failure), or it did and generalised
    worse (the whole model can do everything a location can on the training pairs, not on
    unseen ones)."""
    roles = {e.get("role"): e for e in edits_of(r) if e.get("role") in ("claim", "ceiling")}
    fit_c, fit_w = (roles.get(k, {}).get("final_objective") for k in ("claim", "ceiling"))
    head = ("**The ceiling fell short:** the claimed location gained more than the whole-model "
            "edit on the held-out questions, by more than 10% and more than the null's spread.")
    if fit_c is not None and fit_w is not None and fit_w <= fit_c:
        return (f"{head} The whole-model edit fits the training pairs at least as well (objective "
                f"{fmt(fit_w)} against {fmt(fit_c)}), so this is generalisation, not optimisation: "
                "an optimality ratio above 1 here says the larger edit overfits, not that the "
                "location beats the whole model.")
    return (f"{head} The whole model can do everything a location can, so its edit did not reach "
            "its optimum, and the optimality ratio above 1 measures that failure.")


def effective_sentence(r: dict, method: str) -> str:
    """How many random locations reach rho of the whole-model gain; for single sites, what that
    says about uniqueness."""
    k, n = r["tests"][method].get("n_null_effective"), r["tests"][method].get("n_null_fitted", r.get("n_null"))
    if k is None:
        return ""
    kind, size = site_noun(r), len(r.get("location") or [])
    what = location_words(r)["random"] if r.get("null_draw") == "every" else \
        f"random single {kind}s" if size == 1 else f"random {size}-{kind} locations"
    text = f"{k} of {n} {what} reach rho = {fmt(r.get('rho'))} of the whole-model gain (`{method}` edit)."
    if size == 1:
        text += (f" More than one such {kind} is evidence against uniqueness: no single privileged "
                 f"{kind} carries the behaviour." if k > 1 else
                 f" At most one such {kind} was found, so this sample does not contradict uniqueness.")
    return text


def _metric_p(summary: dict, n_null) -> str:
    """A metric's own p-value; after a sequential stop on another metric, marked descriptive."""
    text = fmt(summary.get("p_value"))
    if summary.get("p_value_descriptive"):
        text += f" (descriptive: the first {summary.get('p_value_draws')} of {n_null} draws)"
    return text


def _stats_lines(r: dict) -> list[str]:
    metric, t = r["metric"], primary(r)
    metrics = [metric] + [m for m in r.get("metrics") or [] if m != metric]
    summaries = r["metric_summaries"][r["primary_method"]]
    base = r.get("base_metrics") or {}
    headers = ["", *[h for m in metrics for h in (m, f"{m} gain")]]
    rows = [["unedited model", *[c for m in metrics for c in (fmt(base.get(m)), "—")]]]
    for role, label in (("ceiling", "whole-model edit (ceiling)"), ("claim", "claimed location")):
        rows.append([label, *[c for m in metrics for c in (
            fmt(summaries[m][role]["value"]), fmt(summaries[m][role]["gain"]))]])
    rows.append(["random locations (null): mean ± std [min, max]",
                 *[c for m in metrics for c in (spread(summaries[m]["null_value"]),
                                                spread(summaries[m]["null_gain"]))]])
    if len(metrics) > 1:   # does the verdict depend on the metric?
        rows.append(["claim vs null on this metric: p", *[c for m in metrics for c in (
            "", _metric_p(summaries[m], r.get("n_null")))]])
    n, k = t.get("n_null"), t.get("n_at_least")
    if t.get("stopped_early"):
        l = t["n_null_fitted"]
        test = [["p-value (one-sided, sequential)", fmt(t.get("p_value")) + f" (= {k}/{l})"],
                ["null gains >= claim gain", f"{k} of the first {l}"],
                ["N (random locations)", f"{n} planned, {l} fitted ({n - l} not needed)"]]
    else:
        test = [["p-value (one-sided)", fmt(t.get("p_value")) + f" (= {k + 1}/{n + 1})"],
                ["null gains >= claim gain", f"{k} of {n}"],
                ["N (random locations)", fmt(n)]]
    test += [
            ["min reachable p, 1/(N + 1)", fmt(t.get("min_p_value"))],
            ["alpha", fmt(r.get("alpha"))],
            ["rho (required share of the ceiling)", fmt(r.get("rho"))],
            ["optimality ratio, claim gain / whole-model gain", fmt(t.get("optimality_ratio"))],
            ["claim percentile in null (%)", fmt(t.get("claim_percentile"))]]
    if "needed_gain" in t:        # a result.json of an earlier loccheck has no such number
        test.append(["to be significant at alpha, the claim's gain had to exceed",
                     needed(t, "needed_gain", "claim_gain")])
    sequential = ("" if t.get("stop") != "sequential" else
                  " The null was drawn sequentially (`random_locations.stop: sequential`, Besag and "
                  "Clifford 1991): its locations are fitted in their seeded order, and fitting stops "
                  "at the h-th one at or above the claim (h = the fewest that decide the test at "
                  "alpha); stopped after l locations, p = h / l, else the full null's p.")
    if r.get("null_draw") == "every":
        sequential = (f" The null is every other location of the claim's shape, once each, in a seeded order "
                      f"(`random_locations.draw: every`): N + 1 = {fmt(n + 1 if n is not None else None)} is the "
                      "number of such locations, and p is the exact permutation p-value." + sequential)
    direction = "" if (r.get("higher_is_better") or {}).get(metric, True) else (
        f" Lower `{metric}` is better: the test compares gains with their sign flipped.")
    return ["## Statistics", "",
            f"Edit: `{r['primary_method']}`. Primary metric: `{metric}` (the p-value and the verdict "
            "use its gain over the unedited model; other metrics are descriptive). Gains are "
            f"measured on held-out test questions.{direction}", "",
            table(rows, headers), "",
            table(test, ["test statistic", "value"]), "",
            f"{P_CONVENTION}. ± is the sample standard deviation (ddof = 1).{sequential}"]


def other_metrics(r: dict) -> list[str]:
    """The listed metrics besides the verdict's, in claim order."""
    return [m for m in r.get("metrics") or [] if m != r["metric"]]


def metric_hist_name(metric: str) -> str:
    return f"null_hist_{metric}.png"


def _figure_lines(r: dict) -> list[str]:
    n, words = r.get("n_null"), location_words(r)
    lines = ["## Figures", "",
             f"![Null distribution of {r['metric']} gain at {n} {words['random']}, "
             f"with {words['claimed']} and the whole-model edit marked]({NULL_HIST_NAME})"]
    for m in other_metrics(r):
        lines += ["", f"![Null distribution of {m} gain (descriptive)]({metric_hist_name(m)})"]
    return lines


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


def _repro_lines(r: dict) -> list[str]:
    model, data = r.get("model") or {}, r.get("data") or {}
    versions, seeds = r.get("versions") or {}, r.get("seeds") or {}
    model_keys = ordered(model, ("name", "resolved", "source", "sha256", "weights_sha256", "config_sha256",
                                 "tokenizer_sha256", "architecture", "n_layers", "n_heads", "head_dim",
                                 "device", "dtype"))
    data_keys = [k for k in ordered(data, ("dataset", "source", "sha256", "prompt_format"))
                 if k not in ("example_prompt", "n_questions", "n_pairs")]
    nq, npairs = data.get("n_questions") or {}, data.get("n_pairs") or {}
    splits = ordered({**nq, **npairs}, _SPLITS)
    config = canonical(r.get("config") or {}, _CONFIG_ORDER)
    rerun = (["Re-run this check with:", "", fence(f"loccheck verify {r.get('claim_file')}", "sh")]
             if model.get("resolved") != "passed in" else
             ["Re-run this check from Python with the same model (the sha256 below):", "",
              fence(f"loccheck.verify({str(r.get('claim_file'))!r}, model=model, tokenizer=tokenizer)",
                    "python")])
    lines = ["## Reproducibility", "", *rerun, "",
             "### Versions", "", table([[k, value(versions[k])] for k in ordered(versions)],
                                       ["package", "version"]), "",
             "### Model", "", table([[k, _model_value(model[k])] for k in model_keys], ["field", "value"]), "",
             "### Data", "", table([[k, value(data[k])] for k in data_keys], ["field", "value"]), "",
             table([[s, fmt(nq.get(s)), fmt(npairs.get(s))] for s in splits],
                   ["split", "questions", "pairs"]), ""]
    if data.get("example_prompt") is not None:
        lines += ["Example prompt:", "", fence(str(data["example_prompt"]), "text"), ""]
    lines += ["### Seeds", "", table([[k, value(seeds[k])] for k in ordered(seeds)],
                                     ["seed", "value"]), "",
              "### Effective configuration", "",
              fence(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), "yaml")]
    return lines


def _model_value(v) -> str:
    """A model field; the sites (where each kind is hooked) and the structural checks' largest
    deviations are mappings, written out as "name: value" pairs."""
    if isinstance(v, dict):   # sorted: a report re-rendered from result.json (sorted keys) is the same
        return "; ".join(f"{k}: {fmt(x) if isinstance(x, float) else x}" for k, x in sorted(v.items()))
    return value(v)


def render_markdown(result: dict) -> str:
    """The report's Markdown text (no files written): the common sections, then the side-by-side
    comparison of edit methods, the claim's tests beyond editing (`report.evidence`), each
    method's and the heuristic's own sections."""
    from loccheck.edits import EDIT_METHODS
    from loccheck.heuristics import HEURISTICS

    r = result
    sections = [[f"# loccheck: {r['claim_name']}", "", *_verdict_lines(r)],
                _claim_lines(r),
                ["## What this does and does not show", "", editing_lead(r) + _interpretation(r)],
                _stats_lines(r), _figure_lines(r), methods_lines(r), *evidence_sections(r), answers_lines(r)]
    heuristic = HEURISTICS.get((r.get("heuristic") or {}).get("method"))
    if heuristic is not None and heuristic.report_lines is not None and r.get("heuristic_evidence"):
        sections.append(heuristic.report_lines(r))
    sections.append(claim_stability_lines(r))
    for name in method_order(r):
        method = EDIT_METHODS.get(name)
        if method is not None and method.report_lines is not None:
            sections.append(method.report_lines(r))
    sections.append(_repro_lines(r))
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n"
