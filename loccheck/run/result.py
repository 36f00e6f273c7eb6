"""The outcome of verifying one claim: `VerifyResult`, whose payload is result.json.

Every number the report prints is computed here or in `verdict`/`stats`, once; the report only
formats. `schema_version` 2 keeps each edit method's test under `tests[method]` (the first
method's gives the verdict); `loccheck.report.upgrade` reads version 1 results too.
"""
from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field
from typing import Any

from loccheck import __version__
from loccheck.files import strict_json

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class VerifyResult:
    """result.json as `payload`, with the verdict's numbers as attributes."""
    payload: dict[str, Any]
    report_dir: str | None = None          # where report.md and result.json were written
    n_fitted: int = 0                      # edits fitted by this run (not read from the cache)
    n_scored: int = 0                      # (edit, metric) scores computed by this run
    outcomes: list = field(default_factory=list, repr=False)
    facts: dict | None = field(default=None, repr=False)   # what the run measured (`measured_facts`)

    def to_json(self) -> dict[str, Any]:
        return self.payload

    @property
    def test(self) -> dict:
        """The test that gives the verdict (the first edit method's)."""
        return self.payload["tests"][self.payload["primary_method"]]

    # the overall verdict, over every listed test (an earlier result.json has only the editing test's)
    verdict = property(lambda self: self.payload.get("verdict") or self.test["verdict"])
    verdict_reason = property(lambda self: self.payload.get("verdict_reason") or self.test["verdict_reason"])
    evidence = property(lambda self: self.payload.get("evidence") or {})

    # Numbers as floats: result.json's null (not finite, or not defined) reads back as nan.
    p_value = property(lambda self: _nan_for_none(self.test["p_value"]))
    claim_gain = property(lambda self: _nan_for_none(self.test["claim_gain"]))
    ceiling_gain = property(lambda self: _nan_for_none(self.test["ceiling_gain"]))
    null_gains = property(lambda self: [_nan_for_none(g) for g in self.test["null_gains"]])
    null_mean = property(lambda self: _nan_for_none(self.test["null_mean"]))
    optimality_ratio = property(lambda self: _nan_for_none(self.test["optimality_ratio"]))
    n_null = property(lambda self: self.payload["n_null"])
    n_null_fitted = property(lambda self: self.test["n_null_fitted"])
    metric = property(lambda self: self.payload["metric"])
    alpha = property(lambda self: self.payload["alpha"])
    rho = property(lambda self: self.payload["rho"])
    expect = property(lambda self: self.payload["expect"])
    matches_expectation = property(lambda self: self.payload["matches_expectation"])
    tests = property(lambda self: self.payload["tests"])
    edits = property(lambda self: self.payload["edits"])
    location = property(lambda self: self.payload["location"])

    @property
    def expected(self) -> str:
        """The expectation in words: a verdict, or "editing FALSIFIED, necessity SUPPORTED"."""
        return expected_words(self.expect)

    @property
    def per_test(self) -> str:
        """"editing FALSIFIED (p = 0.5, Holm 1); necessity SUPPORTED (p = 0.01, Holm 0.02)" when the
        claim lists more than one test with a verdict, else ""."""
        listed = [t for t in self.payload.get("tests_listed") or () if t in self.evidence and "verdict" in self.evidence[t]]
        if len(listed) < 2:
            return ""
        return "; ".join(f"{t} {self.evidence[t]['verdict']} (p = {_nan_for_none(self.evidence[t]['p_value']):.4g}, "
                         f"Holm {_nan_for_none(self.evidence[t].get('p_holm')):.4g})" for t in listed)


def expected_words(expect) -> str:
    """A claim's `expect:` in words (SUPPORTED when it states none)."""
    if isinstance(expect, dict):
        return ", ".join(f"{test} {verdict}" for test, verdict in expect.items())
    return expect or "SUPPORTED"


def _nan_for_none(value) -> float:
    return float("nan") if value is None else float(value)


def build_result(claim, testbed, location, proposal, nulls, base, outcomes, executor: str,
                 ablations: dict | None = None, width: int = 1, stability: dict | None = None) -> VerifyResult:
    """The result of a run: what it measured (`measured_facts`) and what follows from that and
    the claim (`derive_payload`). `width`: the executor's, the waves the sequential null stopped in;
    `stability`: the heuristic's bootstrap selections (`run.stability.heuristic_stability`)."""
    from loccheck.run.jobs import every_run

    facts = measured_facts(claim, testbed, location, proposal, nulls, base, outcomes, executor, ablations, width,
                           stability)
    runs = every_run(outcomes)
    return VerifyResult(derive_payload(claim, facts), n_fitted=sum(o.fitted for o in runs),
                        n_scored=sum(o.n_scored for o in runs), outcomes=list(outcomes), facts=facts)


def measured_facts(claim, testbed, location, proposal, nulls, base, outcomes, executor: str,
                   ablations: dict | None, width: int, stability: dict | None = None) -> dict:
    """Everything a run measured that its result rests on, as strict JSON: the edits' records
    (scores, gains, convergence) in job order, the unedited scores, the ablations' drops, the
    heuristic's evidence, what the data and the model were. Only this needs the model:
    `derive_payload` computes every statistic and the verdict from it and the claim, and so can
    a replay of an evidence bundle, without torch."""
    from loccheck.heuristics import HEURISTICS
    from loccheck.locations import format_location
    from loccheck.stats.null import count_locations
    from loccheck.data.prompts import format_prompt

    found = None if proposal is None else HEURISTICS[claim.heuristic.method].evidence(
        claim.heuristic, proposal, location, not claim.location.from_heuristic)
    rs, bs, data = claim.random_locations, claim.behavior, testbed.data
    # a Haar null draws from a continuum of subspaces
    n_locations = None if claim.null_draw == "haar" else count_locations(
        testbed.sites(location[0].kind), len(location), location if rs.match_layers else None)
    return strict_json({
        "location": format_location(location), "n_locations": n_locations, "n_null": len(nulls),
        "executor": executor, "executor_width": width, "heuristic_evidence": found,
        **({"heuristic_stability": stability} if stability is not None else {}),
        "base_metrics": base, "edits": [o.record(base) for o in outcomes],
        "ablations": None if ablations is None else {part: [o.record() for o in done]
                                                     for part, done in ablations.items()},
        **({"base_generations": g} if (g := testbed.memo.get("unedited generations")) else {}),
        "data": _data_record(bs.dataset, data.summary(), testbed.prompt_format,
                             format_prompt(testbed.tokenizer, data.test[0].prompt, testbed.prompt_format,
                                           bs.system_prompt),
                             {k: len(getattr(testbed, k)) for k in ("train", "validation", "test")}),
        "model": {**testbed.loaded.info, **testbed.adapter.describe(), "sites": testbed.adapter.where(),
                  **({"checks": testbed.adapter.checks} if testbed.adapter.checks else {})},
        "versions": _versions(), "testbed": {"key": testbed.key, "identity": testbed.identity},
    })


def derive_payload(claim, facts: dict) -> dict:
    """result.json: every statistic, the tests' verdicts and the overall verdict, computed from a
    run's `measured_facts` and the claim. Imports no torch."""
    from loccheck.locations import parse_location
    from loccheck.metrics import METRICS
    from loccheck.run.stability import stability_summary

    vs, metric = claim.verdict, claim.verdict.metric
    methods = [e.method for e in claim.edits]
    location = parse_location(facts["location"])
    base = _floats(facts["base_metrics"])
    records = [_rescored(r, base) for r in facts["edits"]]
    n_locations = facts["n_locations"]
    tests, summaries = _tests(claim, methods, records, location, claim.null_size("editing", n_locations))
    evidence = _evidence(claim, tests, records, location, dropped(claim, facts["ablations"], base),
                         claim.null_size("necessity", n_locations) if claim.necessity else None)
    if evidence["editing"].get("holm") is not None:     # decided on its Holm-adjusted p-value
        tests, summaries = _tests(claim, methods, records, location, claim.null_size("editing", n_locations),
                                  holm_p=evidence["editing"]["holm"])
        evidence["editing"].update(verdict=tests[methods[0]]["verdict"],
                                   verdict_reason=tests[methods[0]]["verdict_reason"])
    verdict, reason = _overall(claim, evidence)
    primary = tests[methods[0]]
    rs, bs = claim.random_locations, claim.behavior
    payload = {
        "schema_version": SCHEMA_VERSION, "loccheck_version": __version__,
        "claim_name": claim.name, "claim_file": str(claim.path) if claim.path is not None else None,
        "claim_text": claim.claim, "expect": claim.expect,
        "verdict": verdict, "verdict_reason": reason, "tests_listed": list(claim.tests),
        "evidence": evidence,
        "matches_expectation": _matches(claim.expect, verdict, evidence),
        "location": facts["location"], "site_kind": location[0].kind,
        "n_locations": facts["n_locations"], "null_draw": claim.null_draw,
        "heuristic": claim.effective_config()["heuristic"], "heuristic_evidence": facts["heuristic_evidence"],
        **({"claim_stability": {**facts["heuristic_stability"], **stability_summary(facts["heuristic_stability"])}}
           if facts.get("heuristic_stability") else {}),
        "metric": metric, "metrics": list(claim.all_metrics),
        "higher_is_better": {m: METRICS[m].higher_is_better for m in claim.all_metrics},
        "alpha": vs.alpha, "rho": vs.rho, "n_null": facts["n_null"],
        "n_null_fitted": primary["n_null_fitted"],
        "primary_method": methods[0], "tests": tests, "metric_summaries": summaries,
        "base_metrics": base, "edits": records,
        **({"base_generations": facts["base_generations"]} if facts.get("base_generations") else {}),
        "data": facts["data"], "model": facts["model"],
        "config": claim.effective_config(), "versions": facts["versions"],
        "seeds": {**{f"edit[{i}]": e.seed for i, e in enumerate(claim.edits) if hasattr(e, "seed")},
                  "random_locations": rs.seed, "split": bs.split.seed},
        "executor": facts["executor"],
    }
    # Strict JSON in memory too: the report rendered now and one re-rendered from result.json
    # read the same values (null where a number is not finite).
    return strict_json(payload)


def _rescored(record: dict, base: dict) -> dict:
    """An edit's record with its gains taken from its scores and the unedited ones, as
    `EditOutcome.record` takes them: a recorded gain is never trusted on its own."""
    metrics = _floats(record["metrics"])
    return {**record, "metrics": metrics, "gains": {m: v - base[m] for m, v in metrics.items()}}


def dropped(claim, ablations: dict | None, base: dict) -> dict | None:
    """The ablations' records with each drop taken from its score (`run.ablations.ablation_drop`)."""
    if ablations is None:
        return None
    from loccheck.run.ablations import ablation_drop, behavior_sign

    metric, sign = claim.verdict.metric, behavior_sign(claim)

    def drop(value) -> float | None:
        d = math.nan if value is None else ablation_drop(value, base[metric], metric, sign)
        return d if math.isfinite(d) else None
    return {part: [{**r, "drop": drop(r["value"])} for r in done] for part, done in ablations.items()}


def _floats(numbers: dict) -> dict:
    """Scores as floats: strict JSON's null (a score that was not finite) reads back as nan."""
    return {k: _nan_for_none(v) for k, v in numbers.items()}


def _evidence(claim, tests, records, location, ablations, n_necessity: int | None) -> dict:
    """The claim's tests beyond editing (`run.evidence`), and the listed tests' verdicts with
    their Holm-adjusted p-values."""
    from loccheck.metrics import METRICS
    from loccheck.run import evidence as ev

    metric, method = claim.verdict.metric, claim.edits[0].method
    better = METRICS[metric].improvement
    editing = tests[method]
    out: dict = {"editing": {"verdict": editing["verdict"], "verdict_reason": editing["verdict_reason"],
                             "p_value": editing["p_value"]}}
    if ablations is not None:
        out["necessity"] = ev.necessity_test(claim, ablations, location, n_necessity)
    adjusted = ev.holm_adjusted(claim, {n: out[n]["p_value"] for n in claim.verdict_tests})
    for name, holm_p in adjusted.items():
        out[name].update(p_holm=holm_p[0] if holm_p else None, holm=holm_p)
    if ablations is not None and adjusted["necessity"] is not None:
        out["necessity"] = {**ev.necessity_test(claim, ablations, location, n_necessity,
                                                    holm_p=adjusted["necessity"]),
                            "p_holm": adjusted["necessity"][0], "holm": adjusted["necessity"]}
    mine = [r for r in records if r["method"] == method]
    if "without" in claim.tests:
        out["without"] = ev.without_record(mine, {**editing}, metric, better)
    claim_drop = out["necessity"]["claim_drop"] if "necessity" in out else None
    if "minimality" in claim.tests:
        stats = {r["index"]: _gain(r, metric, better) for r in mine if r["role"] == "minus"}
        out["minimality"] = {"editing": ev.minimality(location, editing["claim_gain"],
                                                      [stats.get(i) for i in range(len(location))])}
        if ablations is not None:
            drops = {r["index"]: _finite_or_none(r["drop"]) for r in ablations["minus"]}
            out["minimality"]["necessity"] = ev.minimality(location, claim_drop,
                                                           [drops.get(i) for i in range(len(location))])
        out["minimality"]["free_share"] = ev.FREE_SHARE
    if claim.size_curve is not None:
        from loccheck.locations import location_size, parse_location

        sizes, size = list(claim.size_curve.sizes), location_size(location)
        out["size_curve"] = {"editing": ev.size_curve(sizes, [(r["size"], _gain(r, metric, better)) for r in mine
                                                              if r["role"] == "size"], editing["claim_gain"], size),
                             "n": claim.size_curve.n, "matched_layers": False}
        if ablations is not None:
            out["size_curve"]["necessity"] = ev.size_curve(
                sizes, [(location_size(parse_location(r["location"])), _finite_or_none(r["drop"]))
                        for r in ablations["sizes"]],
                claim_drop, size)
    return out


def _gain(record: dict, metric: str, better) -> float | None:
    gain = record["gains"][metric]
    return None if record["diverged"] or gain is None or not _finite(gain) else better(gain)


def _finite_or_none(value) -> float | None:
    return float(value) if _finite(value) else None


def _overall(claim, evidence: dict) -> tuple[str, str]:
    from loccheck.run.evidence import overall

    return overall(claim, evidence)


def _matches(expect, verdict: str, evidence: dict) -> bool:
    from loccheck.run.evidence import matches

    return matches(expect, verdict, evidence)


def _tests(claim, methods, records, location, n_null: int, holm_p=None) -> tuple[dict, dict]:
    """Per edit method: the test of the verdict's metric, and every listed metric's values and
    gains for the claim, the ceiling and the null (records are in job order: claim, ceiling,
    then the null's draws)."""
    from loccheck.locations import format_location
    from loccheck.metrics import METRICS
    from loccheck.render.format import location_words
    from loccheck.stats.pvalues import describe
    from loccheck.stats.verdict import examine_location

    vs, metric = claim.verdict, claim.verdict.metric
    better = METRICS[metric].improvement
    tests, summaries = {}, {}
    for m in methods:
        mine = [r for r in records if r["method"] == m]
        claim_r, ceiling_r = mine[0], mine[1]
        randoms = [r for r in mine if r["role"] == "random"]
        whole = next((r for r in mine if r["role"] == "whole_model"), None)
        tests[m] = examine_location(better(claim_r["gains"][metric]), better(ceiling_r["gains"][metric]),
                                    [better(r["gains"][metric]) for r in randoms], alpha=vs.alpha,
                                    rho=vs.rho, location_size=len(location), site=location[0].noun,
                                    random_what=location_words({"site_kind": location[0].kind,
                                                                "location": format_location(location),
                                                                "null_draw": claim.null_draw})["random"],
                                    n_null=n_null,
                                    stop=claim.random_locations.stop,
                                    null_diverged=[r["diverged"] for r in randoms],
                                    claim_diverged=claim_r["diverged"],
                                    ceiling_diverged=ceiling_r["diverged"],
                                    # methods without a training rule (ITI, ROME) have no "converged"
                                    ceiling_converged=ceiling_r.get("converged", True),
                                    ceiling_stopped=ceiling_r.get("stopped"),
                                    holm_p=holm_p if m == methods[0] else None,
                                    exhaustive=claim.null_draw == "every").to_json()
        if whole is not None:      # the whole model's edit beside a layer's ceiling: reported, not tested
            gain = better(whole["gains"][metric])
            tests[m]["whole_model"] = {"gain": gain, "diverged": whole["diverged"],
                                       "converged": whole.get("converged"),
                                       "claim_share": tests[m]["claim_gain"] / gain if gain > 0 else None}
        randoms = randoms[:tests[m]["n_null_fitted"]]   # the null the test used
        summaries[m] = {name: {"claim": {"value": claim_r["metrics"][name], "gain": claim_r["gains"][name]},
                               "ceiling": {"value": ceiling_r["metrics"][name], "gain": ceiling_r["gains"][name]},
                               "null_value": describe([r["metrics"][name] for r in randoms]).to_json(),
                               "null_gain": describe([r["gains"][name] for r in randoms]).to_json(),
                               **_metric_pvalue(name, metric, tests[m], claim_r, randoms)}
                        for name in claim.all_metrics}
    return tests, summaries


def _metric_pvalue(name: str, verdict_metric: str, test: dict, claim_r: dict, randoms: list[dict]) -> dict:
    """The claim's p-value on metric `name`, whether the verdict would depend on the metric. On
    the verdict's metric it is the test's own p-value. On another metric it is computed by the
    same convention (ties and draws without a usable gain count against the claim) on the null's
    draws the test used: when the sequential null stopped early on the verdict's metric, that is
    the first l of N draws, chosen by another metric's outcome, so the p-value is descriptive
    (`p_value_draws` says on how many)."""
    from loccheck.metrics import METRICS
    from loccheck.stats.pvalues import null_test
    from loccheck.stats.verdict import compared_gains

    if name == verdict_metric:
        return {"p_value": test["p_value"], "p_value_draws": test["n_null_fitted"], "p_value_descriptive": False}
    if not randoms:
        return {"p_value": None, "p_value_draws": 0, "p_value_descriptive": True}
    better = METRICS[name].improvement
    claim_gain, null = compared_gains(better(claim_r["gains"][name]), [better(r["gains"][name]) for r in randoms],
                                      claim_diverged=claim_r["diverged"],
                                      null_diverged=[r["diverged"] for r in randoms])
    pvalue = 1.0 if claim_r["diverged"] or not _finite(claim_r["gains"][name]) else null_test(claim_gain, null).pvalue
    return {"p_value": pvalue, "p_value_draws": len(randoms), "p_value_descriptive": bool(test["stopped_early"])}


def _finite(value) -> bool:
    import math

    return value is not None and math.isfinite(value)


def _data_record(dataset: str, summary: dict, fmt: str, example: str, n_tokenized: dict[str, int]) -> dict:
    splits = summary["splits"]
    return {"dataset": dataset, "source": summary["source"], "sha256": summary["sha256"],
            "n_questions_read": summary["n_questions_read"],
            "n_questions_dropped": summary["n_questions_dropped"],
            "n_questions": {k: v["n_questions"] for k, v in splits.items()},
            "n_pairs": {k: v["n_pairs"] for k, v in splits.items()},
            "n_pairs_tokenized": n_tokenized,
            "prompt_format": fmt, "example_prompt": example,
            **({"kept": summary["kept"]["rule"], "n_pairs_checked": summary["kept"]["checked"],
                "n_pairs_kept": summary["kept"]["kept"]} if summary.get("kept") else {})}


def _versions() -> dict[str, str]:
    import numpy
    import peft
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "numpy": numpy.__version__, "loccheck": __version__}
