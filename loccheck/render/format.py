"""Formatting shared by every section of the report: numbers, tables, code fences, names, and
the result dict's edits."""
from __future__ import annotations

import json
import math
import re

from tabulate import tabulate

ROLE_NAMES = {"claim": "claimed location", "ceiling": "whole model"}
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
