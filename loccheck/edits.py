"""The edits whose optimum loccheck compares: a rank-1 LoRA reparameterized so that it can be
restricted to a set of heads (METHOD.md), and plain rank-1 LoRA on every output projection
(peft) as the whole-model ceiling.

Both start from the identity (b = 0) with the same random read vector a for each layer, drawn
once from the edit seed, so every location starts from the same point.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Sequence

import torch
from torch import nn

from loccheck.locations import HeadLoc
from loccheck.models.base import Adapter


def initial_read_vectors(adapter: Adapter, seed: int, init_std: float) -> torch.Tensor:
    """(n_layers, n_heads * head_dim) initial a^l; row l is the same whatever else is edited."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(adapter.n_layers, adapter.width, generator=gen) * init_std


@contextlib.contextmanager
def displaced_inputs(adapter: Adapter, layers: Sequence[int], displacement):
    """Add `displacement(row, o)` to o, the input of each listed layer's output projection
    (row indexes `layers`), while the context is open; every hook is removed on exit."""
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


class HeadEdit(nn.Module):
    """o^l <- o^l + <a^l, o^l> (m^l * b^l) at the input of W^l (o_proj), for each edited layer l.

    m^l masks the coordinates of the heads of the location in layer l, so b_h^l is zero for
    every head outside it; W^l b^l is then exactly the reparameterized LoRA's write vector.
    With `read="location"`, a^l is masked the same way (it reads only the location's heads).
    """

    def __init__(self, adapter: Adapter, heads: Sequence[HeadLoc] | None, a_init: torch.Tensor,
                 read: str = "all"):
        super().__init__()
        if read not in ("all", "location"):
            raise ValueError(f"`read` must be 'all' or 'location', got {read!r}")
        self.adapter = adapter
        heads = adapter.all_heads() if heads is None else sorted(heads)
        self.layers = sorted({h.layer for h in heads})
        write = torch.zeros(len(self.layers), adapter.width)      # (n_edit_layers, H * D)
        for h in heads:
            write[self.layers.index(h.layer), adapter.head_slice(h)] = 1.0
        self.register_buffer("write_mask", write)
        self.register_buffer("read_mask", write.clone() if read == "location" else torch.ones_like(write))
        self.a = nn.Parameter(a_init[self.layers].clone() * self.read_mask)
        self.b = nn.Parameter(torch.zeros(len(self.layers), adapter.width))

    @property
    def n_params(self) -> int:
        """Free coordinates: a's read coordinates plus b's coordinates inside the location."""
        return int(self.read_mask.sum().item() + self.write_mask.sum().item())

    def delta(self, row: int, o: torch.Tensor) -> torch.Tensor:
        a = self.a[row] * self.read_mask[row]
        b = self.b[row] * self.write_mask[row]
        return (o.float() @ a)[..., None] * b                          # (batch, pos, H * D)

    @contextlib.contextmanager
    def attached(self, model) -> Iterator["HeadEdit"]:
        self.to(next(model.parameters()).device)
        with displaced_inputs(self.adapter, self.layers, self.delta):
            yield self

    def trainable(self) -> list[nn.Parameter]:
        return [self.a, self.b]


class FullLoraEdit:
    """Rank-1 LoRA (peft) on every layer's output projection: the whole-model ceiling."""

    def __init__(self, adapter: Adapter, a_init: torch.Tensor):
        self.adapter = adapter
        self.a_init = a_init
        self._params: list[nn.Parameter] = []

    @property
    def n_params(self) -> int:
        width_out = self.adapter.projections[0].weight.shape[1 if self.adapter.fan_in_fan_out else 0]
        return self.adapter.n_layers * (self.adapter.width + width_out)

    @contextlib.contextmanager
    def attached(self, model) -> Iterator["FullLoraEdit"]:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=1, lora_alpha=1, lora_dropout=0.0, bias="none",
                            target_modules=list(self.adapter.proj_names),
                            fan_in_fan_out=self.adapter.fan_in_fan_out)
        with warnings.catch_warnings():
            # peft asks transformers a deprecated question (is_gradient_checkpointing)
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model, config)
        try:
            self._params = []
            for layer, name in enumerate(self.adapter.proj_names):
                lora = model.get_submodule(name)
                with torch.no_grad():  # same starting a as HeadEdit, B = 0 (peft's default)
                    lora.lora_A["default"].weight.copy_(self.a_init[layer][None, :])
                    lora.lora_B["default"].weight.zero_()
                self._params += [lora.lora_A["default"].weight, lora.lora_B["default"].weight]
            yield self
        finally:
            peft_model.unload()  # puts the original projection modules back
            self._params = []

    def trainable(self) -> list[nn.Parameter]:
        return self._params
