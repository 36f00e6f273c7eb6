"""What loccheck needs to know about a model: which sites it has and where each is hooked.

Head sites: head h of layer l is the slice [h*head_dim, (h+1)*head_dim) of the input of layer
l's output projection (Llama `self_attn.o_proj`, GPT-2 `attn.c_proj`, GPT-NeoX
`attention.dense`). An adapter finds those modules; edits and probes hook their inputs
through `loccheck.models.hooks`. A new site kind adds its sites and hook point here.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from loccheck.errors import AdapterError
from loccheck.locations import HeadLoc, head_sites, outside


@dataclass(frozen=True)
class Adapter:
    family: str                      # registry key, e.g. "llama"
    n_layers: int
    n_heads: int                     # query heads: the head sites
    head_dim: int
    proj_names: tuple[str, ...]      # full module name of each layer's output projection
    fan_in_fan_out: bool             # weight stored (in, out), as GPT-2's Conv1D (peft needs to know)
    projections: tuple[nn.Module, ...]

    @property
    def width(self) -> int:
        """Width of the projection's input: all heads concatenated."""
        return self.n_heads * self.head_dim

    def sites(self, kind: str) -> tuple:
        """Every site of `kind` in the model, sorted (layer-major)."""
        if kind == "head":
            return head_sites(self.n_layers, self.n_heads)
        raise AdapterError(f"a {self.family} adapter has no sites of kind {kind!r}")

    def check_inside(self, location) -> None:
        """AdapterError naming the first site of `location` the model does not have."""
        bad = outside(location, self.sites(location[0].kind)) if location else []
        if bad:
            raise AdapterError(f"{bad[0]} is outside the model: it has {self.n_layers} layers x "
                               f"{self.n_heads} heads (0-based)")

    # --- head sites: where they are hooked ---
    def out_proj(self, layer: int) -> nn.Module:
        """The module whose input concatenates layer `layer`'s heads."""
        return self.projections[layer]

    def head_slice(self, loc: HeadLoc) -> slice:
        return slice(loc.head * self.head_dim, (loc.head + 1) * self.head_dim)

    def all_heads(self) -> tuple[HeadLoc, ...]:
        return self.sites("head")

    def describe(self) -> dict:
        return {"architecture": self.family, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "head_dim": self.head_dim}
