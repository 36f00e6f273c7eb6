"""loccheck.userfiles: `~user` expansion and reads of user-named files (no torch)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from loccheck.errors import LoccheckError
from loccheck.userfiles import expand_user, read_regular_file


def test_expand_user():
    assert expand_user("~/x.jsonl", key="behavior.path") == Path.home() / "x.jsonl"
    assert expand_user("data/x.jsonl") == Path("data/x.jsonl")
    with pytest.raises(LoccheckError) as info:
        expand_user("~nosuchuser-loccheck/model", key="model.name")
    assert info.value.key == "model.name"
    assert str(info.value) == ("model.name: cannot expand '~nosuchuser-loccheck' in "
                               "'~nosuchuser-loccheck/model': no such user, or no home directory")


def test_read_regular_file(tmp_path):
    f = tmp_path / "claim.yaml"
    f.write_bytes(b"0123456789")
    assert read_regular_file(f) == b"0123456789"
    assert read_regular_file(f, 4) == b"0123"
    with pytest.raises(IsADirectoryError):
        read_regular_file(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "absent")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as info:
        read_regular_file(fifo)
    assert info.value.strerror == "not a regular file (a FIFO)"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_device_is_refused_unread():
    with pytest.raises(OSError) as info:
        read_regular_file("/dev/zero", 10)
    assert info.value.strerror == "not a regular file (a character device)"
