"""loccheck.options: the shared option definitions (no torch, no pytest session)."""
from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from loccheck.options import MAX_N_NULL, OPTIONS, add_cli_options, settings_from_cli, settings_from_pytest

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


def _pytest_config(tmp_path, flags: dict, ini: dict):
    """What settings_from_pytest reads of a pytest config: flags, an ini file in tmp_path/project."""
    return SimpleNamespace(invocation_params=SimpleNamespace(dir=tmp_path / "here"),
                           inipath=tmp_path / "project" / "tox.ini", rootpath=tmp_path / "project",
                           getoption=lambda name: flags.get(name), getini=lambda name: ini.get(name, ""))


def test_a_cache_dir_url_is_kept_as_it_is(tmp_path):
    parser = argparse.ArgumentParser()
    add_cli_options(parser)
    for url in ("s3://bucket/loccheck", "gs://b/x", "file:///srv/cache", "memory://team"):
        assert settings_from_cli(parser.parse_args(["--cache-dir", url])).cache_dir == url
    assert settings_from_cli(parser.parse_args(["--cache-dir", "c"])).cache_dir == Path("c")
    ini = _pytest_config(tmp_path, {}, {"loccheck_cache_dir": "s3://bucket/loccheck"})
    assert settings_from_pytest(ini).cache_dir == "s3://bucket/loccheck"         # not joined onto the ini's folder
    flag = _pytest_config(tmp_path, {"loccheck_cache_dir": "gs://b/x"}, {})
    assert settings_from_pytest(flag).cache_dir == "gs://b/x"
    paths = _pytest_config(tmp_path, {}, {"loccheck_cache_dir": "ci-cache"})
    assert settings_from_pytest(paths).cache_dir == tmp_path / "project" / "ci-cache"   # paths as before
