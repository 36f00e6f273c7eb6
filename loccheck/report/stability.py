"""How stable the claim and its verdict are: the report's claim-stability section (from
result.json), and the report of `loccheck stability` (from its stability.json)."""
from __future__ import annotations

import math
import statistics

from loccheck.render.format import fmt, table


def _share(f: dict) -> str:
    low, high = f["ci95"]
    return f"{f['count']} ({f['share']:.0%}; 95% CI {low:.0%}-{high:.0%})"


def claim_stability_lines(r: dict) -> list[str]:
    """The claim's stability section: how often its heuristic selects the claimed sites again on
    bootstrap resamples of the train questions; when not measured, how to measure it."""
    s = r.get("claim_stability")
    method = (r.get("heuristic") or {}).get("method")
    if s is None:
        if method in (None, "manual") or r.get("site_kind") == "subspace":
            return []
        return ["## How stable the claim is", "",
                f"Not measured: set `stability.bootstrap: 20` in the claim (or run `loccheck stability "
                f"CLAIM --bootstrap 20`) to rerun the heuristic (`{method}`) on 20 bootstrap resamples of the "
                "train questions and report how often it selects each claimed site again."]
    B, k = s["bootstrap"], len(s["claimed"])
    rows = [[site, _share(f)] for site, f in s["per_site"].items()]
    others = ", ".join(f"{o['site']} ({o['count']})" for o in s["others"]) or "none"
    on_all = ("selects exactly the claimed sites" if s["all_selects_claimed"] else
              "selects other sites than the claimed ones: " + ", ".join(s["selected_on_all"]))
    return ["## How stable the claim is", "",
            f"The heuristic (`{s['method']}`) was rerun on {B} bootstrap resamples of the "
            f"{s['n_train_questions']} train questions (drawn by question, with replacement; seed "
            f"{s['seed']}; the validation questions as they were), keeping its top {k} each time. On all "
            f"the train questions it {on_all}.", "",
            f"- The whole claimed set was selected again in {_share(s['whole_set'])} of {B} resamples.",
            f"- On average {s['mean_share_reselected']:.0%} of the claimed sites were selected again.",
            f"- The unclaimed sites selected most often (resamples of {B}): {others}.", "",
            table(rows, ["claimed site", f"selected again, of {B} resamples"]), "",
            "A site selected on few resamples owes its place in the claim to which questions were "
            "drawn, not to the behaviour; the interval is Clopper-Pearson's (exact) for the share."]


def stability_markdown(record: dict) -> str:
    """The report of `loccheck stability`: the claim's stability and the verdict on each seed."""
    lines = [f"# loccheck stability: {record['claim_name']}", ""]
    if record.get("claim_stability"):
        lines += claim_stability_lines({"claim_stability": record["claim_stability"]}) + [""]
    v = record.get("verdict_stability")
    if v:
        lines += _verdict_lines(v)
    lines += ["## Reproduce", "", "```", record["command"], "```"]
    return "\n".join(lines) + "\n"


def _verdict_lines(v: dict) -> list[str]:
    alpha, runs = v["alpha"], v["runs"]
    names = list(runs[0]["tests"])
    rows = []
    for r in runs:
        null = r["null_gains"]
        spread = (f"{sum(null) / len(null):.3g}" + (f" ± {statistics.stdev(null):.3g}" if len(null) > 1 else "")
                  + f" ({r['n_null_fitted']} of {r['n_null']})") if null else "none fitted"
        rows.append([r["shift"], r["split_seed"], r["verdict"],
                     *[f"{r['tests'][n]['verdict']} (p = {fmt(r['tests'][n]['p_value'])})" for n in names],
                     fmt(r["claim_gain"]), spread, fmt(r["ceiling_gain"]), fmt(r["needed_gain"]),
                     _overlap(r), f"{r['seconds']:.0f}"])
    gains = [r["claim_gain"] for r in runs]
    verdicts = ", ".join(f"{name} on {n}" for name, n in v["verdicts"].items())
    combined = [[n, ", ".join(fmt(p) for p in c["pvalues"]), fmt(c["twice_median"]), fmt(c["cauchy"]),
                 fmt(c["bonferroni"]), "yes" if c["twice_median"] <= alpha else "no"]
                for n, c in v["combined"].items()]
    lines = ["## How stable the verdict is", "",
             f"The claim verified on {v['splits']} seeds: seed shift s moves every seed of the claim by s (the "
             "split of the questions, and with it which questions are used; each edit's; the null's draws; the "
             "resample ablation's). The location stays the claimed one; the heuristic is rerun on each split "
             "and its selection compared. Verdicts: " + verdicts + ".", "",
             table(rows, ["shift", "split seed", "verdict", *[f"{n}" for n in names], "claim gain",
                          "null gain: mean ± std (fitted of N)", "whole-model gain", "needed gain",
                          "heuristic re-selects", "seconds"]), "",
             f"Claim gain over the seeds: mean {sum(gains) / len(gains):.3g}"
             + (f", std {statistics.stdev(gains):.3g}" if len(gains) > 1 else "") + ".", "",
             "Combined p-value per test. The runs share the model and overlap in their questions, so they "
             "are not independent: twice the median p-value (Rüschendorf 1982; Vovk and Wang 2020) is valid "
             "under any dependence and decides; the Cauchy combination (Liu and Xie 2020) is valid under "
             "dependence only asymptotically, for small alpha; Bonferroni (S x the least p) is valid under any "
             "dependence and conservative.", "",
             table(combined, ["test", "p-values", "2 x median", "Cauchy", "Bonferroni",
                              f"significant at alpha = {fmt(alpha)} (2 x median)"])]
    for n in names:
        floor = min(r["tests"][n]["min_p"] for r in runs)
        if 2 * floor > alpha:
            lines += ["", f"{n}: no run's p-value can be below {fmt(floor)} (its null's least p), so twice their "
                          f"median cannot reach alpha = {fmt(alpha)} whatever the runs show: a combined test "
                          f"needs each run's null to reach p <= alpha / 2 (at least {math.ceil(2 / alpha) - 1} "
                          "random locations)."]
    return lines + [""]


def _overlap(r: dict) -> str:
    selected = r.get("heuristic_selected")
    claimed = r.get("claimed") or []
    return "n/a" if selected is None else f"{len(set(selected) & set(claimed))} of {len(claimed)}"

