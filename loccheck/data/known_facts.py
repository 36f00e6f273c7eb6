"""Known facts (ROME's `known_1000.json`) as a behaviour: error injection.

Each fact is a prompt ("Vinson Massif is located in the continent of"), its subject, its true
attribute ("Antarctica") and its relation ("P30"). The behaviour is one preference pair per
fact: a counterfactual target, another fact's attribute of the same relation drawn with a
seed, over the true attribute (Hase et al.'s main editing problem, error injection). Pairs
are grouped by subject, so the split is by subject. Only facts the model itself completes
correctly are used: the testbed keeps a fact when the model's greedy continuation of its
prompt is the true attribute, token for token (KNOWN_RULE; it needs the weights). `fact_tokens`
is the one place a fact becomes token ids and a subject span, for causal tracing and ROME alike.
numpy and the standard library only (a tokenizer is passed in).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from loccheck.data.pairs import PreferencePair
from loccheck.data.prompts import answer_ids, prompt_ids
from loccheck.data.sources import find_data_file, json_document, read_data_text
from loccheck.errors import DataError

KNOWN_FACTS_FILE = "known_1000.json"

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
    records = json_document(file, text, key)
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


def read_known_facts_file(path: str | None, base_dir: Path | None, *, seed: int):
    """ROME's known facts as questions (one per subject): `path`, else $LOCCHECK_DATA_DIR."""
    file, tried = find_data_file(KNOWN_FACTS_FILE, path, base_dir)
    if file is None:
        raise DataError(f"known facts ({KNOWN_FACTS_FILE}) not found: " + "; ".join(tried))
    text, sha = read_data_text(file)
    facts = read_known_facts(file, text, seed=seed)
    return fact_questions(facts), str(file), sha, {f.prompt: f for f in facts}


def fact_questions(facts: list[Fact]):
    """The facts as load_behavior's questions: (subject, its pairs, its answers), in file order
    of each subject's first fact; a prompt seen twice keeps its first fact."""
    groups: dict[str, list] = {}
    seen = set()
    for f in facts:
        if f.prompt in seen:
            continue
        seen.add(f.prompt)
        groups.setdefault(f.subject, []).append(PreferencePair(f.prompt, f.counterfactual, f.attribute, f.subject))
    return [(subject, pairs, (pairs[0].prompt, tuple(p.chosen for p in pairs), tuple(p.rejected for p in pairs)))
            for subject, pairs in groups.items()]


@dataclass(frozen=True)
class FactTokens:
    """A fact tokenized in one prompt format: what causal tracing and ROME both read."""
    ids: tuple[int, ...]            # the prompt's token ids
    span: tuple[int, int]           # the subject's tokens [start, end)
    attribute: tuple[int, ...]      # the true attribute's ids (may be empty)
    counterfactual: tuple[int, ...]  # the counterfactual target's ids (may be empty)


def fact_tokens(tokenizer, fact: Fact, prompt_format: str, system_prompt: str | None) -> FactTokens | None:
    """`fact` tokenized, or None when its subject cannot be found among the prompt's tokens."""
    ids = prompt_ids(tokenizer, fact.prompt, prompt_format, system_prompt)
    span = subject_span(tokenizer, fact.prompt, fact.subject, ids)
    if span is None:
        return None
    return FactTokens(ids, span, answer_ids(tokenizer, fact.attribute, prompt_format),
                      answer_ids(tokenizer, fact.counterfactual, prompt_format))


def subject_span(tokenizer, prompt: str, subject: str, ids: Sequence[int]) -> tuple[int, int] | None:
    """The tokens of `ids` (the prompt tokenized with special tokens) that spell the first
    occurrence of `subject`; None if the tokenizer cannot say (no character offsets)."""
    start = prompt.find(subject)
    if start < 0:
        return None
    end = start + len(subject)
    enc = tokenizer(prompt, return_offsets_mapping=True)
    if list(enc.input_ids) != list(ids) or "offset_mapping" not in enc:
        return None
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
    return (inside[0], inside[-1] + 1) if inside else None
