"""Where loccheck keeps what it computes once, content-addressed: converted model weights, fitted
edits with their scores, activations. A cached result is served only for the inputs that made it."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

from loccheck.errors import LoccheckWarning
from loccheck.files import strict_json, write_bytes_atomic

MAX_ENTRY_BYTES = 1 << 30   # far above any fit's record (a 7B ceiling's vectors are ~10 MB)


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
    """The one JSON spelling of `obj` that content hashes are taken over (strict JSON: NaN and
    infinities are spelled null)."""
    return json.dumps(strict_json(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


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
        if self.refresh or not (path.exists() or path.is_symlink()):
            return None
        try:
            if not path.is_file():
                raise ValueError("not a file")
            if path.stat().st_size > MAX_ENTRY_BYTES:
                raise ValueError(f"larger than {MAX_ENTRY_BYTES} bytes")
            entry = json.loads(path.read_text(encoding="utf-8"))
            record = entry["record"]
            if entry["key"] != key or entry["checksum"] != content_key(record):
                raise ValueError("checksum mismatch")
            return record
        except RecursionError:
            self._discard(path, "nested too deeply")
        except (OSError, ValueError, KeyError, TypeError) as err:
            self._discard(path, str(err))
        return None

    def discard(self, key: str, why: str) -> None:
        """Report and remove an entry that is intact but not what its key promises (a record
        of another layout, a score that is not a number)."""
        self._discard(self._path(key), why)

    @staticmethod
    def _discard(path: Path, why: str) -> None:
        """A corrupt entry is reported and removed (so the refit can take its place), never
        trusted and never left to fail the next run."""
        from loccheck.errors import printable

        warnings.warn(f"cache entry {printable(str(path))} is corrupt ({printable(why)}); computing it again",
                      LoccheckWarning, stacklevel=3)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def put(self, key: str, record: dict) -> None:
        entry = {"key": key, "checksum": content_key(record), "record": strict_json(record)}
        write_bytes_atomic((json.dumps(entry, sort_keys=True, allow_nan=False) + "\n").encode(),
                           self._path(key))
