"""The frozen prefix (`models.prefix`): the blocks below an edit run once, and the log-probabilities
and gradients are those of the plain forward, on every architecture, however the sequences are
later batched; the blocks below are really not run; training with it fits the same edit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from loccheck.edits.optimal import HeadEdit, MlpEdit, initial_read_vectors
from loccheck.edits.training import TrainConfig, train_edit
from loccheck.locations import HeadLoc, MlpLoc
from loccheck.models import get_adapter
from loccheck.models.prefix import FrozenPrefix, frozen_prefix
from loccheck.prompts import TokenizedPair
from loccheck.scoring import all_pair_logprobs, answer_logprobs
from loccheck.testing import FAMILIES, tiny_model

pytestmark = pytest.mark.slow   # tiny torch models


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


def _sequences(seed=0, n=7):
    rng = np.random.default_rng(seed)
    prompts = [[int(t) for t in rng.integers(3, 60, size=rng.integers(2, 9))] for _ in range(n)]
    answers = [[int(t) for t in rng.integers(3, 60, size=rng.integers(1, 5))] for _ in range(n)]
    return prompts, answers


def _edits(adapter):
    heads = HeadEdit(adapter, [HeadLoc(2, 1), HeadLoc(3, 0), HeadLoc(3, 3)],
                     initial_read_vectors(adapter, 0, 0.5))
    mlp = MlpEdit(adapter, [MlpLoc(2), MlpLoc(3)], initial_read_vectors(adapter, 0, 0.5, "mlp"))
    for edit in (heads, mlp):
        with torch.no_grad():
            edit.b.normal_(generator=torch.Generator().manual_seed(1))   # not the identity
    return heads, mlp


def _logprobs_and_grads(model, edit, prompts, answers, prefix=None):
    with edit.attached(model):
        lp = answer_logprobs(model, prompts, answers, 0, prefix=prefix)
        (lp * torch.linspace(1, 2, len(lp))).sum().backward()
    grads = [p.grad.clone() for p in edit.trainable()]
    for p in edit.trainable():
        p.grad = None
    return lp.detach(), grads


@pytest.mark.parametrize("family", FAMILIES)
def test_the_prefix_gives_the_plain_forwards_logprobs_and_gradients(family):
    model = tiny_model(family, n_layers=4)
    adapter = get_adapter(model)
    prompts, answers = _sequences()
    for edit in _edits(adapter):
        # the prefix is computed in its own batches (sorted by length, 16 at a time) ...
        prefix = frozen_prefix(model, edit, [p + a for p, a in zip(prompts, answers)], 0)
        assert prefix.first == 2
        plain, plain_grads = _logprobs_and_grads(model, edit, prompts, answers)
        # ... and used in others: all at once, reversed, and two at a time
        fed, grads = _logprobs_and_grads(model, edit, prompts, answers, prefix)
        torch.testing.assert_close(fed, plain, rtol=1e-5, atol=1e-5)
        for g, g0 in zip(grads, plain_grads):
            assert g0.abs().max() > 0
            torch.testing.assert_close(g, g0, rtol=1e-4, atol=1e-6)
        rev, _ = _logprobs_and_grads(model, edit, prompts[::-1], answers[::-1], prefix)
        torch.testing.assert_close(rev.flip(0), plain, rtol=1e-5, atol=1e-5)
        pairs = torch.cat([_logprobs_and_grads(model, edit, prompts[i:i + 2], answers[i:i + 2], prefix)[0]
                           for i in range(0, len(prompts), 2)])
        torch.testing.assert_close(pairs, plain, rtol=1e-5, atol=1e-5)


def test_the_blocks_below_the_prefix_do_not_run_and_the_model_is_left_as_it_was():
    model = tiny_model("llama", n_layers=4)
    adapter = get_adapter(model)
    prompts, answers = _sequences()
    seqs = [p + a for p, a in zip(prompts, answers)]
    blocks_before = model.model.layers
    prefix = FrozenPrefix(model, adapter, seqs, 3, 0)
    runs = {i: 0 for i in range(4)}
    handles = [block.register_forward_hook(lambda *_, i=i: runs.__setitem__(i, runs[i] + 1))
               for i, block in enumerate(adapter.blocks)]
    with torch.no_grad():
        answer_logprobs(model, prompts, answers, 0, prefix=prefix)
        assert runs == {0: 0, 1: 0, 2: 0, 3: 1}
        with pytest.raises(KeyError):          # a sequence it does not hold: an error, not a guess
            answer_logprobs(model, [[5, 6]], [[7]], 0, prefix=prefix)
        answer_logprobs(model, prompts, answers, 0)
    for h in handles:
        h.remove()
    assert runs == {0: 1, 1: 1, 2: 1, 3: 2}
    assert model.model.layers is blocks_before and len(model.model.layers) == 4
    assert not any(b._forward_pre_hooks for b in adapter.blocks)
    with pytest.raises(ValueError, match="starts at block 1 .. 3"):
        FrozenPrefix(model, adapter, seqs, 0, 0)


def test_an_edit_hooked_in_block_0_or_unplaced_freezes_nothing():
    model = tiny_model("gpt2", n_layers=4)
    adapter = get_adapter(model)
    edit = HeadEdit(adapter, [HeadLoc(0, 1), HeadLoc(3, 0)], initial_read_vectors(adapter, 0, 0.5))
    assert frozen_prefix(model, edit, [[5, 6, 7]], 0) is None
    assert frozen_prefix(model, object(), [[5, 6, 7]], 0) is None


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_training_with_the_prefix_fits_the_same_edit(family):
    model = tiny_model(family, n_layers=4)
    adapter = get_adapter(model)
    rng = np.random.default_rng(0)

    def seq(k):
        return tuple(int(t) for t in rng.integers(3, 60, size=k))
    pairs = [TokenizedPair((1,) + seq(int(rng.integers(2, 6))), seq(2), seq(3)) for _ in range(10)]
    reference = all_pair_logprobs(model, pairs, 0)
    cfg = TrainConfig(batch_size=3, learning_rate=2e-2, max_epochs=4, seed=0)
    fits = []
    for freeze in (False, True):
        edit = HeadEdit(adapter, [HeadLoc(2, 1), HeadLoc(3, 2)], initial_read_vectors(adapter, 0, 0.5))
        with edit.attached(model):
            fits.append((train_edit(model, edit, pairs, reference, cfg, 0, freeze_prefix=freeze),
                         edit.b.detach().clone()))
    (plain, b_plain), (frozen, b_frozen) = fits
    assert plain.objective_curve[-1] < 0.9 * plain.objective_curve[0]          # it learned something
    np.testing.assert_allclose(frozen.objective_curve, plain.objective_curve, rtol=1e-4)
    np.testing.assert_allclose(frozen.loss_curve, plain.loss_curve, rtol=1e-4)
    assert frozen.stopped == plain.stopped and frozen.epochs == plain.epochs
    torch.testing.assert_close(b_frozen, b_plain, rtol=1e-3, atol=1e-6)
