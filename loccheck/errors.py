"""Exceptions and warnings. User-fixable input raises a LoccheckError subclass, whose str() is
the one line the CLI prints; programming errors raise built-ins.

An error about one claim field carries that field as data (`key`, dotted: "model.name"), so
the layer that knows the claim file can place it at file:line without parsing the message.

Messages quote file names, YAML keys and data the user supplied, so str() escapes control
characters (`printable`): a data file cannot print a second, forged `loccheck: ...` line.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path

# Control and format characters, line and paragraph separators (U+2028, U+2029, bidi
# overrides, ESC, CR, ...) and lone surrogates, which cannot even be printed as UTF-8.
_UNPRINTABLE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def printable(text: str) -> str:
    """`text` on one clean line: control and format characters escaped as Python writes them
    ("\\n", "\\x1b", "\\u2028"); every other character, é and 中 too, kept as it is."""
    return "".join(ch.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(ch) in _UNPRINTABLE else ch for ch in text)


class LoccheckError(Exception):
    """An error the user can fix (bad claim, missing file, unsupported model).

    `key` is the dotted claim field the error is about ("model.name"), or None."""

    def __init__(self, msg: str, *, key: str | None = None):
        super().__init__(msg)
        self.msg, self.key = msg, key

    def __str__(self) -> str:
        return printable(f"{self.key}: {self.msg}" if self.key else self.msg)


class ClaimError(LoccheckError):
    """A problem with a claim file, located at file:line:col and a dotted key path."""

    def __init__(self, path: Path | str | None, line: int | None, col: int | None, key: str, msg: str):
        super().__init__(msg, key=key or None)
        self.path, self.line, self.col = path, line, col

    def __str__(self) -> str:
        where = str(self.path) if self.path is not None else "<claim>"
        if self.line is not None:
            where += f":{self.line}" + (f":{self.col}" if self.col is not None else "")
        return printable(f"{where}: {self.key}: {self.msg}" if self.key else f"{where}: {self.msg}")


class DataError(LoccheckError):
    """A behaviour dataset is missing, unreadable or yields no usable pairs."""


class AdapterError(LoccheckError):
    """A model whose architecture no adapter supports, or a location outside the model."""


class LoccheckWarning(UserWarning):
    """A result that is legal but weak (for example a null too small for alpha)."""
