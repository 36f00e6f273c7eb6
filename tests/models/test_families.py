"""Every family loccheck has an adapter for, on a tiny model built from its config (nothing is
downloaded), through the same contracts: the structural checks pass (and fail when a site is
wrong), scoring gives the model's own logits, packed pairs and the frozen prefix give the plain
forward's log-probabilities, an edit at its start changes nothing, and a planted model in which
only one head (one MLP) reaches the residual stream gives SUPPORTED for it and FALSIFIED for a
dead one. The families of `testing.FAMILIES` run the planted answers in more depth in
tests/end_to_end/test_known_answers.py and test_known_mlp.py."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from loccheck.claim import parse_claim
from loccheck.edits.rank_one import FullLoraEdit, HeadEdit, MlpEdit, initial_read_vectors
from loccheck.errors import AdapterError
from loccheck.locations import HeadLoc, MlpLoc
from loccheck.models import checked_adapter, get_adapter, supported_model_types
from loccheck.models.checks import check_structure
from loccheck.models.families import SHAPES, build_adapter
from loccheck.models.prefix import pair_prefix, sequence_prefix
from loccheck.models.scoring import answer_logprobs, float32_logits, pair_logprobs, vocab_logits
from loccheck.run.verify import verify
from loccheck.testing import (ALL_FAMILIES, FAMILIES, claim_text, tiny_model, token_pairs, write_model_dir,
                              write_pairs)

pytestmark = pytest.mark.slow   # tiny torch models

NEW_FAMILIES = [f for f in ALL_FAMILIES if f not in FAMILIES]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


def _ids(n=9):
    return torch.tensor([[(5 + 11 * i) % 97 for i in range(n)]])


def test_every_registered_family_has_a_tiny_model():
    assert sorted(ALL_FAMILIES) == supported_model_types()


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_the_structural_checks_pass(family):
    model = tiny_model(family, n_layers=3)
    deviations = check_structure(model, get_adapter(model))
    print(family, deviations)
    assert deviations["heads"] == 0.0              # the same numbers, only reshaped
    assert deviations["mlp"] <= 1e-5 and deviations["logits"] <= 1e-5


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_the_structural_checks_pass_in_bfloat16(family):
    # a half-precision model rounds its own outputs: the checks allow that, and only that
    model = tiny_model(family, n_layers=3).to(torch.bfloat16)
    deviations = check_structure(model, get_adapter(model))
    assert deviations["heads"] == 0.0 and deviations["logits"] <= 8 * 2 ** -7


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_the_checks_leave_the_model_as_it_was(family):
    model = tiny_model(family).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    checked_adapter(model)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_heads_sliced_in_another_order_fail_the_heads_check(family):
    model = tiny_model(family)
    adapter = get_adapter(model)
    # what a wrong layout would slice: the heads of layer 1's projection input in reverse order
    h, d = adapter.n_heads, adapter.head_dim

    def reverse(module, args):
        o = args[0]
        return (o.reshape(*o.shape[:-1], h, d).flip(-2).reshape(o.shape),)
    handle = adapter.out_proj(1).register_forward_pre_hook(reverse)
    try:
        with pytest.raises(AdapterError, match="check 'heads' failed: the input of .* differs"):
            check_structure(model, adapter)
    finally:
        handle.remove()
    wrong = dataclasses.replace(adapter, n_heads=2 * h, head_dim=d // 2)
    with pytest.raises(AdapterError, match=f"computes {h} heads of width {d}, but .* {2 * h} heads"):
        check_structure(model, wrong)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", ["gemma2", "gemma3_text", "olmo2"])
def test_a_site_before_a_post_norm_read_as_plain_fails_the_mlp_check(family, dtype):
    model = tiny_model(family).to(dtype)
    plain = build_adapter(model, family, SHAPES["llama"])      # no norm after the MLP
    with pytest.raises(AdapterError, match="check 'mlp' failed: a vector added at model.layers.0.mlp.down_proj "
                                           "does not reach layer 0's output as it is"):
        check_structure(model, plain)


def test_gemma2_soft_capping_is_in_the_scoring_logits():
    model = tiny_model("gemma2")
    hidden = model.model(input_ids=_ids()).last_hidden_state
    own = model(input_ids=_ids()).logits
    uncapped = float32_logits(model.get_output_embeddings(), hidden)
    assert float((uncapped - own).abs().max()) > 0.5        # the cap (2.0) matters here ...
    assert float((vocab_logits(model, hidden) - own).abs().max()) <= 1e-5   # ... and is applied


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_answer_logprobs_are_the_models_own(family):
    model = tiny_model(family)
    ids = _ids()
    own = model(input_ids=ids).logits.log_softmax(-1)[0]
    want = sum(float(own[t - 1, ids[0, t]]) for t in range(4, ids.shape[1]))
    got = answer_logprobs(model, [ids[0, :4].tolist()], [ids[0, 4:].tolist()], 0)
    assert float(got[0]) == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_packed_pairs_and_the_prefix_give_the_plain_forward(family):
    model = tiny_model(family, n_layers=3)
    adapter = get_adapter(model)
    pairs = token_pairs(n=6)
    plain = pair_logprobs(model, pairs, 0, packed=False)                # each answer in its own row
    torch.testing.assert_close(pair_logprobs(model, pairs, 0), plain, rtol=1e-5, atol=1e-5)
    for first in (1, 2):
        prefix = pair_prefix(model, adapter, first, pairs, 0)
        torch.testing.assert_close(pair_logprobs(model, pairs, 0, prefix=prefix), plain, rtol=1e-5, atol=1e-5)
        seqs = [p.prompt + p.chosen for p in pairs]
        prefix = sequence_prefix(model, adapter, first, seqs, 0)
        got = answer_logprobs(model, [p.prompt for p in pairs], [p.chosen for p in pairs], 0, prefix=prefix)
        torch.testing.assert_close(got, plain[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_an_edit_at_its_start_changes_nothing(family):
    model = tiny_model(family, n_layers=3)
    adapter = get_adapter(model)
    pairs = token_pairs(n=6)
    unedited = pair_logprobs(model, pairs, 0)
    edits = [HeadEdit(adapter, [HeadLoc(1, 2)], initial_read_vectors(adapter, 0, 0.5)),
             MlpEdit(adapter, [MlpLoc(1)], initial_read_vectors(adapter, 0, 0.5, "mlp")),
             MlpEdit(adapter, None, initial_read_vectors(adapter, 0, 0.5, "mlp")),
             FullLoraEdit(adapter, initial_read_vectors(adapter, 0, 0.5))]
    for edit in edits:
        with edit.attached(model):
            assert torch.equal(pair_logprobs(model, pairs, 0), unedited), type(edit).__name__
        # and one that is not at its start moves the answers
        with torch.no_grad():
            (edit.B if isinstance(edit, FullLoraEdit) else edit.b).normal_(generator=torch.Generator().manual_seed(1))
        with edit.attached(model), torch.no_grad():
            assert float((pair_logprobs(model, pairs, 0) - unedited).abs().max()) > 1e-3, type(edit).__name__
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# --- planted known answers (the reasoning: tests/end_to_end/test_known_answers.py) -------------------

N, NULL_SEED_HEADS, NULL_SEED_MLP = 19, 13, 4
BUDGET = ("{max_epochs: 40, convergence_tol: 0.005, batch_size: 4, learning_rate: 0.05, "
          "ceiling_learning_rate: 0.05, init_std: 0.1, tau: 0.5}")
SPLIT = "{train: 0.5, validation: 0.0, test: 0.5, seed: 0}"
LIVE_HEAD, DEAD_HEAD = HeadLoc(1, 2), HeadLoc(0, 1)
LIVE_MLP, DEAD_MLP, MLP_LAYERS = MlpLoc(5), MlpLoc(2), 8


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("families") / "pairs.jsonl", n_questions=48)


def _verdict(model_dir, pairs, site, seed, tmp_path):
    text = claim_text(model_dir, pairs, [str(site)], n=N, alpha=0.05, edit=BUDGET, split=SPLIT,
                      random_seed=seed)
    return verify(parse_claim(text, path=tmp_path / "claim.yaml"), write_report=False, progress=False)


# the live and the dead site, the model's layers and the null's seed (its draws never hit the live site)
PLANTED = {"head": (LIVE_HEAD, DEAD_HEAD, 2, NULL_SEED_HEADS), "mlp": (LIVE_MLP, DEAD_MLP, MLP_LAYERS, NULL_SEED_MLP)}


@pytest.mark.parametrize("kind", PLANTED)
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_a_planted_site_is_supported_and_a_dead_one_falsified(family, kind, pairs, tmp_path):
    live_site, dead_site, n_layers, seed = PLANTED[kind]
    model_dir = write_model_dir(tmp_path / "model", family, [live_site], n_layers=n_layers)
    live = _verdict(model_dir, pairs, live_site, seed, tmp_path)
    print(family, live_site, live.verdict, live.p_value, live.claim_gain, live.ceiling_gain)
    assert live.null_gains == [0.0] * N and live.claim_gain > 0           # dead sites, bit for bit
    assert (live.verdict, live.p_value) == ("SUPPORTED", 1 / (N + 1))
    dead = _verdict(model_dir, pairs, dead_site, seed, tmp_path)
    assert dead.claim_gain == 0.0 and (dead.verdict, dead.p_value) == ("FALSIFIED", 1.0)
