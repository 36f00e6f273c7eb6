"""Known facts (ROME's `known_1000.json`) as a behaviour: error injection.

Each fact is a prompt ("Vinson Massif is located in the continent of"), its subject, its true
attribute ("Antarctica") and its relation ("P30"). The behaviour is one preference pair per
fact: a counterfactual target, another fact's attribute of the same relation drawn with a
seed, over the true attribute (Hase et al.'s main editing problem, error injection). Pairs
are grouped by subject, so the split is by subject. Only facts the model itself completes
correctly are used: `known_filter` keeps a fact when the model's greedy continuation of its
prompt is the true attribute, token for token. numpy and the standard library only here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loccheck.errors import DataError

_FIELDS = ("subject", "attribute", "prompt", "relation_id")
KNOWN_RULE = "the model's greedy continuation of the prompt is the true attribute, token for token"


@dataclass(frozen=True)
class Fact:
    known_id: int
    subject: str
    prompt: str           # holds the subject
    attribute: str        # the true completion
    relation: str
    counterfactual: str   # another attribute of the same relation


def read_known_facts(file: Path, text: str, *, seed: int, key: str = "behavior.path") -> list[Fact]:
    """The facts of a known_1000.json text, each with its seeded counterfactual target. A fact
    whose relation has no other attribute cannot get one and is left out."""
    try:
        records = json.loads(text)
    except (ValueError, RecursionError) as err:
        why = err if isinstance(err, ValueError) else "nested too deeply"
        raise DataError(f"{file}: invalid JSON: {why}", key=key) from None
    if not isinstance(records, list) or not records:
        raise DataError(f"{file}: expected a non-empty JSON list of facts (ROME's known_1000.json)", key=key)
    rows = []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise DataError(f"{file}: item {i} is not a fact (an object with {', '.join(_FIELDS)})", key=key)
        for name in _FIELDS:
            if not isinstance(r.get(name), str) or not r[name].strip():
                raise DataError(f"{file}: item {i}: '{name}' must be a non-empty string", key=key)
        if r["subject"] not in r["prompt"]:
            raise DataError(f"{file}: item {i}: its prompt does not contain its subject {r['subject']!r}", key=key)
        kid = r.get("known_id", i)
        if isinstance(kid, bool) or not isinstance(kid, int) or kid < 0:
            raise DataError(f"{file}: item {i}: 'known_id' must be a non-negative integer", key=key)
        rows.append((kid, r))
    by_relation: dict[str, list[str]] = {}
    for _, r in rows:
        by_relation.setdefault(r["relation_id"], []).append(r["attribute"].strip())
    facts = []
    for kid, r in rows:
        attribute = r["attribute"].strip()
        others = sorted(set(by_relation[r["relation_id"]]) - {attribute})
        if not others:
            continue
        # drawn per fact from its own id: a fact's target does not depend on the others kept
        target = others[int(np.random.default_rng([seed, kid]).integers(len(others)))]
        facts.append(Fact(kid, r["subject"].strip(), r["prompt"].strip(), attribute,
                          r["relation_id"], target))
    return facts


def fact_questions(facts: list[Fact]):
    """The facts as load_behavior's questions: (subject, its pairs, its answers), in file order
    of each subject's first fact; a prompt seen twice keeps its first fact."""
    from loccheck.data import PreferencePair

    groups: dict[str, list] = {}
    seen = set()
    for f in facts:
        if f.prompt in seen:
            continue
        seen.add(f.prompt)
        groups.setdefault(f.subject, []).append(PreferencePair(f.prompt, f.counterfactual, f.attribute, f.subject))
    return [(subject, pairs, (pairs[0].prompt, tuple(p.chosen for p in pairs), tuple(p.rejected for p in pairs)))
            for subject, pairs in groups.items()]


def known_filter(loaded, prompt_format: str, cache, identity: dict):
    """`keep(pairs) -> [bool]` for load_behavior: whether the model completes each fact's prompt
    with its true attribute (the pair's rejected answer) greedily. Answers are cached per
    model, data and prompt format (`identity`), so each fact is checked once."""
    from loccheck.cache import content_key
    from loccheck.prompts import answer_ids, prompt_ids
    from loccheck.scoring import greedy_matches

    key = content_key({"what": "known facts", "rule": KNOWN_RULE, **identity})
    known: dict[str, bool] = dict((cache.get(key) or {}).get("known", {}))

    def keep(pairs) -> list[bool]:
        todo = list(dict.fromkeys(p.prompt for p in pairs if p.prompt not in known))
        if todo:
            true = {p.prompt: p.rejected for p in pairs}
            tok = loaded.tokenizer
            flags = greedy_matches(loaded.model, [prompt_ids(tok, q, prompt_format, None) for q in todo],
                                   [answer_ids(tok, true[q], prompt_format) for q in todo], loaded.pad_id)
            known.update(zip(todo, flags))
            cache.put(key, {"known": known})
        return [bool(known[p.prompt]) for p in pairs]
    return keep
