"""A shared cache: the fit cache in an fsspec store (memory://, a non-local file system; a store
that renames; file://; a plain path) reads back what was put, throws a corrupt entry away, and
takes racing writers of one key; a store that cannot be reached or has no backend installed is
one line within a bounded time, before any work."""
from __future__ import annotations

import importlib.util
import json
import pickle
import socket
import threading
import time
import uuid
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from loccheck import cache as cache_module
from loccheck.cli import main
from loccheck.cache import CacheRoot, FitCache, cache_dir, cache_root, check_store, content_key
from loccheck.errors import LoccheckError, LoccheckWarning
from loccheck.testing import claim_text

KEY = "ab" * 32
RECORD = {"location": ["L0H0"], "gain": 0.25, "curve": [1.0, float("nan")], "note": "é"}


class RenamingMemoryFileSystem(MemoryFileSystem):
    """A memory store that moves a file by renaming it, as FTP and SFTP do: the temp-then-move path."""
    protocol = "renamingmemory"
    store: dict = {}
    pseudo_dirs = [""]
    moves: list = []

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("renamingmemory://"))

    def mv(self, path1, path2, **kwargs):
        self.moves.append((path1, path2))
        self.store[self._strip_protocol(path2)] = self.store.pop(self._strip_protocol(path1))


fsspec.register_implementation("renamingmemory", RenamingMemoryFileSystem, clobber=True)


@pytest.fixture(params=["memory", "renaming", "file", "path"])
def store(request, tmp_path):
    """The store's location, as a user names it."""
    name = f"loccheck-test-{uuid.uuid4().hex}"
    where = {"memory": f"memory://{name}", "renaming": f"renamingmemory://{name}",
             "file": f"file://{tmp_path}/{name}", "path": tmp_path / name}[request.param]
    yield where
    if request.param in ("memory", "renaming"):
        fs, path = fsspec.core.url_to_fs(where)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def entry_path(where, key: str = KEY) -> tuple:
    fs, path = fsspec.core.url_to_fs(str(where))
    return fs, f"{path}/fits/{key[:2]}/{key}.json"


def files_in(where) -> list[str]:
    fs, path = fsspec.core.url_to_fs(str(where))
    return sorted(fs.find(path)) if fs.exists(path) else []


def test_round_trip(store):
    cache = FitCache(store)
    assert cache.get(KEY) is None
    cache.put(KEY, RECORD)
    expected = {**RECORD, "curve": [1.0, None]}           # strict JSON: NaN reads back as null
    assert cache.get(KEY) == expected
    assert pickle.loads(pickle.dumps(cache)).get(KEY) == expected   # as a Ray worker gets it
    assert FitCache(store, refresh=True).get(KEY) is None
    fs, path = entry_path(store)
    assert files_in(store) == [path]                    # no temporary file left behind


@pytest.mark.parametrize("damage", ["truncated", "not-utf8", "checksum", "directory"])
def test_a_corrupt_entry_is_reported_and_removed(store, damage):
    cache = FitCache(store)
    cache.put(KEY, RECORD)
    fs, path = entry_path(store)
    good = fs.cat_file(path)
    if damage == "directory":
        fs.rm_file(path)
        fs.makedirs(path, exist_ok=True)
        fs.pipe_file(f"{path}/inside", b"{}")
    else:
        entry = json.loads(good)
        fs.pipe_file(path, {"truncated": good[:40], "not-utf8": b"\xff\xfe" + good,
                            "checksum": json.dumps({**entry, "checksum": content_key({})}).encode()}[damage])
    with pytest.warns(LoccheckWarning, match="is corrupt"):
        assert cache.get(KEY) is None
    assert not fs.exists(path)
    cache.put(KEY, RECORD)                                # the refit takes its place
    assert fs.cat_file(path) == good


def test_a_store_that_renames_is_written_through_a_temporary_name():
    url = f"renamingmemory://loccheck-test-{uuid.uuid4().hex}"
    FitCache(url).put(KEY, RECORD)
    (tmp, final), = RenamingMemoryFileSystem.moves[-1:]
    assert final == entry_path(url)[1] and tmp.startswith(final.rpartition("/")[0] + "/.") and tmp.endswith(".tmp")


def test_writers_racing_on_one_key_leave_one_sound_entry(store):
    start = threading.Barrier(8)
    errors = []

    def write() -> None:
        try:
            own = FitCache(store)                         # each writer its own cache, as processes have
            start.wait()
            own.put(KEY, RECORD)
        except Exception as err:                          # noqa: BLE001  (reported below)
            errors.append(err)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    fs, path = entry_path(store)
    assert files_in(store) == [path]
    assert FitCache(store).get(KEY) == {**RECORD, "curve": [1.0, None]}


def test_a_dropped_connection_is_opened_again_once(monkeypatch):
    url = f"memory://loccheck-test-{uuid.uuid4().hex}"
    cache = FitCache(url)
    cache.put(KEY, RECORD)
    read, calls = cache_module.read_from_store, []

    def hung_up_once(fs, path):
        calls.append(path)
        if len(calls) == 1:
            raise ConnectionResetError("the server hung up")
        return read(fs, path)

    monkeypatch.setattr(cache_module, "read_from_store", hung_up_once)
    assert cache.get(KEY) == {**RECORD, "curve": [1.0, None]} and len(calls) == 2

    def hung_up(fs, path):
        raise ConnectionResetError("the server hung up")

    monkeypatch.setattr(cache_module, "read_from_store", hung_up)
    with pytest.raises(LoccheckError, match=r"^cache folder memory://\S+ cannot be read: the server hung up$"):
        cache.get(KEY)                                    # a store that fails is no corrupt entry
    monkeypatch.undo()
    assert cache.get(KEY) is not None                     # so the entry is still there


def test_a_store_url_keeps_local_artifacts_in_the_default_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCCHECK_CACHE_DIR", str(tmp_path / "local"))
    assert cache_root("memory://team") == CacheRoot(tmp_path / "local", "memory://team")
    assert cache_dir("memory://team") == tmp_path / "local"
    assert cache_root(f"file://{tmp_path}/x") == CacheRoot(tmp_path / "x", str(tmp_path / "x"))
    assert cache_root(tmp_path / "y") == CacheRoot(tmp_path / "y", str(tmp_path / "y"))
    monkeypatch.setenv("LOCCHECK_CACHE_DIR", "s3://bucket/loccheck")   # the variable may name a store too
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == CacheRoot(tmp_path / "xdg" / "loccheck", "s3://bucket/loccheck")
    assert Path(cache_root("memory://team")) / "models" == tmp_path / "xdg" / "loccheck" / "models"


# --- a store that cannot be used: one line, bounded time, nothing written -------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]                         # nothing listens once it is closed


@pytest.fixture
def silent_server():
    """A port that accepts connections and never says a word (FTP waits for a greeting)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def test_a_store_where_nothing_listens_fails_at_once():
    start = time.monotonic()
    with pytest.raises(LoccheckError, match=r"^cache folder ftp://127\.0\.0\.1:\d+/cache cannot be reached: "
                                            r".*Connection refused"):
        check_store(cache_root(f"ftp://127.0.0.1:{closed_port()}/cache"))
    assert time.monotonic() - start < 2


def test_a_store_that_never_answers_fails_within_the_timeout(silent_server, monkeypatch):
    monkeypatch.setattr(cache_module, "STORE_TIMEOUT_S", 1.0)
    start = time.monotonic()
    with pytest.raises(LoccheckError, match="cannot be reached: (no answer within 1 s|timed out)"):
        check_store(cache_root(f"ftp://127.0.0.1:{silent_server}/cache"))
    assert time.monotonic() - start < 3


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_a_store_whose_backend_is_missing_names_the_package():
    with pytest.raises(LoccheckError, match=r"^cache folder s3://bucket/x: s3:// needs the s3fs package "
                                            r"\(pip install s3fs\)$"):
        check_store(cache_root("s3://bucket/x"))
    with pytest.raises(LoccheckError, match="pip install s3fs"):   # and so does the cache itself
        FitCache("s3://bucket/x").get(KEY)


def test_a_reachable_store_is_checked_without_a_trace():
    url = f"memory://loccheck-test-{uuid.uuid4().hex}"
    check_store(cache_root(url))
    assert [p for p in files_in(url) if "probe" in p] == []


@pytest.fixture
def claim_file(tmp_path, monkeypatch):
    """A claim whose model and data do not exist: the store is refused before they are looked at."""
    monkeypatch.setenv("LOCCHECK_CACHE_DIR", str(tmp_path / "local"))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(claim_text(tmp_path / "no-model", tmp_path / "no-pairs.jsonl", ["L1H2"], n=19))
    return path


def refused_in_one_line(claim_file, capsys, url: str) -> tuple[str, float]:
    capsys.readouterr()
    start = time.monotonic()
    assert main(["verify", str(claim_file), "--cache-dir", url, "--quiet"]) == 2
    seconds = time.monotonic() - start
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and captured.out == "" and "Traceback" not in captured.err, captured
    tmp_path = claim_file.parent
    assert not (tmp_path / "reports").exists()                                  # no report
    assert not [p for p in (tmp_path / "local").rglob("*") if p.is_file()]      # nothing cached
    return lines[0], seconds


def test_cli_refuses_a_store_where_nothing_listens(claim_file, capsys):
    url = f"ftp://127.0.0.1:{closed_port()}/cache"
    line, seconds = refused_in_one_line(claim_file, capsys, url)
    assert line.startswith(f"loccheck: error: {claim_file}: cache folder {url} cannot be reached: ")
    assert seconds < 3


def test_cli_refuses_a_store_that_never_answers(claim_file, capsys, silent_server, monkeypatch):
    monkeypatch.setattr(cache_module, "STORE_TIMEOUT_S", 1.0)
    line, seconds = refused_in_one_line(claim_file, capsys, f"ftp://127.0.0.1:{silent_server}/cache")
    assert "cannot be reached" in line and seconds < 4


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_cli_names_the_package_a_store_needs(claim_file, capsys):
    line, _ = refused_in_one_line(claim_file, capsys, "s3://bucket/loccheck")
    assert line.endswith("cache folder s3://bucket/loccheck: s3:// needs the s3fs package (pip install s3fs)")


@pytest.mark.slow   # fits edits on a tiny model (torch)
def test_a_second_run_against_a_shared_store_fits_nothing(known_llama, tmp_path, monkeypatch):
    from loccheck.claim import parse_claim
    from loccheck.run.verify import verify

    model_dir, pairs = known_llama
    probe = "heuristic: {method: probe, top_k: 2}\n"      # its activations are cached by path
    claim = parse_claim(claim_text(model_dir, pairs, ["L1H2", "L0H0"], n=3, alpha=0.1, stop="full", extra=probe),
                        path=tmp_path / "shared.yaml")
    url = f"memory://loccheck-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("LOCCHECK_CACHE_DIR", str(tmp_path / "gpu-box"))
    first = verify(claim, out_dir=tmp_path / "a", cache_dir=url, progress=False)
    assert first.n_fitted > 0
    assert list((tmp_path / "gpu-box" / "activations").glob("*.npy"))   # local artifacts stay local
    assert not (tmp_path / "gpu-box" / "fits").exists()                 # the fits went to the store
    assert len([p for p in files_in(url) if p.endswith(".json")]) >= first.n_fitted

    monkeypatch.setenv("LOCCHECK_CACHE_DIR", str(tmp_path / "ci-box"))   # another machine, same store
    second = verify(claim, out_dir=tmp_path / "b", cache_dir=url, progress=False)
    assert second.n_fitted == 0
    assert (tmp_path / "a" / "result.json").read_bytes() == (tmp_path / "b" / "result.json").read_bytes()
    assert not (tmp_path / "ci-box" / "fits").exists()
