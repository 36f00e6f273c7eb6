"""Last-token head activations on tiny random models of every supported family."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from loccheck.testing import FAMILIES, VOCAB, tiny_model
from loccheck.models.activations import (activations_key, cached_head_activations, collect_head_activations,
                                  probe_text)
from loccheck.errors import LoccheckWarning
from loccheck.models import get_adapter

pytestmark = pytest.mark.slow   # head activations of tiny torch models (torch)

TEXTS = [probe_text("Why is the sky blue?", "Rayleigh scattering."),
         probe_text("2+2?", "4"),
         "x",
         probe_text("What happens if you swallow gum?", "It passes through you."),
         probe_text("2+2?", "5"),
         "a somewhat longer text than the others, to force padding in its batch"]


class CharTokenizer:
    """Byte-level stand-in for a HF tokenizer: BOS (1) + one id per character, pad id 0."""
    pad_token_id = 0
    bos_token_id = 1

    def __call__(self, texts, add_special_tokens=True):
        bos = [self.bos_token_id] if add_special_tokens else []
        return {"input_ids": [bos + [3 + ord(c) % (VOCAB - 3) for c in t] for t in texts]}


TOK = CharTokenizer()


def test_probe_text_is_iti_format():
    assert probe_text("Why?", "Because.") == "Q: Why? A: Because."


def _single(model, adapter, text):
    """Full o_proj input of every layer for one text, unpadded: (n_layers, pos, width)."""
    store = {}
    handles = [adapter.out_proj(l).register_forward_pre_hook(
        lambda m, args, l=l: store.__setitem__(l, args[0][0].clone())) for l in range(adapter.n_layers)]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([TOK([text])["input_ids"][0]]))
    finally:
        for h in handles:
            h.remove()
    return [store[l] for l in range(adapter.n_layers)]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_single_text_last_token(family):
    model = tiny_model(family)
    adapter = get_adapter(model)
    acts = collect_head_activations(model, adapter, TOK, TEXTS, batch_size=4)
    assert acts.shape == (len(TEXTS), adapter.n_layers, adapter.n_heads, adapter.head_dim)
    assert acts.dtype == np.float32
    for i, text in enumerate(TEXTS):
        z = _single(model, adapter, text)   # each (pos, width), pos = that text's own length
        for l in range(adapter.n_layers):
            last = z[l][-1].numpy()
            # padded in a batch, the products are blocked otherwise (and otherwise again by other
            # CPUs' kernels): round-off relative to the activations' scale, not to each coordinate
            tol = 1e-5 * float(np.abs(last).max())
            np.testing.assert_allclose(acts[i, l].reshape(-1), last, atol=tol, rtol=1e-5)
            for loc in adapter.all_heads():
                if loc.layer == l:
                    np.testing.assert_allclose(acts[i, l, loc.head], last[adapter.head_slice(loc)],
                                               atol=tol, rtol=1e-5)
    # hooks are gone, and the batch size does not change the result
    assert all(not adapter.out_proj(l)._forward_pre_hooks for l in range(adapter.n_layers))
    np.testing.assert_allclose(collect_head_activations(model, adapter, TOK, TEXTS, batch_size=1),
                               acts, atol=1e-5 * float(np.abs(acts).max()), rtol=1e-5)


def test_hooks_removed_when_the_forward_fails():
    model = tiny_model("llama")
    adapter = get_adapter(model)

    class Boom(CharTokenizer):
        def __call__(self, texts, add_special_tokens=True):
            return {"input_ids": [[1, VOCAB + 100]]}   # out of the embedding's range
    with pytest.raises(IndexError):
        collect_head_activations(model, adapter, Boom(), ["x"])
    assert all(not adapter.out_proj(l)._forward_pre_hooks for l in range(adapter.n_layers))


def test_input_validation():
    model = tiny_model("gpt2")
    adapter = get_adapter(model)
    with pytest.raises(TypeError, match="`texts` must be a sequence of strings"):
        collect_head_activations(model, adapter, TOK, "one text")
    with pytest.raises(ValueError, match="`batch_size` must be a positive int, got 0"):
        collect_head_activations(model, adapter, TOK, TEXTS, batch_size=0)

    class Empty(CharTokenizer):
        def __call__(self, texts, add_special_tokens=True):
            return {"input_ids": [[] for _ in texts]}
    with pytest.raises(ValueError, match="text 0 .* gives none"):
        collect_head_activations(model, adapter, Empty(), ["a"])
    assert collect_head_activations(model, adapter, TOK, []).shape == (0, 2, 4, 8)
    with pytest.raises(ValueError, match="`model_sha` must be a non-empty str"):
        cached_head_activations(model, adapter, TOK, TEXTS, model_sha="", cache=None)


def _count_forwards(adapter) -> list:
    calls = []
    adapter.out_proj(0).register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    return calls


def test_cache_hits_misses_and_recovers_from_a_truncated_file(tmp_path):
    model = tiny_model("llama")
    adapter = get_adapter(model)
    calls = _count_forwards(adapter)
    kw = dict(model_sha="abc", cache=tmp_path, batch_size=4)
    first = cached_head_activations(model, adapter, TOK, TEXTS, **kw)
    assert sum(calls) == len(TEXTS)
    [path] = (tmp_path / "activations").iterdir()
    assert path.name == activations_key(TEXTS, model_sha="abc", adapter=adapter, dtype="torch.float32") + ".npy"
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]

    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a hit is silent
        again = cached_head_activations(model, adapter, TOK, TEXTS, **kw)
    assert sum(calls) == len(TEXTS)          # the model did not run
    np.testing.assert_array_equal(again, first)

    # anything in the key changes the file: texts, model, order of texts
    cached_head_activations(model, adapter, TOK, TEXTS[:2], **kw)
    cached_head_activations(model, adapter, TOK, TEXTS, model_sha="def", cache=tmp_path)
    cached_head_activations(model, adapter, TOK, TEXTS[::-1], **kw)
    assert len(list(path.parent.glob("*.npy"))) == 4

    path.write_bytes(path.read_bytes()[:200])   # truncated
    n = sum(calls)
    with pytest.warns(LoccheckWarning, match=rf"cached activations {path} unreadable .*; recomputing"):
        fixed = cached_head_activations(model, adapter, TOK, TEXTS, **kw)
    assert sum(calls) == n + len(TEXTS)
    np.testing.assert_array_equal(fixed, first)
    np.testing.assert_array_equal(np.load(path), first)   # and rewritten whole

    np.save(path, first[:, :1])   # well-formed, wrong shape
    with pytest.warns(LoccheckWarning, match=r"has shape \(6, 1, 4, 8\) and dtype float32, expected \(6, 2, 4, 8\)"):
        cached_head_activations(model, adapter, TOK, TEXTS, **kw)
