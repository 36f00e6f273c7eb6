"""The training loop: fairness (same order for everyone), convergence flag, and the
reparameterized edit with every head unmasked against peft's rank-1 LoRA."""
import numpy as np
import pytest

from loccheck.testing import tiny_model
from loccheck.edits.optimal import FullLoraEdit, HeadEdit, initial_read_vectors
from loccheck.locations import HeadLoc
from loccheck.models import get_adapter
from loccheck.prompts import TokenizedPair
from loccheck.scoring import all_pair_logprobs
from loccheck.edits.training import TrainConfig, batch_order, convergence, train_edit

pytestmark = pytest.mark.slow   # trains edits on tiny torch models (torch)


def _pairs(n=8, seed=0):
    rng = np.random.default_rng(seed)
    def seq(k):
        return tuple(int(t) for t in rng.integers(3, 64, size=k))
    return [TokenizedPair((1,) + seq(4), seq(3), seq(3)) for _ in range(n)]


def test_batch_order_is_a_function_of_the_config_only():
    cfg = TrainConfig(epochs=2, batch_size=3, seed=7)
    order = batch_order(10, cfg)
    assert order == batch_order(10, cfg)
    assert len(order) == cfg.n_steps(10) == 8
    for epoch in (order[:4], order[4:]):
        assert sorted(i for batch in epoch for i in batch) == list(range(10))
    assert batch_order(10, TrainConfig(epochs=2, batch_size=3, seed=8)) != order
    assert len(batch_order(10, TrainConfig(epochs=2, batch_size=3, max_steps=5))) == 5


def test_convergence_flag():
    plateau = [5.0, 3.0, 2.0, 1.5, 1.0, 1.0, 1.01, 0.99]      # quarters: [1.01, .99] vs [1, 1]
    assert convergence(plateau, tol=0.05) == (1.0, False)
    falling = [4.0] * 6 + [3.0, 3.0]                            # [3, 3] vs [4, 4]
    assert convergence(falling, tol=0.05) == (3.0, True)
    assert convergence(falling, tol=0.3) == (3.0, False)        # a 25% drop is within 30%
    assert convergence([1.0] * 7, tol=0.05) == (1.0, True)     # too short to tell


def _fit(model, edit, pairs, cfg):
    reference = all_pair_logprobs(model, pairs, pad_id=0)
    with edit.attached(model):
        return train_edit(model, edit, pairs, reference, cfg, pad_id=0)


def test_training_is_deterministic_and_reduces_the_loss():
    model = tiny_model("llama")
    adapter = get_adapter(model)
    pairs = _pairs()
    cfg = TrainConfig(epochs=6, batch_size=4, learning_rate=0.05, seed=1)
    runs = [_fit(model, HeadEdit(adapter, [HeadLoc(1, 2)], initial_read_vectors(adapter, 1, 0.1)),
                 pairs, cfg) for _ in range(2)]
    assert runs[0].loss_curve == runs[1].loss_curve
    assert runs[0].loss_curve[0] == pytest.approx(25.0, rel=1e-3)   # h = 0 at the start: (0 - 5)^2
    assert runs[0].final_loss < 0.8 * runs[0].loss_curve[0]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_all_heads_reparameterized_edit_matches_peft_lora(family):
    """Same expressiveness (W^l is invertible here), so on a small problem both optima reach the
    same IPO loss. Tolerance: both end below 0.1 (from a starting loss of 25), so within 0.1
    of each other."""
    model = tiny_model(family)
    adapter = get_adapter(model)
    pairs = _pairs(8, seed=2)
    a_init = initial_read_vectors(adapter, seed=0, init_std=0.1)
    cfg = TrainConfig(epochs=40, batch_size=8, learning_rate=0.03, seed=0)
    reparam = _fit(model, HeadEdit(adapter, None, a_init), pairs, cfg)
    lora = _fit(model, FullLoraEdit(adapter, a_init), pairs, cfg)
    assert reparam.loss_curve[0] == lora.loss_curve[0] == pytest.approx(25.0, rel=1e-3)
    assert reparam.final_loss < 0.1 and lora.final_loss < 0.1
