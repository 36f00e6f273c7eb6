"""What loccheck needs to know about a model: where its attention heads are concatenated.

Head h of layer l is the slice [h*head_dim, (h+1)*head_dim) of the input of layer l's output
projection (Llama `self_attn.o_proj`, GPT-2 `attn.c_proj`, GPT-NeoX `attention.dense`). An
adapter finds those modules; everything else (edits, probes) works on their inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from loccheck.locations import HeadLoc


@dataclass(frozen=True)
class Adapter:
    family: str                      # registry key, e.g. "llama"
    n_layers: int
    n_heads: int                     # query heads: the locations
    head_dim: int
    proj_names: tuple[str, ...]      # full module name of each layer's output projection
    fan_in_fan_out: bool             # weight stored (in, out), as GPT-2's Conv1D (peft needs to know)
    projections: tuple[nn.Module, ...]

    @property
    def width(self) -> int:
        """Width of the projection's input: all heads concatenated."""
        return self.n_heads * self.head_dim

    def out_proj(self, layer: int) -> nn.Module:
        return self.projections[layer]

    def head_slice(self, loc: HeadLoc) -> slice:
        return slice(loc.head * self.head_dim, (loc.head + 1) * self.head_dim)

    def all_heads(self) -> list[HeadLoc]:
        return [HeadLoc(l, h) for l in range(self.n_layers) for h in range(self.n_heads)]

    def describe(self) -> dict:
        return {"architecture": self.family, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "head_dim": self.head_dim}
