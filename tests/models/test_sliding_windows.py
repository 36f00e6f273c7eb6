"""Sliding-window attention in loccheck's two fast paths: packed pairs (one custom 4-D mask,
which transformers passes to every layer as it is, so the window must be in it) and the frozen
prefix (the blocks below it skipped in place, so a forward that looks up block i's layer type by
i still finds block i's). Each must give the plain forward's log-probabilities and gradients on
models whose window is shorter than the sequences, for layers that mix windowed and full
attention, with eager and sdpa attention."""
from __future__ import annotations

import pytest
import torch

from loccheck.data.prompts import TokenizedPair
from loccheck.models import get_adapter
from loccheck.models.prefix import pair_prefix, sequence_prefix
from loccheck.testing import token_pairs
from loccheck.models.scoring import answer_logprobs, packed_pairs, pair_length, pair_logprobs

pytestmark = pytest.mark.slow   # tiny torch models

FULL, SLIDING = "full_attention", "sliding_attention"
MIXED = [FULL, FULL, SLIDING, SLIDING]
MODELS = ["qwen2-w3", "qwen2-w64", "mistral-w3", "gemma2-w3", "gemma3-w3"]
ATTENTION = ["eager", "sdpa"]
# (model, attention implementation): transformers refuses sdpa for Gemma-2 (its logit soft-capping)
CASES = [pytest.param(name, attention, id=f"{name}-{attention}") for name in MODELS for attention in ATTENTION
         if (name, attention) != ("gemma2-w3", "sdpa")]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


def _model(name: str, attention: str):
    """A 4-layer, 4-head, width-32 model with random weights (std 0.5, so outputs vary), float32,
    in eval mode, only the top layer's output projection trainable."""
    import transformers as tf

    kind, window = name.split("-w")
    window = int(window)
    common = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, initializer_range=0.5,
                  max_position_embeddings=64)
    if kind == "qwen2":
        config = tf.Qwen2Config(**common, use_sliding_window=True, sliding_window=window, layer_types=MIXED)
        cls = tf.Qwen2ForCausalLM
    elif kind == "mistral":
        config, cls = tf.MistralConfig(**common, sliding_window=window), tf.MistralForCausalLM
    elif kind == "gemma2":
        config = tf.Gemma2Config(**common, sliding_window=window, query_pre_attn_scalar=8,
                                 layer_types=[SLIDING, FULL, SLIDING, FULL])
        cls = tf.Gemma2ForCausalLM
    elif kind == "gemma3":
        config = tf.Gemma3TextConfig(**common, sliding_window=window, query_pre_attn_scalar=8,
                                     layer_types=[SLIDING, SLIDING, FULL, SLIDING])
        cls = tf.Gemma3ForCausalLM
    else:
        raise ValueError(name)
    torch.manual_seed(0)
    model = cls(config).float().eval()
    model.set_attn_implementation(attention)
    assert model.config._attn_implementation == attention
    for p in model.parameters():
        p.requires_grad_(False)
    adapter = get_adapter(model)
    adapter.out_proj(adapter.n_layers - 1).weight.requires_grad_(True)
    return model, adapter


def _pairs(seed=0, n=7):
    """Prompts of 2-8 tokens, answers of 1-4: most rows are longer than a window of 3."""
    return token_pairs(seed, n)


def _unpacked(model, pairs):
    """Each answer as its own right-padded sequence after its prompt (a 2-D padding mask, from
    which transformers makes every layer's mask itself): what the fast paths must reproduce."""
    return pair_logprobs(model, pairs, 0, packed=False)


def _with_grad(adapter, score):
    """The scores and the gradient of their weighted sum w.r.t. the top output projection."""
    weight = adapter.out_proj(adapter.n_layers - 1).weight
    lp = score()
    (lp * torch.linspace(1, 2, lp.numel()).reshape(lp.shape)).sum().backward()
    grad, weight.grad = weight.grad.clone(), None
    return lp.detach(), grad


def _close(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    scale = float(want[1].abs().max())
    assert scale > 0
    # relative to the gradient's scale: the layouts sum the same float32 terms in other orders
    assert float((got[1] - want[1]).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize(("name", "attention"), CASES)
def test_packed_pairs_give_each_answers_own_logprobs_and_gradients(name, attention):
    model, adapter = _model(name, attention)
    pairs = _pairs()
    plain = _with_grad(adapter, lambda: _unpacked(model, pairs))
    _close(_with_grad(adapter, lambda: pair_logprobs(model, pairs, 0)), plain)


@pytest.mark.parametrize("first", [1, 2])
@pytest.mark.parametrize(("name", "attention"), CASES)
def test_the_prefix_of_packed_pairs_gives_the_plain_forwards(name, attention, first):
    model, adapter = _model(name, attention)
    pairs = _pairs()
    plain = _with_grad(adapter, lambda: _unpacked(model, pairs))
    prefix = pair_prefix(model, adapter, first, pairs, 0)
    assert prefix is not None and prefix.first == first
    _close(_with_grad(adapter, lambda: pair_logprobs(model, pairs, 0, prefix=prefix)), plain)
    twos = torch.cat([pair_logprobs(model, pairs[i:i + 2], 0, prefix=prefix).detach()
                      for i in range(0, len(pairs), 2)])           # batched otherwise than computed
    torch.testing.assert_close(twos, plain[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("first", [1, 2])
@pytest.mark.parametrize(("name", "attention"), CASES)
def test_the_prefix_of_plain_sequences_gives_the_plain_forwards(name, attention, first):
    model, adapter = _model(name, attention)
    pairs = _pairs()
    prompts, answers = [p.prompt for p in pairs], [p.chosen for p in pairs]
    prefix = sequence_prefix(model, adapter, first, [p + a for p, a in zip(prompts, answers)], 0)
    plain = _with_grad(adapter, lambda: answer_logprobs(model, prompts, answers, 0))
    _close(_with_grad(adapter, lambda: answer_logprobs(model, prompts, answers, 0, prefix=prefix)), plain)


def test_each_layer_gets_its_window_in_the_packed_mask():
    from loccheck.models.windows import layer_windows, mask_windows, packable

    qwen, _ = _model("qwen2-w3", "eager")
    assert layer_windows(qwen.config) == [None, None, 3, 3]
    assert packable(qwen) and mask_windows(qwen) == {FULL: None, SLIDING: 3}
    mistral, _ = _model("mistral-w3", "eager")
    assert layer_windows(mistral.config) == [3] * 4 and mask_windows(mistral) == 3
    pair = TokenizedPair((5, 6, 7, 8), (9, 10), (11, 12))
    plain = packed_pairs([pair], 0).inputs["attention_mask"]
    masks = packed_pairs([pair], 0, windows={FULL: None, SLIDING: 3}).inputs["attention_mask"]
    assert set(masks) == {FULL, SLIDING} and torch.equal(masks[FULL], plain)
    seen = masks[SLIDING][0, 0] == 0                       # positions 0 1 2 3 | 4 5 | 4 5
    assert seen[7].tolist() == [False, False, False, True, False, False, True, True]   # 3, 4', 5'
    assert seen[5].tolist() == [False, False, False, True, True, True, False, False]   # 3, 4, 5
    assert torch.equal(packed_pairs([pair], 0, windows=3).inputs["attention_mask"], masks[SLIDING])
    assert torch.equal(packed_pairs([pair], 0, windows=9).inputs["attention_mask"], plain)


def test_a_model_that_cannot_take_one_mask_per_layer_type_is_scored_unpacked(monkeypatch):
    from loccheck.models import windows

    model, adapter = _model("qwen2-w3", "eager")
    pairs = _pairs()
    monkeypatch.setattr(windows, "takes_mask_per_layer_type", lambda model: False)
    assert not windows.packable(model)
    with pytest.raises(ValueError, match="mixes"):
        windows.mask_windows(model)
    plain = _unpacked(model, pairs).detach()
    torch.testing.assert_close(pair_logprobs(model, pairs, 0).detach(), plain, rtol=1e-5, atol=1e-5)
    assert pair_prefix(model, adapter, 2, pairs, 0) is None          # nothing packed to freeze
    model.config.layer_types = [FULL, "chunked_attention", FULL, FULL]
    monkeypatch.undo()
    assert not windows.packable(model)
    with pytest.raises(ValueError, match="chunked_attention"):
        windows.layer_windows(model.config)


def test_blocks_that_return_a_tuple_are_skipped_in_kind_and_put_back():
    """Falcon's decoder layers return (hidden, attention weights) and its forward reads [0]."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.FalconConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                             initializer_range=0.5, new_decoder_architecture=False)
    model = tf.FalconForCausalLM(config).float().eval()
    adapter = get_adapter(model)
    pairs = _pairs()
    plain = _unpacked(model, pairs)
    prefix = pair_prefix(model, adapter, 2, pairs, 0)
    classes = [type(b) for b in adapter.blocks]
    runs = {i: 0 for i in range(4)}
    handles = [block.register_forward_hook(lambda *_, i=i: runs.__setitem__(i, runs[i] + 1))
               for i, block in enumerate(adapter.blocks)]
    handed = []        # what the model hands block 2: skipped block 1's output, [0]
    handles.append(adapter.blocks[2].register_forward_pre_hook(lambda _, args: handed.append(args[0].shape)))
    with torch.no_grad():
        torch.testing.assert_close(pair_logprobs(model, pairs, 0, prefix=prefix), plain, rtol=1e-5, atol=1e-5)
        assert runs == {0: 0, 1: 0, 2: 1, 3: 1}                     # the blocks below did not run
        assert handed == [(len(pairs), max(map(pair_length, pairs)), 32)]
        assert all(type(b) is cls for b, cls in zip(adapter.blocks, classes))

        def fail(*_):
            raise RuntimeError("mid-forward")
        handles.append(adapter.blocks[3].register_forward_hook(fail))
        with pytest.raises(RuntimeError, match="mid-forward"):      # left as it was, also on error
            pair_logprobs(model, pairs, 0, prefix=prefix)
    for h in handles:
        h.remove()
    assert [type(b) for b in adapter.blocks] == classes and len(model.transformer.h) == 4
    assert all("forward" not in vars(b) for b in adapter.blocks)
    assert not any(b._forward_pre_hooks or b._forward_hooks for b in adapter.blocks)
