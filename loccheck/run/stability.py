"""How far a claim and its verdict are properties of the claim, not of one draw of the data.

* The claim's stability (`stability.bootstrap: B`, in every verification that asks for it, or
  `loccheck stability --bootstrap B`): the claim's heuristic rerun on B bootstrap resamples of
  its train questions (`HeuristicData.resampled`: by question, never by pair), and how often
  each claimed site, and the whole claimed set, is selected again.
* The verdict's stability (`loccheck stability --splits S`): the whole verification on S seeds,
  every seed of the claim moved together (the split of the questions, so which questions are
  used at all; each edit's; the null's draws; the resample ablation's), the verdict on each, the
  spread of the claim's gain and of the null's, and each test's p-values combined in a way that
  stays valid however the runs depend on each other.
"""
from __future__ import annotations

import math
import time
from statistics import median

import numpy as np

from loccheck.errors import LoccheckError

MAX_SPLITS = 20     # each is a whole verification: its fits, its null, its ablations


def heuristic_stability(claim, testbed, location: tuple, proposal, note=None) -> dict:
    """Rerun the claim's heuristic on `stability.bootstrap` resamples of the train questions;
    the selections (the top len(location) sites of each) as strict JSON, for `stability_summary`.
    `proposal`: the heuristic on all of them, as the run already has it; call this inside the
    `models.activations.reusing_activations` that was open when it was made, so the resamples
    read no activation again. `note(text)`: a progress line now and then (CI logs included)."""
    from loccheck.heuristics import HEURISTICS
    from loccheck.locations import format_location
    from loccheck.models.activations import reusing_activations

    spec, heuristic = claim.stability, HEURISTICS[claim.heuristic.method]
    data = testbed.data.without_test(testbed.prompt_format, testbed.system_prompt)
    k, selections = len(location), []
    start = last = time.monotonic()

    def propose(d):
        try:
            return heuristic.propose(claim.heuristic, testbed.loaded, d, testbed.cache_root,
                                     seed=claim.behavior.split.seed)
        except LoccheckError as err:
            raise claim.error(err.key or "heuristic", f"on a bootstrap resample: {err.msg}") from None
    full = proposal.top(k)
    with reusing_activations():      # resamples only repeat questions: no forward pass, no cache file
        for b in range(spec.bootstrap):
            rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(b,)))
            selections.append(format_location(propose(data.resampled(rng)).top(k)))
            if note is not None and time.monotonic() - last > 30:
                last = time.monotonic()
                note(f"claim stability: {b + 1} of {spec.bootstrap} resamples ({last - start:.0f} s so far)")
    return {"method": claim.heuristic.method, "bootstrap": spec.bootstrap, "seed": spec.seed,
            "claimed": format_location(location), "selected_on_all": format_location(full),
            "selections": selections, "n_train_questions": len(data.groups["train"])}


def stability_summary(record: dict) -> dict:
    """From `heuristic_stability`'s record: per claimed site how often it was selected again
    (with a 95% Clopper-Pearson interval), how often the whole set was, the mean share of the set
    selected again, and the unclaimed sites selected most often."""
    from scipy.stats import binomtest

    B, claimed = record["bootstrap"], record["claimed"]
    chosen = [set(s) for s in record["selections"]]

    def frequency(count: int) -> dict:
        ci = binomtest(count, B).proportion_ci(0.95, method="exact")
        return {"count": count, "share": count / B, "ci95": [ci.low, ci.high]}
    counts: dict[str, int] = {}
    for s in chosen:
        for site in s:
            counts[site] = counts.get(site, 0) + 1
    others = sorted(((n, site) for site, n in counts.items() if site not in claimed), key=lambda t: (-t[0], t[1]))
    return {"per_site": {site: frequency(counts.get(site, 0)) for site in claimed},
            "whole_set": frequency(sum(s == set(claimed) for s in chosen)),
            "mean_share_reselected": float(np.mean([len(s & set(claimed)) / len(claimed) for s in chosen])),
            "others": [{"site": site, **frequency(n)} for n, site in others[:5]],
            "all_selects_claimed": record["selected_on_all"] == claimed}


# --- the verdict on several seeds -------------------------------------------------------------

def seed_shifted(claim, shift: int):
    """The claim with every seed it has moved by `shift`: the split's, each edit's, the null's and
    the necessity test's."""
    updates = {"behavior.split.seed": claim.behavior.split.seed + shift,
               "random_locations.seed": claim.random_locations.seed + shift}
    for i, edit in enumerate(claim.edits):
        if hasattr(edit, "seed"):
            updates[f"edits[{i}].seed"] = edit.seed + shift
    if claim.necessity is not None:
        updates["necessity.seed"] = claim.necessity.seed + shift
    return claim.with_overrides(updates)


def combined_pvalue(pvalues: list[float]) -> dict:
    """p-values of one test on runs that share the model and overlap in their data, combined.
    `twice_median`: min(1, 2 x median), valid under any dependence between the runs (Rüschendorf
    1982; Vovk and Wang 2020, the r = 1/2 quantile); it is what decides. `cauchy`: the Cauchy
    combination (Liu and Xie 2020), whose validity under dependence is asymptotic (for small
    alpha), given beside it; `bonferroni`: min(1, S x min p), valid under any dependence."""
    if len(pvalues) < 2:
        raise ValueError(f"combining needs at least 2 p-values, got {len(pvalues)}")
    ps = [min(max(float(p), 1e-300), 1.0) for p in pvalues]
    t = float(np.mean([math.tan((0.5 - p) * math.pi) for p in ps]))
    return {"twice_median": min(1.0, 2 * median(ps)), "cauchy": min(1.0, max(0.0, 0.5 - math.atan(t) / math.pi)),
            "bonferroni": min(1.0, len(ps) * min(ps))}


def run_record(result, shift: int, seconds: float) -> dict:
    """What one seed's verification says, for the stability table."""
    from loccheck.render.format import primary

    r = result.payload
    t = primary(r)
    tests = {name: {"verdict": e["verdict"], "p_value": e["p_value"],
                    "min_p": 1 / ((t if name == "editing" else e)["n_null"] + 1)}
             for name, e in r["evidence"].items() if "verdict" in e and "p_value" in e}
    fitted = [g for g in t["null_gains"] if g is not None]
    found = r.get("heuristic_evidence") or {}
    return {"shift": shift, "split_seed": r["seeds"]["split"], "verdict": r["verdict"], "tests": tests,
            "claim_gain": t["claim_gain"], "ceiling_gain": t["ceiling_gain"], "null_gains": fitted,
            "n_null": t["n_null"], "n_null_fitted": t["n_null_fitted"], "needed_gain": t.get("needed_gain"),
            "claim_drop": (r["evidence"].get("necessity") or {}).get("claim_drop"),
            "claimed": r["location"], "heuristic_selected": found.get("selected"), "seconds": round(seconds, 1)}


def verdict_stability(claim, splits: int, *, verify_one, note) -> dict:
    """The claim verified on `splits` seed shifts (0 is the claim as written), by
    `verify_one(claim, shift) -> VerifyResult`; the runs, and per test the combined p-value."""
    if not 2 <= splits <= MAX_SPLITS:
        raise LoccheckError(f"--splits must be between 2 and {MAX_SPLITS} (each is a whole verification; a "
                            f"spread needs at least two), got {splits}", key="splits")
    runs = []
    for shift in range(splits):
        note(f"verdict stability: seed shift {shift} of {splits - 1} (split seed "
             f"{claim.behavior.split.seed + shift}) ...")
        began = time.monotonic()
        result = verify_one(seed_shifted(claim, shift), shift)
        runs.append(run_record(result, shift, time.monotonic() - began))
        note(f"verdict stability: seed shift {shift}: {runs[-1]['verdict']} "
             f"({time.monotonic() - began:.0f} s)")
    tests = {name: [r["tests"][name]["p_value"] for r in runs] for name in runs[0]["tests"]}
    return {"splits": splits, "runs": runs,
            "combined": {name: {"pvalues": ps, **combined_pvalue(ps)} for name, ps in tests.items()},
            "verdicts": {v: sum(r["verdict"] == v for r in runs) for v in dict.fromkeys(r["verdict"] for r in runs)},
            "alpha": claim.verdict.alpha}

