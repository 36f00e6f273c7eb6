"""The training loop: fairness (same order for everyone), the convergence rule (optimum,
plateau, capped, backtracking), and the reparameterized edit with every head unmasked (the
ceiling) against peft's rank-1 LoRA, an independent implementation of the same functions."""
import numpy as np
import pytest

from loccheck.testing import known_model, tiny_model
from loccheck.edits.rank_one import FullLoraEdit, HeadEdit, initial_read_vectors
from loccheck.locations import HeadLoc
from loccheck.models import get_adapter
from loccheck.data.prompts import TokenizedPair
from loccheck.models.scoring import all_pair_logprobs
from loccheck.edits.training import TrainConfig, epoch_batches, stop_reason, train_edit

pytestmark = pytest.mark.slow   # trains edits on tiny torch models (torch)


def _pairs(n=8, seed=0):
    rng = np.random.default_rng(seed)
    def seq(k):
        return tuple(int(t) for t in rng.integers(3, 64, size=k))
    return [TokenizedPair((1,) + seq(4), seq(3), seq(3)) for _ in range(n)]


def test_epoch_batches_are_a_function_of_the_config_only():
    lengths = [int(n) for n in np.random.default_rng(1).integers(3, 30, size=50)]
    cfg = TrainConfig(batch_size=3, seed=7)
    first = epoch_batches(lengths, cfg, 0)
    assert first == epoch_batches(lengths, cfg, 0) and len(first) == cfg.steps_per_epoch(50) == 17
    assert sorted(i for batch in first for i in batch) == list(range(50))
    assert epoch_batches(lengths, cfg, 1) != first                 # a new order every epoch
    assert epoch_batches(lengths, TrainConfig(batch_size=3, seed=8), 0) != first


def test_batches_are_bucketed_by_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 60, size=200).tolist()
    cfg = TrainConfig(batch_size=4, seed=0)
    batches = epoch_batches(lengths, cfg, 0)
    padded = sum(4 * max(lengths[i] for i in b) for b in batches)
    # against the same batches drawn without bucketing, padding falls by more than half
    perm = np.random.default_rng(np.random.SeedSequence(0, spawn_key=(0,))).permutation(200)
    plain = sum(4 * max(lengths[i] for i in perm[k:k + 4]) for k in range(0, 200, 4))
    assert padded - sum(lengths) < 0.5 * (plain - sum(lengths))


NAN = float("nan")


@pytest.mark.parametrize("curve, kw, expected", [
    ([25.0], {}, None),                                   # not judged before an epoch
    ([25.0, 0.2], {}, "optimum"),                         # within 2% of the start from IPO's optimum 0
    ([25.0, 10.0, 9.9], {}, None),                        # one flat epoch (0.1 <= 0.02 * 15.1) ...
    ([25.0, 10.0, 9.9, 9.85], {}, "plateau"),             # ... and a second: a plateau
    ([25.0, 10.0, 9.9, 5.0], {}, None),                   # a stall, then it falls again
    ([25.0, 10.0, 9.0, 8.9], {}, None),                   # gained 1.0 > 0.02 * 16: still improving
    ([25.0, 25.0], {}, None),
    # nothing moves, exactly: no gradient ever reached it (a location the output cannot see) ...
    ([25.0, 25.0, 25.0], {"moved": False}, "stationary"),
    # ... or a gradient whose steps are lost in round-off: the same curve, not converged
    ([25.0, 25.0, 25.0], {"moved": True}, "stalled"),
    ([25.0, 25.0 - 1e-6, 25.0 - 2e-6], {}, "stalled"),    # round-off is neither progress ...
    ([25.0, 25.0 - 1e-6], {"capped": True}, "stalled"),   # ... nor a flat epoch's improvement
    ([25.0, 25.0, 25.0 + 1e-6, 25.0], {"moved": False}, "stationary"),   # two flat, one undone between
    ([25.0, 24.9, 24.8, 24.7], {}, None),                 # a steady crawl is never a plateau ...
    ([25.0, 24.9, 24.8, 24.7], {"capped": True}, "capped"),   # ... and is capped at the budget
    ([25.0, 10.0, NAN, NAN], {}, None),                   # blew up twice: undone, at half the rate
    ([25.0, 10.0, 12.0, NAN, 11.0], {}, "plateau"),       # undone three times: a finite best, not "diverged"
    ([25.0, 10.0, 11.0, 9.0, 12.0], {}, None),            # an improvement starts the count again
    ([25.0, NAN, NAN, NAN], {}, "diverged"),              # never got anywhere but non-finite
    ([25.0, NAN], {"capped": True}, "diverged"),
    ([24.0, 1.0, 0.4], {"origin": 25.0}, "optimum"),      # a warm start: judged from the identity
    ([3.0, 2.99, 2.99], {"origin": 25.0}, "plateau"),     # 0.01 <= 0.02 * 22.01: flat twice
])
def test_convergence_rule(curve, kw, expected):
    assert stop_reason(TrainConfig(convergence_tol=0.02), curve, 0.0, **kw) == expected


def test_dpo_trains_its_budget_and_never_converges():
    """DPO's loss has no minimum: any plateau would be set by the learning rate."""
    cfg = TrainConfig(objective="dpo", convergence_tol=0.02)
    assert stop_reason(cfg, [0.69, 0.001, 0.001, 0.001], 0.0) is None
    assert stop_reason(cfg, [0.69, 0.001, 0.001], 0.0, capped=True) == "budget"


def _fit(model, edit, pairs, cfg):
    reference = all_pair_logprobs(model, pairs, pad_id=0)
    with edit.attached(model):
        return train_edit(model, edit, pairs, reference, cfg, pad_id=0)


def _head_edit(model, heads, seed=1, std=0.1):
    adapter = get_adapter(model)
    return HeadEdit(adapter, heads, initial_read_vectors(adapter, seed, std))


def test_training_is_deterministic_and_converges():
    model = tiny_model("llama")
    pairs = _pairs()
    cfg = TrainConfig(max_epochs=30, batch_size=4, learning_rate=0.05, seed=1)
    runs = [_fit(model, _head_edit(model, [HeadLoc(1, 2)]), pairs, cfg) for _ in range(2)]
    assert runs[0] == runs[1]
    run = runs[0]
    assert run.initial_objective == run.objective_curve[0] == pytest.approx(25.0)  # (0 - 5)^2, computed
    assert run.converged and run.stopped in ("optimum", "plateau") and run.epochs < 30
    assert run.final_objective == min(run.objective_curve) < 0.5 * run.initial_objective
    assert run.attained == pytest.approx((25.0 - run.final_objective) / 25.0)
    assert len(run.loss_curve) == 2 * run.epochs                  # 8 pairs, batch 4


def test_the_kept_parameters_give_the_final_objective():
    model = tiny_model("gpt2")
    pairs = _pairs(seed=3)
    edit = _head_edit(model, [HeadLoc(0, 1), HeadLoc(1, 3)])
    run = _fit(model, edit, pairs, TrainConfig(max_epochs=6, learning_rate=0.05))
    from loccheck.edits.training import whole_objective
    reference = all_pair_logprobs(model, pairs, pad_id=0)
    with edit.attached(model):
        assert whole_objective(model, pairs, reference, TrainConfig(), 0) == pytest.approx(
            run.final_objective, rel=1e-9)


@pytest.mark.parametrize("lr, stopped", [(1e-9, "stalled"), (1e-6, "stalled"), (1e-4, "capped")])
def test_a_learning_rate_too_small_to_move_is_capped_not_converged(lr, stopped):
    """Steps lost in round-off (1e-9, 1e-6: no progress beyond round-off) stall; a crawl (1e-4)
    reaches the cap. Neither is called converged."""
    model = tiny_model("llama")
    run = _fit(model, _head_edit(model, [HeadLoc(1, 2)]), _pairs(),
               TrainConfig(max_epochs=8, learning_rate=lr))
    assert run.final_objective <= run.objective_curve[0]
    assert run.attained < 0.01                                       # it got nowhere ...
    assert not run.converged and run.stopped == stopped              # ... and is not called converged


@pytest.mark.parametrize("dead", [HeadLoc(0, 1), HeadLoc(1, 1)])
def test_a_location_that_cannot_reach_the_output_converges_at_once(dead):
    """The same situation gets the same label at every layer: no gradient ever arrives."""
    model = known_model("llama", [HeadLoc(1, 2)])                   # every other head is dead
    run = _fit(model, _head_edit(model, [dead]), _pairs(), TrainConfig(max_epochs=8))
    start = run.objective_curve[0]
    assert run.objective_curve == (start, start, start) and start == pytest.approx(25.0)  # no gradient at all
    assert run.converged and run.stopped == "stationary" and run.epochs == 2


def test_an_epoch_that_makes_things_worse_is_undone_at_half_the_rate():
    model = tiny_model("llama")
    run = _fit(model, _head_edit(model, None), _pairs(seed=4),
               TrainConfig(max_epochs=20, learning_rate=1.0))            # far too large
    assert run.backtracks >= 1
    assert run.final_objective == min(run.objective_curve) <= run.initial_objective
    worse = [b for a, b in zip(run.objective_curve, run.objective_curve[1:]) if not b <= a]
    assert worse                                                      # it happened, and was undone


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_the_all_heads_edit_is_peft_rank1_lora(family):
    """The ceiling and peft's LoRA compute the same function: HeadEdit(all heads) with (a, b)
    adds <a, o> W b to the residual, which is LoRA with A = a and B = W b."""
    import torch

    model = tiny_model(family)
    adapter = get_adapter(model)
    pairs = _pairs(6, seed=5)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(adapter.n_layers, adapter.width, generator=gen) * 0.3
    head = HeadEdit(adapter, None, a)
    with torch.no_grad():
        head.b.copy_(torch.randn(head.b.shape, generator=gen) * 0.3)
    lora = FullLoraEdit(adapter, a)
    for layer in range(adapter.n_layers):
        w = adapter.out_proj(layer).weight                           # Linear (out, in); Conv1D (in, out)
        lora.B[layer] = (head.b[layer] @ w if adapter.fan_in_fan_out else w @ head.b[layer]).detach()
    with head.attached(model):
        via_heads = all_pair_logprobs(model, pairs, pad_id=0)
    with lora.attached(model):
        via_peft = all_pair_logprobs(model, pairs, pad_id=0)
    unedited = all_pair_logprobs(model, pairs, pad_id=0)
    assert not torch.allclose(via_heads, unedited)                   # a real edit ...
    assert torch.allclose(via_heads, via_peft, rtol=1e-5, atol=1e-4)  # ... the same function


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_both_parameterizations_reach_the_same_optimum(family):
    """Trained by the same loop, the two reach IPO's optimum on a small problem (from 25)."""
    model = tiny_model(family)
    adapter = get_adapter(model)
    pairs = _pairs(8, seed=2)
    a_init = initial_read_vectors(adapter, seed=0, init_std=0.1)
    cfg = TrainConfig(max_epochs=60, batch_size=8, learning_rate=0.03, seed=0, convergence_tol=0.005)
    reparam = _fit(model, HeadEdit(adapter, None, a_init), pairs, cfg)
    lora = _fit(model, FullLoraEdit(adapter, a_init), pairs, cfg)
    assert reparam.initial_objective == lora.initial_objective == pytest.approx(25.0)
    assert reparam.converged and lora.converged
    assert reparam.attained > 0.9 and lora.attained > 0.9
    assert abs(reparam.final_objective - lora.final_objective) < 0.05 * 25
