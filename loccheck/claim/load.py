"""Reading a claim file: bytes refused unread when they cannot be a claim, the YAML read with its
positions, free text checked, then validated into a `Claim`. No torch here: the pytest plugin
imports this module."""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from loccheck.claim.keys import KeyPath, dotted
from loccheck.claim.model import Claim, describe_value, validate_claim
from loccheck.claim.yaml_positions import read_yaml
from loccheck.errors import ClaimError, printable
from loccheck.userfiles import read_regular_file


MAX_CLAIM_BYTES = 1 << 20   # a claim is a few dozen lines; refuse /dev/zero-sized input unread


def load_claim(path: str | os.PathLike) -> Claim:
    """Read, parse and validate a claim file; any problem raises one-line ClaimError."""
    path = Path(path)
    try:
        raw = read_regular_file(path, MAX_CLAIM_BYTES + 1)   # a FIFO or device is refused unread
    except OSError as err:
        raise ClaimError(path, None, None, "", f"cannot read claim file: {err.strerror or err}") from None
    if len(raw) > MAX_CLAIM_BYTES:
        raise ClaimError(path, None, None, "", f"claim file is larger than {MAX_CLAIM_BYTES} bytes (1 MiB); "
                         "a claim is a few dozen lines")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ClaimError(path, line, None, "", f"claim file is not valid UTF-8 (byte {err.start})") from None
    return parse_claim(text, path)


def parse_claim(text: str, path: str | os.PathLike | None = None) -> Claim:
    """Parse and validate claim YAML text; `path` is only used in messages and `Claim.name`."""
    path = Path(path) if path is not None else None
    if path is not None:
        _check_name(path)
    if not text.strip():
        raise ClaimError(path, None, None, "", "claim file is empty")
    data, values, keys = read_yaml(text, path)
    if not isinstance(data, dict):
        raise ClaimError(path, *values[()], "", f"claim file must be a mapping (key: value lines), got {describe_value(data)}")
    _check_free_text(data, (), path, values)
    return validate_claim(data, path, values, keys)


# Free text a claim carries into its report, the model's prompts and terminals.
TEXT_KEYS = ("claim", "citation", "notes", "system_prompt")
_BIDI = {*range(0x202A, 0x202F), *range(0x2066, 0x206A)}   # embeddings, overrides and isolates


def _check_free_text(data, loc: KeyPath, path: Path | None, values: dict) -> None:
    """Refuse, in the free-text fields (TEXT_KEYS, at any depth), characters that are no text:
    control characters but tab and line feed (NUL, ESC, CR, DEL, C1), the line and paragraph
    separators U+2028/U+2029, and bidirectional overrides. YAML escapes ("\\0", "\\e", "\\L")
    make them; in a report or a terminal they hide or forge what is shown."""
    if isinstance(data, dict):
        for key, value in data.items():
            _check_free_text(value, loc + (key,), path, values)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _check_free_text(value, loc + (i,), path, values)
    elif isinstance(data, str) and loc and loc[-1] in TEXT_KEYS:
        bad = next((ch for ch in data if ord(ch) in _BIDI or ch not in "\t\n" and
                    unicodedata.category(ch) in ("Cc", "Zl", "Zp")), None)
        if bad is not None:
            line, col = values.get(loc, (None, None))
            raise ClaimError(path, line, col, dotted(loc), f"character U+{ord(bad):04X} "
                             f"({printable(bad)}) is not allowed in free text; write plain text")


def _check_name(path: Path) -> None:
    """A claim's name, its file name without the extension, names its report folder
    (reports/NAME/): refuse one that is not a plain folder name ('..' from '...yaml')."""
    name = path.stem
    if not name or name.startswith(".") or printable(name) != name:
        raise ClaimError(path, None, None, "", f"the claim's name {name!r} (its file name without "
                         "the extension) names its report folder, so it must not be empty, start "
                         "with '.' or hold control characters; rename the file")
