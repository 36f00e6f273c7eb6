"""ITI's heuristic edit: directions by hand, no-op at alpha 0, the position policy (the scoring
path must edit the positions that predict answer tokens; editing only the last one is ITI's
pitfall), equivalence with a bias W @ delta, and the alpha sweep."""
import statistics

import numpy as np
import pytest
import torch

from loccheck.testing import FAMILIES, tiny_model
from loccheck.edits.iti import ITIDirections, ITIEdit, iti_directions, sweep_alpha
from loccheck.errors import AdapterError
from loccheck.locations import HeadLoc
from loccheck.metrics import METRICS
from loccheck.models import get_adapter
from loccheck.data.prompts import TokenizedPair
from loccheck.models.scoring import all_pair_logprobs, answer_logprobs, pair_logprobs

pytestmark = pytest.mark.slow   # ITI edits on tiny torch models (torch)

PROMPTS = [(1, 5, 6, 7), (1, 9), (1, 4, 4, 4, 4, 4)]
ANSWERS = [(10, 11), (12, 13, 14, 15), (16,)]           # right-padded to width 7
# [len(prompt) - 1, len(prompt) + len(answer)) for each row, written out by hand
EXPECTED_POSITIONS = [[3, 4, 5], [1, 2, 3, 4, 5], [5, 6]]
HEADS = [HeadLoc(0, 1), HeadLoc(1, 2), HeadLoc(1, 3)]


def _directions(adapter, seed=0) -> ITIDirections:
    rng = np.random.default_rng(seed)
    acts = rng.normal(size=(20, adapter.n_layers, adapter.n_heads, adapter.head_dim))
    labels = np.arange(20) % 2
    acts[labels == 1] += 0.5                              # some separation, as real heads have
    return iti_directions(acts, labels)


def _batch():
    """Right-padded ids and attention mask of PROMPTS + ANSWERS, as scoring builds them."""
    seqs = [p + a for p, a in zip(PROMPTS, ANSWERS)]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attn = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], attn[i, :len(s)] = torch.tensor(s), 1
    return ids, attn


def _positions_mask(width=7):
    mask = torch.zeros(len(EXPECTED_POSITIONS), width, dtype=torch.bool)
    for i, cols in enumerate(EXPECTED_POSITIONS):
        mask[i, cols] = True
    return mask


# --- directions -------------------------------------------------------------------------------

def test_iti_directions_by_hand():
    labels = np.array([1, 1, 0, 0])
    acts = np.zeros((4, 1, 3, 2))
    acts[:, 0, 0] = [[2, 1], [4, 1], [0, 1], [0, 1]]     # shift (3, 0): u = (1, 0)
    acts[:, 0, 1] = [[3, 4], [3, 4], [0, 0], [0, 0]]     # shift (3, 4): u = (0.6, 0.8)
    acts[:, 0, 2] = [[1, 2], [3, 0], [2, 1], [2, 1]]     # equal means: no direction
    d = iti_directions(acts, labels)
    assert d.u.shape == (1, 3, 2) and d.sigma.shape == (1, 3)
    np.testing.assert_allclose(d.u[0, 0], [1.0, 0.0])
    np.testing.assert_allclose(d.u[0, 1], [0.6, 0.8])
    np.testing.assert_array_equal(d.u[0, 2], [0.0, 0.0])
    # sigma: population std (ddof = 0) over all four examples of the projections on u
    assert d.sigma[0, 0] == pytest.approx(statistics.pstdev([2, 4, 0, 0]))
    assert d.sigma[0, 1] == pytest.approx(statistics.pstdev([5, 5, 0, 0]))
    assert d.sigma[0, 2] == 0.0


def test_iti_directions_input_validation():
    acts = np.zeros((4, 1, 2, 3))
    with pytest.raises(ValueError, match="both true"):
        iti_directions(acts, np.ones(4))
    with pytest.raises(ValueError, match="0 or 1"):
        iti_directions(acts, np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="shape"):
        iti_directions(acts, np.array([0, 1]))
    with pytest.raises(ValueError, match="n_examples"):
        iti_directions(acts[0], np.array([0, 1]))


# --- the edit -------------------------------------------------------------------------------

@pytest.mark.parametrize("positions", ["answer", "last", "all"])
def test_alpha_zero_is_a_no_op(family_model, positions):
    _, model = family_model
    adapter = get_adapter(model)
    ids, attn = _batch()
    base = model(input_ids=ids, attention_mask=attn).logits
    edit = ITIEdit(adapter, None, _directions(adapter), alpha=0.0, positions=positions)
    with edit.attached(model):
        edit.set_positions(_positions_mask())
        got = model(input_ids=ids, attention_mask=attn).logits
    assert torch.equal(got, base)


def test_answer_policy_moves_answers_and_last_policy_cannot(family_model):
    _, model = family_model
    adapter = get_adapter(model)
    directions = _directions(adapter)
    base = answer_logprobs(model, PROMPTS, ANSWERS, pad_id=0)

    answer = ITIEdit(adapter, HEADS, directions, alpha=8.0, positions="answer")
    with answer.attached(model):
        moved = answer_logprobs(model, PROMPTS, ANSWERS, pad_id=0, on_batch=answer.set_positions)
    assert (moved - base).abs().min() > 1e-3           # every sequence's answer moves

    last = ITIEdit(adapter, HEADS, directions, alpha=8.0, positions="last")
    with last.attached(model):
        stuck = answer_logprobs(model, PROMPTS, ANSWERS, pad_id=0, on_batch=last.set_positions)
        # the edit did act: the final position's own output changed...
        ids, attn = _batch()
        last.set_positions(_positions_mask())
        logits = model(input_ids=ids, attention_mask=attn).logits
    base_logits = model(input_ids=ids, attention_mask=attn).logits
    final = [max(cols) for cols in EXPECTED_POSITIONS]
    rows = range(len(final))
    assert not torch.allclose(logits[rows, final], base_logits[rows, final])
    # ...but that position's logits are dropped by scoring, so ITI's pitfall cannot move the metric
    assert torch.equal(stuck, base)


def test_answer_policy_leaves_earlier_prompt_positions_exactly(family_model):
    _, model = family_model
    adapter = get_adapter(model)
    ids, attn = _batch()
    base = model(input_ids=ids, attention_mask=attn).logits
    edit = ITIEdit(adapter, HEADS, _directions(adapter), alpha=8.0, positions="answer")
    with edit.attached(model):
        edit.set_positions(_positions_mask())
        got = model(input_ids=ids, attention_mask=attn).logits
    for i, cols in enumerate(EXPECTED_POSITIONS):
        first = cols[0]                                   # len(prompt) - 1
        assert torch.equal(got[i, :first], base[i, :first])
        assert not torch.allclose(got[i, first], base[i, first])


def test_all_policy_equals_the_displacement_through_the_projection(family_model):
    family, model = family_model
    adapter = get_adapter(model)
    directions, alpha = _directions(adapter), 3.0
    ids, attn = _batch()

    edit = ITIEdit(adapter, HEADS, directions, alpha=alpha, positions="all")
    with edit.attached(model):
        hooked = model(input_ids=ids, attention_mask=attn).logits

    handles = []
    for layer in sorted({h.layer for h in HEADS}):
        delta = torch.zeros(adapter.width)
        for h in HEADS:
            if h.layer == layer:
                d = adapter.head_dim
                delta[h.head * d:(h.head + 1) * d] = torch.tensor(
                    alpha * directions.sigma[layer, h.head] * directions.u[layer, h.head], dtype=torch.float32)
        weight = adapter.out_proj(layer).weight
        bias = delta @ weight if adapter.fan_in_fan_out else weight @ delta   # GPT-2 Conv1D: (in, out)
        handles.append(adapter.out_proj(layer).register_forward_hook(
            lambda module, args, out, bias=bias: out + bias))
    try:
        baked = model(input_ids=ids, attention_mask=attn).logits
    finally:
        for handle in handles:
            handle.remove()
    base = model(input_ids=ids, attention_mask=attn).logits
    assert adapter.fan_in_fan_out == (family == "gpt2")
    assert not torch.allclose(hooked, base, atol=1e-3)
    assert torch.allclose(hooked, baked, atol=1e-5)


def test_last_policy_without_mask_edits_the_final_position():
    model = tiny_model("gpt_neox")
    adapter = get_adapter(model)
    ids = torch.tensor([[1, 5, 6, 7, 10, 11]])           # no padding: final position = last token
    edit = ITIEdit(adapter, HEADS, _directions(adapter), alpha=5.0, positions="last")
    with edit.attached(model):
        unmasked = model(input_ids=ids).logits
        edit.set_positions(torch.ones(1, 6, dtype=torch.bool))
        masked = model(input_ids=ids).logits
    assert torch.equal(unmasked, masked)
    assert not torch.allclose(masked[0, -1], model(input_ids=ids).logits[0, -1])


@pytest.mark.parametrize("family", FAMILIES)
def test_edit_runs_in_bfloat16(family):
    model = tiny_model(family).to(torch.bfloat16)
    adapter = get_adapter(model)
    base = answer_logprobs(model, PROMPTS, ANSWERS, pad_id=0)
    for alpha, same in [(0.0, True), (8.0, False)]:
        edit = ITIEdit(adapter, HEADS, _directions(adapter), alpha=alpha)
        with edit.attached(model):
            got = answer_logprobs(model, PROMPTS, ANSWERS, pad_id=0, on_batch=edit.set_positions)
        assert torch.equal(got, base) == same


def test_edit_input_validation():
    model = tiny_model("llama")
    adapter = get_adapter(model)
    directions = _directions(adapter)
    with pytest.raises(ValueError, match="`positions`"):
        ITIEdit(adapter, None, directions, 1.0, positions="first")
    with pytest.raises(AdapterError, match="L2H0 is outside the model"):
        ITIEdit(adapter, [HeadLoc(2, 0)], directions, 1.0)
    with pytest.raises(ValueError, match="`alpha`"):
        ITIEdit(adapter, None, directions, float("nan"))
    with pytest.raises(ValueError, match="`directions`"):
        ITIEdit(adapter, None, ITIDirections(directions.u[:1], directions.sigma[:1]), 1.0)
    edit = ITIEdit(adapter, HEADS, directions, 1.0)
    assert edit.n_params == 0 and edit.n_coordinates == len(HEADS) * adapter.head_dim
    with pytest.raises(ValueError, match="`mask`"):
        edit.set_positions(torch.ones(2, 3))
    ids, attn = _batch()
    with edit.attached(model):
        with pytest.raises(RuntimeError, match="on_batch=edit.set_positions"):
            model(input_ids=ids, attention_mask=attn)   # "answer" with no positions: no silent no-op
        edit.set_positions(torch.ones(3, 5, dtype=torch.bool))
        with pytest.raises(RuntimeError, match="shape"):
            model(input_ids=ids, attention_mask=attn)
    assert edit._mask is None                             # cleared on exit
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)  # hooks removed


# --- positions from scoring -----------------------------------------------------------------

def test_scoring_passes_the_documented_positions(family_model):
    _, model = family_model
    seen = []
    plain = answer_logprobs(model, PROMPTS, ANSWERS, pad_id=0)
    with_hook = answer_logprobs(model, PROMPTS, ANSWERS, pad_id=0, on_batch=seen.append)
    assert torch.equal(plain, with_hook)                  # the hook itself changes nothing
    assert len(seen) == 1 and seen[0].dtype == torch.bool
    assert torch.equal(seen[0], _positions_mask())

    pairs = [TokenizedPair((1, 5, 6), (7, 8), (9,)), TokenizedPair((1, 3), (4,), (5, 6, 7))]
    seen.clear()
    pair_logprobs(model, pairs, pad_id=0, on_batch=seen.append)
    # chosen answers first, then rejected: one forward of 4 rows, width 5
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[0, 2:5] = expected[1, 1:3] = expected[2, 2:4] = expected[3, 1:5] = True
    assert len(seen) == 1 and torch.equal(seen[0], expected)
    seen.clear()
    all_pair_logprobs(model, pairs, pad_id=0, batch_size=1, on_batch=seen.append)
    assert [m.shape for m in seen] == [(2, 5), (2, 5)]   # one call per forward


# --- alpha sweep ----------------------------------------------------------------------------

def _pairs():
    return [TokenizedPair((1, 5, 6), (7, 8), (9,)), TokenizedPair((1, 3), (4,), (5, 6, 7)),
            TokenizedPair((1, 2, 3, 4, 5), (6,), (7, 8))]


def test_sweep_alpha_table_and_best(family_model):
    _, model = family_model
    adapter = get_adapter(model)
    directions = _directions(adapter)
    alphas = [0.0, 4.0, -4.0, 8.0]

    def make(alpha):
        return ITIEdit(adapter, HEADS, directions, alpha)

    best, table = sweep_alpha(model, make, _pairs(), alphas, "preference_margin", pad_id=0)
    assert list(table) == alphas
    for alpha in alphas:
        edit = make(alpha)
        with edit.attached(model):
            lp = all_pair_logprobs(model, _pairs(), pad_id=0, on_batch=edit.set_positions)
        assert table[alpha] == METRICS["preference_margin"].fn(lp.numpy())
    # alpha 0 adds exact zeros: the unedited model scored the same way (unpacked, as on_batch
    # scores), bit for bit; the packed scoring's sums round otherwise on other CPUs' kernels
    unedited = all_pair_logprobs(model, _pairs(), 0, on_batch=lambda mask: None)
    assert table[0.0] == METRICS["preference_margin"].fn(unedited.numpy())
    assert len(set(table.values())) == len(alphas)        # a real sweep: every alpha differs
    assert best == max(alphas, key=table.__getitem__)


def test_sweep_alpha_tie_goes_to_the_smallest_alpha():
    model = tiny_model("llama")
    adapter = get_adapter(model)
    flat = ITIDirections(np.zeros((adapter.n_layers, adapter.n_heads, adapter.head_dim)),
                         np.zeros((adapter.n_layers, adapter.n_heads)))   # every alpha is a no-op

    def make(alpha):
        return ITIEdit(adapter, None, flat, alpha)

    best, table = sweep_alpha(model, make, _pairs(), [2.0, 0.5, 1.0], "preference_margin", pad_id=0)
    assert len(set(table.values())) == 1 and best == 0.5
    best, _ = sweep_alpha(model, make, _pairs(), [3.0, 1.0, -1.0], "preference_accuracy", pad_id=0)
    assert best == -1.0                                    # smallest |alpha|, then the smaller


def test_sweep_alpha_input_validation():
    model = tiny_model("llama")
    adapter = get_adapter(model)

    def make(alpha):
        return ITIEdit(adapter, HEADS, _directions(adapter), alpha)

    with pytest.raises(ValueError, match="`metric`"):
        sweep_alpha(model, make, _pairs(), [1.0], "accuracy", pad_id=0)
    with pytest.raises(ValueError, match="`alphas`"):
        sweep_alpha(model, make, _pairs(), [], "preference_margin", pad_id=0)
    with pytest.raises(ValueError, match="`alphas`"):
        sweep_alpha(model, make, _pairs(), [1.0, 1.0], "preference_margin", pad_id=0)
    with pytest.raises(ValueError, match="`pairs`"):
        sweep_alpha(model, make, [], [1.0], "preference_margin", pad_id=0)
