"""The only place loccheck registers forward hooks on a model. Every hook is removed when its
context exits, also on error, so a model is left exactly as it was found."""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Callable, Sequence

# While set, displacement hooks leave their inputs alone: the unedited model's outputs with an
# edit attached (what a side-effect metric compares the edited outputs against).
_UNEDITED = contextvars.ContextVar("loccheck_unedited", default=False)


@contextlib.contextmanager
def unedited():
    """The model as it was, inside an attached edit's context: every displacement is skipped."""
    token = _UNEDITED.set(True)
    try:
        yield
    finally:
        _UNEDITED.reset(token)


@contextlib.contextmanager
def _input_hooks(adapter, layers: Sequence[int], hook_for: Callable[[int, int], Callable], modules=None):
    """A forward pre-hook `hook_for(row, layer)` on each listed layer's output projection (or
    on `modules[row]`)."""
    modules = [adapter.out_proj(layer) for layer in layers] if modules is None else modules
    handles = [module.register_forward_pre_hook(hook_for(row, layer))
               for row, (layer, module) in enumerate(zip(layers, modules))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def displaced_inputs(adapter, layers: Sequence[int], displacement: Callable, modules=None):
    """Add `displacement(row, o)` to o, the input of each listed layer's output projection
    (row indexes `layers`), or of `modules[row]` (the MLPs' down projections: their hidden
    units), while the context is open."""
    def hook_for(row: int, layer: int):
        def pre_hook(module, args):
            if _UNEDITED.get():
                return None
            o = args[0]                                                # (batch, pos, H * D)
            # Added in float32 and rounded once: a small edit rounded to bfloat16 on its own
            # before the sum would lose most of its bits.
            return ((o.float() + displacement(row, o)).to(o.dtype),) + tuple(args[1:])
        return pre_hook
    return _input_hooks(adapter, layers, hook_for, modules)


def read_inputs(adapter, layers: Sequence[int], read: Callable, modules=None):
    """Call `read(layer, o)` with o, the input of each listed layer's output projection
    (batch, pos, H * D), or of `modules[row]`, at every forward while the context is open; o
    is not changed."""
    def hook_for(row: int, layer: int):
        def pre_hook(module, args):
            read(layer, args[0])
        return pre_hook
    return _input_hooks(adapter, list(layers), hook_for, modules)


@contextlib.contextmanager
def _output_hooks(modules: Sequence, hook_for: Callable[[int], Callable]):
    """A forward hook `hook_for(row)` on each listed module (row indexes `modules`)."""
    handles = [module.register_forward_hook(hook_for(row)) for row, module in enumerate(modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def displaced_outputs(modules: Sequence, displacement: Callable):
    """Add `displacement(row, x, y)` to y, the output of each listed module given its input x
    (row indexes `modules`), while the context is open: the MLP sites' edit point."""
    def hook_for(row: int):
        def hook(module, args, y):
            if _UNEDITED.get():
                return None
            return (y.float() + displacement(row, args[0], y)).to(y.dtype)   # float32, as above
        return hook
    return _output_hooks(modules, hook_for)


def displaced_residual(blocks: Sequence, displacement: Callable):
    """Add `displacement(row, h)` to h, the residual stream leaving each listed decoder layer
    (its output, or its output's [0] where a block returns a tuple), while the context is open."""
    def hook_for(row: int):
        def hook(module, args, out):
            if _UNEDITED.get():
                return None
            h = out[0] if isinstance(out, tuple) else out
            h = (h.float() + displacement(row, h)).to(h.dtype)              # float32, as above
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
        return hook
    return _output_hooks(blocks, hook_for)


def replaced_outputs(modules: Sequence, replace: Callable):
    """Replace y, the output of each listed module, by `replace(row, y)` (None leaves it)."""
    def hook_for(row: int):
        def hook(module, args, y):
            return replace(row, y)
        return hook
    return _output_hooks(modules, hook_for)


def read_outputs(modules: Sequence, read: Callable):
    """Call `read(row, x, y)` with the input x and output y of each listed module at every
    forward while the context is open; nothing is changed."""
    def hook_for(row: int):
        def hook(module, args, y):
            read(row, args[0], y)
        return hook
    return _output_hooks(modules, hook_for)


class StopForward(Exception):
    """Raised by `stopped_at`'s hook once it has read what it came for: the blocks above need
    not run. The caller of the model's forward catches it."""


@contextlib.contextmanager
def stopped_at(block, read: Callable):
    """At every forward while the context is open, call `read(hidden)` with the residual stream
    entering `block`, then raise StopForward: what the blocks above would compute is not wanted."""
    def pre_hook(module, args, kwargs):
        read(args[0] if args else kwargs["hidden_states"])
        raise StopForward

    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def started_at(blocks: Sequence, first: int, hidden: Callable, skipped: Callable = lambda x: x):
    """Run only blocks `first`, `first` + 1, ... of the decoder layers `blocks` (the model's own
    module list), the residual stream entering block `first` being `hidden()` instead of what
    the blocks below would compute (`models.prefix`: a frozen prefix computed once).

    The list stays whole, so block i keeps index i: forwards that look a layer's attention type,
    mask or rotary embedding up by index (`config.layer_types[i]` in Qwen2, Gemma-2, ...) still
    find block i's. A block below `first` is called as before but does not run: the call returns
    `skipped(x)`, x its hidden-states input, which must have the structure the block's forward
    returns (a tensor for most, Falcon's a tuple whose [0] its model reads); its hooks do not fire
    and its attributes stay. Every block is put back when the context exits, also on error."""
    def pre_hook(module, args, kwargs):
        if args:
            return (hidden(),) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden()}

    below = list(blocks)[:first]
    classes = [type(block) for block in below]
    handle = blocks[first].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for block, cls in zip(below, classes):
            object.__setattr__(block, "_loccheck_skipped", skipped)   # not nn.Module.__setattr__: a plain attribute
            block.__class__ = _passing_class(cls)
        yield
    finally:
        for block, cls in zip(below, classes):
            block.__class__ = cls
            block.__dict__.pop("_loccheck_skipped", None)
        handle.remove()


def _passed(self, *args, **kwargs):
    return self._loccheck_skipped(args[0] if args else kwargs["hidden_states"])


@functools.cache
def _passing_class(cls):
    """`cls` with a __call__ that passes the input on (`started_at`), made once per class: the
    prefix is entered at every training step. An instance `forward` would still fire the
    block's own hooks, as if it ran."""
    return type(cls.__name__, (cls,), {"__call__": _passed, "__module__": cls.__module__})
