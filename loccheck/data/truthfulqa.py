"""TruthfulQA's official CSV (or the `datasets` copy) as questions: every correct x incorrect
answer of a question is one preference pair, the Best Answer first."""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
from pathlib import Path

from loccheck.data.pairs import PreferencePair
from loccheck.data.sources import find_data_file, read_data_text, shorten
from loccheck.errors import DataError

TRUTHFULQA_FILE = "TruthfulQA.csv"
_TQA_COLUMNS = ("Question", "Best Answer", "Correct Answers", "Incorrect Answers")


def resolve_truthfulqa(path: str | None, *, base_dir: Path | None) -> Path | None:
    """The TruthfulQA CSV to use: `path` (DataError when it names nothing), else
    $LOCCHECK_DATA_DIR/TruthfulQA.csv; None if neither is given."""
    return find_data_file(TRUTHFULQA_FILE, path, base_dir)[0]


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


def read_truthfulqa_csv(path: Path):
    text, sha = read_data_text(path)
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


def read_truthfulqa_hub(tried: list[str]):
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


def check_unique_questions(questions, source: str) -> None:
    """The same question text in two rows (two groups) could land in two splits: refuse it."""
    seen: dict[str, int] = {}
    for row, (_, _, (prompt, _, _)) in enumerate(questions, start=1):
        if not prompt:
            continue
        if prompt in seen:
            raise DataError(f"{source}: question {shorten(prompt)} appears in rows {seen[prompt]} and "
                            f"{row}; one question in two rows can land in two splits (a leak): "
                            "merge the rows")
        seen[prompt] = row
