"""Where loccheck keeps what it computes once (converted model weights, later fitted edits)."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from loccheck.errors import LoccheckWarning
from loccheck.files import write_bytes_atomic


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


_CODE_IDENTITY: dict | None = None


def code_identity() -> dict:
    """What, besides the inputs, decides a computed number: loccheck's version and a sha256 of
    its own source files, and the versions of the libraries that compute (torch, transformers,
    peft, numpy). Part of every cache key, so a changed loccheck or library never serves a fit
    made by another one."""
    global _CODE_IDENTITY
    if _CODE_IDENTITY is None:
        from importlib.metadata import PackageNotFoundError, version

        import loccheck

        h = hashlib.sha256()
        root = Path(loccheck.__file__).parent
        for path in sorted(root.rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
        libs = {}
        for name in ("torch", "transformers", "peft", "numpy"):
            try:
                libs[name] = version(name)
            except PackageNotFoundError:
                libs[name] = None
        _CODE_IDENTITY = {"loccheck": loccheck.__version__, "source_sha256": h.hexdigest(), **libs}
    return dict(_CODE_IDENTITY)


def canonical_json(obj) -> str:
    """The one JSON spelling of `obj` that content hashes are taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


def content_key(obj) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


class FitCache:
    """Fitted-edit results stored under a content hash of everything that determines them.

    An entry is a JSON file holding its own key and a checksum of its record, so a truncated
    or edited file is detected, reported and refitted, never trusted. Writes are atomic.
    `refresh=True` ignores what is stored (and overwrites it).
    """

    def __init__(self, root: Path, refresh: bool = False):
        self.root = Path(root) / "fits"
        self.refresh = refresh

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        if self.refresh or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
            record = entry["record"]
            if entry["key"] != key or entry["checksum"] != content_key(record):
                raise ValueError("checksum mismatch")
            return record
        except (OSError, ValueError, KeyError, TypeError) as err:
            warnings.warn(f"cache entry {path} is corrupt ({err}); fitting it again",
                          LoccheckWarning, stacklevel=2)
            path.unlink(missing_ok=True)
            return None

    def put(self, key: str, record: dict) -> None:
        entry = {"key": key, "checksum": content_key(record), "record": record}
        write_bytes_atomic((json.dumps(entry, sort_keys=True, allow_nan=True) + "\n").encode(),
                           self._path(key))
