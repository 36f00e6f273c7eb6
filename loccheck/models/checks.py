"""The structural checks every model passes before loccheck scores it, whatever its family.

An adapter says where the sites are; these checks prove it on the loaded model, with a few
tokens through the model itself:
- heads: the slice of the output projection's input that loccheck calls head h is what the
  attention computed for head h (recorded inside transformers' attention function, before the
  heads are concatenated);
- mlp: adding a vector at the MLP site changes the layer's output (the residual stream) by
  exactly that vector, or, where a norm follows the MLP (Gemma-2/3, OLMo-2), by what that norm
  makes of it: the edit acts where the documentation says;
- logits: loccheck's scoring logits (`scoring.vocab_logits`: the output embedding in float32,
  the final soft-capping) equal the model's own logits.
A model that fails one is refused with the check's name and its deviation, never scored.
"""
from __future__ import annotations

import contextlib
import sys

from loccheck.errors import AdapterError

N_TOKENS = 7


def tolerance(dtype) -> float:
    """Relative tolerance of a check in `dtype`: float32 rounding with room, or a few steps of
    a half-precision type (bfloat16's step is 2**-8 of the value)."""
    import torch

    return 1e-5 if dtype in (torch.float32, torch.float64) else 8 * torch.finfo(dtype).eps


def check_structure(model, adapter) -> dict[str, float]:
    """Run the checks on `model` (left as it was: no hook, mode or parameter changed). Returns
    each check's largest relative deviation; AdapterError naming the failed check otherwise."""
    import torch

    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            return _checks(model, adapter)
    finally:
        for module, flag in training.items():
            module.train(flag)


def _checks(model, adapter) -> dict[str, float]:
    import torch

    from loccheck.models.hooks import read_inputs, read_outputs
    from loccheck.models.scoring import vocab_logits

    embed = model.get_input_embeddings()
    n_vocab = embed.num_embeddings
    ids = torch.tensor([[(1 + 7 * i) % n_vocab for i in range(N_TOKENS)]], device=embed.weight.device)
    layers = range(adapter.n_layers)
    heads_in, sites, calls = {}, {}, {}
    attention = {model.get_submodule(n.rsplit(".", 1)[0]): l for l, n in enumerate(adapter.proj_names)}
    with contextlib.ExitStack() as stack:
        recorded = stack.enter_context(_recorded_attention(model))
        stack.enter_context(read_inputs(adapter, layers, lambda l, o: heads_in.__setitem__(l, o)))
        stack.enter_context(read_outputs(adapter.mlp_projections, lambda l, x, y: sites.__setitem__(l, y)))
        stack.enter_context(_block_calls(adapter.blocks, calls))
        logits = model(input_ids=ids, use_cache=False).logits.float()
    dtype = logits.dtype if not heads_in else heads_in[0].dtype
    tol = tolerance(dtype)
    result = {"heads": _check_heads(adapter, heads_in, {attention[m]: o for m, o in recorded.items()
                                                        if m in attention}),
              "mlp": _check_mlp(adapter, calls, sites, tol)}
    body = getattr(model, model.base_model_prefix)
    ours = vocab_logits(model, body(input_ids=ids, use_cache=False).last_hidden_state)
    deviation = float((ours - logits).abs().max() / max(1.0, float(logits.abs().max())))
    if not deviation <= tol:
        raise AdapterError(f"check 'logits' failed: loccheck's logits differ from the model's own by "
                           f"{deviation:.2g} (relative; tolerance {tol:.0e}): the model transforms its "
                           "logits in a way loccheck does not reproduce (scaling, capping)")
    result["logits"] = deviation
    return result


def _check_heads(adapter, heads_in: dict, per_head: dict) -> float:
    worst = 0.0
    for layer in range(adapter.n_layers):
        name = adapter.proj_names[layer]
        if layer not in per_head:
            raise AdapterError(f"check 'heads' failed: the attention of layer {layer} ({name.rsplit('.', 1)[0]}) "
                               "did not compute its heads through transformers' attention functions, so "
                               "its head slices cannot be checked")
        heads = per_head[layer]                                     # (batch, pos, heads, head_dim)
        if tuple(heads.shape[2:]) != (adapter.n_heads, adapter.head_dim):
            raise AdapterError(f"check 'heads' failed: layer {layer}'s attention computes {heads.shape[2]} "
                               f"heads of width {heads.shape[3]}, but {name}'s input is sliced into "
                               f"{adapter.n_heads} heads of width {adapter.head_dim}")
        o = heads_in[layer].reshape(heads.shape).float()
        deviation = float((o - heads.float()).abs().max() / max(1e-30, float(heads.float().abs().max())))
        if not deviation <= 1e-6:
            raise AdapterError(f"check 'heads' failed: the input of {name}, sliced by head, differs from "
                               f"the heads the attention computed by {deviation:.2g} (relative)")
        worst = max(worst, deviation)
    return worst


def _check_mlp(adapter, calls: dict, sites: dict, tol: float) -> float:
    """Per layer: run the layer again on its recorded inputs, once as it is and once with a
    vector added at its MLP site; the output must move by that vector (through the norm after
    the MLP, where there is one)."""
    import torch

    from loccheck.models.hooks import displaced_outputs

    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for layer, block in enumerate(adapter.blocks):
        if layer not in calls or layer not in sites:
            raise AdapterError(f"check 'mlp' failed: layer {layer}'s MLP site {adapter.mlp_names[layer]} "
                               "was not run by the model's forward")
        args, kwargs = calls[layer]
        plain = _hidden(block(*args, **kwargs)).float()
        site = sites[layer].float()
        delta = torch.randn(site.shape, generator=gen).to(site.device) * float(plain.abs().max())
        with displaced_outputs([adapter.mlp_out(layer)], lambda row, x, y: delta):
            moved = _hidden(block(*args, **kwargs)).float()
        if adapter.mlp_after:
            norm = adapter.mlp_after[layer]
            dtype = sites[layer].dtype
            expected = norm((site + delta).to(dtype)).float() - norm(sites[layer]).float()
        else:
            expected = delta
        error, scale = float((moved - plain - expected).abs().max()), float(expected.abs().max())
        # what rounding the layer's output itself allows: two roundings of its largest value
        # (a norm after the MLP writes less than the residual stream holds)
        slack = 2 * float(plain.abs().max()) * torch.finfo(sites[layer].dtype).eps
        deviation = error / scale
        if not error <= tol * scale + slack:
            where = f"through {adapter.mlp_after_name}" if adapter.mlp_after else "as it is"
            raise AdapterError(f"check 'mlp' failed: a vector added at {adapter.mlp_names[layer]} does not reach "
                               f"layer {layer}'s output {where} (deviation {deviation:.2g}, tolerance {tol:.0e})")
        worst = max(worst, deviation)
    return worst


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def _block_calls(blocks, calls: dict):
    """Record each decoder layer's positional and keyword inputs of the last forward."""
    def pre_hook_for(layer):
        def pre_hook(module, args, kwargs):
            calls[layer] = (args, dict(kwargs))
        return pre_hook
    handles = [b.register_forward_pre_hook(pre_hook_for(l), with_kwargs=True) for l, b in enumerate(blocks)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _recorded_attention(model):
    """While open, the model's attention function (transformers' attention interface, as its
    config names it) also records its output per attention module: (batch, pos, heads, head_dim),
    the heads before they are concatenated. The interface's table is put back on exit."""
    from transformers.modeling_utils import AttentionInterface

    table = AttentionInterface._global_mapping
    impl = model.config._attn_implementation or "eager"
    had, original = impl in table, table.get(impl)
    records: dict = {}

    def recording(module, *args, **kwargs):
        # eager attention is each model file's own function (with its soft-capping and scaling)
        compute = original or getattr(sys.modules[type(module).__module__], "eager_attention_forward")
        out = compute(module, *args, **kwargs)
        records[module] = out[0]
        return out

    table[impl] = recording
    try:
        yield records
    finally:
        if had:
            table[impl] = original
        else:
            del table[impl]
