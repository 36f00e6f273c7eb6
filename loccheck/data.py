"""Behaviour data: preference pairs (prompt, chosen, rejected) split by question.

Every pair of one question shares a `group` id, and splits are made over groups, never over
pairs: the heuristic that proposes heads (train/validation) and the final evaluation (test)
must see disjoint questions (METHOD.md, "Data discipline"). numpy and the standard library only.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from loccheck.errors import DataError, LoccheckError
from loccheck.userfiles import expand_user, read_regular_file

SPLITS = ("train", "validation", "test")
TRUTHFULQA_FILE = "TruthfulQA.csv"
_TQA_COLUMNS = ("Question", "Best Answer", "Correct Answers", "Incorrect Answers")
_JSONL_FIELDS = ("prompt", "chosen", "rejected")


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

    def without_test(self) -> "HeuristicData":
        """The data a heuristic may see: the train and validation questions, no test split."""
        keep = set(self.groups["train"]) | set(self.groups["validation"])
        prompts = {p.prompt for p in self.train + self.validation}
        return HeuristicData(train=self.train, validation=self.validation,
                             groups={s: self.groups[s] for s in ("train", "validation")},
                             source=self.source, sha256=self.sha256,
                             answers={g: a for g, a in self.answers.items() if g in keep},
                             facts={p: f for p, f in self.facts.items() if p in prompts})

    def summary(self) -> dict:
        splits = {s: {"n_questions": len(self.groups[s]), "n_pairs": len(getattr(self, s))}
                  for s in SPLITS}
        return {"source": self.source, "sha256": self.sha256, "splits": splits,
                "n_questions_read": self.n_questions_read,
                "n_questions_dropped": self.n_questions_dropped, "kept": self.kept}


# ---------------------------------------------------------------- locating and reading files

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

    def labelled(self, split: str) -> list[tuple[str, str, str, int]]:
        if split not in ("train", "validation"):
            raise ValueError(f"`split` must be 'train' or 'validation' (heuristics never see the "
                             f"test questions), got {split!r}")
        return BehaviorData.labelled(self, split)


def _candidates(path: str, base_dir: Path | None) -> list[Path]:
    """Absolute path as is; a relative one against the claim's folder, then the CWD."""
    try:
        p = expand_user(path, key="behavior.path")
    except LoccheckError as err:   # every problem with the data is a DataError
        raise DataError(err.msg, key=err.key) from None
    if p.is_absolute():
        return [p]
    return ([Path(base_dir) / p] if base_dir is not None else []) + [Path.cwd() / p]


def _kind(p: Path) -> str:
    """'folder', 'missing' or 'file'. A FIFO or device counts as a file and a path that cannot
    be looked up (too long, no permission) as there: reading it then says what is wrong."""
    try:
        return "folder" if p.is_dir() else "file" if p.exists() else "missing"
    except OSError:
        return "file"


def _find_data_file(name: str, path: str | None, base_dir: Path | None) -> tuple[Path | None, list[str]]:
    """The data file: `path` (a file, or a folder holding `name`) when it is given, else
    $LOCCHECK_DATA_DIR/`name`; and why each place tried failed. A `path` that names nothing is
    an error (DataError about behavior.path), never replaced by the data folder's copy: the
    claim would silently be about other data."""
    tried: list[str] = []
    if path is not None:
        for c in _candidates(path, base_dir):
            if _kind(c) == "folder" and _kind(c / name) == "file":
                return c / name, tried   # a data folder is fine too
            if _kind(c) == "file":
                return c, tried
        where = " or ".join(f"'{c}'" for c in _candidates(path, base_dir))
        raise DataError(f"{path!r} does not exist (looked for {where})", key="behavior.path")
    return _env_file(name, tried), tried


def _env_file(name: str, tried: list[str]) -> Path | None:
    """$LOCCHECK_DATA_DIR/`name` if it is there; if not, say why in `tried`."""
    env = os.environ.get("LOCCHECK_DATA_DIR")
    if not env:
        tried.append("LOCCHECK_DATA_DIR is not set")
        return None
    try:
        file = expand_user(env) / name
    except LoccheckError as err:
        tried.append(f"LOCCHECK_DATA_DIR: {err.msg}")
        return None
    if _kind(file) == "file":
        return file
    tried.append(f"LOCCHECK_DATA_DIR={env!r} has no {name}")
    return None


def resolve_truthfulqa(path: str | None, *, base_dir: Path | None) -> Path | None:
    """The TruthfulQA CSV to use: `path` (DataError when it names nothing), else
    $LOCCHECK_DATA_DIR/TruthfulQA.csv; None if neither is given."""
    return _find_data_file(TRUTHFULQA_FILE, path, base_dir)[0]


def _read_text(path: Path) -> tuple[str, str]:
    """(text, sha256 of the bytes); any read or decode problem is a DataError naming the file."""
    try:
        raw = read_regular_file(path)   # a FIFO or device is refused unread: it could block forever
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0   # the official CSV has one
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = bom + err.start   # an offset into the file, BOM included
        raise DataError(f"{path}: not valid UTF-8 (byte 0x{raw[at]:02x} at offset {at})") from None
    return text, hashlib.sha256(raw).hexdigest()


def _clean(answers) -> list[str]:
    """Strip, drop empties, dedupe keeping the first occurrence."""
    out: list[str] = []
    for a in (str(x).strip() for x in answers):
        if a and a not in out:
            out.append(a)
    return out


def _tqa_question(i: int, question: str, best: str, correct: list[str], incorrect: list[str]):
    """(group, pairs, answers) for one row: every correct x incorrect answer, the Best Answer
    first; answers = (question, correct, incorrect), the lists the pairs are built from."""
    q, g = question.strip(), f"tqa-{i}"
    if not q:
        return g, [], (q, (), ())
    ok, bad = _clean([best, *correct]), _clean(incorrect)
    # chosen == rejected happens in the real file ("Unknown" is listed both ways, twice)
    pairs = [PreferencePair(q, c, r, g) for c, r in itertools.product(ok, bad) if c != r]
    return g, pairs, (q, tuple(ok), tuple(bad))


def _split_cell(cell: str | None) -> list[str]:
    return (cell or "").split(";")   # None: a row shorter than the header


def _read_truthfulqa_csv(path: Path):
    text, sha = _read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if reader.fieldnames is None:
            raise DataError(f"{path}: empty file, expected a header row with {', '.join(_TQA_COLUMNS)}")
        missing = [c for c in _TQA_COLUMNS if c not in reader.fieldnames]
        if missing:
            cols = ", ".join(map(repr, missing))
            raise DataError(f"{path}: missing column{'s' * (len(missing) > 1)} {cols} "
                            f"(has: {', '.join(reader.fieldnames)})")
        rows = list(reader)
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV: {err}") from None
    questions = [_tqa_question(i, r["Question"] or "", r["Best Answer"] or "",
                               _split_cell(r["Correct Answers"]), _split_cell(r["Incorrect Answers"]))
                 for i, r in enumerate(rows)]
    return questions, str(path), sha


def _read_truthfulqa_hub(tried: list[str]):
    """The same questions through the `datasets` library (same row order as the CSV)."""
    try:
        from datasets import load_dataset
    except ImportError:
        tried.append("the `datasets` library is not installed (pip install 'loccheck[datasets]')")
        raise DataError("TruthfulQA not found: " + "; ".join(tried)) from None
    try:
        ds = load_dataset("truthful_qa", "generation")["validation"]
        rows = [{k: r[k] for k in ("question", "best_answer", "correct_answers", "incorrect_answers")}
                for r in ds]
    except Exception as err:  # network, hub or cache failures all end the search the same way
        msg = " ".join(str(err).split())[:200]
        tried.append(f"datasets.load_dataset('truthful_qa', 'generation') failed: {type(err).__name__}: {msg}")
        raise DataError("TruthfulQA not found: " + "; ".join(tried)) from None
    canon = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    questions = [_tqa_question(i, r["question"], r["best_answer"], list(r["correct_answers"]),
                               list(r["incorrect_answers"])) for i, r in enumerate(rows)]
    return questions, "datasets:truthful_qa/generation", hashlib.sha256(canon.encode()).hexdigest()


def _read_jsonl(path: str | None, base_dir: Path | None):
    if path is None:
        raise DataError("behavior.path is required for dataset 'jsonl'")
    found = next((c for c in _candidates(path, base_dir) if _kind(c) != "missing"), None)
    if found is None:
        where = ", ".join(f"'{c}'" for c in _candidates(path, base_dir))
        raise DataError(f"preference pairs file {path!r} not found (tried {where})")
    text, sha = _read_text(found)
    by_group: dict[str, list[PreferencePair]] = {}   # insertion order = order of first appearance
    first_seen: dict[str, tuple[str, int]] = {}      # prompt (stripped) -> (its group, line)
    # split on "\n" only: str.splitlines() would also split at a U+2028 inside a JSON string
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{found}:{n}"
        obj = _json_record(line, where)
        for key in _JSONL_FIELDS + (("group",) if "group" in obj else ()):
            if key not in obj:
                raise DataError(f"{where}: missing field {key!r}")
            if not isinstance(obj[key], str):
                raise DataError(f"{where}: field {key!r} must be a string")
            if not obj[key].strip():
                raise DataError(f"{where}: field {key!r} must not be empty")
            _check_unicode(obj[key], f"{where}: field {key!r}")
        group = obj.get("group", obj["prompt"])
        # Splits are made over groups: one question under two groups could sit in train and
        # test at once, and the verdict would be computed on questions the edits trained on.
        seen_group, seen_line = first_seen.setdefault(obj["prompt"].strip(), (group, n))
        if seen_group != group:
            raise DataError(f"{where}: prompt {_short(obj['prompt'])} is in group {group!r} here but in "
                            f"group {seen_group!r} on line {seen_line}; one question in two groups can "
                            "land in two splits (a leak): give all its pairs one group")
        pairs = by_group.setdefault(group, [])
        if obj["chosen"] != obj["rejected"]:   # no preference to learn from
            pairs.append(PreferencePair(obj["prompt"], obj["chosen"], obj["rejected"], group))
    if not by_group:
        raise DataError(f"{found}: no records (the file is empty)")
    return [(g, pairs, _jsonl_answers(pairs)) for g, pairs in by_group.items()], str(found), sha


def _json_record(line: str, where: str) -> dict:
    """One JSONL line as a dict; anything else is a DataError at `where` (file:line)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: invalid JSON: {err.msg} (column {err.colno})") from None
    except RecursionError:
        raise DataError(f"{where}: invalid JSON: nested too deeply") from None
    except ValueError:   # the only other one: an integer longer than Python converts
        raise DataError(f"{where}: invalid JSON: a number with more than "
                        f"{sys.get_int_max_str_digits()} digits") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _check_unicode(text: str, what: str) -> None:
    # JSON's "\ud800" escape yields a lone surrogate, which no tokenizer or file takes
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(f"{what} holds a lone surrogate U+{ord(text[err.start]):04X} (an escape such "
                        "as \"\\ud800\" that is half of a pair), which is not text") from None


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _check_unique_questions(questions, source: str) -> None:
    """The same question text in two rows (two groups) could land in two splits: refuse it."""
    seen: dict[str, int] = {}
    for row, (_, _, (prompt, _, _)) in enumerate(questions, start=1):
        if not prompt:
            continue
        if prompt in seen:
            raise DataError(f"{source}: question {_short(prompt)} appears in rows {seen[prompt]} and "
                            f"{row}; one question in two rows can land in two splits (a leak): "
                            "merge the rows")
        seen[prompt] = row


def _jsonl_answers(pairs: list[PreferencePair]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(prompt of the group's first pair, unique chosen, unique rejected), first-appearance order.

    Only usable pairs count (a record with chosen == rejected labels nothing). A text chosen in
    one pair and rejected in another appears in both lists, as the file says.
    """
    if not pairs:
        return "", (), ()
    return (pairs[0].prompt, tuple(dict.fromkeys(p.chosen for p in pairs)),
            tuple(dict.fromkeys(p.rejected for p in pairs)))


# ---------------------------------------------------------------- splitting

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
        csv_path, tried = _find_data_file(TRUTHFULQA_FILE, path, base_dir)
        if csv_path is None:
            questions, source, sha = _read_truthfulqa_hub(tried)
        else:
            questions, source, sha = _read_truthfulqa_csv(csv_path)
        _check_unique_questions(questions, source)
    elif dataset == "jsonl":
        questions, source, sha = _read_jsonl(path, base_dir)
    elif dataset == "known_facts":
        questions, source, sha, facts = _read_known_facts(path, base_dir, seed=split_seed)
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
    answers = {g: questions[pos][2] if keep is None else _jsonl_answers(pairs)
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


def _read_known_facts(path: str | None, base_dir: Path | None, *, seed: int):
    """ROME's known facts as questions (one per subject): `path`, else $LOCCHECK_DATA_DIR."""
    from loccheck.facts import fact_questions, read_known_facts

    file, tried = _find_data_file(KNOWN_FACTS_FILE, path, base_dir)
    if file is None:
        raise DataError(f"known facts ({KNOWN_FACTS_FILE}) not found: " + "; ".join(tried))
    text, sha = _read_text(file)
    facts = read_known_facts(file, text, seed=seed)
    return fact_questions(facts), str(file), sha, {f.prompt: f for f in facts}


# ---------------------------------------------------------------- texts for side effects

KNOWN_FACTS_FILE = "known_1000.json"


@dataclass(frozen=True)
class SideTexts:
    """Texts unrelated to the behaviour, on which an edit's side effects are measured."""
    texts: tuple[str, ...]
    source: str
    sha256: str                    # of the texts used (not of the whole file)
    n_excluded: int = 0            # texts passed over as the claim's own facts


def load_side_texts(path: str | None, *, base_dir: Path | None, n_texts: int,
                    exclude_subjects=(), exclude_prompts=()) -> SideTexts:
    """The first `n_texts` texts of `path` (relative to the claim's folder), else of
    $LOCCHECK_DATA_DIR/known_1000.json, that are none of the claim's own facts. A .json file
    is ROME's known facts (each fact's sentence, its template's `{}` filled with its subject,
    and the continuation after it) or a list of strings; a .jsonl file holds one {"text": ...}
    per line; any other file, one text per line. Texts are literal: braces in them are text.

    A fact whose subject is in `exclude_subjects` (a known-facts claim's subjects, every split:
    the edits were fitted to them) is passed over, as is a text that holds one of
    `exclude_prompts` (it states one of the claim's facts)."""
    file = _find_side_texts(path, base_dir)
    text, _ = _read_text(file)
    if file.suffix == ".json":
        items = _json_texts(file, text)
    elif file.suffix == ".jsonl":
        items = [(_jsonl_text(file, i, line), None) for i, line in enumerate(text.split("\n"), 1) if line.strip()]
    else:
        items = [(line.strip(), None) for line in text.splitlines() if line.strip()]
    subjects, prompts = set(exclude_subjects), [q for q in set(exclude_prompts) if q]
    texts, excluded = [], 0
    for t, subject in items:
        if not t:
            continue
        if (subject is not None and subject in subjects) or any(q in t for q in prompts):
            excluded += 1
            continue
        texts.append(t)
        if len(texts) == n_texts:
            break
    if not texts:
        why = f" that is not one of the claim's own facts ({excluded} are)" if excluded else ""
        raise DataError(f"{file}: no texts for side effects{why}", key="side_effects.path")
    sha = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()
    return SideTexts(tuple(texts), str(file), sha, excluded)


def _find_side_texts(path: str | None, base_dir: Path | None) -> Path:
    if path is not None:
        for c in _candidates(path, base_dir):
            if _kind(c) == "file":
                return c
        raise DataError(f"side-effect texts {path!r} not found", key="side_effects.path")
    env = os.environ.get("LOCCHECK_DATA_DIR")
    if env and _kind(expand_user(env, key="side_effects.path") / KNOWN_FACTS_FILE) == "file":
        return expand_user(env) / KNOWN_FACTS_FILE
    raise DataError(f"side-effect metrics need texts: set side_effects.path, or LOCCHECK_DATA_DIR to a "
                    f"folder holding {KNOWN_FACTS_FILE}" + ("" if env else " (it is not set)"),
                    key="side_effects.path")


def _json_texts(file: Path, text: str) -> list[tuple[str, str | None]]:
    """(text, its fact's subject or None) of each item of a JSON list."""
    try:
        records = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise DataError(f"{file}: invalid JSON: {err if isinstance(err, ValueError) else 'nested too deeply'}",
                        key="side_effects.path") from None
    if not isinstance(records, list):
        raise DataError(f"{file}: expected a JSON list of facts or strings", key="side_effects.path")
    out = []
    for i, r in enumerate(records):
        if isinstance(r, str):
            out.append((r.strip(), None))
        elif isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("template", "subject", "prediction")):
            if "{}" not in r["template"]:
                raise DataError(f"{file}: item {i}: its template has no {{}} for the subject",
                                key="side_effects.path")
            # the template's first {} filled with the subject (any other brace is text, not a
            # format field), then the continuation (GPT-2's end token dropped); `prompt`
            # sometimes already holds the continuation's first word
            sentence = r["template"].replace("{}", r["subject"], 1) + r["prediction"].replace("<|endoftext|>", "")
            out.append((sentence.strip(), r["subject"].strip()))
        else:
            raise DataError(f"{file}: item {i} is neither a string nor a fact with template, subject "
                            "and prediction", key="side_effects.path")
    return out


def _jsonl_text(file: Path, line_no: int, line: str) -> str:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        raise DataError(f"{file}:{line_no}: invalid JSON", key="side_effects.path") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise DataError(f"{file}:{line_no}: expected an object with a string 'text'", key="side_effects.path")
    return record["text"].strip()
