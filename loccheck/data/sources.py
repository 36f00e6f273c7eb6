"""Finding and reading the user's data files: a path from the claim (relative to the claim's
folder, then the working directory) or $LOCCHECK_DATA_DIR; reads that refuse anything but a
regular file; every problem a DataError naming the file. Standard library only."""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import sys
from pathlib import Path

from loccheck.errors import DataError, LoccheckError
from loccheck.userfiles import expand_user, read_regular_file


def candidate_paths(path: str, base_dir: Path | None) -> list[Path]:
    """Absolute path as is; a relative one against the claim's folder, then the CWD."""
    try:
        p = expand_user(path, key="behavior.path")
    except LoccheckError as err:   # every problem with the data is a DataError
        raise DataError(err.msg, key=err.key) from None
    if p.is_absolute():
        return [p]
    return ([Path(base_dir) / p] if base_dir is not None else []) + [Path.cwd() / p]


def path_kind(p: Path) -> str:
    """'folder', 'missing' or 'file'. A FIFO or device counts as a file and a path that cannot
    be looked up (too long, no permission) as there: reading it then says what is wrong."""
    try:
        return "folder" if p.is_dir() else "file" if p.exists() else "missing"
    except OSError:
        return "file"


def find_data_file(name: str, path: str | None, base_dir: Path | None) -> tuple[Path | None, list[str]]:
    """The data file: `path` (a file, or a folder holding `name`) when it is given, else
    $LOCCHECK_DATA_DIR/`name`; and why each place tried failed. A `path` that names nothing is
    an error (DataError about behavior.path), never replaced by the data folder's copy: the
    claim would silently be about other data."""
    tried: list[str] = []
    if path is not None:
        for c in candidate_paths(path, base_dir):
            if path_kind(c) == "folder" and path_kind(c / name) == "file":
                return c / name, tried   # a data folder is fine too
            if path_kind(c) == "file":
                return c, tried
        where = " or ".join(f"'{c}'" for c in candidate_paths(path, base_dir))
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
    if path_kind(file) == "file":
        return file
    tried.append(f"LOCCHECK_DATA_DIR={env!r} has no {name}")
    return None


def read_data_text(path: Path) -> tuple[str, str]:
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


def json_document(file: Path, text: str, key: str):
    """A whole JSON file's value; invalid JSON is a DataError about claim field `key`."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        why = err if isinstance(err, ValueError) else "nested too deeply"
        raise DataError(f"{file}: invalid JSON: {why}", key=key) from None


def json_record(line: str, where: str) -> dict:
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


def check_unicode(text: str, what: str) -> None:
    # JSON's "\ud800" escape yields a lone surrogate, which no tokenizer or file takes
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(f"{what} holds a lone surrogate U+{ord(text[err.start]):04X} (an escape such "
                        "as \"\\ud800\" that is half of a pair), which is not text") from None


def shorten(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
