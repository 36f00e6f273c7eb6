"""A claim's behaviour as preference pairs split by question: the source read (TruthfulQA, JSONL,
known facts), questions shuffled with the split seed, optionally filtered (known facts need the
model) and capped, then cut into train, validation and test. numpy and the standard library only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from loccheck.data.jsonl import read_jsonl
from loccheck.data.known_facts import read_known_facts_file
from loccheck.data.pairs import SPLITS, BehaviorData, PreferencePair, pair_answers
from loccheck.data.sources import find_data_file
from loccheck.data.truthfulqa import TRUTHFULQA_FILE, check_unique_questions, read_truthfulqa_csv, read_truthfulqa_hub
from loccheck.errors import DataError


def _cut(n: int, split: tuple[float, float, float]) -> tuple[int, int, int]:
    n_train = min(round(split[0] * n), n)
    n_val = min(round(split[1] * n), n - n_train)
    return n_train, n_val, n - n_train - n_val


def _cut_ok(n: int, split) -> bool:
    sizes = _cut(n, split)
    return sizes[2] >= 1 and all(k >= 1 for k, f in zip(sizes, split) if f > 0)


def _check_args(split, split_seed, max_questions, max_pairs_per_question, pair_seed):
    if len(split) != 3 or any(not isinstance(f, (int, float)) or f < 0 for f in split):
        raise ValueError(f"`split` must be 3 non-negative fractions (train, validation, test), got {split!r}")
    if abs(sum(split) - 1) > 1e-6:
        raise ValueError(f"`split` fractions must sum to 1, got {split!r} (sum {sum(split):g})")
    if split[2] <= 0:   # the test questions are what the verdict is computed on
        raise ValueError(f"`split` test fraction must be positive, got {split!r}")
    for name, v in (("split_seed", split_seed), ("pair_seed", pair_seed)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"`{name}` must be a non-negative int, got {v!r}")
    for name, v in (("max_questions", max_questions), ("max_pairs_per_question", max_pairs_per_question)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"`{name}` must be a positive int or None, got {v!r}")


def load_behavior(*, dataset: str, path: str | None, base_dir: Path | None,
                  split=(0.6, 0.2, 0.2), split_seed: int = 0, max_questions: int | None = None,
                  max_pairs_per_question: int | None = None, pair_seed: int | None = None,
                  keep: Callable | None = None, keep_rule: str = "") -> BehaviorData:
    """Load preference pairs and split them by question.

    Groups with at least one usable pair, in order of first appearance, are permuted with
    ``np.random.default_rng(split_seed)``; the first `max_questions` are kept, then cut into
    ``round(f_train*n)`` train, ``round(f_val*n)`` validation and the rest test questions.
    `max_pairs_per_question` keeps a random subset (natural order kept) drawn from
    ``default_rng([seed, position of the group in the file])`` (seed = pair_seed if given, else
    split_seed), so a question's subset does not depend on the split, max_questions or others.

    `keep(pairs) -> [bool]` filters pairs before `max_questions` (the known-facts filter needs
    the model): questions are checked in their shuffled order, each keeps the pairs `keep`
    accepts, and one left with none is skipped, until `max_questions` are kept. `keep_rule`
    says in words what it keeps.
    """
    split = tuple(split)
    _check_args(split, split_seed, max_questions, max_pairs_per_question, pair_seed)
    facts: dict = {}
    if dataset == "truthfulqa":
        csv_path, tried = find_data_file(TRUTHFULQA_FILE, path, base_dir)
        if csv_path is None:
            questions, source, sha = read_truthfulqa_hub(tried)
        else:
            questions, source, sha = read_truthfulqa_csv(csv_path)
        check_unique_questions(questions, source)
    elif dataset == "jsonl":
        questions, source, sha = read_jsonl(path, base_dir)
    elif dataset == "known_facts":
        questions, source, sha, facts = read_known_facts_file(path, base_dir, seed=split_seed)
    else:
        raise ValueError(f"`dataset` must be 'truthfulqa', 'jsonl' or 'known_facts', got {dataset!r}")

    # position = index in the file, so a question's pair subset is independent of the others
    usable = [(pos, g, pairs) for pos, (g, pairs, _) in enumerate(questions) if pairs]
    if not usable:
        raise DataError(f"{source} yields no usable preference pairs")
    order = np.random.default_rng(split_seed).permutation(len(usable))
    ranked = [usable[i] for i in order]
    kept, filtered = (ranked[:max_questions], None) if keep is None else _keep(ranked, keep, max_questions)
    if filtered is not None and not kept:
        raise DataError(f"{source}: none of {filtered['checked']} pairs is kept ({keep_rule})")
    n = len(kept)
    if not _cut_ok(n, split):
        need = next((m for m in range(n + 1, 100_000) if _cut_ok(m, split)), "more")
        raise DataError(f"{source}: {n} usable questions, but split {split} needs at least {need} "
                        "(one in each split with a positive fraction, and a non-empty test split)")
    n_train, n_val, _ = _cut(n, split)
    parts = dict(zip(SPLITS, (kept[:n_train], kept[n_train:n_train + n_val], kept[n_train + n_val:])))

    seed = split_seed if pair_seed is None else pair_seed

    def capped(pos: int, pairs: list[PreferencePair]) -> list[PreferencePair]:
        if max_pairs_per_question is None or len(pairs) <= max_pairs_per_question:
            return pairs
        keep = np.random.default_rng([seed, pos]).choice(len(pairs), max_pairs_per_question, replace=False)
        return [pairs[i] for i in sorted(keep)]

    groups = {s: tuple(g for _, g, _ in parts[s]) for s in SPLITS}
    seen = [g for s in SPLITS for g in groups[s]]
    if len(seen) != len(set(seen)):   # guard: by construction this cannot happen
        dup = sorted({g for g in seen if seen.count(g) > 1})[:3]
        raise DataError(f"{source}: group(s) {dup} would appear in two splits")
    out = {s: tuple(p for pos, _, pairs in parts[s] for p in capped(pos, pairs)) for s in SPLITS}
    # every answer of every kept question, independent of max_pairs_per_question (after a
    # filter: of its kept pairs)
    answers = {g: questions[pos][2] if keep is None else pair_answers(pairs)
               for s in SPLITS for pos, g, pairs in parts[s]}
    return BehaviorData(**out, groups=groups, source=source, sha256=sha,
                        n_questions_read=len(questions), n_questions_dropped=len(questions) - len(usable),
                        answers=answers, kept=filtered and {"rule": keep_rule, **filtered},
                        facts={p.prompt: facts[p.prompt] for s in SPLITS for p in out[s] if p.prompt in facts})

KEEP_CHUNK = 64   # questions handed to a filter at once


def _keep(ranked: list, keep: Callable, limit: int | None) -> tuple[list, dict]:
    """The first `limit` questions of `ranked` with a pair `keep` accepts, each with only those
    pairs, and how many pairs were checked and kept."""
    out, checked, kept = [], 0, 0
    for start in range(0, len(ranked), KEEP_CHUNK):
        chunk = ranked[start:start + KEEP_CHUNK]
        flags = iter(keep([p for _, _, pairs in chunk for p in pairs]))
        for pos, g, pairs in chunk:
            mine = [p for p in pairs if next(flags)]
            checked, kept = checked + len(pairs), kept + len(mine)
            if mine:
                out.append((pos, g, mine))
            if limit is not None and len(out) == limit:
                return out, {"checked": checked, "kept": kept}
    return out, {"checked": checked, "kept": kept}
