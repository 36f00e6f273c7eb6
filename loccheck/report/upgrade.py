"""Read result.json files of earlier schema versions: `upgrade` returns the current layout, so
`loccheck report` renders a result written by an older loccheck. Statistics the old layout did
not store are computed with the same functions verify uses (`stats`, `verdict`)."""
from __future__ import annotations

import math

from loccheck.errors import LoccheckError

CURRENT = 2


def upgrade(result: dict) -> dict:
    version = result.get("schema_version", 1)
    if version == CURRENT:
        return result
    if version == 1:
        return _from_v1(result)
    raise LoccheckError(f"result schema_version {version!r} is not one this loccheck reads "
                        f"(1 to {CURRENT}); a newer loccheck wrote it")


def _from_v1(r: dict) -> dict:
    """Version 1 (loccheck 0.1.0): the primary test flat at the top level and per method under
    `methods`; roles "claim", "full", "random"; probe evidence under `probe`."""
    from loccheck.stats.pvalues import describe
    from loccheck.stats.verdict import min_null_size

    n = r["n_random"]
    edits = [{**e, "method": e.get("method", "optimal"),
              "role": "ceiling" if e.get("role") == "full" else e.get("role"),
              # 0.1.0 trained a fixed budget and flagged edits whose loss was still falling
              **({"converged": not e["still_falling"], "stopped": "fixed budget",
                  "final_objective": e.get("final_loss")} if "still_falling" in e else {})}
             for e in r.get("edits") or []]
    base = r.get("base_metrics") or {}
    metrics = [r["metric"]] + sorted(m for m in base if m != r["metric"])
    tests, summaries = {}, {}
    for method, s in (r.get("methods") or {r.get("edit_method", "optimal"): r}).items():
        p = s["p_value"]
        tests[method] = {
            "verdict": s["verdict"], "verdict_reason": s["verdict_reason"], "p_value": p,
            "n_null": n, "n_at_least": round(p * (n + 1) - 1), "min_p_value": s["min_p_value"],
            "min_null_size": min_null_size(r["alpha"]), "claim_gain": s["claim_gain"],
            "ceiling_gain": s["full_gain"], "null_gains": s["null_gains"],
            "null_mean": s["null_mean"], "null_std": s["null_std"],
            "null_min": min(s["null_gains"]), "null_max": max(s["null_gains"]),
            "claim_percentile": s["claim_percentile"], "optimality_ratio": s["optimality_ratio"],
            "n_null_effective": s.get("n_null_effective")}
        mine = [e for e in edits if e["method"] == method]
        by_role = {e["role"]: e for e in mine if e["role"] != "random"}
        randoms = [e for e in mine if e["role"] == "random"]
        summaries[method] = {m: {
            **{role: {"value": by_role[role]["metrics"][m], "gain": by_role[role]["gains"][m]}
               for role in ("claim", "ceiling")},
            "null_value": describe([e["metrics"][m] for e in randoms]).to_json(),
            "null_gain": describe([e["gains"][m] for e in randoms]).to_json()} for m in metrics}
    model, size = r.get("model") or {}, len(r.get("location") or [])
    n_sites = model.get("n_layers", 0) * model.get("n_heads", 0)
    return {**{k: v for k, v in r.items() if k not in (
                "verdict", "verdict_reason", "p_value", "n_random", "min_p_value", "claim_gain",
                "full_gain", "null_gains", "optimality_ratio", "null_mean", "null_std",
                "claim_percentile", "methods", "edit_method", "probe")},
            "schema_version": CURRENT, "site_kind": "head",
            "n_locations": math.comb(n_sites, size) if n_sites >= size > 0 else None,
            "heuristic_evidence": r.get("probe"), "metrics": metrics,
            "higher_is_better": {m: True for m in metrics}, "n_null": n,
            "primary_method": r.get("edit_method", "optimal"), "tests": tests,
            "metric_summaries": summaries, "edits": edits, "executor": "serial"}
