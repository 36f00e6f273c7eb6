"""Markdown evidence report, rendered only from the result dict (the content of result.json).

`render_report(result, out_dir)` writes report.md, null_hist.png and loss_curves.png. Output is
deterministic: no timestamps, numbers formatted here (4 significant digits), and every dict
iterated in a fixed order, so rendering the in-memory result and rendering it again from
result.json (whose keys json.dumps sorted) give byte-identical files.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import yaml
from tabulate import tabulate

import numpy as np

from loccheck.files import write_json_atomic, write_text_atomic  # noqa: F401 (re-exported)
from loccheck.plots import (plot_loss_curves, plot_methods, plot_null_histogram,
                            plot_probe_heatmap)

REPORT_NAME, NULL_HIST_NAME, LOSS_CURVES_NAME = "report.md", "null_hist.png", "loss_curves.png"
METHODS_NAME, PROBE_HEATMAP_NAME = "methods.png", "probe_heatmap.png"
P_CONVENTION = ("p = (1 + #{null gains >= claim gain}) / (N + 1), one-sided, "
                "ties count against the claim")
# Claim-file section order; json.dumps(sort_keys=True) loses it, so we restore it here.
_CONFIG_ORDER = ("model", "behavior", "location", "heuristic", "edit", "random_locations",
                 "verdict", "expect")
_SPLITS = ("train", "validation", "test")
_ROLE_NAMES = {"claim": "claimed location", "full": "whole model"}


# --- formatting helpers ------------------------------------------------------------------

def fmt(x) -> str:
    """A number to 4 significant digits; None and NaN become "n/a"."""
    if x is None:
        return "n/a"
    if isinstance(x, (bool, str)):
        return str(x)
    if isinstance(x, int):
        return str(x)
    x = float(x)
    if math.isnan(x):
        return "n/a"
    s = f"{x:.4g}"
    return "0" if s == "-0" else s


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _summary(values) -> str:
    """mean ± sample std [min, max] of the finite values (ddof = 1, as a spread estimate)."""
    v = _finite(values)
    if not v:
        return "n/a"
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else math.nan
    return f"{fmt(mean)} ± {fmt(std)} [{fmt(min(v))}, {fmt(max(v))}]"


def _table(rows, headers) -> str:
    # Numbers are pre-formatted strings; disable_numparse keeps tabulate from re-parsing them.
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _fence(text: str, lang: str = "") -> str:
    """A code block whose fence is longer than any backtick run inside `text`."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip(chr(10))}\n{ticks}"


def _ordered(d: dict, first=()) -> list:
    """Keys of `d`: those in `first` (in that order), then the rest sorted."""
    return [k for k in first if k in d] + sorted(k for k in d if k not in first)


def _canonical(obj, first=()):
    if isinstance(obj, dict):
        return {k: _canonical(obj[k]) for k in _ordered(obj, first)}
    if isinstance(obj, list):
        return [_canonical(v) for v in obj]
    return obj


def _value(v) -> str:
    if isinstance(v, str):
        return v
    if v is None or isinstance(v, (int, float)):
        return fmt(v)
    return json.dumps(v, sort_keys=True)


def _heads(location, limit: int = 4) -> str:
    """First `limit` heads, then "… (16 heads)"; the whole-model edit's "all" as "all heads"."""
    if isinstance(location, str):
        return "all heads" if location == "all" else location
    if len(location) <= limit:
        return ", ".join(location)
    return ", ".join(location[:limit]) + f", … ({len(location)} heads)"


def _edits(r: dict, method: str | None = None) -> list[dict]:
    """The edits of one method (default: the primary one, whose test gives the verdict)."""
    method = method or r.get("edit_method") or "optimal"
    return [e for e in r.get("edits") or [] if e.get("method", "optimal") == method]


def _edit_name(e: dict) -> str:
    return f"random {e.get('index')}" if e.get("role") == "random" else \
        _ROLE_NAMES.get(e.get("role"), str(e.get("role")))


def _n_at_least(r: dict) -> int | None:
    """k = #{null >= claim}, read back from p = (k + 1) / (N + 1) so it matches the verdict."""
    p, n = r.get("p_value"), r.get("n_random")
    if p is None or n is None or not math.isfinite(p):
        return None
    k = p * (n + 1) - 1
    return round(k) if abs(k - round(k)) < 1e-6 else None


# --- sections ----------------------------------------------------------------------------

def _verdict_lines(r: dict) -> list[str]:
    expect = r.get("expect")
    if expect is None:
        note = "no expectation stated"
    else:
        note = f"expected {expect}: " + ("as expected" if r.get("matches_expectation")
                                         else "NOT as expected")
    return [f"**Verdict: {r['verdict']}** ({note})", "", str(r.get("verdict_reason", ""))]


def _claim_lines(r: dict) -> list[str]:
    quote = "\n".join("> " + ln if ln else ">" for ln in str(r.get("claim_text", "")).splitlines())
    loc = r.get("location") or []
    heur = r.get("heuristic") or {}
    found = fmt(heur.get("method"))
    if heur.get("citation"):
        found += f" ({heur['citation']})"
    lines = ["## Claim", "", quote, "", f"- Claim file: `{r.get('claim_file')}`",
             f"- Location ({len(loc)} heads): " + ", ".join(f"`{h}`" for h in loc),
             f"- Found by: {found}"]
    extra = [k for k in _ordered(heur) if k not in ("method", "citation") and heur[k] is not None]
    lines += [f"  - {k}: {_value(heur[k])}" for k in extra]
    return lines


def _interpretation(r: dict) -> str:
    v, metric, n = r["verdict"], r["metric"], r.get("n_random")
    size = len(r.get("location") or [])
    p, alpha, rho, ratio = fmt(r.get("p_value")), fmt(r.get("alpha")), fmt(r.get("rho")), \
        r.get("optimality_ratio")
    pct = "n/a" if ratio is None or not math.isfinite(ratio) else f"{ratio:.0%}"
    k = _n_at_least(r)
    beaten = "None of the" if k == 0 else f"{k} of" if k else "Some of the"
    model = r.get("model") or {}
    space = ""
    if isinstance(model.get("n_layers"), int) and isinstance(model.get("n_heads"), int) and size:
        space = (f" out of about {float(math.comb(model['n_layers'] * model['n_heads'], size)):.2g}"
                 f" possible {size}-head sets")
    scope = (f"The test uses `{metric}` only; other metrics in the tables are descriptive, and "
             "nothing here speaks to other behaviours, datasets or models.")
    if v == "FALSIFIED":
        text = (f"{beaten} {n} random {size}-head locations reached a `{metric}` gain at least as "
                f"large as the claimed heads (p = {p} > alpha = {alpha}); the claimed heads reach "
                f"{pct} of the whole-model effect. Random head sets of the same size edit the "
                "behaviour as well, so success at editing it through these heads is no evidence "
                "that it lives in them. This does not show that the heads are irrelevant to the "
                "behaviour: they may carry it, but so, apparently, do many other sets of heads.")
    elif v == "SUPPORTED":
        text = (f"{beaten} {n} random {size}-head locations matched the claimed heads' "
                f"`{metric}` gain (p = {p} <= alpha = {alpha}), and the claimed heads reach {pct} "
                f"of the whole-model effect (rho = {rho}). Among locations of this size they are "
                "special for this behaviour, and editing them alone gets close to the best any "
                "edit of the whole model achieves. This does not "
                f"show uniqueness beyond the sampled null ({n} random sets{space}), that the "
                "behaviour is absent from other heads, or that an edit of another kind would "
                "agree.")
    elif v == "SPECIFIC_BUT_WEAK":
        text = (f"The claimed heads beat {n} random {size}-head locations (p = {p} <= alpha = "
                f"{alpha}), but reach only {pct} of the whole-model effect, short of rho = {rho}. "
                "They are specific: editing them works better than editing random heads of the "
                "same size. They are not sufficient: the rest of the achievable effect needs parts "
                "of the model outside them, so the behaviour is not localized in these heads alone.")
    elif v == "UNDERPOWERED":
        a = r.get("alpha")
        need = (f"at least {math.ceil(1 / a - 1 - 1e-9)} random locations are needed"
                if a and math.isfinite(a) and a > 0 else "more random locations are needed")
        text = (f"With N = {n} random locations the smallest reachable p-value is 1/(N + 1) = "
                f"{fmt(r.get('min_p_value'))} > alpha = {alpha}, so no outcome could have rejected "
                f"the null; {need} for alpha = {alpha}. The numbers below are descriptive only: "
                "they neither support nor falsify the claim.")
    else:
        text = f"Verdict {v} has no standard interpretation; see the numbers below."
    return " ".join([text, _effective_sentence(r, r.get("edit_method") or "optimal"), scope]).replace("  ", " ")


def _effective_sentence(r: dict, method: str) -> str:
    """How many random locations reach rho of the whole-model gain; for single heads, what that
    says about uniqueness."""
    summary = (r.get("methods") or {}).get(method) or {}
    k, n = summary.get("n_null_effective"), r.get("n_random")
    if k is None:
        return ""
    size = len(r.get("location") or [])
    what = "random single heads" if size == 1 else f"random {size}-head locations"
    text = (f"{k} of {n} {what} reach rho = {fmt(r.get('rho'))} of the whole-model gain "
            f"(`{method}` edit).")
    if size == 1:
        text += (" More than one such head is evidence against uniqueness: no single privileged "
                 "head carries the behaviour." if k > 1 else
                 " At most one such head was found, so this sample does not contradict uniqueness.")
    return text


def _methods_lines(r: dict) -> list[str]:
    """The side-by-side evidence: the same claimed and random heads under each edit method."""
    methods = r.get("methods") or {}
    if len(methods) < 2:
        return []
    order = [m for m in ("iti", "optimal") if m in methods] + sorted(set(methods) - {"iti", "optimal"})
    rows = []
    for m in order:
        s = methods[m]
        rows.append([m, fmt(s.get("claim_gain")), fmt(s.get("full_gain")),
                     f"{fmt(s.get('null_mean'))} ± {fmt(s.get('null_std'))}",
                     fmt(s.get("p_value")), fmt(s.get("n_null_effective")), s.get("verdict")])
    lines = ["## The same heads under each edit", "",
             "Each row tests the same claimed heads against the same random locations; only the "
             "edit differs. `iti` adds alpha * sigma * u (ITI's mass-mean-shift direction, sigma "
             "the spread of the activations along it) to each head, at the last prompt token and "
             "every answer token when scoring an answer, with alpha picked on the validation "
             "questions for each location alike. `optimal` fits the best rank-1 edit at those "
             "heads. A location that looks special under a heuristic edit but not under the "
             "optimal one is special to the heuristic, not to the behaviour.", "",
             _table(rows, ["edit", "claim gain", "whole-model gain", "null mean ± std",
                           "p-value", "null >= rho x whole", "verdict"]), "",
             f"![{r['metric']} gain of the claimed heads against the random locations under each "
             f"edit method]({METHODS_NAME})"]
    iti = _edits(r, "iti")
    if iti:
        alphas = [e.get("alpha") for e in iti if e.get("role") == "random"]
        by_role = {e.get("role"): e for e in iti}
        lines += ["", f"ITI's alpha chosen on validation: claim {fmt(by_role.get('claim', {}).get('alpha'))}, "
                  f"whole model {fmt(by_role.get('full', {}).get('alpha'))}, random locations "
                  + ", ".join(fmt(a) for a in alphas) + "."]
    return lines


def _probe_lines(r: dict) -> list[str]:
    probe = r.get("probe")
    if not probe:
        return []
    acc = probe.get("claimed_accuracy") or {}
    rows = [[h, fmt(acc.get(h))] for h in r.get("location") or []]
    lines = ["## The heuristic: probing", "",
             f"One logistic-regression probe per head, trained on the activations of "
             f"{probe.get('n_train')} answers of the train questions and scored on "
             f"{probe.get('n_val')} answers of the validation questions (never the test "
             "questions), at the last token of \"Q: {question} A: {answer}\".", "",
             f"![Validation accuracy of the probe of every head (layers by heads), claimed heads "
             f"outlined]({PROBE_HEATMAP_NAME})", "",
             _table(rows, ["claimed head", "probe validation accuracy"])]
    if probe.get("pinned_heads_reselected") is False:
        lines += ["", f"**Note:** the claim pins its heads, and probing on this data now selects "
                  f"others: {', '.join(probe.get('selected') or [])}."]
    elif probe.get("pinned_heads_reselected"):
        lines += ["", "Probing on this data selects exactly the pinned heads."]
    return lines


def _stats_lines(r: dict) -> list[str]:
    metric = r["metric"]
    metrics = _ordered(r.get("base_metrics") or {metric: None}, first=(metric,))
    by_role = {e.get("role"): e for e in _edits(r) if e.get("role") != "random"}
    randoms = [e for e in _edits(r) if e.get("role") == "random"]
    headers = ["", *[h for m in metrics for h in (m, f"{m} gain")]]
    base = r.get("base_metrics") or {}
    rows = [["unedited model", *[c for m in metrics for c in (fmt(base.get(m)), "—")]]]
    for role, label in (("full", "whole-model edit (ceiling)"), ("claim", "claimed location")):
        e = by_role.get(role, {})
        rows.append([label, *[c for m in metrics for c in (
            fmt((e.get("metrics") or {}).get(m)), fmt((e.get("gains") or {}).get(m)))]])
    null_cells = []
    for m in metrics:
        null_cells.append(_summary((e.get("metrics") or {}).get(m) for e in randoms))
        if m == metric:  # the primary gain comes from the statistics the verdict used
            g = _finite(r.get("null_gains") or [])
            null_cells.append(f"{fmt(r.get('null_mean'))} ± {fmt(r.get('null_std'))} "
                              f"[{fmt(min(g) if g else None)}, {fmt(max(g) if g else None)}]")
        else:
            null_cells.append(_summary((e.get("gains") or {}).get(m) for e in randoms))
    rows.append(["random locations (null): mean ± std [min, max]", *null_cells])

    n, k, p = r.get("n_random"), _n_at_least(r), r.get("p_value")
    p_cell = fmt(p) + (f" (= {k + 1}/{n + 1})" if k is not None else "")
    test = [["p-value (one-sided)", p_cell],
            ["null gains >= claim gain", f"{k} of {n}" if k is not None else "n/a"],
            ["N (random locations)", fmt(n)],
            ["min reachable p, 1/(N + 1)", fmt(r.get("min_p_value"))],
            ["alpha", fmt(r.get("alpha"))],
            ["rho (required share of the ceiling)", fmt(r.get("rho"))],
            ["optimality ratio, claim gain / whole-model gain", fmt(r.get("optimality_ratio"))],
            ["claim percentile in null (%)", fmt(r.get("claim_percentile"))]]
    return ["## Statistics", "",
            f"Edit: `{r.get('edit_method', 'optimal')}`. Primary metric: `{metric}` (the p-value "
            "and the verdict use its gain over the unedited model; other metrics are "
            "descriptive). Gains are measured on held-out test questions.", "",
            _table(rows, headers), "",
            _table(test, ["test statistic", "value"]), "",
            f"{P_CONVENTION}. ± is the sample standard deviation (ddof = 1)."]


def _figure_lines(r: dict) -> list[str]:
    n, size = r.get("n_random"), len(r.get("location") or [])
    lines = ["## Figures", "",
             f"![Null distribution of {r['metric']} gain at {n} random {size}-head locations, "
             f"with the claimed heads and the whole-model edit marked]({NULL_HIST_NAME})"]
    if _edits(r, "optimal"):
        lines += ["", f"![Training loss per step of the claimed-location edit, the whole-model edit "
                  f"and the {n} random-location edits]({LOSS_CURVES_NAME})"]
    return lines


def _convergence_lines(r: dict) -> list[str]:
    edits = _edits(r, "optimal")
    if not edits:
        return []
    rows = [[_edit_name(e), _heads(e.get("location") or []), fmt(e.get("n_params")),
             fmt(e.get("learning_rate")), fmt(e.get("steps")), fmt(e.get("final_loss")),
             "yes" if e.get("still_falling") else "no"] for e in edits]
    flagged = [_edit_name(e) for e in edits if e.get("still_falling")]
    if flagged:
        note = (f"**Warning:** {len(flagged)} of {len(edits)} edits may not be optimal: their "
                "loss was still falling when the budget ran out: " + ", ".join(flagged) + ".")
    else:
        note = (f"All {len(edits)} edits converged by the trainer's criterion: for none of them "
                "was the mean loss of the last quarter of the steps lower than that of the "
                "quarter before by more than `edit.convergence_tol`.")
    headers = ["edit", "location", "params", "learning rate", "steps", "final loss",
               "still falling?"]
    return ["## Convergence", "", _table(rows, headers), "", note]


def _repro_lines(r: dict) -> list[str]:
    model, data = r.get("model") or {}, r.get("data") or {}
    versions, seeds = r.get("versions") or {}, r.get("seeds") or {}
    model_keys = _ordered(model, ("name", "resolved", "sha256", "architecture", "n_layers",
                                  "n_heads", "head_dim", "device", "dtype"))
    data_keys = [k for k in _ordered(data, ("dataset", "source", "sha256", "prompt_format"))
                 if k not in ("example_prompt", "n_questions", "n_pairs")]
    nq, npairs = data.get("n_questions") or {}, data.get("n_pairs") or {}
    splits = _ordered({**nq, **npairs}, _SPLITS)
    config = _canonical(r.get("config") or {}, _CONFIG_ORDER)
    lines = ["## Reproducibility", "", "Re-run this check with:", "",
             _fence(f"loccheck verify {r.get('claim_file')}", "sh"), "",
             "### Versions", "", _table([[k, _value(versions[k])] for k in _ordered(versions)],
                                        ["package", "version"]), "",
             "### Model", "", _table([[k, _value(model[k])] for k in model_keys],
                                     ["field", "value"]), "",
             "### Data", "", _table([[k, _value(data[k])] for k in data_keys],
                                    ["field", "value"]), "",
             _table([[s, fmt(nq.get(s)), fmt(npairs.get(s))] for s in splits],
                    ["split", "questions", "pairs"]), ""]
    if data.get("example_prompt") is not None:
        lines += ["Example prompt:", "", _fence(str(data["example_prompt"]), "text"), ""]
    lines += ["### Seeds", "", _table([[k, _value(seeds[k])] for k in _ordered(seeds)],
                                      ["seed", "value"]), "",
              "### Effective configuration", "",
              _fence(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), "yaml")]
    return lines


def render_markdown(result: dict) -> str:
    """The report's Markdown text (no files written)."""
    sections = [[f"# loccheck: {result['claim_name']}", "", *_verdict_lines(result)],
                _claim_lines(result),
                ["## What this does and does not show", "", _interpretation(result)],
                _stats_lines(result), _figure_lines(result), _methods_lines(result),
                _probe_lines(result), _convergence_lines(result), _repro_lines(result)]
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n"


def render_report(result: dict, out_dir: str | os.PathLike) -> Path:
    """Write report.md, null_hist.png and loss_curves.png into `out_dir`; return report.md's path.

    `result` is the JSON-serialisable result dict (the content of result.json); nothing else
    is read, so a saved result can be re-rendered without a model.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_null_histogram(result.get("null_gains") or [], result.get("claim_gain"),
                        result.get("full_gain"), result["metric"], out_dir / NULL_HIST_NAME,
                        location_size=len(result.get("location") or []))
    if _edits(result, "optimal"):
        plot_loss_curves(_edits(result, "optimal"), out_dir / LOSS_CURVES_NAME)
    if len(result.get("methods") or {}) > 1:
        plot_methods(result["methods"], result["metric"], out_dir / METHODS_NAME)
    if result.get("probe"):
        from loccheck.locations import HeadLoc
        plot_probe_heatmap(np.asarray(result["probe"]["val_accuracy"]),
                           [HeadLoc.parse(h) for h in result.get("location") or []],
                           out_dir / PROBE_HEATMAP_NAME)
    return write_text_atomic(render_markdown(result), out_dir / REPORT_NAME)


# --- index of a session's claims ---------------------------------------------------------

INDEX_HEADERS = ["claim", "verdict", "expected", "p-value", "N", "claim gain",
                 "whole-model gain", "report"]


def render_index(rows: list[dict]) -> str:
    """`index.md`: one table row per claim, sorted by claim id, no timestamps.

    Each row has `claim`, `verdict`, `expected` and, unless the verdict is "ERROR",
    `p_value`, `n_random`, `claim_gain`, `full_gain` and `report_link` (the report's path
    relative to index.md); an "ERROR" row has `error`, the one-line message.
    """
    table, n_as_expected = [], 0
    for row in sorted(rows, key=lambda r: str(r["claim"])):
        as_expected = row["verdict"] == row["expected"]
        n_as_expected += as_expected
        if row["verdict"] == "ERROR":
            cells = ["—"] * 4 + [str(row.get("error", "")).replace("|", "\\|")]
        else:
            cells = [fmt(row.get("p_value")), fmt(row.get("n_random")), fmt(row.get("claim_gain")),
                     fmt(row.get("full_gain")), f"[report.md]({row['report_link']})"]
        verdict = row["verdict"] if as_expected else f"**{row['verdict']}**"
        table.append([f"`{row['claim']}`", verdict, row["expected"], *cells])
    n = len(table)
    return "\n".join([
        "# loccheck: claims", "",
        f"{n_as_expected} of {n} claim{'s' if n != 1 else ''} got the verdict they expect. "
        "A verdict in bold differs from the expected one.", "",
        _table(table, INDEX_HEADERS), "",
        f"{P_CONVENTION}. N is the number of random locations; gains are on held-out test "
        "questions, over the unedited model."]) + "\n"
