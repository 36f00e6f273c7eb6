"""The report's sections for the claim's tests beyond editing (`tests:` in the claim file;
result["evidence"], computed by `run.evidence`): the table of the listed tests' verdicts under
the overall verdict, then necessity (ablation), editing without the location, minimality and the
size curve. Their figures are drawn by `evidence_plots`.

Like markdown.py, this only formats: every number comes from the result, and every dict is read
in a fixed order (the claim's `tests:` order, or a constant one), never in its own key order, so
rendering the in-memory result and rendering it again from result.json give the same bytes.
"""
from __future__ import annotations

from loccheck.render.format import fmt, location_words, needed, primary, site_noun, table

NECESSITY_HIST_NAME, SIZE_CURVE_NAME = "necessity_hist.png", "size_curve.png"
VERDICT_TESTS = ("editing", "necessity")        # the tests that give a verdict, sharing alpha
ASKS = {"editing": "Does the optimal edit at the location move the behaviour more than at random "
                   "locations of its size?",
        "necessity": "Is more of the behaviour lost when the location is ablated than when random "
                     "locations of its size are?"}
STATISTIC = {"editing": "gain", "necessity": "drop"}


def listed(r: dict) -> list[str]:
    """The claim's `tests:` (older results: editing only)."""
    return list(r.get("tests_listed") or ["editing"])


def evidence_of(r: dict) -> dict:
    return r.get("evidence") or {}


def several(r: dict) -> bool:
    """Whether the claim lists tests beyond editing (and the result holds their evidence)."""
    return len(listed(r)) > 1 and bool(evidence_of(r))


def verdict_tests(r: dict) -> list[str]:
    """The listed tests that give a verdict and have evidence, in the claim's order."""
    return [t for t in listed(r) if t in VERDICT_TESTS and t in evidence_of(r)]


def expectation_note(r: dict) -> str:
    """The verdict line's note: the claim's `expect` (one verdict, or one per listed test), and
    whether the result matches it."""
    expect = r.get("expect")
    if expect is None:
        return "no expectation stated"
    if not isinstance(expect, dict):
        return f"expected {expect}: " + ("as expected" if r.get("matches_expectation") else "NOT as expected")
    order = [t for t in listed(r) if t in expect] + sorted(t for t in expect if t not in listed(r))
    note = "expected " + ", ".join(f"{t} {expect[t]}" for t in order) + ": "
    if r.get("matches_expectation"):
        return note + "as expected"
    ev = evidence_of(r)
    off = [f"{t} {ev[t].get('verdict')}" for t in order if ev.get(t, {}).get("verdict") != expect[t]]
    return note + "NOT as expected" + (f" (got {', '.join(off)})" if off else "")


def editing_lead(r: dict) -> str:
    """Put before the interpretation when other tests are listed: it is the editing test's alone."""
    if not several(r):
        return ""
    return (f"**The editing test** (its verdict: {primary(r)['verdict']}; the overall verdict weighs "
            "every listed test, in the table at the top). ")


# --- the verdict table, right under the verdict ---------------------------------------------

def verdict_table_lines(r: dict) -> list[str]:
    """One row per listed test with a verdict, and how alpha is shared between them."""
    if not several(r):
        return []
    ev, names, alpha = evidence_of(r), verdict_tests(r), fmt(r.get("alpha"))
    rows = [_verdict_row(r, name, ev[name]) for name in names]
    if len(names) > 1:
        shared = (f"alpha = {alpha} is shared by Holm's step-down method across the {len(names)} listed "
                  f"tests with a verdict ({', '.join(names)}): their p-values are sorted, the i-th "
                  f"smallest of {len(names)} is multiplied by {len(names)} - i + 1 (made non-decreasing, "
                  "capped at 1), and each test is decided on its Holm-adjusted p-value against alpha, "
                  "which keeps the chance that any of them wrongly supports the claim at most alpha, "
                  "whatever their dependence.")
    else:
        shared = f"Only {names[0]} gives a verdict here, so it alone decides, at alpha = {alpha}."
    measured = [t for t in listed(r) if t not in VERDICT_TESTS]
    lines = ["", table(rows, ["test", "what it asks", "statistic", "claim", "random locations: mean ± std (n)",
                              "p", "Holm-adjusted p", "verdict"]), "",
             shared + " The overall verdict is SUPPORTED only if every listed test supports the claim; "
             "otherwise it is the verdict of the first listed test that does not."
             + (f" Listed without a verdict: {', '.join(measured)} (measured in their own sections)."
                if measured else "")
             + " \"What this does and does not show\" and \"Statistics\" are the editing test's; each "
               "other test has its own section below."]
    return lines


def _verdict_row(r: dict, name: str, e: dict) -> list[str]:
    if name == "editing":
        t = primary(r)
        claim, mean, std = t.get("claim_gain"), t.get("null_mean"), t.get("null_std")
        used, planned = t.get("n_null_fitted", t.get("n_null")), t.get("n_null")
    else:
        claim, mean, std = e.get("claim_drop"), e.get("null_mean"), e.get("null_std")
        used, planned = e.get("n_null_fitted"), e.get("n_null")
    n = fmt(planned) if used == planned else f"{fmt(used)} of {fmt(planned)}"
    return [name, ASKS[name], f"`{r['metric']}` {STATISTIC[name]}", fmt(claim),
            f"{fmt(mean)} ± {fmt(std)} ({n})", fmt(e.get("p_value")),
            "—" if e.get("p_holm") is None else fmt(e["p_holm"]), str(e.get("verdict"))]


# --- necessity ------------------------------------------------------------------------------

def _drop_words(n: dict, metric: str, direction: str) -> str:
    """What the drop is: the behaviour is the pairs' chosen answers (the metric falls), or their
    rejected ones (known facts' counterfactual pairs: the metric rises as the fact is lost)."""
    if n.get("behavior", "chosen") == "rejected":
        return (f"The behaviour is the pairs' rejected answers (`necessity.behavior: rejected`: as in known "
                f"facts' counterfactual pairs, the rejected answer is the fact the model knows), so the drop "
                f"is the ablated model's `{metric}` minus the unedited model's{direction}: larger means "
                "more of the behaviour lost.")
    return (f"The drop is the unedited model's `{metric}` minus the ablated model's{direction}, so larger "
            "means more of the behaviour lost.")


def _ablation_words(name) -> str:
    from loccheck.ablations import ABLATIONS

    a = ABLATIONS.get(name)
    return f"is {a.description}" if a is not None else f"is removed ({name})"


def necessity_lines(r: dict) -> list[str]:
    n = evidence_of(r).get("necessity")
    if n is None:
        return []
    words, metric, alpha = location_words(r), r["metric"], fmt(r.get("alpha"))
    ablation = str(n.get("ablation"))
    seed = f", seed {n.get('seed')}" if ablation == "resample" else ""
    n_test = ((r.get("data") or {}).get("n_questions") or {}).get("test")
    questions = f"the {n_test} held-out test questions" if n_test is not None else "the held-out test questions"
    direction = "" if (r.get("higher_is_better") or {}).get(metric, True) else \
        " (lower is better here, so the sign is flipped)"
    measures = (f"How much of the behaviour is lost when {words['claimed']} are ablated: the location's part "
                f"of the activations {_ablation_words(ablation)} (`{ablation}` ablation{seed}) at every token "
                f"of {questions}, nothing else changed. " + _drop_words(n, metric, direction) + " It is "
                f"tested against the drops of {words['random']}: " + (
                    "every one of them, in the editing null's seeded order." if r.get("null_draw") == "every" else
                    "the editing test's random locations first, in the same draw order, then further draws "
                    "of the same seed."))
    cannot = ("What it can and cannot show: it tests necessity under one choice of ablation, "
              f"`{ablation}`. Mean, resample and zero ablation each replace the activation differently "
              "(zero can push it off the distribution the model saw; the mean keeps its average, "
              "resampling its spread), and another ablation can give a different answer. Ablation "
              "says nothing about sufficiency: a location the behaviour needs may still not carry it "
              "alone (the editing test speaks to that). And it misses redundancy: a behaviour carried "
              "by two sites that each suffice loses nothing when either one is ablated, so a small "
              "drop does not show that the sites play no part.")
    k, used, planned = n.get("n_at_least"), n.get("n_null_fitted"), n.get("n_null")
    if n.get("stopped_early"):
        p_row = ["p-value (one-sided, sequential)", f"{fmt(n.get('p_value'))} (= {k}/{used})"]
        counted = [["random drops >= claim's drop", f"{k} of the first {used}"],
                   ["N (random locations)", f"{planned} planned, {used} ablated ({planned - used} not needed)"]]
        convention = ("The null was ablated sequentially (`necessity.stop: sequential`, Besag and Clifford "
                      "1991): its locations in their seeded order, stopping at the h-th drop at or above "
                      "the claim's (h = the fewest that decide the test at alpha); stopped after l "
                      "locations, p = h / l.")
    else:
        p_row = ["p-value (one-sided)", f"{fmt(n.get('p_value'))} (= {fmt(k + 1 if k is not None else None)}"
                                        f"/{fmt(used + 1 if used is not None else None)})"]
        counted = [["random drops >= claim's drop", f"{fmt(k)} of {fmt(used)}"],
                   ["N (random locations)", fmt(planned)]]
        convention = ("p = (1 + #{random drops >= claim's drop}) / (N + 1), one-sided, ties count "
                      "against the claim.")
    holm = n.get("holm")
    rows = [["claim's drop", fmt(n.get("claim_drop"))],
            [f"`{metric}` with {words['claimed']} ablated", fmt(n.get("claim_value"))],
            ["random drops: median", fmt(n.get("null_median"))],
            ["random drops: mean ± std", f"{fmt(n.get('null_mean'))} ± {fmt(n.get('null_std'))}"],
            *counted, p_row,
            ["Holm-adjusted p", "—" if holm is None else f"{fmt(holm[0])} (over {holm[1]} tests)"],
            ["min reachable p, 1/(N + 1)", fmt(n.get("min_p_value"))],
            *([["to be significant at alpha, the claim's drop had to exceed",
                needed(n, "needed_drop", "claim_drop")]]
              if "needed_drop" in n else []),
            ["alpha", alpha], ["verdict", str(n.get("verdict"))]]
    return ["## Necessity (ablation)", "", measures, "",
            table(rows, ["necessity", "value"]), "",
            f"{convention} ± is the sample standard deviation (ddof = 1); a drop that is not finite "
            "counts against the claim. The random locations ablated are listed in result.json "
            "(evidence.necessity.locations).", "",
            f"**{n.get('verdict')}:** {n.get('verdict_reason')}", "", cannot, "",
            f"![Drops of {metric} when ablating {used} {words['random']} ({ablation} ablation), with "
            f"{words['claimed']}' drop marked]({NECESSITY_HIST_NAME})"]


# --- editing without the location -----------------------------------------------------------

def without_lines(r: dict) -> list[str]:
    w = evidence_of(r).get("without")
    if w is None:
        return []
    words, metric, rho = location_words(r), r["metric"], r.get("rho")
    ratio = w.get("ratio")
    rest = ("" if r.get("site_kind") in ("subspace", "latent") or w.get("n_sites") is None
            else f", an edit of the other {w['n_sites']} {site_noun(r)}s")
    rows = [["whole model (ceiling)", fmt(w.get("ceiling_gain")), "1"],
            [f"whole model without {words['claimed']}{rest}", fmt(w.get("gain")), fmt(ratio)],
            [words["claimed"], fmt(w.get("claim_gain")), fmt(primary(r).get("optimality_ratio"))]]
    if w.get("diverged"):
        meaning = ("The edit without the location diverged, so it has no optimum to compare: this says "
                   "nothing about whether editing the behaviour needs the location.")
    elif ratio is None:
        why = "its gain is not finite" if w.get("gain") is None else "the ceiling gained nothing"
        meaning = (f"The ratio is not defined ({why}), so this says nothing about whether editing the "
                   "behaviour needs the location.")
    elif rho is not None and ratio >= rho:
        meaning = (f"Without {words['claimed']} the whole-model edit still reaches {ratio:.0%} of the "
                   f"ceiling (at least rho = {fmt(rho)}): editing the behaviour does not need them; the "
                   "rest of the model carries the edit as well. That does not show the behaviour is "
                   "absent from them, but success at editing it through them is not special to them.")
    elif rho is not None and ratio <= 1 - rho:
        meaning = (f"Without {words['claimed']} the whole-model edit reaches only {ratio:.0%} of the "
                   f"ceiling (at most 1 - rho = {fmt(1 - rho)}): by this edit, editing the behaviour "
                   "needs them; the rest of the model cannot carry it alone.")
    else:
        meaning = (f"Without {words['claimed']} the whole-model edit reaches {ratio:.0%} of the ceiling: "
                   "part of the effect can be had without them, part needs them.")
    if not w.get("diverged") and w.get("converged") is False:
        meaning += (f" The edit without the location did not converge ({w.get('stopped')}), so its gain "
                    "may understate what it can reach.")
    return ["## Editing without the location", "",
            f"The optimal whole-model edit fitted with {words['claimed']} left out, against the ceiling "
            f"(the same edit with nothing left out): its `{metric}` gain on the held-out questions and "
            "its ratio to the ceiling's. If the ratio is near 1, editing the behaviour does not need "
            "the location. It measures one edit family and gives no verdict.", "",
            table(rows, ["edit", f"`{metric}` gain", "ratio to the ceiling"]), "", meaning]


# --- minimality -----------------------------------------------------------------------------

def minimality_lines(r: dict) -> list[str]:
    m = evidence_of(r).get("minimality")
    if m is None:
        return []
    words, metric = location_words(r), r["metric"]
    share = m.get("free_share")
    tests = [t for t in VERDICT_TESTS if m.get(t) is not None]
    claim = {"editing": primary(r).get("claim_gain"),
             "necessity": evidence_of(r).get("necessity", {}).get("claim_drop")}
    lines = ["## Minimality", "",
             f"Each of {words['claimed']} left out in turn: the claim's statistic with the others only "
             "(the editing gain refitted without the site; the necessity drop with only the others "
             "ablated), and what leaving the site out costs (the claim's statistic minus that). A site "
             f"whose cost is under {_share(share)} of the claim's statistic contributes nothing measurable "
             "to it."]
    free_in: dict[str, list[str]] = {}
    for t in tests:
        stat = STATISTIC[t]
        rows = [[str(s.get("site")), fmt(s.get("without_it")), fmt(s.get("cost")),
                 "**yes**" if s.get("free") else "no"] for s in m[t]]
        free_in[t] = [str(s.get("site")) for s in m[t] if s.get("free")]
        lines += ["", f"{t.capitalize()} (the claim's `{metric}` {stat}: {fmt(claim[t])}):", "",
                  table(rows, ["site", f"{stat} without it", "cost", "contributes nothing?"]), "",
                  _free_sentence(t, stat, free_in[t], claim[t], share)]
    everywhere = [s for s in free_in.get(tests[0], []) if all(s in free_in[t] for t in tests)] if tests else []
    if len(tests) > 1 and everywhere:
        lines += ["", f"{_names(everywhere)} contribute{'s' if len(everywhere) == 1 else ''} nothing "
                      "measurable to any listed test: the claim would be as strong without "
                      f"{'it' if len(everywhere) == 1 else 'them'}."]
    lines += ["", "Leaving sites out one at a time misses redundancy: two sites that each suffice both "
                  "look free here, yet leaving out both can cost everything."]
    return lines


def _free_sentence(test: str, stat: str, free: list[str], claim, share) -> str:
    if claim is None or claim <= 0:
        return (f"{test.capitalize()}: the claim's {stat} is not positive, so no site's cost can be "
                "measured against it.")
    if not free:
        return (f"{test.capitalize()}: every site contributes: leaving any one out costs at least "
                f"{_share(share)} of the claim's {stat}.")
    verb = "contributes" if len(free) == 1 else "contribute"
    return (f"{test.capitalize()}: {_names(free)} {verb} nothing measurable (leaving "
            f"{'it' if len(free) == 1 else 'each'} out costs under {_share(share)} of the claim's {stat}).")


def _share(share) -> str:
    return "n/a" if share is None else f"{100 * share:.4g}%"


def _names(sites: list[str]) -> str:
    named = [f"`{s}`" for s in sites]
    return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]


# --- the size curve -------------------------------------------------------------------------

def unit(r: dict, n) -> str:
    """What one step of size is: "head(s)", "dimension(s)" for a subspace."""
    noun = "dimension" if r.get("site_kind") == "subspace" else site_noun(r)
    return noun if n == 1 else noun + "s"


def size_curve_lines(r: dict) -> list[str]:
    c = evidence_of(r).get("size_curve")
    if c is None:
        return []
    words, metric = location_words(r), r["metric"]
    tests = [t for t in VERDICT_TESTS if c.get(t) is not None]
    draws = f"{r.get('n_null')} for the editing test"
    if "necessity" in evidence_of(r):
        draws += f", {evidence_of(r)['necessity'].get('n_null')} for necessity"
    lines = ["## Size curve", "",
             f"Random locations of several sizes, fitted (and ablated) as the null's are, place the claim "
             "on a scale: how many random sites it is worth. The curve uses fewer draws per size "
             f"(n = {c.get('n')}) than the main null ({draws}), so its medians are rough, and it is not "
             "a test." + (" Its random locations are drawn in the claim's layers." if c.get("matched_layers")
                          else "")]
    for t in tests:
        d, stat = c[t], STATISTIC[t]
        lines += ["", f"{t.capitalize()} (`{metric}` {stat}):", "",
                  table(_curve_rows(r, d), ["size", "n", f"median {stat}", "[q1, q3]", "[min, max]"]), "",
                  _worth_sentence(r, t, d)]
    kind = "sizes" if r.get("site_kind") == "subspace" else f"{site_noun(r)} counts"
    lines += ["", f"![Median {metric} {' and '.join(STATISTIC[t] for t in tests)} of random locations "
                  f"against their size ({kind}), with the q1-q3 band, min and max, and {words['claimed']} "
                  f"marked]({SIZE_CURVE_NAME})"]
    return lines


def _curve_rows(r: dict, d: dict) -> list[list[str]]:
    size = d.get("claim_size")
    claim_row = [f"**{size}: {location_words(r)['claimed']}**", "—", f"**{fmt(d.get('claim'))}**", "", ""]
    rows, placed = [], False
    for row in d.get("rows") or []:
        if not placed and size is not None and row["size"] > size:
            rows.append(claim_row)
            placed = True
        n, finite = row.get("n"), row.get("n_finite")
        rows.append([str(row["size"]), fmt(n) if finite == n else f"{fmt(finite)} finite of {fmt(n)}",
                     fmt(row.get("median")), f"[{fmt(row.get('q1'))}, {fmt(row.get('q3'))}]",
                     f"[{fmt(row.get('min'))}, {fmt(row.get('max'))}]"])
    return rows if placed else rows + [claim_row]


def _worth_sentence(r: dict, test: str, d: dict) -> str:
    size, worth, stat = d.get("claim_size"), d.get("worth"), STATISTIC[test]
    who = (f"the claimed {size} {unit(r, size)}" if r.get("site_kind") != "subspace"
           else f"the claimed {size}-dimensional subspace")
    by = "by editing" if test == "editing" else "by ablation"
    if d.get("claim") is None:
        return f"{test.capitalize()}: the claim's {stat} is not finite, so it has no place on the curve."
    if worth is None:
        return (f"{test.capitalize()}: {who} {'are' if size != 1 else 'is'} worth more than the largest "
                f"size tried, {d.get('largest')} random {unit(r, d.get('largest'))} ({by}): no size's median "
                f"{stat} reaches the claim's ({fmt(d['claim'])}).")
    if size is None:
        compared = ""
    elif worth > size:
        compared = f"; more than random locations of its size ({size})"
    elif worth == size:
        compared = f"; as much as random locations of its size ({size}), no more"
    else:
        compared = f"; less than random locations of its size ({size})"
    return (f"{test.capitalize()}: {who} {'are' if size != 1 else 'is'} worth about {worth} random "
            f"{unit(r, worth)} ({by}): {worth} is the smallest size tried whose random locations' median "
            f"{stat} reaches the claim's ({fmt(d['claim'])}){compared}.")


def evidence_sections(r: dict) -> list[list[str]]:
    """The sections of the listed tests beyond editing, in the claim's order, then the size curve."""
    makers = {"necessity": necessity_lines, "without": without_lines, "minimality": minimality_lines}
    sections = [makers[t](r) for t in listed(r) if t in makers]
    return [s for s in sections + [size_curve_lines(r)] if s]
