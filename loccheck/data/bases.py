"""The user's files behind a subspace claim: a basis of k directions in a transformer's
residual stream (`read_basis`), or a sparse autoencoder's decoder matrix, whose rows are its
latents' directions (`read_dictionary`).

Both come as .npy, .npz, .safetensors or .pt/.pth files and are read the same way: the bytes
once (their sha256 goes into the cache key and the report), refusing anything but a regular
file, then parsed from memory. Every problem is one DataError line about the claim field that
names the file. numpy only at import; safetensors and torch are imported by the formats that
need them.
"""
from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loccheck.errors import DataError, LoccheckError
from loccheck.userfiles import expand_user, read_regular_file

MAX_FILE_BYTES = 4 << 30   # every published SAE decoder matrix fits; refuse /dev/zero-sized input
RANK_RTOL = 1e-6           # see orthonormal_rows
_LISTED_KEYS = 10


@dataclass(frozen=True, eq=False)   # eq=False: an ndarray field has no boolean ==
class Basis:
    """A k-dimensional subspace of the residual stream, from a user's file."""
    vectors: np.ndarray   # (k, width) float64, orthonormal rows spanning the file's rows
    sha256: str           # of the file's bytes
    path: str             # the file as the claim names it

    @property
    def dim(self) -> int:
        return self.vectors.shape[0]


@dataclass(frozen=True, eq=False)
class Dictionary:
    """A sparse autoencoder's decoder, from a user's file; latent i's direction is row i."""
    decoder: np.ndarray   # (n_latents, width) float32
    sha256: str           # of the file's bytes
    path: str             # the file as the claim names it
    transposed: bool      # the file stored it (width, n_latents), as a decoder Linear's weight

    @property
    def n_latents(self) -> int:
        return self.decoder.shape[0]

    def basis(self, latents: Sequence[int], *, field: str) -> np.ndarray:
        """(k, width) float64 orthonormal rows spanning the decoder rows of `latents`, in
        `orthonormal_rows`' form (the first row is the first latent's direction, normalised).
        A latent outside the dictionary, named twice, dead (a zero row) or in the span of the
        others raises DataError about claim field `field`."""
        n = self.n_latents
        outside = [i for i in latents if not 0 <= i < n]
        if outside:
            raise DataError(f"{self.path}: latent(s) {_listing(outside)} outside the dictionary's "
                            f"{n} latents (0 to {n - 1})", key=field)
        repeated = [i for i, count in Counter(latents).items() if count > 1]
        if repeated:
            raise DataError(f"{self.path}: latent(s) {_listing(repeated)} named more than once", key=field)
        dead = [i for i in latents if not self.decoder[i].any()]
        if dead:
            raise DataError(f"{self.path}: the decoder row of latent(s) {_listing(dead)} is all "
                            "zeros, so it has no direction", key=field)
        what = f"{self.path}: the decoder rows of latents [{_listing(latents)}]"
        return orthonormal_rows(self.decoder[list(latents)], what=what, field=field)


def read_basis(path: str | Path, *, key: str | None, width: int, field: str,
               base_dir: str | Path | None = None) -> Basis:
    """The subspace spanned by the vectors in the file `path`.

    A (width,) array is one direction; a (k, width) array is k directions, one a row. `key`
    names the array in an .npz, .safetensors or .pt dict (needed only when it holds several).
    A relative `path` is taken from `base_dir`, the claim's folder, when given. Any problem
    raises a one-line DataError about claim field `field` (e.g. "location.subspace.basis").
    """
    array, where, sha256 = _load_matrix(path, key=key, field=field, base_dir=base_dir)
    if array.ndim == 1 and array.shape[0] == width:
        array = array[None, :]   # (1, width)
    elif array.ndim != 2 or array.shape[1] != width:
        if array.ndim == 2 and array.shape[0] == width:
            raise DataError(f"{where} has shape {array.shape}: its rows must be the basis vectors, "
                            f"so save its transpose, shape {array.shape[::-1]}", key=field)
        raise DataError(f"{where} has shape {array.shape}, but the model's residual stream has width "
                        f"{width}: expected ({width},) or (k, {width})", key=field)
    vectors = orthonormal_rows(array, what=where, field=field)
    return Basis(vectors=vectors, sha256=sha256, path=str(path))


def read_dictionary(path: str | Path, *, key: str | None, width: int, field: str,
                    base_dir: str | Path | None = None) -> Dictionary:
    """A sparse autoencoder's decoder matrix from the file `path`.

    `key` names it in an .npz, .safetensors or .pt dict ("W_dec" in SAELens and most
    published SAEs). Stored (n_latents, width) it is kept as is; stored (width, n_latents), as
    a decoder Linear's weight, it is transposed. Square (width, width) is read as
    (n_latents, width). Problems raise a one-line DataError about claim field `field`.
    """
    array, where, sha256 = _load_matrix(path, key=key, field=field, base_dir=base_dir)
    expected = f"({width}, n_latents) or (n_latents, {width}), the model's width being {width}"
    if array.ndim != 2:
        raise DataError(f"{where} has shape {array.shape}: a decoder matrix is 2-D, {expected}", key=field)
    if array.shape[1] == width:
        transposed = False
    elif array.shape[0] == width:
        transposed = True
    else:
        raise DataError(f"{where} has shape {array.shape}: expected {expected}", key=field)
    decoder = (array.T if transposed else array).astype(np.float32)   # (n_latents, width)
    return Dictionary(decoder=decoder, sha256=sha256, path=str(path), transposed=transposed)


def orthonormal_rows(matrix: np.ndarray, *, what: str, field: str) -> np.ndarray:
    """(k, width) float64 orthonormal rows spanning the rows of `matrix` (k, width).

    Gram-Schmidt order (QR of the transpose, signs fixed so R's diagonal is positive): row i
    spans the same space as the first i+1 input rows, and row 0 is the first one, normalised.
    Raises DataError about claim field `field`, its message starting with `what` (the rows,
    named for the user), when k is 0 or at least the width, a row is zero, or the rows are
    linearly dependent.

    The numerical rank counts singular values above RANK_RTOL (1e-6) times the largest.
    numpy's matrix_rank default, max(shape) * eps(float64) * largest, sees only float64
    round-off, but files mostly hold float32 (eps 1.2e-7) or coarser: exactly dependent rows,
    once rounded to float32, keep singular values near 1e-7 of the largest and would pass, and
    orthonormalising would turn that rounding noise into a direction of the claim.
    """
    matrix = np.asarray(matrix, dtype=np.float64)   # (k, width)
    k, width = matrix.shape
    if k == 0:
        raise DataError(f"{what}: no vectors; a subspace needs at least one", key=field)
    if k >= width:
        raise DataError(f"{what}: {k} vectors in a residual stream of width {width}: a subspace of "
                        "dimension k >= the width is the whole residual stream: no random subspace of "
                        "the same dimension differs from it", key=field)
    zero = [i for i, row in enumerate(matrix) if not row.any()]
    if zero:
        raise DataError(f"{what}: row(s) {_listing(zero)} are all zeros, so they have no direction",
                        key=field)
    singular = np.linalg.svd(matrix, compute_uv=False)
    rank = int(np.count_nonzero(singular > RANK_RTOL * singular[0]))
    if rank < k:
        raise DataError(f"{what}: the {k} vectors are linearly dependent: they span {rank} "
                        f"dimension(s), not {k} (singular values under {RANK_RTOL:g} of the largest "
                        "count as zero)", key=field)
    q, r = np.linalg.qr(matrix.T)   # q (width, k), r (k, k)
    return (q * np.sign(np.diag(r))).T                  # (k, width)


def _load_matrix(path: str | Path, *, key: str | None, field: str,
                 base_dir: str | Path | None) -> tuple[np.ndarray, str, str]:
    """(the named array, how messages name it, sha256 of the file). The array is real-valued,
    non-empty and finite; its shape is the caller's to check."""
    file = _resolve(path, base_dir, field)
    suffix = file.suffix.lower()
    if suffix not in _PARSERS:
        raise DataError(f"{file}: unknown format {suffix or '(no suffix)'!r}; use .npy, .npz, "
                        ".safetensors or .pt/.pth", key=field)
    raw = _read(file, field)
    try:
        name, array = _pick(file, _PARSERS[suffix](raw), key, field)
    except DataError:
        raise
    except Exception as err:   # untrusted bytes: numpy, zipfile, safetensors and torch raise all kinds
        detail = (str(err).strip().splitlines() or [""])[0]
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise DataError(f"{file}: cannot read it as a {_FORMAT_NAMES[suffix]} file "
                        f"({type(err).__name__}: {detail})", key=field) from None
    where = f"{file}[{name!r}]" if name is not None else str(file)
    if array.dtype.kind not in "iuf":
        raise DataError(f"{where} holds {array.dtype} values, not real numbers", key=field)
    if array.size == 0:
        raise DataError(f"{where} is empty (shape {array.shape})", key=field)
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
        raise DataError(f"{where} has {bad} value(s) that are NaN or infinite", key=field)
    return array, where, hashlib.sha256(raw).hexdigest()


def _resolve(path: str | Path, base_dir: str | Path | None, field: str) -> Path:
    try:
        p = expand_user(path, key=field)
    except LoccheckError as err:   # every problem with the file is a DataError
        raise DataError(err.msg, key=err.key) from None
    return Path(base_dir) / p if base_dir is not None and not p.is_absolute() else p


def _read(file: Path, field: str) -> bytes:
    try:
        too_big = file.stat().st_size > MAX_FILE_BYTES   # refused unread
        raw = b"" if too_big else read_regular_file(file, MAX_FILE_BYTES + 1)   # FIFOs refused
    except OSError as err:
        raise DataError(f"{file}: cannot read: {err.strerror or err}", key=field) from None
    if too_big or len(raw) > MAX_FILE_BYTES:
        raise DataError(f"{file}: larger than {MAX_FILE_BYTES >> 30} GiB; save the one array "
                        "needed to a file of its own", key=field)
    return raw


def _pick(file: Path, loaded, key: str | None, field: str) -> tuple[str | None, np.ndarray]:
    """(its name, the array) that `key` names in what a parser returned: one array, or a
    mapping of names to arrays; without a key, a mapping must hold exactly one. An error about
    a key that was given is about the claim's `key` field, the sibling of `field`."""
    key_field = field.rsplit(".", 1)[0] + ".key" if "." in field else field
    if not isinstance(loaded, Mapping):
        if key is not None:
            raise DataError(f"{file}: holds a single unnamed array, so there is no key {key!r} "
                            "to look up; remove the key", key=key_field)
        return None, loaded
    names = list(loaded)
    if not names:
        raise DataError(f"{file}: holds no arrays", key=field)
    if key is None:
        if len(names) != 1:
            raise DataError(f"{file}: holds {len(names)} arrays ({_listing(names)}); name the one "
                            "to use with a key", key=field)
        key = names[0]
    elif key not in names:
        raise DataError(f"{file}: has no array {key!r}; it holds {_listing(names)}", key=key_field)
    return key, np.asarray(loaded[key])


def _listing(items: Sequence) -> str:
    shown = ", ".join(repr(x) if isinstance(x, str) else str(x) for x in items[:_LISTED_KEYS])
    return shown + (f" and {len(items) - _LISTED_KEYS} more" if len(items) > _LISTED_KEYS else "")


def _parse_npy(raw: bytes) -> np.ndarray:
    return np.load(io.BytesIO(raw), allow_pickle=False)   # never run a file's pickle


def _parse_npz(raw: bytes) -> Mapping:
    return np.load(io.BytesIO(raw), allow_pickle=False)   # lazy: only the array picked is unpacked


def _parse_safetensors(raw: bytes) -> dict:
    from safetensors.numpy import load
    try:
        return load(raw)
    except KeyError:   # a dtype numpy lacks (BF16, F8_*): torch reads it, and float32 holds it exactly
        from safetensors.torch import load as load_torch
        return {name: _tensor_as_numpy(t) for name, t in load_torch(raw).items()}


def _parse_torch(raw: bytes):
    import torch
    obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)   # no arbitrary pickles
    if isinstance(obj, torch.Tensor):
        return _tensor_as_numpy(obj)
    if isinstance(obj, dict):   # a state dict; other entries (a config, a step count) are not arrays
        return {name: _tensor_as_numpy(t) for name, t in obj.items() if isinstance(t, torch.Tensor)}
    raise ValueError(f"it holds a {type(obj).__name__}, not a tensor or a dict of tensors")


def _tensor_as_numpy(tensor) -> np.ndarray:
    import torch
    if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()   # bfloat16, float16, float8: exact in float32, which numpy has
    return tensor.detach().cpu().numpy()


_PARSERS = {".npy": _parse_npy, ".npz": _parse_npz, ".safetensors": _parse_safetensors,
            ".pt": _parse_torch, ".pth": _parse_torch}
_FORMAT_NAMES = {".npy": "NumPy .npy", ".npz": "NumPy .npz", ".safetensors": "safetensors",
                 ".pt": "PyTorch", ".pth": "PyTorch"}
