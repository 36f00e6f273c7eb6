"""The report's sample of judged answers: what the generation metrics (truth, info, ...) were
computed from, for the unedited model, the claimed location and the whole model of each edit
method, as result.json recorded them (`generation.show_answers` per edit)."""
from __future__ import annotations

import re

from loccheck.errors import printable
from loccheck.render.format import edits_of, fmt, method_order, table

_MARK = {True: "yes", False: "no", None: "unread"}


def _cell(text: str) -> str:
    """Model output as a table cell: one line, Markdown's specials escaped, never a column."""
    text = printable(str(text))
    return re.sub(r"([\\`*_\[\]<>|#~])", r"\\\1", text) if text else "*(empty)*"


def _verdict(item: dict) -> str:
    return f"truthful {_MARK.get(item.get('truthful'), '?')}, informative {_MARK.get(item.get('informative'), '?')}"


def answers_lines(r: dict) -> list[str]:
    """A table per shown question: its answer by each of the unedited model, the claim and the
    whole model, with the judge's verdicts; then each one's counts of empty and unread."""
    columns = [("unedited", r.get("base_generations"))]
    for method in method_order(r):
        for e in edits_of(r, method):
            if e.get("role") in ("claim", "ceiling") and e.get("generations"):
                where = "claim" if e["role"] == "claim" else "whole model"
                columns.append((f"{where} [{method}]", e["generations"]))
    columns = [(name, g) for name, g in columns if g]
    if not columns:
        return []
    shown = max(len(g.get("shown") or []) for _, g in columns)
    rows = []
    for i in range(shown):
        items = [(g.get("shown") or [])[i] if i < len(g.get("shown") or []) else None for _, g in columns]
        question, first = next((it["question"] for it in items if it), ""), True
        for (name, _), it in zip(columns, items):
            if it is not None:
                rows.append([str(i + 1) if first else "", _cell(question) if first else "", name,
                             _cell(it.get("answer", "")), _verdict(it)])
                first = False
    counts = [[name, fmt(g.get("n_answers")), fmt(g.get("n_empty")), fmt(g.get("n_asked")),
               fmt((g.get("n_unread") or {}).get("truth")), fmt((g.get("n_unread") or {}).get("info"))]
              for name, g in columns]
    judge = (r.get("config") or {}).get("generation") or {}
    return ["## Generated answers", "",
            f"The generation metrics judge each edit's greedy answers to the {fmt(columns[0][1].get('n_answers'))} "
            f"test questions (judge: {judge.get('judge', 'n/a')}); these are the answers to the first "
            f"{shown}, as generated (an empty answer is judged truthful and not informative without "
            "asking; \"unread\" is a judge reply that read as neither yes nor no, that answer's "
            "missing value).", "",
            table(rows, ["#", "question", "edit", "answer", "judge"]), "",
            table(counts, ["edit", "answers", "empty", "verdicts asked", "truth unread", "info unread"])]
