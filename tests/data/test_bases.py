"""Subspace bases and SAE decoder matrices read from the user's files: every format, the
orthonormal basis and its sign rule, the sha256, and each bad file as one DataError line
about the claim field."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from loccheck.data.bases import MAX_FILE_BYTES, read_basis, read_dictionary
from loccheck.errors import DataError

WIDTH = 8
FIELD = "location.subspace.basis"
# small integers: exact in float32 and bfloat16, so every format holds the same vectors
VECTORS = np.array([[-1, 2, 0, 1, 3, 0, -2, 1],
                    [0, 1, 1, 0, -2, 1, 0, 3],
                    [2, 0, -1, 1, 0, 0, 1, -1]], dtype=np.float64)   # (3, WIDTH)


def _projector(rows: np.ndarray) -> np.ndarray:
    return rows.T @ np.linalg.solve(rows @ rows.T, rows)   # (WIDTH, WIDTH)


def _safetensors(path, arrays):
    from safetensors.numpy import save_file
    save_file({k: v.astype(np.float32) for k, v in arrays.items()}, path)


def _safetensors_bf16(path, arrays):
    import torch
    from safetensors.torch import save_file
    save_file({k: torch.tensor(np.ascontiguousarray(v)).bfloat16() for k, v in arrays.items()}, path)


def _torch(path, obj):
    import torch
    torch.save(obj if isinstance(obj, str) else torch.tensor(obj), path)


def _torch_dict(path, arrays):
    import torch
    torch.save({**{k: torch.tensor(v) for k, v in arrays.items()}, "step": 3}, path)


WRITERS = {   # name: (file name, key to read with, writer of {key: array} or one array)
    "npy": ("b.npy", None, lambda p, a: np.save(p, a)),
    "npz-one": ("b.npz", None, lambda p, a: np.savez(p, basis=a)),
    "npz-key": ("b.npz", "basis", lambda p, a: np.savez(p, basis=a, other=a[:1])),
    "safetensors-key": ("b.safetensors", "basis", lambda p, a: _safetensors(p, {"basis": a, "x": a})),
    "safetensors-bf16": ("b.safetensors", None, lambda p, a: _safetensors_bf16(p, {"basis": a})),
    "pt-tensor": ("b.pt", None, _torch),
    "pth-dict": ("b.pth", "W_dec", lambda p, a: _torch_dict(p, {"W_dec": a, "b_dec": a[0]})),
}


TORCH = {"safetensors-bf16", "pt-tensor", "pth-dict", "corrupt-pt", "pt-list", "key-for-tensor"}


def _cases(ids, values=None):
    """Parameters with the cases that write or read through torch marked slow (the fast tier
    imports no torch)."""
    values = ids if values is None else values
    return [pytest.param(*(v if isinstance(v, tuple) else (v,)), id=i,
                         marks=[pytest.mark.slow] if i in TORCH else []) for i, v in zip(ids, values)]


@pytest.mark.parametrize("fmt", _cases(list(WRITERS)))
def test_every_format_gives_the_orthonormal_basis_of_the_files_vectors(tmp_path, fmt):
    name, key, write = WRITERS[fmt]
    write(tmp_path / name, VECTORS)
    basis = read_basis(tmp_path / name, key=key, width=WIDTH, field=FIELD)
    v = basis.vectors
    assert v.dtype == np.float64 and v.shape == (3, WIDTH) and basis.dim == 3
    np.testing.assert_allclose(v @ v.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(_projector(v), _projector(VECTORS), atol=1e-12)
    np.testing.assert_allclose(v[0], VECTORS[0] / np.linalg.norm(VECTORS[0]), atol=1e-12)
    assert basis.sha256 == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
    assert basis.path == str(tmp_path / name)


def test_one_direction_a_relative_path_and_home(tmp_path, monkeypatch):
    np.save(tmp_path / "d.npy", -VECTORS[1])   # (WIDTH,): k = 1, its sign kept
    basis = read_basis("d.npy", key=None, width=WIDTH, field=FIELD, base_dir=tmp_path)
    np.testing.assert_allclose(basis.vectors, [-VECTORS[1] / np.linalg.norm(VECTORS[1])], atol=1e-12)
    assert basis.path == "d.npy"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert read_basis("~/d.npy", key=None, width=WIDTH, field=FIELD).sha256 == basis.sha256


def _npy(array):
    return lambda p: np.save(p, array)


def _raw(data: bytes):
    return lambda p: p.write_bytes(data)


def _huge(p):
    with open(p, "wb") as fh:   # sparse: nothing is written, and the reader must not read it
        fh.truncate(MAX_FILE_BYTES + 1)


def _dependent_in_float32():
    third = ((VECTORS[0] + VECTORS[1]) / 3).astype(np.float32)   # rounding leaves it ~1e-7 off
    return np.vstack([VECTORS[:2], third]).astype(np.float32)


BAD_BASES = [   # (id, file name, key, writer or None for nothing, words the message holds)
    ("missing", "b.npy", None, None, "No such file"),
    ("folder", "b.npy", None, lambda p: p.mkdir(), "Is a directory"),
    ("suffix", "b.txt", None, _raw(b"1 2 3"), "unknown format '.txt'; use .npy, .npz"),
    ("corrupt-npy", "b.npy", None, _raw(b"\x93NUMPY garbage"), "cannot read it as a NumPy .npy file"),
    ("corrupt-npz", "b.npz", None, _raw(b"PK\x03\x04 garbage"), "cannot read it as a NumPy .npz file"),
    ("corrupt-safetensors", "b.safetensors", None, _raw(b"\xff" * 16), "as a safetensors file"),
    ("corrupt-pt", "b.pt", None, _raw(b"not a pickle"), "cannot read it as a PyTorch file"),
    ("pt-list", "b.pt", None, lambda p: _torch_list(p), "holds a list, not a tensor"),
    ("pickled-npy", "b.npy", None, lambda p: np.save(p, np.array([{}]), allow_pickle=True),
     "cannot read it as a NumPy .npy file"),
    ("key-missing", "b.npz", "nope", lambda p: np.savez(p, **{f"a{i}": VECTORS for i in range(12)}),
     "has no array 'nope'; it holds 'a0', 'a1',"),
    ("keys-listed", "b.npz", "nope", lambda p: np.savez(p, **{f"a{i}": VECTORS for i in range(12)}),
     "'a9' and 2 more"),
    ("key-needed", "b.npz", None, lambda p: np.savez(p, x=VECTORS, y=VECTORS), "holds 2 arrays ('x', 'y')"),
    ("key-for-npy", "b.npy", "basis", _npy(VECTORS), "single unnamed array"),
    ("key-for-tensor", "b.pt", "basis", lambda p: _torch(p, VECTORS), "remove the key"),
    ("bool", "b.npy", None, _npy(VECTORS > 0), "holds bool values, not real numbers"),
    ("complex", "b.npz", "c", lambda p: np.savez(p, c=VECTORS + 1j), "b.npz['c'] holds complex128"),
    ("strings", "b.npy", None, _npy(np.array(["a", "b"])), "not real numbers"),
    ("non-finite", "b.npy", None, _npy(np.where(VECTORS == 3, np.nan, np.where(VECTORS == -2, -np.inf, VECTORS))),
     "has 4 value(s) that are NaN or infinite"),
    ("width", "b.npy", None, _npy(np.zeros((3, 10))), "shape (3, 10), but the model's residual stream has width 8"),
    ("width-1d", "b.npy", None, _npy(np.ones(7)), "expected (8,) or (k, 8)"),
    ("transposed", "b.npy", None, _npy(VECTORS.T), "its rows must be the basis vectors, so save its transpose"),
    ("3d", "b.npy", None, _npy(np.ones((2, 3, WIDTH))), "shape (2, 3, 8)"),
    ("empty", "b.npy", None, _npy(np.zeros((0, WIDTH))), "is empty (shape (0, 8))"),
    ("whole-stream", "b.npy", None, _npy(np.eye(WIDTH)), "8 vectors in a residual stream of width 8: a "
     "subspace of dimension k >= the width is the whole residual stream: no random subspace"),
    ("dependent", "b.npy", None, _npy(np.vstack([VECTORS[:2], VECTORS[0] - VECTORS[1]])),
     "the 3 vectors are linearly dependent: they span 2 dimension(s), not 3"),
    ("dependent-float32", "b.npy", None, _npy(_dependent_in_float32()), "span 2 dimension(s)"),
    ("zero-vector", "b.npy", None, _npy(np.vstack([VECTORS[:2], np.zeros(WIDTH)])),
     "b.npy: row(s) 2 are all zeros, so they have no direction"),
    ("all-zero", "b.npy", None, _npy(np.zeros(WIDTH)), "row(s) 0 are all zeros"),
    ("too-big", "b.npy", None, _huge, "larger than 4 GiB"),
]


def _torch_list(p):
    import torch
    torch.save([torch.ones(WIDTH)], p)


@pytest.mark.parametrize("name,key,write,words", _cases([c[0] for c in BAD_BASES], [c[1:] for c in BAD_BASES]))
def test_a_bad_basis_file_is_one_line_about_the_field(tmp_path, name, key, write, words):
    path = tmp_path / name
    if write is not None:
        write(path)
    with pytest.raises(DataError) as info:
        read_basis(path, key=key, width=WIDTH, field=FIELD)
    message = str(info.value)
    # an error about a named key is about the claim's `key` field, beside the file's
    about_key = key is not None and ("has no array" in message or "remove the key" in message)
    assert info.value.key == ("location.subspace.key" if about_key else FIELD)
    assert str(path) in message and "\n" not in message
    assert words in message


def test_a_fifo_fails_at_once(tmp_path):
    os.mkfifo(tmp_path / "b.npy")   # no writer: a blocking read would hang forever
    with pytest.raises(DataError, match="not a regular file \\(a FIFO\\)") as info:
        read_basis(tmp_path / "b.npy", key=None, width=WIDTH, field=FIELD)
    assert info.value.key == FIELD


def test_an_unknown_user_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot expand") as info:
        read_basis("~no_such_user_zq/b.npy", key=None, width=WIDTH, field=FIELD)
    assert info.value.key == FIELD and "b.npy" in str(info.value)


DICT_FIELD = "location.sae.path"
DECODER = np.vstack([VECTORS, VECTORS[0] + VECTORS[1], np.zeros(WIDTH), VECTORS[2] * 0.5])   # (6, WIDTH)


@pytest.mark.parametrize("stored,transposed", [(DECODER, False), (DECODER.T, True),
                                               (np.eye(WIDTH), False)], ids=["rows", "columns", "square"])
def test_a_dictionary_in_either_orientation(tmp_path, stored, transposed):
    np.savez(tmp_path / "sae.npz", W_dec=stored, W_enc=stored.T)
    d = read_dictionary(tmp_path / "sae.npz", key="W_dec", width=WIDTH, field=DICT_FIELD)
    assert d.transposed is transposed and d.decoder.dtype == np.float32
    np.testing.assert_array_equal(d.decoder, stored.T if transposed else stored)
    assert d.n_latents == d.decoder.shape[0]
    assert d.sha256 == hashlib.sha256((tmp_path / "sae.npz").read_bytes()).hexdigest()


@pytest.mark.slow   # a bf16 safetensors file is written through torch
def test_the_basis_of_latents_spans_their_decoder_rows(tmp_path):
    _safetensors_bf16(tmp_path / "sae.safetensors", {"W_dec": DECODER.T})   # a Linear's weight
    d = read_dictionary(tmp_path / "sae.safetensors", key="W_dec", width=WIDTH, field=DICT_FIELD)
    v = d.basis([5, 0], field="location.latents")
    np.testing.assert_allclose(v @ v.T, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(_projector(v), _projector(DECODER[[5, 0]]), atol=1e-12)
    np.testing.assert_allclose(v[0], VECTORS[2] / np.linalg.norm(VECTORS[2]), atol=1e-12)


@pytest.mark.parametrize("stored,words", [(np.ones(WIDTH), "a decoder matrix is 2-D"),
                                          (np.ones((4, 5)), "shape (4, 5): expected (8, n_latents)"),
                                          (np.full((4, WIDTH), np.inf), "has 32 value(s)")],
                         ids=["1d", "width", "non-finite"])
def test_a_bad_dictionary_file(tmp_path, stored, words):
    np.save(tmp_path / "sae.npy", stored)
    with pytest.raises(DataError) as info:
        read_dictionary(tmp_path / "sae.npy", key=None, width=WIDTH, field=DICT_FIELD)
    assert info.value.key == DICT_FIELD and "sae.npy" in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("latents,words", [
    ([0, 6], "latent(s) 6 outside the dictionary's 6 latents (0 to 5)"),
    ([-1], "latent(s) -1 outside"),
    ([1, 2, 1], "latent(s) 1 named more than once"),
    ([0, 4], "the decoder row of latent(s) 4 is all zeros"),
    ([0, 1, 3], "latents [0, 1, 3]: the 3 vectors are linearly dependent: they span 2"),
    ([], "latents []: no vectors"),
], ids=["outside", "negative", "repeated", "dead", "dependent", "none"])
def test_bad_latents(tmp_path, latents, words):
    np.save(tmp_path / "sae.npy", DECODER)
    d = read_dictionary(tmp_path / "sae.npy", key=None, width=WIDTH, field=DICT_FIELD)
    with pytest.raises(DataError) as info:
        d.basis(latents, field="location.latents")
    assert info.value.key == "location.latents" and "sae.npy" in str(info.value) and words in str(info.value)


def test_as_many_latents_as_the_width_are_the_whole_stream(tmp_path):
    np.save(tmp_path / "sae.npy", np.vstack([np.eye(WIDTH), np.ones(WIDTH)]))   # (9, WIDTH)
    d = read_dictionary(tmp_path / "sae.npy", key=None, width=WIDTH, field=DICT_FIELD)
    with pytest.raises(DataError, match="is the whole residual stream"):
        d.basis(range(WIDTH), field="location.latents")
