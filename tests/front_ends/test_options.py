"""loccheck.options: the shared option definitions (no torch, no pytest session)."""
from __future__ import annotations

import argparse

import pytest

from loccheck.options import MAX_N_NULL, OPTIONS, add_cli_options

N_NULL = next(o for o in OPTIONS if o.dest == "n_null")


def test_n_null_is_bounded_on_the_command_line_and_in_ini_files():
    parser = argparse.ArgumentParser()
    add_cli_options(parser)
    assert parser.parse_args(["--n-null", str(MAX_N_NULL)]).n_null == MAX_N_NULL
    convert = N_NULL.argparse_kwargs()["type"]
    with pytest.raises(argparse.ArgumentTypeError) as info:
        convert("99999999999999999999")
    assert str(info.value) == ("must be at most 10000 (each random location is a fitted edit, and "
                               "10000 of them resolve p to 1e-4), got 99999999999999999999")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^expected a whole number, got '9{36}\.\.\.$"):
        convert("9" * 5000)   # more digits than int() reads: the message stays short
    with pytest.raises(ValueError, match="^ini option loccheck_n_null: must be at most 10000 "):
        N_NULL.check(MAX_N_NULL + 1, "ini option loccheck_n_null")
    assert N_NULL.check(7, "ini option loccheck_n_null") == 7
