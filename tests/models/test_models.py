"""Architecture adapters and the head-localized edit on tiny random models of each family."""
import pytest
import torch

from loccheck.testing import VOCAB, tiny_model
from loccheck.edits.rank_one import FullLoraEdit, HeadEdit, initial_read_vectors
from loccheck.errors import AdapterError
from loccheck.locations import HeadLoc
from loccheck.models import get_adapter

pytestmark = pytest.mark.slow   # adapters on tiny torch models (torch)

EXPECTED_PROJ = {"llama": "model.layers.1.self_attn.o_proj",
                 "gpt2": "transformer.h.1.attn.c_proj",
                 "gpt_neox": "gpt_neox.layers.1.attention.dense"}


def _inputs():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(3, VOCAB, (2, 7), generator=gen)


def test_adapter_shapes(family_model):
    family, model = family_model
    adapter = get_adapter(model)
    assert (adapter.n_layers, adapter.n_heads, adapter.head_dim) == (2, 4, 8)
    assert adapter.proj_names[1] == EXPECTED_PROJ[family]
    assert adapter.fan_in_fan_out == (family == "gpt2")
    assert adapter.head_slice(HeadLoc(0, 2)) == slice(16, 24)


def test_unsupported_architecture_is_a_clear_error():
    from transformers import OPTConfig, OPTForCausalLM
    model = OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                                     ffn_dim=32, num_attention_heads=2, word_embed_proj_dim=16))
    with pytest.raises(AdapterError, match=r"'opt' \(OPTForCausalLM\) has no adapter and matches none of "
                                           r"loccheck's layouts: no list of layers where expected .* its "
                                           r"top-level modules are model, lm_head; .*gpt2"):
        get_adapter(model)


def _projection_inputs(model, adapter, layer, x):
    seen = {}
    handle = adapter.out_proj(layer).register_forward_pre_hook(
        lambda module, args: seen.__setitem__("o", args[0].detach().clone()))
    try:
        model(x)
    finally:
        handle.remove()
    return seen["o"]                                              # (batch, pos, H * D)


@pytest.mark.parametrize("head", [0, 3])
def test_edit_changes_only_the_claimed_heads_slice(family_model, head):
    family, model = family_model
    adapter = get_adapter(model)
    x = _inputs()
    loc = HeadLoc(1, head)
    before = _projection_inputs(model, adapter, 1, x)
    edit = HeadEdit(adapter, [loc], initial_read_vectors(adapter, seed=0, init_std=0.5))
    with torch.no_grad():
        edit.b.normal_()                                          # a non-zero write everywhere...
    with edit.attached(model):
        after = _projection_inputs(model, adapter, 1, x)          # ...reaches only head `head`
    diff = (after - before).abs()
    inside = adapter.head_slice(loc)
    assert diff[..., inside].min() > 0
    outside = torch.ones(adapter.width, dtype=torch.bool)
    outside[inside] = False
    assert torch.count_nonzero(diff[..., outside]) == 0
    # The hook is gone after the context: the model is the original again.
    assert torch.equal(_projection_inputs(model, adapter, 1, x), before)


def test_edit_params_outside_location_get_no_gradient(family_model):
    _, model = family_model
    adapter = get_adapter(model)
    edit = HeadEdit(adapter, [HeadLoc(0, 1), HeadLoc(1, 2)], initial_read_vectors(adapter, 0, 0.5),
                    read="location")
    with torch.no_grad():
        edit.b.fill_(0.1)
    with edit.attached(model):
        model(_inputs()).logits.pow(2).sum().backward()
    for row, head in enumerate([1, 2]):
        keep = torch.zeros(adapter.width, dtype=torch.bool)
        keep[adapter.head_slice(HeadLoc(row, head))] = True
        for grad in (edit.a.grad[row], edit.b.grad[row]):
            assert torch.count_nonzero(grad[~keep]) == 0
            assert torch.count_nonzero(grad[keep]) > 0
    assert edit.n_params == 2 * (2 * adapter.head_dim)


def test_zero_edits_leave_logits_bit_identical(family_model):
    _, model = family_model
    adapter = get_adapter(model)
    x = _inputs()
    reference = model(x).logits
    a_init = initial_read_vectors(adapter, seed=3, init_std=1.0)
    with HeadEdit(adapter, None, a_init).attached(model):       # b = 0: the identity
        assert torch.equal(model(x).logits, reference)
    with FullLoraEdit(adapter, a_init).attached(model):         # peft LoRA with B = 0
        assert torch.equal(model(x).logits, reference)
    assert torch.equal(model(x).logits, reference)              # and both detach cleanly


def test_initial_read_vectors_do_not_depend_on_the_location():
    adapter = get_adapter(tiny_model("llama"))
    a_init = initial_read_vectors(adapter, seed=5, init_std=0.01)
    one = HeadEdit(adapter, [HeadLoc(1, 0)], a_init)
    both = HeadEdit(adapter, [HeadLoc(0, 0), HeadLoc(1, 3)], a_init)
    assert torch.equal(one.a[0], both.a[1])
    assert torch.equal(initial_read_vectors(adapter, 5, 0.01), a_init)


def test_loading_errors_carry_their_claim_key_as_data(tmp_path):
    from loccheck.errors import LoccheckError
    from loccheck.models.loading import load_model

    with pytest.raises(LoccheckError) as info:
        load_model(str(tmp_path / "nope"), cache=tmp_path)
    assert info.value.key == "model.name" and "does not exist" in info.value.msg
    assert str(info.value) == f"model.name: {info.value.msg}"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "mystery", "auto_map": {"AutoConfig": "y.Z"}}')
    with pytest.raises(LoccheckError) as info:
        load_model(str(tmp_path / "m"), cache=tmp_path)
    assert info.value.key == "model.trust_remote_code"


def test_a_config_asking_for_flash_attention_loads_with_the_pinned_one(tmp_path):
    # loccheck's packed pairs pass a 4-D additive mask, which flash attention does not take: the
    # implementation is pinned at load (sdpa here), whatever config.json asks for.
    import json

    from loccheck.models.loading import load_weights, open_model
    from loccheck.testing import char_tokenizer, known_model

    known_model("llama", [HeadLoc(1, 2)]).save_pretrained(tmp_path)
    char_tokenizer().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "_attn_implementation": "flash_attention_2"}))
    source = open_model(str(tmp_path), cache=tmp_path / "cache")
    source.adapter()                                          # the weightless skeleton builds too
    loaded = load_weights(source, device="cpu")
    assert loaded.model.config._attn_implementation == "sdpa"
    assert loaded.adapter.checks["heads"] == 0.0 and loaded.adapter.checks["logits"] <= 1e-5
