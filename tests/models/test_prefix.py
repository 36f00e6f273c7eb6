"""Less arithmetic per step, the same numbers: packed pairs (each prompt computed once for both
answers) give each answer's own log-probabilities and gradients, and so does the frozen prefix
(the blocks below an edit run once), on every architecture, however the pairs are later batched;
the blocks below are really not run; training with the prefix fits the same edit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from loccheck.edits.rank_one import HeadEdit, MlpEdit, initial_read_vectors
from loccheck.edits.training import TrainConfig, train_edit
from loccheck.locations import HeadLoc, MlpLoc
from loccheck.models import get_adapter
from loccheck.models.prefix import FrozenPrefix, lowest_edited_block, pair_prefix, sequence_prefix
from loccheck.data.prompts import TokenizedPair
from loccheck.models.scoring import all_pair_logprobs, answer_logprobs, packed_pairs, pair_length, pair_logprobs
from loccheck.testing import FAMILIES, tiny_model, token_pairs

pytestmark = pytest.mark.slow   # tiny torch models


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


def _pairs(seed=0, n=7):
    return token_pairs(seed, n)


def _edits(adapter):
    heads = HeadEdit(adapter, [HeadLoc(2, 1), HeadLoc(3, 0), HeadLoc(3, 3)],
                     initial_read_vectors(adapter, 0, 0.5))
    mlp = MlpEdit(adapter, [MlpLoc(2), MlpLoc(3)], initial_read_vectors(adapter, 0, 0.5, "mlp"))
    for edit in (heads, mlp):
        with torch.no_grad():
            edit.b.normal_(generator=torch.Generator().manual_seed(1))   # not the identity
    return heads, mlp


def _prefix(model, edit, pairs):
    return pair_prefix(model, getattr(edit, "adapter", None), lowest_edited_block(edit), pairs, 0)


def _logprobs_and_grads(model, edit, score):
    with edit.attached(model):
        lp = score()
        (lp * torch.linspace(1, 2, lp.numel()).reshape(lp.shape)).sum().backward()
    grads = [p.grad.clone() for p in edit.trainable()]
    for p in edit.trainable():
        p.grad = None
    return lp.detach(), grads


def _unpacked(model, pairs):
    """Each answer as its own sequence after its prompt: what packing must reproduce."""
    return pair_logprobs(model, pairs, 0, packed=False)


def _close(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for g, g0 in zip(got[1], want[1]):
        scale = float(g0.abs().max())
        assert scale > 0
        # The two layouts sum the same float32 terms in other orders (and other CPUs' kernels
        # block the sums differently), so a coordinate's error is round-off of the largest terms
        # it sums, not of itself: bounded relative to the gradient's scale (1e-5 ~ 100 float32
        # eps), not to each coordinate, which cancellation can make arbitrarily small.
        torch.testing.assert_close(g, g0, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_pairs_give_each_answers_own_logprobs_and_gradients(family):
    model = tiny_model(family, n_layers=4)
    adapter = get_adapter(model)
    pairs = _pairs()
    for edit in _edits(adapter):
        plain = _logprobs_and_grads(model, edit, lambda: _unpacked(model, pairs))
        _close(_logprobs_and_grads(model, edit, lambda: pair_logprobs(model, pairs, 0)), plain)
        one = torch.cat([_logprobs_and_grads(model, edit, lambda: pair_logprobs(model, [p], 0))[0] for p in pairs])
        torch.testing.assert_close(one, plain[0], rtol=1e-5, atol=1e-5)     # unpadded, one by one


def test_the_packed_layout():
    packed = packed_pairs([TokenizedPair((5, 6, 7), (8, 9), (10,)), TokenizedPair((5,), (8,), (10, 11))], 0)
    assert packed.inputs["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10], [5, 8, 10, 11, 0, 0]]
    assert packed.inputs["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 1, 2, 0, 0]]
    seen = packed.inputs["attention_mask"][:, 0] == 0
    assert seen[0, 5].tolist() == [True, True, True, False, False, True]   # rejected: prompt, itself
    assert seen[1, 3].tolist() == [True, False, True, True, False, False]
    assert seen[1, 4].tolist() == [True, False, False, False, False, False]  # a pad row: its first token
    assert packed.cols.tolist() == [2, 3, 2, 0, 0, 2] and packed.answer.tolist() == [0, 0, 1, 0, 1, 1]
    assert packed.targets.tolist() == [8, 9, 10, 8, 10, 11] and packed.rows.tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_prefix_gives_the_plain_forwards_logprobs_and_gradients(family):
    model = tiny_model(family, n_layers=4)
    adapter = get_adapter(model)
    pairs = _pairs()
    for edit in _edits(adapter):
        # the prefix is computed in its own batches (sorted by length, 16 at a time) ...
        prefix = _prefix(model, edit, pairs)
        assert prefix.first == 2
        plain = _logprobs_and_grads(model, edit, lambda: pair_logprobs(model, pairs, 0))
        # ... and used in others: all at once, reversed, and two at a time
        _close(_logprobs_and_grads(model, edit, lambda: pair_logprobs(model, pairs, 0, prefix=prefix)), plain)
        rev = _logprobs_and_grads(model, edit, lambda: pair_logprobs(model, pairs[::-1], 0, prefix=prefix))[0]
        torch.testing.assert_close(rev.flip(0), plain[0], rtol=1e-5, atol=1e-5)
        twos = torch.cat([_logprobs_and_grads(model, edit, lambda: pair_logprobs(
            model, pairs[i:i + 2], 0, prefix=prefix))[0] for i in range(0, len(pairs), 2)])
        torch.testing.assert_close(twos, plain[0], rtol=1e-5, atol=1e-5)


def test_the_blocks_below_the_prefix_do_not_run_and_the_model_is_left_as_it_was():
    model = tiny_model("llama", n_layers=4)
    adapter = get_adapter(model)
    pairs = _pairs()
    blocks_before = model.model.layers
    prefix = pair_prefix(model, adapter, 3, pairs, 0)
    runs = {i: 0 for i in range(4)}
    handles = [block.register_forward_hook(lambda *_, i=i: runs.__setitem__(i, runs[i] + 1))
               for i, block in enumerate(adapter.blocks)]
    with torch.no_grad():
        pair_logprobs(model, pairs, 0, prefix=prefix)
        assert runs == {0: 0, 1: 0, 2: 0, 3: 1}
        with pytest.raises(KeyError):          # a pair it does not hold: an error, not a guess
            pair_logprobs(model, [TokenizedPair((5, 6), (7,), (8,))], 0, prefix=prefix)
        pair_logprobs(model, pairs, 0)
    for h in handles:
        h.remove()
    assert runs == {0: 1, 1: 1, 2: 1, 3: 2}
    assert model.model.layers is blocks_before and len(model.model.layers) == 4
    assert not any(b._forward_pre_hooks for b in adapter.blocks)
    with pytest.raises(ValueError, match="starts at block 1 .. 3"):
        FrozenPrefix(model, adapter, 0, pairs, lambda batch: packed_pairs(batch, 0).inputs, pair_length)
    with pytest.raises(ValueError, match="unpacked"):
        pair_logprobs(model, pairs, 0, prefix=prefix, on_batch=lambda mask: None)


def test_an_edit_hooked_in_block_0_or_unplaced_freezes_nothing():
    model = tiny_model("gpt2", n_layers=4)
    adapter = get_adapter(model)
    edit = HeadEdit(adapter, [HeadLoc(0, 1), HeadLoc(3, 0)], initial_read_vectors(adapter, 0, 0.5))
    assert _prefix(model, edit, _pairs()) is None
    assert _prefix(model, object(), _pairs()) is None


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_training_packed_and_with_the_prefix_fits_the_same_edit(family):
    model = tiny_model(family, n_layers=4)
    adapter = get_adapter(model)
    rng = np.random.default_rng(0)

    def seq(k):
        return tuple(int(t) for t in rng.integers(3, 60, size=k))
    pairs = [TokenizedPair((1,) + seq(int(rng.integers(2, 6))), seq(2), seq(3)) for _ in range(10)]
    reference = all_pair_logprobs(model, pairs, 0, packed=False)
    cfg = TrainConfig(batch_size=3, learning_rate=2e-2, max_epochs=4, seed=0)
    fits = []
    for packed, freeze in ((False, False), (True, False), (True, True)):
        edit = HeadEdit(adapter, [HeadLoc(2, 1), HeadLoc(3, 2)], initial_read_vectors(adapter, 0, 0.5))
        with edit.attached(model):
            fits.append((train_edit(model, edit, pairs, reference, cfg, 0, freeze_prefix=freeze, packed=packed),
                         edit.b.detach().clone()))
    (plain, b_plain), *others = fits
    assert plain.objective_curve[-1] < 0.9 * plain.objective_curve[0]          # it learned something
    for fit, b in others:
        np.testing.assert_allclose(fit.objective_curve, plain.objective_curve, rtol=1e-4)
        np.testing.assert_allclose(fit.loss_curve, plain.loss_curve, rtol=1e-4)
        assert fit.stopped == plain.stopped and fit.epochs == plain.epochs
        torch.testing.assert_close(b, b_plain, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_prefix_of_plain_sequences_gives_their_logprobs_and_gradients(family):
    """What ROME's value optimisation runs: one prompt and its target, blocks above the layer."""
    model = tiny_model(family, n_layers=4)
    adapter = get_adapter(model)
    pairs = _pairs()
    prompts, answers = [p.prompt for p in pairs], [p.chosen for p in pairs]
    prefix = sequence_prefix(model, adapter, 2, [p + a for p, a in zip(prompts, answers)], 0)
    assert sequence_prefix(model, adapter, 0, [prompts[0]], 0) is None
    _, mlp = _edits(adapter)
    plain = _logprobs_and_grads(model, mlp, lambda: answer_logprobs(model, prompts, answers, 0))
    _close(_logprobs_and_grads(model, mlp, lambda: answer_logprobs(model, prompts, answers, 0, prefix=prefix)), plain)
    one = _logprobs_and_grads(model, mlp, lambda: answer_logprobs(model, prompts[3:4], answers[3:4], 0, prefix=prefix))
    torch.testing.assert_close(one[0], plain[0][3:4], rtol=1e-5, atol=1e-5)
