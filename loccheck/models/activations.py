"""Per-head activations at the last token: what ITI's probes are trained on.

Head h of layer l is the slice [h*head_dim, (h+1)*head_dim) of the input of layer l's output
projection (models/base.py). `collect_head_activations` reads that input with forward pre-hooks
at the last real token of each text; `cached_head_activations` keeps the result on disk under a
content-addressed name. torch is imported inside the functions that run the model, so
`probe_examples` (and the probing heuristic, which uses it) stay importable without torch.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from loccheck.errors import LoccheckWarning

PROBE_TEMPLATE = "Q: {question} A: {answer}"   # ITI's probing format (METHOD.md)


def probe_text(question: str, answer: str) -> str:
    """The text a probe reads: ``"Q: {question} A: {answer}"``."""
    return PROBE_TEMPLATE.format(question=question, answer=answer)


def _token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    ids = [list(x) for x in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise ValueError(f"`texts` must tokenize to at least one token; text {empty[0]} "
                         f"({texts[empty[0]]!r}) gives none")
    return ids


def collect_head_activations(model, adapter, tokenizer, texts: Sequence[str], *,
                             batch_size: int = 16) -> np.ndarray:
    """Input of every layer's output projection at each text's last token, split by head.

    Returns float32 of shape (n_texts, n_layers, n_heads, head_dim), in the order of `texts`.
    Texts are tokenized with ``add_special_tokens=True`` (the tokenizer's BOS, as a plain-text
    prompt gets), sorted by length into batches, right-padded with ``tokenizer.pad_token_id``
    (0 if None) and masked, so a text's activations do not depend on its batch-mates.
    The forward runs through the model's base (no LM head): only the projections' inputs are used.
    """
    import torch

    if isinstance(texts, str):
        raise TypeError("`texts` must be a sequence of strings, got a single str")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
    n_layers, n_heads, head_dim = adapter.n_layers, adapter.n_heads, adapter.head_dim
    out = np.empty((len(texts), n_layers, n_heads, head_dim), dtype=np.float32)
    if not texts:
        return out
    ids = _token_ids(tokenizer, texts)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = 0 if pad_id is None else int(pad_id)
    device = next(model.parameters()).device
    body = getattr(model, getattr(model, "base_model_prefix", ""), model)   # skips the LM head

    from loccheck.models.hooks import read_inputs

    batch: dict = {}   # set per batch: "rows" (indices into out), "last" (last-token positions)

    def read(layer: int, z) -> None:
        # z: (batch, pos, n_heads * head_dim); keep each row's last real token
        picked = z[torch.arange(z.shape[0], device=z.device), batch["last"]]   # (batch, width)
        out[batch["rows"], layer] = picked.detach().float().cpu().numpy().reshape(-1, n_heads, head_dim)

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))   # stable: equal lengths keep order
    with read_inputs(adapter, range(n_layers), read), torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(ids[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                input_ids[r, :len(ids[i])] = torch.tensor(ids[i])
                mask[r, :len(ids[i])] = 1
            batch["rows"] = np.asarray(rows)
            batch["last"] = torch.tensor([len(ids[i]) - 1 for i in rows], device=device)
            body(input_ids=input_ids.to(device), attention_mask=mask.to(device))
    return out


def activations_key(texts: Sequence[str], *, model_sha: str, adapter, dtype: str = "") -> str:
    """sha256 of canonical JSON of everything the activations depend on."""
    from loccheck.numerics import numerics_identity

    texts_sha = hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()
    spec = {"kind": "head_activations/last_token/add_special_tokens", "model_sha": model_sha,
            "texts_sha256": texts_sha, "n_texts": len(texts), "adapter": adapter.describe(),
            "dtype": dtype, "code": numerics_identity("models", "activations")}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _save_npy_atomic(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_npy(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array, or None (with a warning) when the file is unreadable or of the wrong shape."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        problem = f"unreadable ({type(err).__name__}: {' '.join(str(err).split())[:120]})"
    else:
        if arr.shape == shape and arr.dtype == np.float32:
            return arr
        problem = f"has shape {arr.shape} and dtype {arr.dtype}, expected {shape} float32"
    warnings.warn(f"cached activations {path} {problem}; recomputing", LoccheckWarning, stacklevel=3)
    return None


def cached_head_activations(model, adapter, tokenizer, texts: Sequence[str], *, model_sha: str,
                            cache: Path, batch_size: int = 16) -> np.ndarray:
    """`collect_head_activations`, stored as ``cache/activations/{key}.npy``.

    key = sha256 of canonical JSON of {model_sha, sha256 of the texts, adapter.describe(),
    the model's parameter dtype, the versions of the code that computes them (`loccheck.numerics`:
    models, activations) and of the libraries}. `model_sha` must identify the weights
    and the tokenizer (e.g. load_model's info["sha256"]). A file that cannot be read or has the
    wrong shape is reported with a LoccheckWarning and recomputed; writes are atomic.
    """
    if not isinstance(model_sha, str) or not model_sha:
        raise ValueError(f"`model_sha` must be a non-empty str, got {model_sha!r}")
    dtype = str(next(model.parameters()).dtype)
    whose = (model_sha, dtype, json.dumps(adapter.describe(), sort_keys=True, default=str))
    if _reused is not None and all((*whose, t) in _reused for t in texts):
        return np.stack([_reused[(*whose, t)] for t in texts])
    path = Path(cache) / "activations" / f"{activations_key(texts, model_sha=model_sha, adapter=adapter, dtype=dtype)}.npy"
    shape = (len(texts), adapter.n_layers, adapter.n_heads, adapter.head_dim)
    arr = _load_npy(path, shape) if path.is_file() else None
    if arr is None:
        arr = collect_head_activations(model, adapter, tokenizer, texts, batch_size=batch_size)
        _save_npy_atomic(arr, path)
    if _reused is not None:
        _reused.update(((*whose, t), row) for t, row in zip(texts, arr))
    return arr


_reused: dict | None = None     # (model, dtype, adapter, text) -> activations, inside `reusing_activations`


@contextlib.contextmanager
def reusing_activations():
    """Within it, a text's head activations, once computed (or read from the cache), are reused
    for any later list of texts made only of texts seen before: a bootstrap's resamples repeat
    the original questions, and should cost neither a forward pass nor a new cache file each."""
    global _reused
    outer, _reused = _reused, {} if _reused is None else _reused
    try:
        yield
    finally:
        _reused = outer


ProbeItem = tuple[str, str, int]   # (group, text, label): label 1 = true answer, 0 = false


def probe_examples(data) -> tuple[list[ProbeItem], list[ProbeItem]]:
    """(train_items, val_items) from a HeuristicData: every answer of every train / validation
    question as ``(group, probe_text(question, answer), label)``, in `labelled` order. The data
    has no test split (BehaviorData.without_test), so test questions cannot be read here."""
    items = {s: [(g, probe_text(q, a), y) for g, q, a, y in data.labelled(s)]
             for s in ("train", "validation")}
    return items["train"], items["validation"]


def labelled_activations(model, data, cache: Path):
    """(train_x, train_y, val_x, val_y): head activations of every answer of the train and
    validation questions at the last token of "Q: {question} A: {answer}" (what probes and
    ITI's directions are computed from). `model` is a LoadedModel; `data` a HeuristicData."""
    from loccheck.errors import DataError

    train_items, val_items = probe_examples(data)
    for name, items in (("train", train_items), ("validation", val_items)):
        if len({label for _, _, label in items}) < 2:
            raise DataError(f"{data.source}: the {name} questions need both true and false answers "
                            "for the probes and ITI's directions", key="behavior.split")
    texts = [text for _, text, _ in train_items + val_items]
    acts = cached_head_activations(model.model, model.adapter, model.tokenizer, texts,
                                   model_sha=model.weights_id, cache=cache)
    labels = np.array([label for _, _, label in train_items + val_items])
    n = len(train_items)
    return acts[:n], labels[:n], acts[n:], labels[n:]
