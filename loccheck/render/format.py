"""Formatting shared by every section of the report: numbers, tables, code fences, names, and
the result dict's edits."""
from __future__ import annotations

import json
import math
import re

from tabulate import tabulate

ROLE_NAMES = {"claim": "claimed location", "ceiling": "whole model", "whole_model": "whole model (every head)"}
P_CONVENTION = ("p = (1 + #{null gains >= claim gain}) / (N + 1), one-sided, "
                "ties count against the claim")


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


def spread(d: dict | None) -> str:
    """A `stats.pvalues.describe` record as "mean ± std [min, max]"."""
    if not d or not d.get("n"):
        return "n/a"
    return f"{fmt(d['mean'])} ± {fmt(d['std'])} [{fmt(d['min'])}, {fmt(d['max'])}]"


def table(rows, headers) -> str:
    # Numbers are pre-formatted strings; disable_numparse keeps tabulate from re-parsing them.
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def fence(text: str, lang: str = "") -> str:
    """A code block whose fence is longer than any backtick run inside `text`."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip(chr(10))}\n{ticks}"


def ordered(d: dict, first=()) -> list:
    """Keys of `d`: those in `first` (in that order), then the rest sorted."""
    return [k for k in first if k in d] + sorted(k for k in d if k not in first)


def canonical(obj, first=()):
    if isinstance(obj, dict):
        return {k: canonical(obj[k]) for k in ordered(obj, first)}
    if isinstance(obj, list):
        return [canonical(v) for v in obj]
    return obj


def value(v) -> str:
    if isinstance(v, str):
        return v
    if v is None or isinstance(v, (int, float)):
        return fmt(v)
    return json.dumps(v, sort_keys=True)


def site_noun(r: dict) -> str:
    """What a result's sites are called in prose: "head", "MLP layer"."""
    from loccheck.locations import site_noun as noun

    return noun(r.get("site_kind", "head"))


def location_words(r: dict) -> dict[str, str]:
    """How prose names a result's location, its random ones and its ceiling: "the claimed
    heads", "random 16-head locations", "random head sets of the same size", "the whole-model
    edit"; a subspace or SAE latents are directions of one layer's residual stream, so their
    random locations are subspaces or other latents there, and their ceiling the whole stream."""
    kind, loc = r.get("site_kind", "head"), r.get("location") or []
    size, noun = len(loc), site_noun(r)
    words = {"claimed": f"the claimed {noun}s", "random": f"random {size}-{noun} locations",
             "random_sets": f"Random {noun} sets of the same size", "others": f"other sets of {noun}s",
             "location": f"{size} {noun}s", "ceiling": "the whole-model edit",
             "their": f"the claimed {noun}s'", "reach": "reach", "beat": "beat"}
    if r.get("null_draw") == "every":     # no draw: every other location of the claim's shape, once
        words.update(random=f"other {size}-{noun} locations", random_sets=f"Other {noun} sets of the same size")
    if kind not in ("subspace", "latent") or not loc:
        return words
    layer = int(str(loc[0])[1:].split("S")[0].split("F")[0])
    dim = int(str(loc[0]).split("S")[1].split("@")[0]) if kind == "subspace" else size
    haar = (f"random {dim}-dimensional subspaces of the residual stream after layer {layer} "
            "(uniform, Haar)")
    if kind == "subspace":
        words.update(claimed="the claimed subspace", their="the claimed subspace's", reach="reaches",
                     beat="beats", random=haar, others="other subspaces",
                     random_sets="Random subspaces of the same dimension",
                     location=f"a {dim}-dimensional subspace of the residual stream after layer {layer}")
    else:
        words.update(claimed="the claimed latents", their="the claimed latents'", others="other sets of latents",
                     location=f"{size} SAE latents, the span of their decoder rows in the residual "
                              f"stream after layer {layer}")
        if r.get("null_draw") == "haar":
            words.update(random=haar, random_sets="Random subspaces of the same dimension")
        elif r.get("null_draw") == "every":
            words.update(random=f"other sets of {size} latents of the same dictionary",
                         random_sets="Other sets of as many latents of the same dictionary")
        else:
            words.update(random=f"random sets of {size} other latents of the same dictionary",
                         random_sets="Random sets of as many latents of the same dictionary")
    words["ceiling"] = f"the edit of the whole residual stream after layer {layer}"
    return words


def sites(location, limit: int = 4, kind: str = "head") -> str:
    """First `limit` sites, then "… (16 heads)"; the whole-model edit's "all" as "all heads"."""
    if isinstance(location, str):
        return f"all {kind}s" if location == "all" else location
    if len(location) <= limit:
        return ", ".join(location)
    return ", ".join(location[:limit]) + f", … ({len(location)} {kind}s)"


def edits_of(r: dict, method: str | None = None) -> list[dict]:
    """The edits of one method (default: the primary one, whose test gives the verdict)."""
    method = method or r["primary_method"]
    return [e for e in r.get("edits") or [] if e.get("method") == method]


def edit_name(e: dict) -> str:
    return f"random {e.get('index')}" if e.get("role") == "random" else \
        ROLE_NAMES.get(e.get("role"), str(e.get("role")))


def reselected_lines(again: bool | None, selected, who: str, what: str) -> list[str]:
    """Whether the heuristic, re-run, selects the sites the claim pins."""
    if again is False:
        return ["", f"**Note:** the claim pins its {what}, and {who.lower()} on this data now selects "
                    f"others: {', '.join(selected or [])}."]
    return ["", f"{who} on this data selects exactly the pinned {what}."] if again else []


def primary(r: dict) -> dict:
    return r["tests"][r["primary_method"]]


def method_order(r: dict) -> list[str]:
    """The edit methods: the one that gives the verdict first, then the others by name."""
    return [r["primary_method"]] + sorted(m for m in r["tests"] if m != r["primary_method"])


def needed(test: dict, key: str, actual: str) -> str:
    """What a test's statistic had to exceed to be significant at alpha (`test[key]`, exact or a
    lower bound: `test[key + "_exact"]`), beside what `actual` (the claim's) was."""
    if test[key] is None:
        return "nothing would do: this null cannot reject at alpha"
    value = (fmt(test[key]) if test.get(key + "_exact", True) else
             f"at least {fmt(test[key])}, a lower bound (the sequential null stopped)")
    return f"{value} (the claim's: {fmt(test.get(actual))})"
