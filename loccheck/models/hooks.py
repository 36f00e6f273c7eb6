"""The only place loccheck registers forward hooks on a model. Every hook is removed when its
context exits, also on error, so a model is left exactly as it was found."""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence


@contextlib.contextmanager
def displaced_inputs(adapter, layers: Sequence[int], displacement: Callable):
    """Add `displacement(row, o)` to o, the input of each listed layer's output projection
    (row indexes `layers`), while the context is open."""
    handles = []
    for row, layer in enumerate(layers):
        def pre_hook(module, args, row=row):
            o = args[0]                                                # (batch, pos, H * D)
            return (o + displacement(row, o).to(o.dtype),) + tuple(args[1:])
        handles.append(adapter.out_proj(layer).register_forward_pre_hook(pre_hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def read_inputs(adapter, layers: Sequence[int], read: Callable):
    """Call `read(layer, o)` with o, the input of each listed layer's output projection
    (batch, pos, H * D), at every forward while the context is open; o is not changed."""
    handles = []
    for layer in layers:
        def pre_hook(module, args, layer=layer):
            read(layer, args[0])
        handles.append(adapter.out_proj(layer).register_forward_pre_hook(pre_hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
