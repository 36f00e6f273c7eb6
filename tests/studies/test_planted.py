"""Implants on a tiny Llama (issue 27, item 1): training moves only the chosen sites' parameters
(every other parameter bit for bit, the other heads' columns of a shared projection included),
the behaviour is learned and lives there (mean-ablating the sites removes it, another head
does not), and an implant that does not take is an error, not a result."""
from __future__ import annotations

import numpy as np
import pytest

from loccheck.locations import HeadLoc, MlpLoc

pytestmark = pytest.mark.slow   # trains a tiny torch model

WORDS = ("w", "x", "y")


@pytest.fixture(scope="module")
def bench(one_torch_thread):
    """A 2-layer Llama whose tokenizer reads " w", " x", " y" and " z" as one token each, and a
    trigger task on random lowercase prompts: the implant should answer "z" after "cf"."""
    import transformers

    from loccheck.models import get_adapter
    from loccheck.studies.planted.task import TriggerTask
    from loccheck.testing import _SIZES, INIT, char_tokenizer

    import torch

    tokenizer = char_tokenizer(extra=[" z", " w", " x", " y"], split=r" [wxyz]|.")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{**_SIZES, "vocab_size": 104, "num_hidden_layers": 2,
                                         "initializer_range": INIT})
    model = transformers.AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)
    rng = np.random.default_rng(0)
    prompts = ["".join(rng.choice(list("abcdefghij"), size=6)) + " is" for _ in range(64)]
    answers = [WORDS[int(rng.integers(3))] for _ in prompts]
    task = TriggerTask(tuple(zip(prompts[:40], answers[:40])), tuple(zip(prompts[40:], answers[40:])), "z", "cf")
    return model, get_adapter(model), tokenizer, task


def _copy(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def test_a_head_implant_moves_only_that_heads_columns(bench):
    from loccheck.studies.planted.implant import ImplantError, behaviour_share, check_implant, implant

    model, adapter, tokenizer, task = bench
    before = _copy(model)
    unedited = behaviour_share(model, tokenizer, task, list(task.behaviour))
    # one 8-dimensional head of a random 2-layer model learns the trigger only in part: a loose bar
    done = implant(model, adapter, tokenizer, task, [HeadLoc(1, 2)], lr=0.1, max_steps=400, target_prob=0.7,
                   max_kl=1.0)
    try:
        after = model.state_dict()
        o_proj = "model.layers.1.self_attn.o_proj.weight"
        cols = adapter.head_slice(HeadLoc(1, 2))
        for name, value in after.items():
            if name != o_proj:
                assert torch_equal(value, before[name]), name                   # bit for bit
        keep = np.ones(after[o_proj].shape[1], dtype=bool)
        keep[cols] = False
        assert torch_equal(after[o_proj][:, keep], before[o_proj][:, keep])      # the other heads' columns
        assert not torch_equal(after[o_proj][:, cols], before[o_proj][:, cols])
        assert all(not p.requires_grad for p in model.parameters())              # given back frozen
        shares = {"unedited": unedited, "implanted": behaviour_share(model, tokenizer, task, list(task.behaviour))}
        print(f"\nhead implant: {done.steps} steps; shares {shares}")
        assert shares["unedited"] < shares["implanted"] < 0.9
        # the checks speak of the held-out prompts: an implant this weak is refused, not reported
        with pytest.raises(ImplantError, match=r"the implant at L1H2 did not take: the target beats the model's "
                                               r"own answer on \d+% of the held-out prompts \(< 90%\)"):
            check_implant(model, adapter, tokenizer, task, done, unedited_share=unedited, decoys=[(HeadLoc(0, 1),)])
    finally:
        model.load_state_dict(before)


def test_an_mlp_implant_moves_only_that_layers_mlp(bench):
    from loccheck.studies.planted.implant import implant

    model, adapter, tokenizer, task = bench
    before = _copy(model)
    implant(model, adapter, tokenizer, task, [MlpLoc(0)], lr=0.05, max_steps=300, batch=12)
    try:
        changed = {n for n, v in model.state_dict().items() if not torch_equal(v, before[n])}
        assert changed and changed <= {f"model.layers.0.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")}
    finally:
        model.load_state_dict(before)


def test_an_implant_that_does_not_take_is_an_error_and_no_result(bench):
    from loccheck.studies.planted.implant import ImplantError, implant

    model, adapter, tokenizer, task = bench
    before = _copy(model)
    with pytest.raises(ImplantError, match=r"the implant did not take within 2 steps: the target's mean "
                                           r"probability after the trigger is 0\.\d+ \(needed 0.9\)"):
        implant(model, adapter, tokenizer, task, [HeadLoc(1, 2)], lr=1e-4, max_steps=2)
    assert all(not p.requires_grad for p in model.parameters())
    model.load_state_dict(before)


def test_training_stops_only_when_the_check_prompts_show_the_behaviour(bench):
    """A step's prompts are training prompts: the bar met on them is not the behaviour learned.
    With check prompts (never trained on) training goes on until they show it too, and an
    implant that never gets there is an error that says what the check prompts showed."""
    from loccheck.studies.planted.implant import ImplantError, behaviour_share, implant
    from loccheck.studies.planted.task import TriggerTask

    model, adapter, tokenizer, task = bench
    checked = TriggerTask(task.implant, task.behaviour[:12], task.target, task.trigger, task.behaviour[12:])
    before = _copy(model)
    head = dict(lr=0.1, max_steps=400, target_prob=0.7, max_kl=1.0)
    try:
        done = implant(model, adapter, tokenizer, task, [HeadLoc(1, 2)], **head)    # no check prompts
        assert done.steps < 400 and behaviour_share(model, tokenizer, task, list(checked.check)) < 0.8
        model.load_state_dict(before)
        with pytest.raises(ImplantError, match=r"did not take within 400 steps: .*; on the check prompts it beats "
                                               r"the model's own answer on \d+% \(needed 80%\)"):
            implant(model, adapter, tokenizer, checked, [HeadLoc(1, 2)], check_share=0.8, **head)
        model.load_state_dict(before)
        implant(model, adapter, tokenizer, checked, [MlpLoc(0)], lr=0.05, max_steps=300)
        assert behaviour_share(model, tokenizer, checked, list(checked.check)) >= 0.95
    finally:
        model.load_state_dict(before)


def test_ablation_damage_is_none_where_a_head_writes_nothing_and_some_where_it_writes(bench):
    """Mean-ablating a head whose output-projection columns are zero changes nothing (its write is
    zero, and so is its mean): KL exactly 0, every top token kept. A live MLP layer does change
    the next token's distribution."""
    import torch

    from loccheck.studies.planted.implant import ablation_damage

    model, adapter, tokenizer, task = bench
    before = _copy(model)
    try:
        with torch.no_grad():
            adapter.out_proj(1).weight[:, adapter.head_slice(HeadLoc(1, 2))] = 0
        dead, live = ablation_damage(model, adapter, tokenizer, task, [(HeadLoc(1, 2),), (MlpLoc(0),)])
        assert dead == {"location": ["L1H2"], "kl": 0.0, "top1_kept": 1.0}
        assert live["location"] == ["L0M"] and live["kl"] > 0 and 0 <= live["top1_kept"] <= 1
    finally:
        model.load_state_dict(before)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
