"""loccheck.data.behavior on the real TruthfulQA CSV and on small JSONL files written here."""
from __future__ import annotations

import codecs
import csv
import json
import os
import re
import sys
import types
from pathlib import Path

import pytest

from loccheck.data.behavior import load_behavior
from loccheck.data.pairs import BehaviorData, PreferencePair
from loccheck.data.truthfulqa import resolve_truthfulqa
from loccheck.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def _data_dir() -> Path | None:
    for d in (os.environ.get("LOCCHECK_DATA_DIR"), REPO.parent / "shared" / "data"):
        if d and (Path(d) / "TruthfulQA.csv").is_file():
            return Path(d).resolve()
    return None


@pytest.fixture
def tqa_csv() -> Path:
    d = _data_dir()
    if d is None:
        pytest.skip("TruthfulQA.csv not found: set LOCCHECK_DATA_DIR or put it in ../shared/data")
    return d / "TruthfulQA.csv"


@pytest.fixture
def no_fallbacks(monkeypatch):
    """Neither $LOCCHECK_DATA_DIR nor the `datasets` library."""
    monkeypatch.delenv("LOCCHECK_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)   # makes `import datasets` fail


def tqa(path, **kw) -> BehaviorData:
    return load_behavior(dataset="truthfulqa", path=str(path), base_dir=None, **kw)


def _dedupe(items):
    out = []
    for a in (x.strip() for x in items):
        if a and a not in out:
            out.append(a)
    return out


def _expected_pairs(row) -> list[tuple[str, str]]:
    """Independent re-derivation from the csv module: correct (Best first) x incorrect."""
    ok = _dedupe([row["Best Answer"], *row["Correct Answers"].split(";")])
    bad = _dedupe(row["Incorrect Answers"].split(";"))
    return [(c, r) for c in ok for r in bad if c != r]


def _all_pairs(d: BehaviorData) -> list[PreferencePair]:
    return [*d.train, *d.validation, *d.test]


def _by_group(d: BehaviorData) -> dict[str, list[PreferencePair]]:
    out: dict[str, list[PreferencePair]] = {}
    for p in _all_pairs(d):
        out.setdefault(p.group, []).append(p)
    return out


# ---------------------------------------------------------------- TruthfulQA, real file

def test_truthfulqa_reads_every_question(tqa_csv):
    with open(tqa_csv, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    d = tqa(tqa_csv)
    assert len(rows) == 813 and d.n_questions_read == 813 and d.n_questions_dropped == 0
    assert d.source == str(tqa_csv) and len(d.sha256) == 64
    groups = _by_group(d)
    assert set(groups) == {f"tqa-{i}" for i in range(813)}
    first = groups["tqa-0"]
    assert {p.prompt for p in first} == {"Why do veins appear blue?"}
    assert rows[0]["Question"] == "Why do veins appear blue?"
    ok = _dedupe([rows[0]["Best Answer"], *rows[0]["Correct Answers"].split(";")])
    bad = _dedupe(rows[0]["Incorrect Answers"].split(";"))
    assert len(first) == len(ok) * len(bad) == 20
    # product order: correct answers outer (Best Answer first), incorrect inner
    assert [(p.chosen, p.rejected) for p in first] == [(c, r) for c in ok for r in bad]
    assert first[0].chosen == rows[0]["Best Answer"].strip()
    # every question, including the two listing "Unknown" as both true and false
    for i, row in enumerate(rows):
        assert [(p.chosen, p.rejected) for p in groups[f"tqa-{i}"]] == _expected_pairs(row)
    assert len(_all_pairs(d)) == sum(len(_expected_pairs(r)) for r in rows) == 12250


def test_truthfulqa_splits_are_disjoint_by_question_and_cover_it(tqa_csv):
    d = tqa(tqa_csv)
    sets = {s: set(d.groups[s]) for s in ("train", "validation", "test")}
    assert not (sets["train"] & sets["validation"] or sets["train"] & sets["test"]
                or sets["validation"] & sets["test"])
    assert sets["train"] | sets["validation"] | sets["test"] == {f"tqa-{i}" for i in range(813)}
    assert [len(d.groups[s]) for s in ("train", "validation", "test")] == [488, 163, 162]
    for s in ("train", "validation", "test"):
        pairs = getattr(d, s)
        assert {p.group for p in pairs} == sets[s]
        # groups appear in the split's (shuffled) order, each as one contiguous block
        blocks = [g for k, g in enumerate(p.group for p in pairs) if k == 0 or pairs[k - 1].group != g]
        assert tuple(blocks) == d.groups[s]
    summary = json.loads(json.dumps(d.summary()))
    assert summary["splits"]["test"] == {"n_questions": 162, "n_pairs": len(d.test)}
    assert summary["sha256"] == d.sha256


def test_truthfulqa_max_questions_cuts_12_4_4(tqa_csv):
    d = tqa(tqa_csv, max_questions=20, split=(0.6, 0.2, 0.2))
    assert [len(d.groups[s]) for s in ("train", "validation", "test")] == [12, 4, 4]
    assert len(_by_group(d)) == 20 and d.n_questions_read == 813
    # max_questions keeps a prefix of the same shuffle
    full = tqa(tqa_csv)
    assert d.groups["train"] == full.groups["train"][:12]


def test_truthfulqa_max_pairs_per_question_caps_deterministically(tqa_csv):
    full = _by_group(tqa(tqa_csv))
    d = tqa(tqa_csv, max_pairs_per_question=3)
    capped = _by_group(d)
    assert set(capped) == set(full)
    for g, pairs in capped.items():
        assert len(pairs) == min(3, len(full[g]))
        idx = [full[g].index(p) for p in pairs]
        assert idx == sorted(idx)   # a subset, in natural order
    assert tqa(tqa_csv, max_pairs_per_question=3) == d
    # a question's subset depends on its own seed only, not on the split or max_questions
    small = _by_group(tqa(tqa_csv, max_pairs_per_question=3, max_questions=20, split_seed=5, pair_seed=0))
    assert all(small[g] == capped[g] for g in small)
    other = _by_group(tqa(tqa_csv, max_pairs_per_question=3, pair_seed=1))
    assert any(other[g] != capped[g] for g in capped)


def test_truthfulqa_is_deterministic_and_split_seed_matters(tqa_csv):
    a, b = tqa(tqa_csv, split_seed=0), tqa(tqa_csv, split_seed=0)
    assert a == b
    c = tqa(tqa_csv, split_seed=1)
    assert c.groups["test"] != a.groups["test"] and set(c.groups["test"]) != set(a.groups["test"])
    assert sorted(map(str, _all_pairs(c))) == sorted(map(str, _all_pairs(a)))


def test_truthfulqa_resolution_order(tqa_csv, monkeypatch, tmp_path):
    monkeypatch.setenv("LOCCHECK_DATA_DIR", str(tqa_csv.parent))
    assert resolve_truthfulqa(None, base_dir=None) == tqa_csv
    assert load_behavior(dataset="truthfulqa", path=None, base_dir=None).source == str(tqa_csv)
    # relative paths are taken against the claim's folder first
    assert resolve_truthfulqa("TruthfulQA.csv", base_dir=tqa_csv.parent) == tqa_csv.parent / "TruthfulQA.csv"
    assert resolve_truthfulqa(str(tqa_csv.parent), base_dir=None) == tqa_csv.parent / "TruthfulQA.csv"
    # an explicit path that is missing is an error, never replaced by $LOCCHECK_DATA_DIR's file
    missing = re.escape(f"'nope.csv' does not exist (looked for '{tmp_path / 'nope.csv'}'")
    with pytest.raises(DataError, match=missing) as e:
        load_behavior(dataset="truthfulqa", path="nope.csv", base_dir=tmp_path, max_questions=5)
    assert e.value.key == "behavior.path"


# ---------------------------------------------------------------- TruthfulQA, errors and fallbacks

def test_truthfulqa_not_found_lists_everything_tried(no_fallbacks, tmp_path):
    with pytest.raises(DataError) as e:
        load_behavior(dataset="truthfulqa", path=None, base_dir=tmp_path)
    msg = str(e.value)
    assert msg.startswith("TruthfulQA not found: LOCCHECK_DATA_DIR is not set")
    assert "the `datasets` library is not installed" in msg
    assert "\n" not in msg


def test_truthfulqa_data_dir_without_file(no_fallbacks, monkeypatch, tmp_path):
    monkeypatch.setenv("LOCCHECK_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=re.escape(f"LOCCHECK_DATA_DIR='{tmp_path}' has no TruthfulQA.csv")):
        load_behavior(dataset="truthfulqa", path=None, base_dir=None)


_HUB_ROWS = [
    {"type": "Adversarial", "question": "Q0?", "best_answer": "b", "correct_answers": ["b", "c", " "],
     "incorrect_answers": ["x", "y", "x"], "source": "s"},
    {"type": "Adversarial", "question": "Q1?", "best_answer": "t", "correct_answers": ["t"],
     "incorrect_answers": [], "source": "s"},   # no incorrect answer: dropped
] + [{"type": "A", "question": f"Q{i}?", "best_answer": "t", "correct_answers": [],
      "incorrect_answers": ["f"], "source": "s"} for i in range(2, 7)]


def _fake_datasets(monkeypatch, load_dataset):
    mod = types.ModuleType("datasets")
    mod.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", mod)


def test_truthfulqa_datasets_fallback(no_fallbacks, monkeypatch):
    calls = []

    def load_dataset(name, config):
        calls.append((name, config))
        return {"validation": _HUB_ROWS}
    _fake_datasets(monkeypatch, load_dataset)
    d = load_behavior(dataset="truthfulqa", path=None, base_dir=None, split=(0.5, 0.25, 0.25))
    assert calls == [("truthful_qa", "generation")]
    assert d.source == "datasets:truthful_qa/generation" and len(d.sha256) == 64
    assert d.n_questions_read == 7 and d.n_questions_dropped == 1
    g = _by_group(d)
    assert "tqa-1" not in g and set(g) == {"tqa-0", *(f"tqa-{i}" for i in range(2, 7))}
    assert [(p.chosen, p.rejected) for p in g["tqa-0"]] == [("b", "x"), ("b", "y"), ("c", "x"), ("c", "y")]
    assert load_behavior(dataset="truthfulqa", path=None, base_dir=None, split=(0.5, 0.25, 0.25)) == d


def test_truthfulqa_datasets_failure_is_one_line(no_fallbacks, monkeypatch):
    def load_dataset(name, config):
        raise ConnectionError("no route to host\n(offline)")
    _fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(DataError) as e:
        load_behavior(dataset="truthfulqa", path=None, base_dir=None)
    msg = str(e.value)
    assert "LOCCHECK_DATA_DIR is not set; datasets.load_dataset('truthful_qa', 'generation') failed: " \
           "ConnectionError: no route to host (offline)" in msg
    assert "\n" not in msg


def test_csv_missing_column(tmp_path):
    f = tmp_path / "tqa.csv"
    f.write_text("Type,Question,Best Answer,Correct Answers\nA,Q?,b,b;c\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{re.escape(str(f))}: missing column 'Incorrect Answers' \(has: Type, "):
        tqa(f)


def test_csv_not_utf8_and_empty(tmp_path):
    f = tmp_path / "latin1.csv"
    f.write_bytes("Question,Best Answer,Correct Answers,Incorrect Answers\nCaf\xe9?,a,a,b\n".encode("latin-1"))
    with pytest.raises(DataError, match=rf"^{re.escape(str(f))}: not valid UTF-8 \(byte 0xe9 at offset 58\)$"):
        tqa(f)
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())   # offsets count the BOM
    with pytest.raises(DataError, match=r"\(byte 0xe9 at offset 61\)$"):
        tqa(f)
    e = tmp_path / "empty.csv"
    e.write_text("")
    with pytest.raises(DataError, match=rf"^{re.escape(str(e))}: empty file"):
        tqa(e)


# ---------------------------------------------------------------- JSONL

def _write(tmp_path, lines, name="pairs.jsonl") -> Path:
    f = tmp_path / name
    f.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n",
                 encoding="utf-8")
    return f


def jsonl(path, **kw) -> BehaviorData:
    return load_behavior(dataset="jsonl", path=str(path), base_dir=None, **kw)


def test_jsonl_loads(tmp_path):
    recs = [{"prompt": "P0", "chosen": "a", "rejected": "b", "group": "g0"},
            {"prompt": "P0 again", "chosen": "a", "rejected": "c", "group": "g0"},
            "",   # blank lines are skipped
            {"prompt": "P1", "chosen": "a", "rejected": "b"},          # group defaults to the prompt
            {"prompt": "P1", "chosen": "same", "rejected": "same"},    # dropped
            {"prompt": "P2", "chosen": "a", "rejected": "b", "group": "g2", "note": "extra keys are ignored"},
            {"prompt": "P3", "chosen": "a", "rejected": "a", "group": "g3"},   # g3 has nothing left
            {"prompt": "P4", "chosen": "a", "rejected": "b", "group": "g4"},
            {"prompt": "P5", "chosen": "a", "rejected": "b", "group": "g5"}]
    f = _write(tmp_path, recs)
    d = jsonl(f)
    assert d.source == str(f) and d.n_questions_read == 6 and d.n_questions_dropped == 1
    assert [len(d.groups[s]) for s in ("train", "validation", "test")] == [3, 1, 1]
    g = _by_group(d)
    assert set(g) == {"g0", "P1", "g2", "g4", "g5"}
    assert g["g0"] == [PreferencePair("P0", "a", "b", "g0"), PreferencePair("P0 again", "a", "c", "g0")]
    assert g["P1"] == [PreferencePair("P1", "a", "b", "P1")]
    assert jsonl(f) == d
    # relative to the claim's folder
    assert load_behavior(dataset="jsonl", path="pairs.jsonl", base_dir=tmp_path) == d


_GOOD = '{"prompt": "p", "chosen": "a", "rejected": "b"}'


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "chosen": "a"', "invalid JSON: Expecting ',' delimiter (column 30)"),
    ('["p", "a", "b"]', "expected a JSON object, got list"),
    ('{"prompt": "p", "rejected": "b"}', "missing field 'chosen'"),
    ('{"prompt": "p", "chosen": 3, "rejected": "b"}', "field 'chosen' must be a string"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "group": null}', "field 'group' must be a string"),
    ('{"prompt": "  ", "chosen": "a", "rejected": "b"}', "field 'prompt' must not be empty"),
])
def test_jsonl_bad_line_names_file_and_line(tmp_path, line, message):
    f = _write(tmp_path, [_GOOD, "", line, _GOOD])
    with pytest.raises(DataError) as e:
        jsonl(f)
    assert str(e.value) == f"{f}:3: {message}"


def test_jsonl_file_errors(tmp_path, monkeypatch):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(empty))}: no records \(the file is empty\)$"):
        jsonl(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad))}: not valid UTF-8"):
        jsonl(bad)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        load_behavior(dataset="jsonl", path="missing.jsonl", base_dir=tmp_path / "claims")
    assert str(e.value) == (f"preference pairs file 'missing.jsonl' not found "
                            f"(tried '{tmp_path / 'claims' / 'missing.jsonl'}', '{tmp_path / 'missing.jsonl'}')")
    with pytest.raises(DataError, match="behavior.path is required for dataset 'jsonl'"):
        load_behavior(dataset="jsonl", path=None, base_dir=None)
    directory = tmp_path / "dir.jsonl"
    directory.mkdir()
    with pytest.raises(DataError, match=rf"^{re.escape(str(directory))}: cannot read: Is a directory$"):
        jsonl(directory)


@pytest.mark.parametrize("line, message", [
    ('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}", "invalid JSON: nested too deeply"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "group": ' + "9" * 5000 + "}",
     "invalid JSON: a number with more than 4300 digits"),
])
def test_jsonl_lines_python_cannot_decode(tmp_path, line, message):
    f = _write(tmp_path, [_GOOD, _GOOD, line])
    with pytest.raises(DataError) as e:
        jsonl(f)
    assert str(e.value) == f"{f}:3: {message}"


@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected", "group"])
def test_jsonl_lone_surrogate_is_refused_at_load(tmp_path, field):
    record = {"prompt": "p", "chosen": "a", "rejected": "b", "group": "g", field: "bad \ud800 x"}
    f = _write(tmp_path, [_GOOD, record])   # json.dumps writes it as the escape "\ud800"
    with pytest.raises(DataError) as e:
        jsonl(f)
    assert str(e.value) == (f"{f}:2: field {field!r} holds a lone surrogate U+D800 (an escape such as "
                            '"\\ud800" that is half of a pair), which is not text')


def test_jsonl_surrogate_pairs_and_line_separators_inside_strings_load(tmp_path):
    recs = [{"prompt": f"p{i} \U0001F600 \u2028 \x85 end", "chosen": "a", "rejected": "b"} for i in range(5)]
    f = tmp_path / "pairs.jsonl"   # raw U+2028 and U+0085 are legal inside JSON strings
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    assert sorted(p.prompt for p in _all_pairs(jsonl(f))) == [r["prompt"] for r in recs]
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))   # "\ud83d\ude00": a pair, not lone
    assert sorted(p.prompt for p in _all_pairs(jsonl(f))) == [r["prompt"] for r in recs]


def test_jsonl_bom_and_crlf_are_harmless(tmp_path):
    recs = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(5)]
    f = tmp_path / "pairs.jsonl"
    f.write_bytes(codecs.BOM_UTF8 + "".join(json.dumps(r) + "\r\n" for r in recs).encode())
    assert sorted(p.prompt for p in _all_pairs(jsonl(f))) == [f"p{i}" for i in range(5)]


def test_csv_bom_and_crlf_are_harmless(tmp_path):
    rows = [f'"Q{i}?",t,"t;t2",f' for i in range(5)]
    f = tmp_path / "TruthfulQA.csv"
    f.write_bytes(codecs.BOM_UTF8 + "\r\n".join(["Question,Best Answer,Correct Answers,Incorrect Answers",
                                                  *rows, ""]).encode())
    d = tqa(f)
    assert sorted((p.prompt, p.chosen) for p in _all_pairs(d)) == sorted(
        (f"Q{i}?", c) for i in range(5) for c in ("t", "t2"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("dataset", ["jsonl", "truthfulqa"])
def test_fifo_data_file_is_refused_without_waiting_for_a_writer(tmp_path, dataset, no_fallbacks):
    fifo = tmp_path / "data.fifo"
    os.mkfifo(fifo)
    with pytest.raises(DataError) as e:
        load_behavior(dataset=dataset, path=str(fifo), base_dir=None)
    assert str(e.value) == f"{fifo}: cannot read: not a regular file (a FIFO)"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_device_data_file_is_refused_unread():
    with pytest.raises(DataError, match=r"^/dev/zero: cannot read: not a regular file \(a character device\)$"):
        jsonl("/dev/zero")


def test_unknown_user_in_data_path(tmp_path, monkeypatch, no_fallbacks):
    with pytest.raises(DataError) as e:
        jsonl("~nosuchuser-loccheck/pairs.jsonl")
    assert e.value.key == "behavior.path"
    assert e.value.msg == ("cannot expand '~nosuchuser-loccheck' in '~nosuchuser-loccheck/pairs.jsonl': "
                           "no such user, or no home directory")
    monkeypatch.setenv("LOCCHECK_DATA_DIR", "~nosuchuser-loccheck/data")
    with pytest.raises(DataError, match="LOCCHECK_DATA_DIR: cannot expand '~nosuchuser-loccheck'"):
        load_behavior(dataset="truthfulqa", path=None, base_dir=None)


def test_data_path_too_long_to_look_up(tmp_path):
    long = tmp_path / ("x" * 300 + ".jsonl")
    with pytest.raises(DataError, match=r": cannot read: File name too long$"):
        jsonl(long)


def test_control_characters_in_a_data_path_are_escaped(tmp_path):
    bad = str(tmp_path / "no\x1b[2Kpe\nx.jsonl")
    with pytest.raises(DataError) as e:
        jsonl(bad)
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)
    assert "no\\x1b[2Kpe\\nx.jsonl" in str(e.value)


def test_missing_path_error_escapes_control_characters(tqa_csv, monkeypatch, tmp_path):
    monkeypatch.setenv("LOCCHECK_DATA_DIR", str(tqa_csv.parent))
    with pytest.raises(DataError) as record:
        load_behavior(dataset="truthfulqa", path="no\nloccheck: forged\x1b[2K.csv", base_dir=tmp_path,
                      max_questions=5)
    message = str(record.value)
    assert "\n" not in message and "\x1b" not in message and "forged\\x1b[2K.csv" in message


def test_jsonl_no_usable_pairs(tmp_path):
    f = _write(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "a"}])
    with pytest.raises(DataError, match=rf"^{re.escape(str(f))} yields no usable preference pairs$"):
        jsonl(f)


def test_too_few_questions_for_the_split(tmp_path):
    f = _write(tmp_path, [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(3)])
    with pytest.raises(DataError, match=r": 3 usable questions, but split \(0.6, 0.2, 0.2\) needs at least 4"):
        jsonl(f)
    d = jsonl(f, split=(2 / 3, 0.0, 1 / 3))   # an empty validation split is allowed when asked for
    assert [len(d.groups[s]) for s in ("train", "validation", "test")] == [2, 0, 1]
    with pytest.raises(ValueError, match="`split` test fraction must be positive"):
        jsonl(f, split=(1.0, 0.0, 0.0))   # the test split may never be empty


def test_input_validation(tmp_path):
    f = _write(tmp_path, [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(5)])
    with pytest.raises(ValueError, match="`dataset` must be 'truthfulqa', 'jsonl' or 'known_facts', got 'csv'"):
        load_behavior(dataset="csv", path=str(f), base_dir=None)
    with pytest.raises(ValueError, match="`split` fractions must sum to 1"):
        jsonl(f, split=(0.6, 0.2, 0.1))
    with pytest.raises(ValueError, match="`split` must be 3 non-negative fractions"):
        jsonl(f, split=(0.8, 0.2))
    with pytest.raises(ValueError, match="`split` must be 3 non-negative fractions"):
        jsonl(f, split=(1.2, -0.4, 0.2))
    with pytest.raises(ValueError, match="`max_questions` must be a positive int or None, got 0"):
        jsonl(f, max_questions=0)
    with pytest.raises(ValueError, match="`max_pairs_per_question` must be a positive int or None"):
        jsonl(f, max_pairs_per_question=1.5)
    with pytest.raises(ValueError, match="`split_seed` must be a non-negative int, got True"):
        jsonl(f, split_seed=True)


# ---------------------------------------------------------------- labelled answers (probing)

def test_truthfulqa_answers_are_every_answer_of_every_kept_question(tqa_csv):
    with open(tqa_csv, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    d = tqa(tqa_csv, max_questions=30, max_pairs_per_question=2)
    kept = [g for s in ("train", "validation", "test") for g in d.groups[s]]
    assert set(d.answers) == set(kept) and len(kept) == 30
    for g in kept:
        row = rows[int(g.removeprefix("tqa-"))]
        prompt, true, false = d.answers[g]
        assert prompt == row["Question"].strip()
        # the full lists the pairs are built from, not the capped pairs
        assert true == tuple(_dedupe([row["Best Answer"], *row["Correct Answers"].split(";")]))
        assert false == tuple(_dedupe(row["Incorrect Answers"].split(";")))
        assert true[0] == row["Best Answer"].strip()
    train = d.labelled("train")
    expected = [(g, d.answers[g][0], a, y) for g in d.groups["train"]
                for answers, y in ((d.answers[g][1], 1), (d.answers[g][2], 0)) for a in answers]
    assert train == expected
    assert {g for g, *_ in d.labelled("validation")} == set(d.groups["validation"])
    assert not {g for g, *_ in train} & set(d.groups["test"])
    # more answers than a capped pair list covers
    assert len(train) > 2 * len(d.groups["train"]) and {y for *_, y in train} == {0, 1}


def test_jsonl_answers_unique_in_first_appearance_order(tmp_path):
    recs = [{"prompt": "P0", "chosen": "a", "rejected": "b", "group": "g0"},
            {"prompt": "P0 again", "chosen": "c", "rejected": "b", "group": "g0"},
            {"prompt": "P0", "chosen": "a", "rejected": "d", "group": "g0"},
            {"prompt": "P0", "chosen": "x", "rejected": "x", "group": "g0"},   # labels nothing
            *({"prompt": f"P{i}", "chosen": "t", "rejected": "f"} for i in range(1, 5))]
    d = jsonl(_write(tmp_path, recs), split=(0.6, 0.2, 0.2), max_pairs_per_question=1)
    assert d.answers["g0"] == ("P0", ("a", "c"), ("b", "d"))
    assert d.answers["P1"] == ("P1", ("t",), ("f",))
    split = next(s for s in ("train", "validation", "test") if "g0" in d.groups[s])
    rows = [r for r in d.labelled(split) if r[0] == "g0"]
    assert rows == [("g0", "P0", "a", 1), ("g0", "P0", "c", 1), ("g0", "P0", "b", 0), ("g0", "P0", "d", 0)]


def test_labelled_input_validation(tmp_path):
    d = jsonl(_write(tmp_path, [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(5)]))
    with pytest.raises(ValueError, match="`split` must be one of train, validation, test, got 'val'"):
        d.labelled("val")
    # constructions without answers still work; asking for labels says what is missing
    bare = BehaviorData(d.train, d.validation, d.test, d.groups, d.source, d.sha256)
    assert bare.answers == {}
    with pytest.raises(ValueError, match="no `answers` for 3 train group"):
        bare.labelled("train")
