"""MLP sites (`L{layer}M`) on tiny models of each family: the spelling, where the adapter hooks
them, and the rank-1 edit of the down projection (the optimal edit at MLP sites)."""
import pytest
import torch

from loccheck.edits.rank_one import MlpEdit, initial_read_vectors
from loccheck.errors import AdapterError
from loccheck.locations import HeadLoc, MlpLoc, make_location, parse_location, parse_site
from loccheck.models import get_adapter
from loccheck.models.hooks import displaced_outputs
from loccheck.testing import VOCAB, known_mlp_model, tiny_model

pytestmark = pytest.mark.slow   # tiny torch models

EXPECTED_MLP = {"llama": "model.layers.1.mlp.down_proj",
                "gpt2": "transformer.h.1.mlp.c_proj",
                "gpt_neox": "gpt_neox.layers.1.mlp.dense_4h_to_h"}


def _inputs():
    return torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))


def test_mlp_sites_are_spelled_and_sorted_by_layer():
    assert parse_site("L12M") == MlpLoc(12) and str(MlpLoc(3)) == "L3M"
    assert parse_location(["L7M", "L2M"]) == (MlpLoc(2), MlpLoc(7))
    with pytest.raises(ValueError, match="one kind"):
        make_location([MlpLoc(1), HeadLoc(1, 0)])
    with pytest.raises(ValueError, match="'L12H3' or 'L12M'"):
        parse_site("L1X")


def test_adapter_has_one_mlp_site_per_layer(family_model):
    family, model = family_model
    adapter = get_adapter(model)
    assert adapter.sites("mlp") == (MlpLoc(0), MlpLoc(1))
    assert adapter.mlp_names[1] == EXPECTED_MLP[family]
    assert (adapter.mlp_width, adapter.model_width) == ((128 if family == "gpt2" else 64), 32)
    with pytest.raises(AdapterError, match=r"L2M is outside the model: it has 2 layers \(0-based\)"):
        adapter.check_inside([MlpLoc(2)])


def _residual(model, x):
    return model(x, output_hidden_states=True).hidden_states


def test_the_mlp_site_is_where_the_mlp_output_enters_the_residual_stream(family_model):
    """Adding v to layer 0's MLP site adds exactly v to the residual stream after layer 0, at
    every position: nothing (no norm, no scale) stands between the hook point and the stream."""
    family, model = family_model
    adapter = get_adapter(model)
    x = _inputs()
    v = torch.randn(adapter.model_width, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = _residual(model, x)
        with displaced_outputs([adapter.mlp_out(0)], lambda row, inp, y: v):
            after = _residual(model, x)
    assert torch.allclose(after[1] - before[1], v.expand_as(before[1]), atol=1e-5)
    assert torch.equal(after[0], before[0])                   # nothing before the layer moves


def test_the_mlp_site_reads_the_mlp_hidden_activation(family_model):
    """The edit's read x is the down projection's input: W x (+ bias) is the site's output."""
    family, model = family_model
    adapter = get_adapter(model)
    seen = {}

    def look(row, inp, y):
        seen["x"], seen["y"] = inp.detach(), y.detach()
        return torch.zeros_like(y, dtype=torch.float32)
    with torch.no_grad(), displaced_outputs([adapter.mlp_out(1)], look):
        model(_inputs())
    proj = adapter.mlp_out(1)
    weight = proj.weight if adapter.fan_in_fan_out else proj.weight.T     # (in, out)
    bias = proj.bias if getattr(proj, "bias", None) is not None else 0
    assert torch.allclose(seen["x"] @ weight + bias, seen["y"], atol=1e-5)


def test_mlp_edit_is_the_identity_at_start_and_rank_one_lora_after(family_model):
    family, model = family_model
    adapter = get_adapter(model)
    x = _inputs()
    a_init = initial_read_vectors(adapter, 0, 0.5, "mlp")
    assert a_init.shape == (2, adapter.mlp_width)
    edit = MlpEdit(adapter, [MlpLoc(1)], a_init)
    with torch.no_grad():
        plain = model(x).logits
        with edit.attached(model):
            assert torch.equal(model(x).logits, plain)        # b = 0: bit for bit
        edit.b.normal_()
        with edit.attached(model):
            edited = model(x).logits
        # the same function as W + b a^T in the down projection's weight (peft's rank-1 LoRA)
        proj = adapter.mlp_out(1)
        delta = torch.outer(edit.a[0], edit.b[0])                          # (in, out)
        saved = proj.weight.clone()
        proj.weight += delta if adapter.fan_in_fan_out else delta.T
        try:
            merged = model(x).logits
        finally:
            proj.weight.copy_(saved)
    assert not torch.allclose(edited, plain)
    assert torch.allclose(edited, merged, atol=1e-4)
    assert torch.equal(model(x).logits, plain)                 # detached: the model as it was


def test_mlp_edit_of_a_dead_layer_is_exactly_the_identity():
    """In a known-answer model every parameter of a dead layer's MLP is zero: its hidden
    activation is 0, so the edit reads 0 and writes nothing, whatever a and b are."""
    for family in ("llama", "gpt2", "gpt_neox"):
        model = known_mlp_model(family, [MlpLoc(2)], n_layers=4)
        adapter = get_adapter(model)
        x = _inputs()
        edit = MlpEdit(adapter, [MlpLoc(0), MlpLoc(3)], initial_read_vectors(adapter, 0, 0.5, "mlp"))
        with torch.no_grad():
            edit.b.normal_()
            plain = model(x).logits
            with edit.attached(model):
                assert torch.equal(model(x).logits, plain), family
            live = MlpEdit(adapter, [MlpLoc(2)], initial_read_vectors(adapter, 0, 0.5, "mlp"))
            live.b.normal_()
            with live.attached(model):
                assert not torch.allclose(model(x).logits, plain), family
