"""Architecture adapter registry: model_type -> function building an Adapter."""
from __future__ import annotations

from typing import Callable

from loccheck.errors import AdapterError
from loccheck.models.base import Adapter

_ADAPTERS: dict[str, Callable] = {}


def register_adapter(model_type: str, build: Callable) -> None:
    """Register `build(model) -> Adapter` for a transformers `config.model_type`."""
    if not model_type.islower():
        raise ValueError(f"`model_type` must be lower case, got {model_type!r}")
    if model_type in _ADAPTERS:
        raise KeyError(f"an adapter for model_type {model_type!r} is already registered")
    _ADAPTERS[model_type] = build


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(model) -> Adapter:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    build = _ADAPTERS.get(model_type)
    if build is None:
        raise AdapterError(
            f"model architecture {model_type!r} ({type(model).__name__}) is not supported; "
            f"loccheck has adapters for: {', '.join(supported_model_types())}")
    return build(model)


def _register_builtin() -> None:
    from loccheck.models.families import gpt2_adapter, gpt_neox_adapter, llama_adapter
    for model_type in ("llama", "mistral", "qwen2", "qwen3"):
        register_adapter(model_type, llama_adapter)
    register_adapter("gpt2", gpt2_adapter)
    register_adapter("gpt_neox", gpt_neox_adapter)


_register_builtin()

__all__ = ["Adapter", "get_adapter", "register_adapter", "supported_model_types"]
