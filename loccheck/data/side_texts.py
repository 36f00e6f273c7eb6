"""Texts unrelated to the behaviour, on which an edit's side effects are measured: ROME's known
facts as sentences, a JSON list of strings, a JSONL of {"text"}, or a text file of lines."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from loccheck.data.known_facts import KNOWN_FACTS_FILE
from loccheck.data.sources import candidate_paths, json_document, path_kind, read_data_text
from loccheck.errors import DataError
from loccheck.userfiles import expand_user


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
    text, _ = read_data_text(file)
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
        for c in candidate_paths(path, base_dir):
            if path_kind(c) == "file":
                return c
        raise DataError(f"side-effect texts {path!r} not found", key="side_effects.path")
    env = os.environ.get("LOCCHECK_DATA_DIR")
    if env and path_kind(expand_user(env, key="side_effects.path") / KNOWN_FACTS_FILE) == "file":
        return expand_user(env) / KNOWN_FACTS_FILE
    raise DataError(f"side-effect metrics need texts: set side_effects.path, or LOCCHECK_DATA_DIR to a "
                    f"folder holding {KNOWN_FACTS_FILE}" + ("" if env else " (it is not set)"),
                    key="side_effects.path")


def _json_texts(file: Path, text: str) -> list[tuple[str, str | None]]:
    """(text, its fact's subject or None) of each item of a JSON list."""
    records = json_document(file, text, "side_effects.path")
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
