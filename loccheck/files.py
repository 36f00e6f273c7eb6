"""Atomic file writes: a reader never sees a half-written report, result or cache entry, and a
crash or kill leaves the old file (or none), never a partial one."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Write `data` to `path` via a temp file in the same folder and os.replace.

    A reader never sees a half-written file, and a crash leaves no partial output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write UTF-8 `text` with "\\n" line ends via a temp file in the same folder + os.replace."""
    return write_bytes_atomic(text.encode("utf-8"), path)


def write_json_atomic(obj, path: str | os.PathLike) -> Path:
    """Write `obj` as canonical JSON (indent 2, sorted keys, NaN allowed) plus a newline."""
    return write_text_atomic(json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n", path)
