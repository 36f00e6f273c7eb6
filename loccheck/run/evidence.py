"""The claim's tests beyond the editing test, computed from the records once (the report only
formats them): necessity, the whole model without the location, minimality and the size curve;
Holm's sharing of alpha between the tests with a verdict; the overall verdict."""
from __future__ import annotations

import math

import numpy as np

# A site whose removal costs less than this share of the claim's statistic costs (next to) nothing.
FREE_SHARE = 0.05


def necessity_test(claim, ablations: dict, location, n_null: int, holm_p=None) -> dict:
    from loccheck.render.format import location_words
    from loccheck.locations import format_location
    from loccheck.stats.necessity import examine_necessity

    first, *null = ablations["necessity"]          # records: a drop that was not finite is None
    words = location_words({"site_kind": location[0].kind, "location": format_location(location),
                            "null_draw": claim.null_draw})
    drop = lambda r: math.nan if r["drop"] is None else r["drop"]  # noqa: E731
    test = examine_necessity(drop(first), [drop(r) for r in null], alpha=claim.verdict.alpha,
                             n_null=n_null, stop=claim.necessity.stop, random_what=words["random"],
                             site=location[0].noun, holm_p=holm_p, exhaustive=claim.null_draw == "every")
    return {**test.to_json(), "ablation": claim.necessity.ablation, "seed": claim.necessity.seed,
            "behavior": claim.necessity_behavior,
            "claim_value": first["value"], "locations": [r["location"] for r in null[:test.n_null_fitted]]}


def holm_adjusted(claim, pvalues: dict[str, float]) -> dict[str, tuple[float, int] | None]:
    """Per listed test with a verdict: (its Holm-adjusted p-value, the number of tests), or None
    when it is the only one."""
    from loccheck.stats.necessity import holm

    names = list(claim.verdict_tests)
    if len(names) < 2:
        return {n: None for n in names}
    adjusted = holm([pvalues[n] for n in names])
    return {n: (a, len(names)) for n, a in zip(names, adjusted)}


def overall(claim, verdicts: dict[str, dict]) -> tuple[str, str]:
    """SUPPORTED only if every listed test with a verdict supports the claim; else the first
    listed test's verdict that does not, with its reason."""
    names = claim.verdict_tests
    if len(names) == 1:
        return verdicts[names[0]]["verdict"], verdicts[names[0]]["verdict_reason"]
    for name in names:
        if verdicts[name]["verdict"] != "SUPPORTED":
            return verdicts[name]["verdict"], f"The {name} test: {verdicts[name]['verdict_reason']}"
    return "SUPPORTED", ("Every listed test supports the claim (" +
                         "; ".join(f"{n}: p = {verdicts[n]['p_value']:.3g}, Holm-adjusted "
                                   f"{verdicts[n]['p_holm']:.3g}" for n in names) + ").")


def matches(expect, verdict: str, verdicts: dict[str, dict]) -> bool:
    if isinstance(expect, dict):
        return all(verdicts[name]["verdict"] == v for name, v in expect.items())
    return verdict == (expect or "SUPPORTED")


def without_record(records: list[dict], test: dict, metric: str, better) -> dict | None:
    """The whole model's edit without the location, against the ceiling: if it reaches the
    ceiling, editing the behaviour does not need the location."""
    r = next((r for r in records if r["role"] == "without"), None)
    if r is None:
        return None
    gain = r["gains"][metric]
    gain = better(gain) if gain is not None and math.isfinite(gain) and not r["diverged"] else None
    ceiling = test["ceiling_gain"]
    return {"gain": gain, "ceiling_gain": ceiling, "claim_gain": test["claim_gain"],
            "ratio": gain / ceiling if gain is not None and ceiling and ceiling > 0 else None,
            "n_sites": len(r["location"]), "diverged": r["diverged"], "converged": r.get("converged"),
            "stopped": r.get("stopped")}


def minimality(location, claim_stat: float | None, stats: list[float | None]) -> list[dict]:
    """Per site: the statistic of the claim without it, what leaving it out costs, and whether
    that is (next to) nothing: under `FREE_SHARE` of the claim's statistic."""
    rows = []
    for site, stat in zip(location, stats):
        cost = None if stat is None or claim_stat is None else claim_stat - stat
        free = cost is not None and claim_stat > 0 and cost < FREE_SHARE * claim_stat
        rows.append({"site": str(site), "without_it": stat, "cost": cost, "free": bool(free)})
    return rows


def size_curve(sizes: list[int], draws: list[tuple[int, float | None]], claim_stat: float | None,
               claim_size: int) -> dict:
    """Per size, the random locations' statistics (median, quartiles, min, max); and the size the
    claim is worth: the smallest size whose random locations' median reaches the claim's."""
    rows = []
    for size in sizes:
        values = [v for s, v in draws if s == size]
        finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
        q = np.percentile(finite, [0, 25, 50, 75, 100]).tolist() if finite.size else [None] * 5
        rows.append({"size": size, "n": len(values), "n_finite": int(finite.size), "values": values,
                     "min": q[0], "q1": q[1], "median": q[2], "q3": q[3], "max": q[4]})
    worth = next((r["size"] for r in rows if claim_stat is not None and r["median"] is not None
                  and r["median"] >= claim_stat), None)
    return {"rows": rows, "claim": claim_stat, "claim_size": claim_size, "worth": worth,
            "largest": max(sizes)}
