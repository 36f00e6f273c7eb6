"""Where loccheck keeps what it computes once (converted model weights, later fitted edits)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Option, then LOCCHECK_CACHE_DIR, then $XDG_CACHE_HOME/loccheck, then ~/.cache/loccheck."""
    if explicit:
        return Path(explicit)
    if os.environ.get("LOCCHECK_CACHE_DIR"):
        return Path(os.environ["LOCCHECK_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "loccheck"


_FILE_HASHES: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]
