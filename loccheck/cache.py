"""Where loccheck keeps what it computes once, content-addressed: converted model weights, fitted
edits with their scores, activations. A cached result is served only for the inputs that made it.

What is opened by path (converted models, activations, the judge's model) stays in a local
folder; fit entries (small JSON records) can go to a shared store, an fsspec URL (s3://, gs://,
ftp://, ...), so that a team's GPU runs and its CI fit each edit once."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import threading
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from loccheck.errors import LoccheckError, LoccheckWarning
from loccheck.files import strict_json, write_bytes_atomic

MAX_ENTRY_BYTES = 1 << 30   # far above any fit's record (a 7B ceiling's vectors are ~10 MB)
# An unreachable store fails the checks before any work within this, not a socket's minutes;
# generous for a healthy remote store's first request (an S3 client finding its credentials).
STORE_TIMEOUT_S = 10.0


def store_url(where: str | os.PathLike) -> str | None:
    """`where` when it is the URL of a store other than this machine's file system (s3://,
    gs://, ftp://, memory://), else None: a path, or a file:// URL, is a folder here."""
    text = os.fspath(where)
    protocol = text.split("://", 1)[0] if "://" in text else None
    return None if protocol in (None, "file", "local") else text


def _local(where: str | os.PathLike) -> Path:
    """A path, or the path a file:// URL names."""
    text = os.fspath(where)
    for prefix in ("file://", "local://"):
        if text.startswith(prefix):
            return Path(text[len(prefix):])
    return Path(text)


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The local cache folder: the option, then LOCCHECK_CACHE_DIR, then $XDG_CACHE_HOME/loccheck,
    then ~/.cache/loccheck. Either of the first two that is a store's URL is passed over here:
    a store holds fit entries only (`cache_root`), what is opened by path stays on this machine."""
    for where in (explicit, os.environ.get("LOCCHECK_CACHE_DIR")):
        if where and store_url(where) is None:
            return _local(where)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "loccheck"


@dataclass(frozen=True)
class CacheRoot:
    """Where one run caches: `local`, the folder of what is opened by path (converted models,
    activations, the judge's model), and `store`, where `FitCache` keeps its entries: that
    folder, or an fsspec URL. It is the local folder wherever a path is wanted (`os.fspath`,
    `Path(root)`), so only FitCache needs to know of the store."""
    local: Path
    store: str

    def __fspath__(self) -> str:
        return str(self.local)


def cache_root(explicit: str | os.PathLike | None = None) -> CacheRoot:
    """The local folder (`cache_dir`, absolute: workers elsewhere resolve it the same) and the
    store: the option or LOCCHECK_CACHE_DIR when it is a store's URL, else that folder."""
    if isinstance(explicit, CacheRoot):
        return explicit
    local = cache_dir(explicit).absolute()
    where = explicit or os.environ.get("LOCCHECK_CACHE_DIR")
    return CacheRoot(local, (store_url(where) if where else None) or str(local))


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


def canonical_json(obj) -> str:
    """The one JSON spelling of `obj` that content hashes are taken over (strict JSON: NaN and
    infinities are spelled null)."""
    return json.dumps(strict_json(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_key(obj) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


class FitCache:
    """Fitted-edit results stored under a content hash of everything that determines them.

    An entry is a JSON file holding its own key and a checksum of its record, so a truncated
    or edited file is detected, reported and refitted, never trusted. In a local folder, writes
    are atomic; in a store (`root` a `CacheRoot` whose store is a URL, or a URL), an entry's
    bytes are a function of its key and record alone, so writers racing on one key write the
    same bytes, through a temporary name where the store renames. `refresh=True` ignores what
    is stored (and overwrites it). Picklable: a worker elsewhere opens the store itself.
    """

    def __init__(self, root: CacheRoot | str | os.PathLike, refresh: bool = False):
        store = root.store if isinstance(root, CacheRoot) else os.fspath(root)
        self.url = store_url(store)                  # None: a folder on this machine
        self.root = _local(store) / "fits" if self.url is None else None
        self.refresh = refresh
        self._fs = None                              # (file system, path of fits/ in it), when opened

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None}       # an open connection does not travel

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def _store_path(self, key: str) -> tuple:
        if self._fs is None:
            fs, path = open_store(self.url)
            self._fs = fs, posixpath.join(path, "fits")
        fs, fits = self._fs
        return fs, posixpath.join(fits, key[:2], f"{key}.json")

    def _where(self, key: str) -> str:
        """The entry's name in messages."""
        if self.url is None:
            return str(self._path(key))
        return "/".join((self.url.rstrip("/"), "fits", key[:2], f"{key}.json"))

    def get(self, key: str) -> dict | None:
        if self.refresh:
            return None
        try:
            data = self._read_local(key) if self.url is None else self._on_store(key, "read", read_from_store)
            if data is None:
                return None
            entry = json.loads(data.decode("utf-8"))
            record = entry["record"]
            if entry["key"] != key or entry["checksum"] != content_key(record):
                raise ValueError("checksum mismatch")
            return record
        except RecursionError:
            self._discard(key, "nested too deeply")
        except (OSError, ValueError, KeyError, TypeError) as err:
            self._discard(key, str(err))
        return None

    def _read_local(self, key: str) -> bytes | None:
        path = self._path(key)
        if not (path.exists() or path.is_symlink()):
            return None
        if not path.is_file():
            raise ValueError("not a file")
        if path.stat().st_size > MAX_ENTRY_BYTES:
            raise ValueError(f"larger than {MAX_ENTRY_BYTES} bytes")
        return path.read_bytes()

    def _on_store(self, key: str, doing: str, action):
        """`action(fs, path of the entry)`; once more on a fresh connection if the store fails
        (an FTP or SFTP server drops a connection left idle through a long fit), then one line.
        A ValueError is a corrupt entry, the caller's to handle."""
        for fresh in (False, True):
            if fresh:
                self._fs = None
            fs, path = self._store_path(key)
            try:
                return action(fs, path)
            except (LoccheckError, ValueError):
                raise
            except Exception as err:          # OSError, ftplib's own errors, an HTTP client's
                if fresh:
                    raise LoccheckError(f"cache folder {self.url} cannot be {doing}: "
                                        f"{err or type(err).__name__}") from None

    def discard(self, key: str, why: str) -> None:
        """Report and remove an entry that is intact but not what its key promises (a record
        of another layout, a score that is not a number)."""
        self._discard(key, why)

    def _discard(self, key: str, why: str) -> None:
        """A corrupt entry is reported and removed (so the refit can take its place), never
        trusted and never left to fail the next run."""
        from loccheck.errors import printable

        warnings.warn(f"cache entry {printable(self._where(key))} is corrupt ({printable(why)}); computing it again",
                      LoccheckWarning, stacklevel=3)
        if self.url is not None:
            fs, path = self._store_path(key)
            with contextlib.suppress(Exception):   # gone already (another run removed it), or not
                fs.rm(path, recursive=True)        # ours to remove: the refit's put replaces it
            return
        path = self._path(key)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def put(self, key: str, record: dict) -> None:
        entry = {"key": key, "checksum": content_key(record), "record": strict_json(record)}
        data = (json.dumps(entry, sort_keys=True, allow_nan=False) + "\n").encode()
        if self.url is None:
            write_bytes_atomic(data, self._path(key))
            return
        self._on_store(key, "written", lambda fs, path: write_to_store(fs, path, data))


def read_from_store(fs, path: str) -> bytes | None:
    """The bytes at `path` in an fsspec file system, None when there are none; ValueError for
    what cannot be an entry."""
    fs.invalidate_cache(posixpath.dirname(path))   # a listing read earlier hides what others wrote since
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    if info.get("type") != "file":
        raise ValueError("not a file")
    if (info.get("size") or 0) > MAX_ENTRY_BYTES:
        raise ValueError(f"larger than {MAX_ENTRY_BYTES} bytes")
    try:
        return fs.cat_file(path)
    except FileNotFoundError:          # removed since (by a run that found it corrupt)
        return None


def write_to_store(fs, path: str, data: bytes) -> None:
    """Put `data` at `path` in an fsspec file system. Where it renames (FTP, SFTP, SMB, HDFS),
    via a temporary name in real folders, so a reader never sees half an entry. Elsewhere put
    directly: an object store's put is all or nothing already, fsspec's copy-and-delete `mv`
    would only double it, and it has no folders to make (its makedirs would create a bucket).
    Writers racing on one key write the same bytes: whoever lands last changes nothing."""
    from fsspec.spec import AbstractFileSystem

    if type(fs).mv is AbstractFileSystem.mv:
        fs.pipe_file(path, data)
        return
    folder = posixpath.dirname(path)
    fs.makedirs(folder, exist_ok=True)
    tmp = posixpath.join(folder, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, path)
    except Exception:                  # a rename refused (ftplib's errors are no OSError) where a racing
        with contextlib.suppress(Exception):   # writer's entry stands already: the same bytes, done
            fs.rm_file(tmp)
        if not fs.exists(path):
            raise


def open_store(url: str) -> tuple:
    """The fsspec file system of a store's URL and the path in it. A backend that is not
    installed (s3fs for s3://) is one line naming the package; a file system that takes a
    `timeout` gets STORE_TIMEOUT_S, so no request of the run waits for a socket's default."""
    import inspect

    import fsspec

    protocol = url.split("://", 1)[0]
    try:
        options = {}
        if "::" not in protocol:      # a chained URL (simplecache::s3://...) is opened as it is
            accepts = inspect.signature(fsspec.get_filesystem_class(protocol).__init__).parameters
            options = {"timeout": STORE_TIMEOUT_S} if "timeout" in accepts else {}
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as err:
        package = _missing_package(err)
        hint = f"{protocol}:// needs the {package} package (pip install {package})" if package else str(err)
        raise LoccheckError(f"cache folder {url}: {hint}") from None
    except ValueError as err:         # an unknown protocol, a URL its file system cannot parse
        raise LoccheckError(f"cache folder {url}: {err}") from None
    except Exception as err:          # a file system that connects as it opens (ftp://): refused, timed out
        raise LoccheckError(f"cache folder {url} cannot be reached: {err or type(err).__name__}") from None


def _missing_package(err: ImportError) -> str | None:
    """The module fsspec could not import for a protocol (s3fs, gcsfs, paramiko), if it says."""
    cause = err
    while cause is not None:
        if isinstance(cause, ModuleNotFoundError) and cause.name:
            return cause.name.split(".")[0]
        cause = cause.__cause__ or cause.__context__
    return None


def check_store(root: CacheRoot) -> None:
    """Refuse, before any work and within STORE_TIMEOUT_S, a store that cannot be reached or
    written (nothing to do for a local folder: `files.check_writable_folder` proves that one).
    Proven by doing it: a probe file is put and removed. The probe runs in a daemon thread, so a
    file system that ignores timeouts cannot hold the run (or its exit) hostage."""
    url = store_url(root.store)
    if url is None:
        return
    outcome: list = []

    def probe() -> None:
        try:
            fs, path = open_store(url)
            name = posixpath.join(path, f".loccheck-probe-{uuid.uuid4().hex}.tmp")
            write_to_store(fs, name, b"")
            fs.rm_file(name)
            outcome.append(None)
        except Exception as err:      # whatever the backend raises is the one line
            outcome.append(err)

    worker = threading.Thread(target=probe, name="loccheck-store-probe", daemon=True)
    worker.start()
    worker.join(STORE_TIMEOUT_S)
    if not outcome:
        raise LoccheckError(f"cache folder {url} cannot be reached: no answer within {STORE_TIMEOUT_S:g} s")
    err = outcome[0]
    if isinstance(err, LoccheckError):
        raise err
    if err is not None:
        raise LoccheckError(f"cache folder {url} cannot be reached: {err or type(err).__name__}")
