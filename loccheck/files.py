"""Atomic file writes: a reader never sees a half-written report, result or cache entry, and a
crash or kill leaves the old file (or none), never a partial one."""
from __future__ import annotations

import json
import math
import os
import shutil
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


def strict_json(obj):
    """`obj` with every NaN and infinity replaced by None (JSON's null), so what is written is
    valid JSON (RFC 8259 has no NaN) and reads back equal to what was written."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json_atomic(obj, path: str | os.PathLike) -> Path:
    """Write `obj` as strict JSON (indent 2, sorted keys; NaN and infinities as null) and a newline."""
    return write_text_atomic(json.dumps(strict_json(obj), indent=2, sort_keys=True, allow_nan=False) + "\n", path)


def check_writable_folder(path: str | os.PathLike, what: str) -> None:
    """Refuse, before any work, a folder where files cannot be made as `write_bytes_atomic`
    makes them: a path through a regular file, a folder without write permission, or a file
    system that refuses new files whatever the permissions say (/proc, /sys, a read-only mount;
    root passes every `os.access` check). Proven by doing it: the missing part of the path (a
    temporary stand-in for it) and a file in it are created, renamed and removed, so nothing is
    left behind."""
    from loccheck.errors import LoccheckError

    path = Path(path)
    probe = path
    while not probe.exists():          # the nearest part of the path that exists
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        detail = "is not a folder" if probe == path else f"passes through {str(probe)!r}, a file"
        raise LoccheckError(f"{what} {str(path)!r} {detail}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LoccheckError(f"{what} {str(path)!r} is not writable ({str(probe)!r} does not allow it)")
    made, tmp = None, None
    try:
        folder = probe
        if probe != path:              # mkdir -p would create a folder here: make a stand-in
            folder = made = Path(tempfile.mkdtemp(dir=probe, prefix=".loccheck-probe-"))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".loccheck-probe-", suffix=".tmp")
        os.close(fd)
        os.replace(tmp, tmp + ".renamed")
        tmp += ".renamed"
    except OSError as err:
        raise LoccheckError(f"{what} {str(path)!r} cannot be written: making a file in {str(probe)!r} "
                            f"fails ({err.strerror or err})") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
