"""loccheck.errors: every error message is one clean line, whatever the user's input held."""
from __future__ import annotations

import pytest

from loccheck.errors import ClaimError, DataError, LoccheckError, printable


@pytest.mark.parametrize("text, expected", [
    ("line\nloccheck: forged", "line\\nloccheck: forged"),
    ("\x1b[2K\rback\t", "\\x1b[2K\\rback\\t"),
    ("sep\u2028par\u2029", "sep\\u2028par\\u2029"),         # Zl, Zp: line breaks to some terminals
    ("bidi \u202eevil\u202c, zero\u200bwidth", "bidi \\u202eevil\\u202c, zero\\u200bwidth"),   # Cf
    ("lone \ud800", "lone \\ud800"),                          # Cs: cannot even be written as UTF-8
    ("\x85nel \x7f", "\\x85nel \\x7f"),
    ("café 中文 Ελληνικά naïve \U0001F600 a\\nb", "café 中文 Ελληνικά naïve \U0001F600 a\\nb"),
])
def test_printable(text, expected):
    assert printable(text) == expected
    assert printable(expected) == expected   # escaping twice changes nothing


def test_errors_are_one_clean_line():
    err = ClaimError("claims/bad\nname.yaml", 3, 5, "weird\x1bkey", "value 'x\r\ny' is bad")
    assert str(err) == "claims/bad\\nname.yaml:3:5: weird\\x1bkey: value 'x\\r\\ny' is bad"
    assert err.msg == "value 'x\r\ny' is bad"   # the raw message stays for callers that re-wrap it
    assert str(DataError("pairs\u2028.jsonl: no records", key="behavior.path")) == \
        "behavior.path: pairs\\u2028.jsonl: no records"
    assert str(LoccheckError("tab\there")) == "tab\\there"
