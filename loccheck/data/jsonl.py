"""A JSONL file of preference pairs, one {"prompt", "chosen", "rejected", optional "group"} per
line, grouped by question (the group, else the prompt)."""
from __future__ import annotations

from pathlib import Path

from loccheck.data.pairs import PreferencePair, pair_answers
from loccheck.data.sources import candidate_paths, check_unicode, json_record, path_kind, read_data_text, shorten
from loccheck.errors import DataError

_JSONL_FIELDS = ("prompt", "chosen", "rejected")


def read_jsonl(path: str | None, base_dir: Path | None):
    if path is None:
        raise DataError("behavior.path is required for dataset 'jsonl'")
    found = next((c for c in candidate_paths(path, base_dir) if path_kind(c) != "missing"), None)
    if found is None:
        where = ", ".join(f"'{c}'" for c in candidate_paths(path, base_dir))
        raise DataError(f"preference pairs file {path!r} not found (tried {where})")
    text, sha = read_data_text(found)
    by_group: dict[str, list[PreferencePair]] = {}   # insertion order = order of first appearance
    first_seen: dict[str, tuple[str, int]] = {}      # prompt (stripped) -> (its group, line)
    # split on "\n" only: str.splitlines() would also split at a U+2028 inside a JSON string
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{found}:{n}"
        obj = json_record(line, where)
        for key in _JSONL_FIELDS + (("group",) if "group" in obj else ()):
            if key not in obj:
                raise DataError(f"{where}: missing field {key!r}")
            if not isinstance(obj[key], str):
                raise DataError(f"{where}: field {key!r} must be a string")
            if not obj[key].strip():
                raise DataError(f"{where}: field {key!r} must not be empty")
            check_unicode(obj[key], f"{where}: field {key!r}")
        group = obj.get("group", obj["prompt"])
        # Splits are made over groups: one question under two groups could sit in train and
        # test at once, and the verdict would be computed on questions the edits trained on.
        seen_group, seen_line = first_seen.setdefault(obj["prompt"].strip(), (group, n))
        if seen_group != group:
            raise DataError(f"{where}: prompt {shorten(obj['prompt'])} is in group {group!r} here but in "
                            f"group {seen_group!r} on line {seen_line}; one question in two groups can "
                            "land in two splits (a leak): give all its pairs one group")
        pairs = by_group.setdefault(group, [])
        if obj["chosen"] != obj["rejected"]:   # no preference to learn from
            pairs.append(PreferencePair(obj["prompt"], obj["chosen"], obj["rejected"], group))
    if not by_group:
        raise DataError(f"{found}: no records (the file is empty)")
    return [(g, pairs, pair_answers(pairs)) for g, pairs in by_group.items()], str(found), sha
