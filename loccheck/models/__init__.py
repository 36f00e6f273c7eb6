"""Architecture adapter registry: model_type -> where its sites are (a `families.Shape`, or a
function building an Adapter for a layout no shape describes)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Union

from loccheck.errors import AdapterError
from loccheck.models.base import Adapter
from loccheck.models.families import FAMILY_SHAPES, SHAPES, Shape, build_adapter

_ADAPTERS: dict[str, Union[Shape, Callable]] = {}


def register_adapter(model_type: str, build: Union[Shape, Callable]) -> None:
    """Register a `families.Shape`, or `build(model) -> Adapter`, for a transformers
    `config.model_type`. Either way the model must pass `models.checks` when it is loaded."""
    if not model_type.islower():
        raise ValueError(f"`model_type` must be lower case, got {model_type!r}")
    if model_type in _ADAPTERS:
        raise KeyError(f"an adapter for model_type {model_type!r} is already registered")
    _ADAPTERS[model_type] = build


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def registered_layouts() -> dict[str, Union[Shape, Callable]]:
    return dict(_ADAPTERS)


def get_adapter(model) -> Adapter:
    """The registered adapter of `model`'s model_type; for an unknown one, the first shape of
    the table under which the model passes the structural checks (`models.checks`)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    build = _ADAPTERS.get(model_type)
    if build is None:
        return _guess_adapter(model, model_type)
    if isinstance(build, Shape):
        return build_adapter(model, model_type, build)
    return build(model)


def checked_adapter(model) -> Adapter:
    """`get_adapter`, after the structural checks have passed on `model` (AdapterError naming
    the check that failed otherwise). What a loaded model goes through before it is scored."""
    from loccheck.models.checks import check_structure

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _ADAPTERS:
        return _guess_adapter(model, model_type)       # checked as it is guessed
    adapter = get_adapter(model)
    return dataclasses.replace(adapter, checks=check_structure(model, adapter))


def _guess_adapter(model, model_type) -> Adapter:
    """The first shape whose modules the model has and under which it passes the checks. A
    weightless skeleton (meta tensors) cannot run them: the first shape that builds stands until
    the weights load and are checked."""
    from loccheck.models.checks import check_structure

    weightless = any(p.is_meta for p in model.parameters())
    failed = []                     # the layouts the model has the modules of, and the check each failed
    for name, shape in SHAPES.items():
        try:
            adapter = build_adapter(model, str(model_type), shape)
        except AdapterError:
            continue
        try:
            return adapter if weightless else dataclasses.replace(adapter, checks=check_structure(model, adapter))
        except AdapterError as err:
            failed.append((name, str(err)))
    by_error = {err: [n for n, e in failed if e == err] for _, err in failed}
    found = "; ".join(f"as laid out like {' or '.join(names)}, {err}" for err, names in by_error.items()) \
        if failed else _found(model)
    raise AdapterError(
        f"model architecture {model_type!r} ({type(model).__name__}) has no adapter and matches none of "
        f"loccheck's layouts: {found}; loccheck has adapters for: {', '.join(supported_model_types())}")


def _found(model) -> str:
    """Which modules the model has where heads and MLP outputs are expected: the children of the
    first decoder layer, and of its attention and MLP."""
    for shape in SHAPES.values():
        try:
            first = model.get_submodule(f"{shape.blocks}.0")
        except AttributeError:
            continue
        names = []
        for child, module in first.named_children():
            inner = [n for n, _ in module.named_children()]
            names.append(f"{child}({', '.join(inner)})" if inner else child)
        return f"its first layer {shape.blocks}.0 holds {', '.join(names)}"
    top = ", ".join(n for n, _ in model.named_children())
    return f"no list of layers where expected ({', '.join(sorted({s.blocks for s in SHAPES.values()}))}); " \
           f"its top-level modules are {top}"


def _register_builtin() -> None:
    for model_type, shape in FAMILY_SHAPES.items():
        register_adapter(model_type, SHAPES[shape])


_register_builtin()

__all__ = ["Adapter", "Shape", "checked_adapter", "get_adapter", "register_adapter", "supported_model_types"]
