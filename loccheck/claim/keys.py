"""Key paths into a claim: ('edits', 0, 'tau') and its dotted spelling 'edits[0].tau', and where a
path's value starts in the YAML (or its nearest parent's)."""
from __future__ import annotations

import re

KeyPath = tuple[str | int, ...]
Pos = tuple[int, int]  # (line, col), 1-based


def dotted(loc: KeyPath) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_KEY = re.compile(r"[^.\[\]]+(\[[0-9]+\])*(\.[^.\[\]]+(\[[0-9]+\])*)*")
_PART = re.compile(r"([^.\[\]]+)|\[([0-9]+)\]")


def parse_key(key: str) -> KeyPath:
    """'edits[0].tau' → ('edits', 0, 'tau')."""
    if _KEY.fullmatch(key) is None:
        raise ValueError(f"`key` must look like 'edits[0].learning_rate' or 'location.sites[1]', got {key!r}")
    return tuple(m[1] if m[1] is not None else int(m[2]) for m in _PART.finditer(key))


def lookup(positions: dict[KeyPath, Pos], loc: KeyPath) -> tuple[int | None, int | None]:
    for n in range(len(loc), -1, -1):  # fall back to the nearest parent present in the file
        if loc[:n] in positions:
            return positions[loc[:n]]
    return None, None
