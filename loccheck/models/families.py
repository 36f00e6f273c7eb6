"""Architecture adapters. Each family says where its layers and output projections live."""
from __future__ import annotations

from typing import TYPE_CHECKING

from loccheck.models.base import Adapter

if TYPE_CHECKING:   # annotations only: importing the adapters must not load torch
    from torch import nn


def _build(model: nn.Module, family: str, layers_path: str, proj_path: str, mlp_path: str,
           n_heads: int, head_dim: int, fan_in_fan_out: bool) -> Adapter:
    layers = model.get_submodule(layers_path)
    names = tuple(f"{layers_path}.{i}.{proj_path}" for i in range(len(layers)))
    projections = tuple(model.get_submodule(n) for n in names)
    for name, proj in zip(names, projections):
        # Conv1D keeps its weight as (in, out); nn.Linear as (out, in).
        in_features = proj.weight.shape[0] if fan_in_fan_out else proj.weight.shape[1]
        if in_features != n_heads * head_dim:
            raise ValueError(f"{name} takes {in_features} inputs, expected n_heads * head_dim = "
                             f"{n_heads} * {head_dim}")
    mlp_names = tuple(f"{layers_path}.{i}.{mlp_path}" for i in range(len(layers)))
    mlps = tuple(model.get_submodule(n) for n in mlp_names)
    return Adapter(family, len(layers), n_heads, head_dim, names, fan_in_fan_out, projections,
                   mlp_names, mlps, tuple(layers), layers_path)


def llama_adapter(model: nn.Module) -> Adapter:
    # Llama, Mistral, Qwen2, SmolLM: grouped-query attention has fewer key/value heads, but the
    # query heads are what o_proj's input concatenates, so they are the locations.
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return _build(model, "llama", "model.layers", "self_attn.o_proj", "mlp.down_proj", cfg.num_attention_heads,
                  head_dim, fan_in_fan_out=False)


def gpt2_adapter(model: nn.Module) -> Adapter:
    cfg = model.config
    return _build(model, "gpt2", "transformer.h", "attn.c_proj", "mlp.c_proj", cfg.n_head,
                  cfg.n_embd // cfg.n_head, fan_in_fan_out=True)


def gpt_neox_adapter(model: nn.Module) -> Adapter:
    cfg = model.config
    return _build(model, "gpt_neox", "gpt_neox.layers", "attention.dense", "mlp.dense_4h_to_h", cfg.num_attention_heads,
                  cfg.hidden_size // cfg.num_attention_heads, fan_in_fan_out=False)
