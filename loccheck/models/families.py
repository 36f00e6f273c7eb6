"""Where each architecture keeps its sites, as data: a `Shape` names, from the model's root,
the list of decoder layers and, inside each layer, the module whose input concatenates the
attention heads and the module whose output is the MLP site. A family is a `model_type` that
has a shape; most families share one (Llama's names are Mistral's, Qwen's, Gemma's, Phi-3's).

The table says where to look; `models.checks` says whether the model really is built that
way (the head slices are the attention's own per-head outputs, the MLP site's output reaches
the residual stream as documented, the logits are the model's own), and a model that fails is
refused. An unknown `model_type` is accepted only when one of the shapes passes those checks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from loccheck.errors import AdapterError
from loccheck.models.base import Adapter

if TYPE_CHECKING:   # annotations only: importing the adapters must not load torch
    from torch import nn


@dataclass(frozen=True)
class Shape:
    blocks: str             # the decoder layers' module list, from the model's root
    heads: str              # in a layer: the module whose input is every head's output, concatenated
    mlp: str                # in a layer: the module whose output is the MLP site
    mlp_after: str = ""     # in a layer: a norm the MLP output passes through before the residual add
    note: str = ""          # what a reader of the report should know about this shape


SHAPES: dict[str, Shape] = {
    "llama": Shape("model.layers", "self_attn.o_proj", "mlp.down_proj"),
    "post_norm": Shape("model.layers", "self_attn.o_proj", "mlp.down_proj", mlp_after="post_feedforward_layernorm",
                       note="MLP site before the norm that follows the MLP"),
    "experts": Shape("model.layers", "self_attn.o_proj", "mlp",
                     note="mixture of experts: the MLP site is the sparse block's output, which its "
                          "edit reads"),
    "starcoder2": Shape("model.layers", "self_attn.o_proj", "mlp.c_proj"),
    "phi": Shape("model.layers", "self_attn.dense", "mlp.fc2", note="attention and MLP in parallel"),
    "gpt2": Shape("transformer.h", "attn.c_proj", "mlp.c_proj"),
    "gptj": Shape("transformer.h", "attn.out_proj", "mlp.fc_out", note="attention and MLP in parallel"),
    "falcon": Shape("transformer.h", "self_attention.dense", "mlp.dense_4h_to_h",
                    note="attention and MLP in parallel"),
    "gpt_neox": Shape("gpt_neox.layers", "attention.dense", "mlp.dense_4h_to_h"),
}

# model_type -> its shape. Grouped-query attention (Llama 3, Mistral, Qwen, Gemma) has fewer
# key/value heads, but the query heads are what the output projection concatenates, so they are
# the head sites. Phi-3's fused qkv and gate-up projections sit before the sites and change nothing.
FAMILY_SHAPES: dict[str, str] = {
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma": "llama",
    "phi3": "llama",
    "gemma2": "post_norm", "gemma3_text": "post_norm", "olmo2": "post_norm",
    "mixtral": "experts", "olmoe": "experts", "qwen2_moe": "experts", "qwen3_moe": "experts",
    "starcoder2": "starcoder2", "phi": "phi", "gpt2": "gpt2", "gptj": "gptj", "falcon": "falcon",
    "gpt_neox": "gpt_neox",
}


# What a reader of a report on these families should know beyond the shape's note.
FAMILY_NOTES: dict[str, str] = {
    "mistral": "sliding window on every layer (4096 by default)",
    "qwen2": "sliding-window layers where the config turns them on",
    "gemma": "embeddings scaled by sqrt(width)",
    "gemma2": "final logit soft-capping (applied); eager attention (soft-capped); sliding-window layers",
    "gemma3_text": "sliding-window layers; norms on queries and keys",
    "phi3": "fused qkv and gate-up projections (before the sites)",
    "olmo2": "a norm after attention too (the head sites are before it)",
    "qwen2_moe": "a gated shared expert, inside the site",
}


def build_adapter(model: nn.Module, family: str, shape: Shape) -> Adapter:
    """The adapter of `model` laid out as `shape`, with its head count and widths from the
    config (AdapterError naming the first module that is missing or of the wrong width)."""
    cfg = model.config
    layers = _module(model, shape.blocks, family)
    try:
        n_layers = len(layers)
    except TypeError:
        raise AdapterError(f"{shape.blocks} is a {type(layers).__name__}, not a list of layers") from None
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    names = tuple(f"{shape.blocks}.{i}.{shape.heads}" for i in range(n_layers))
    projections = tuple(_module(model, n, family) for n in names)
    fan_in_fan_out = _is_conv1d(projections[0])
    for name, proj in zip(names, projections):
        width = _in_width(proj)
        if width != n_heads * head_dim:
            raise AdapterError(f"{name} takes {width} inputs, expected n_heads * head_dim = {n_heads} * {head_dim}")
    mlp_names = tuple(f"{shape.blocks}.{i}.{shape.mlp}" for i in range(n_layers))
    mlps = tuple(_module(model, n, family) for n in mlp_names)
    after = tuple(_module(model, f"{shape.blocks}.{i}.{shape.mlp_after}", family) for i in range(n_layers)) \
        if shape.mlp_after else ()
    # An edit at a linear down projection reads the MLP's hidden units; at a sparse block of
    # experts, the block's output (`edits.rank_one.MlpEdit`).
    experts = _in_width(mlps[0]) is None
    reads = {cfg.hidden_size if experts else _in_width(m) for m in mlps}
    if len(reads) != 1:
        raise AdapterError(f"the MLP sites {shape.blocks}.*.{shape.mlp} read inputs of several widths "
                           f"({sorted(reads)}); loccheck's MLP edit needs one")
    return Adapter(family, n_layers, n_heads, head_dim, names, fan_in_fan_out, projections, mlp_names, mlps,
                   tuple(layers), shape.blocks, mlp_read_width=reads.pop(), model_width=cfg.hidden_size,
                   mlp_after=after, mlp_after_name=shape.mlp_after, note=shape.note,
                   experts=experts)


def _module(model, name: str, family: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise AdapterError(f"a {family} model has no module {name}") from None


def _is_conv1d(module) -> bool:
    # GPT-2's Conv1D keeps its weight as (in, out); nn.Linear as (out, in).
    return type(module).__name__ == "Conv1D"


def _in_width(module) -> int | None:
    """The input width of a linear layer (None for anything else, as a sparse block of experts).
    `in_features` also holds for quantised linear layers, whose weights are packed."""
    if _is_conv1d(module):
        return module.weight.shape[0]
    return getattr(module, "in_features", None)


def family_table() -> list[dict]:
    """One row per registered family: where its head and MLP sites are hooked, and notes."""
    from loccheck.models import registered_layouts

    rows = []
    for model_type, layout in sorted(registered_layouts().items()):
        if not isinstance(layout, Shape):
            rows.append({"family": model_type, "heads": "(custom adapter)", "mlp": "", "notes": ""})
            continue
        after = f", then {layout.mlp_after}" if layout.mlp_after else ""
        notes = "; ".join(n for n in (layout.note, FAMILY_NOTES.get(model_type, "")) if n)
        rows.append({"family": model_type, "heads": f"input of {layout.blocks}.*.{layout.heads}",
                     "mlp": f"output of {layout.blocks}.*.{layout.mlp}{after}", "notes": notes})
    return rows
