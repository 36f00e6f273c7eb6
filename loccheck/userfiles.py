"""Paths and files the user names (claim files, data files, model folders): `~user` expansion
that fails as a user error, and reads that refuse anything but a regular file.

A FIFO, /dev/zero or a terminal named as a claim or data file would otherwise block the read
forever or fill the memory; these helpers make such a path one error line instead.
Standard library only: the pytest plugin imports this module through loccheck.claim.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from loccheck.errors import LoccheckError

_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def expand_user(path: str | os.PathLike, *, key: str | None = None) -> Path:
    """``Path(path).expanduser()``; a '~user' naming no user (or '~' with no home directory)
    raises LoccheckError about claim field `key` ("behavior.path") instead of RuntimeError."""
    try:
        return Path(path).expanduser()
    except RuntimeError:   # pathlib: "Could not determine home directory."
        user = Path(path).parts[0]
        raise LoccheckError(f"cannot expand {user!r} in {str(path)!r}: no such user, or no home "
                            "directory", key=key) from None


def read_regular_file(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file `path`, at most `max_bytes` of them (all when None).

    Anything else raises OSError saying what it is ("not a regular file (a FIFO)"; a folder
    raises IsADirectoryError). The file is opened without blocking, so a FIFO with no writer
    cannot hang the open, and checked with fstat, so the file checked is the file read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a file")
            raise OSError(errno.EINVAL, f"not a regular file ({kind})", str(path))
        return fh.read() if max_bytes is None else fh.read(max_bytes)
