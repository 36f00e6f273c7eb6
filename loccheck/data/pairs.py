"""Preference pairs (prompt, chosen, rejected) and their split by question.

Every pair of one question shares a `group` id, and splits are made over groups, never over
pairs: the heuristic that proposes heads (train/validation) and the final evaluation (test)
must see disjoint questions (METHOD.md, "Data discipline"). Standard library only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class PreferencePair:
    prompt: str    # raw question text; chat/QA formatting happens later, with the tokenizer
    chosen: str    # preferred (true) answer
    rejected: str  # dispreferred (false) answer
    group: str     # question id, shared by all pairs of one question; splits are by group


# group -> (prompt, true answers, false answers): every answer of a question, for probing
Answers = dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]


@dataclass(frozen=True)
class BehaviorData:
    """Pairs split by question. `groups[split]` lists that split's groups in shuffled order.

    `answers` holds, for every kept question, all its labelled answers (not capped by
    `max_pairs_per_question`): what a probe is trained on. It is keyed by group, so the same
    split discipline applies: use `labelled(split)`.
    """
    train: tuple[PreferencePair, ...]
    validation: tuple[PreferencePair, ...]
    test: tuple[PreferencePair, ...]
    groups: dict[str, tuple[str, ...]]
    source: str                    # resolved file path, or "datasets:truthful_qa/generation"
    sha256: str                    # of the file's bytes (datasets: of canonical JSON of the rows)
    n_questions_read: int = 0      # groups in the source, before dropping and max_questions
    n_questions_dropped: int = 0   # groups left without a usable pair
    answers: Answers = field(default_factory=dict)
    kept: dict | None = None       # {"rule", "checked", "kept"}: pairs a filter checked and kept
    facts: dict = field(default_factory=dict)   # prompt -> facts.Fact (dataset known_facts)

    def labelled(self, split: str) -> list[tuple[str, str, str, int]]:
        """(group, prompt, answer, label) for every answer of the split's questions.

        Groups in split order; within a group the true answers (label 1) first, then the
        false ones (label 0), each in the order `answers` lists them.
        """
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {', '.join(SPLITS)}, got {split!r}")
        missing = [g for g in self.groups[split] if g not in self.answers]
        if missing:
            raise ValueError(f"BehaviorData has no `answers` for {len(missing)} {split} group(s) "
                             f"(e.g. {missing[0]!r}); build it with load_behavior")
        out = []
        for g in self.groups[split]:
            prompt, true, false = self.answers[g]
            out += [(g, prompt, a, 1) for a in true] + [(g, prompt, a, 0) for a in false]
        return out

    def without_test(self, prompt_format: str = "qa", system_prompt: str | None = None) -> "HeuristicData":
        """The data a heuristic may see: the train and validation questions, no test split, with
        the prompt format the claim's edits use (for a heuristic that reads the pairs as they do)."""
        keep = set(self.groups["train"]) | set(self.groups["validation"])
        prompts = {p.prompt for p in self.train + self.validation}
        return HeuristicData(train=self.train, validation=self.validation,
                             groups={s: self.groups[s] for s in ("train", "validation")},
                             source=self.source, sha256=self.sha256,
                             answers={g: a for g, a in self.answers.items() if g in keep},
                             facts={p: f for p, f in self.facts.items() if p in prompts},
                             prompt_format=prompt_format, system_prompt=system_prompt)

    def summary(self) -> dict:
        splits = {s: {"n_questions": len(self.groups[s]), "n_pairs": len(getattr(self, s))}
                  for s in SPLITS}
        return {"source": self.source, "sha256": self.sha256, "splits": splits,
                "n_questions_read": self.n_questions_read,
                "n_questions_dropped": self.n_questions_dropped, "kept": self.kept}


@dataclass(frozen=True)
class HeuristicData:
    """BehaviorData without its test split: what heuristics (probing) and the heuristic edits'
    statistics (ITI's directions) receive, so "never sees test questions" holds by
    construction. `labelled("test")` raises."""
    train: tuple[PreferencePair, ...]
    validation: tuple[PreferencePair, ...]
    groups: dict[str, tuple[str, ...]]
    source: str
    sha256: str
    answers: Answers = field(default_factory=dict)
    facts: dict = field(default_factory=dict)
    prompt_format: str = "qa"                 # how the claim's edits see a prompt (`prompts.resolve_format`)
    system_prompt: str | None = None

    def labelled(self, split: str) -> list[tuple[str, str, str, int]]:
        if split not in ("train", "validation"):
            raise ValueError(f"`split` must be 'train' or 'validation' (heuristics never see the "
                             f"test questions), got {split!r}")
        return BehaviorData.labelled(self, split)

    def resampled(self, rng) -> "HeuristicData":
        """A bootstrap resample of the train questions: as many as there are, drawn with
        replacement by question (never by pair), each with all its pairs and answers; a question
        drawn k times is k questions ("{group}", "{group}#1", ...). The validation questions, on
        which a heuristic scores what it learned, stay as they are. `rng`: a numpy Generator."""
        from collections import Counter, defaultdict
        from dataclasses import replace

        groups = self.groups["train"]
        pairs_of = defaultdict(list)
        for pair in self.train:
            pairs_of[pair.group].append(pair)
        copies: Counter = Counter()
        names, pairs = [], []
        answers = {g: a for g, a in self.answers.items() if g not in set(groups)}
        for i in rng.integers(len(groups), size=len(groups)):
            group = groups[int(i)]
            name = group if copies[group] == 0 else f"{group}#{copies[group]}"
            copies[group] += 1
            names.append(name)
            pairs += [replace(p, group=name) for p in pairs_of[group]]
            if group in self.answers:
                answers[name] = self.answers[group]
        return replace(self, train=tuple(pairs), groups={**self.groups, "train": tuple(names)}, answers=answers)


def pair_answers(pairs: list[PreferencePair]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(prompt of the group's first pair, unique chosen, unique rejected), first-appearance order.

    Only usable pairs count (a record with chosen == rejected labels nothing). A text chosen in
    one pair and rejected in another appears in both lists, as the file says.
    """
    if not pairs:
        return "", (), ()
    return (pairs[0].prompt, tuple(dict.fromkeys(p.chosen for p in pairs)),
            tuple(dict.fromkeys(p.rejected for p in pairs)))
