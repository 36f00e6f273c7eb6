"""What loccheck needs to know about a model: which sites it has and where each is hooked.

Head sites: head h of layer l is the slice [h*head_dim, (h+1)*head_dim) of the input of layer
l's output projection (Llama `self_attn.o_proj`, GPT-2 `attn.c_proj`, GPT-NeoX
`attention.dense`). MLP sites: the MLP of layer l is the output of its down projection (Llama
`mlp.down_proj`, GPT-2 `mlp.c_proj`, GPT-NeoX `mlp.dense_4h_to_h`), which each of these
architectures adds to the residual stream as it is. An adapter finds those modules; edits,
probes and tracing hook them through `loccheck.models.hooks`. A new site kind adds its sites
and hook point here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from loccheck.errors import AdapterError
from loccheck.locations import HeadLoc, head_sites, mlp_sites, outside

if TYPE_CHECKING:   # annotations only: importing the adapters must not load torch
    from torch import nn


@dataclass(frozen=True)
class Adapter:
    family: str                      # registry key, e.g. "llama"
    n_layers: int
    n_heads: int                     # query heads: the head sites
    head_dim: int
    proj_names: tuple[str, ...]      # full module name of each layer's output projection
    fan_in_fan_out: bool             # weight stored (in, out), as GPT-2's Conv1D (peft needs to know)
    projections: tuple[nn.Module, ...]
    mlp_names: tuple[str, ...] = ()  # full module name of each layer's MLP down projection
    mlp_projections: tuple[nn.Module, ...] = ()
    blocks: tuple[nn.Module, ...] = ()  # the decoder layers (their output: the residual stream)
    blocks_path: str = ""            # full module name of the list of decoder layers

    @property
    def width(self) -> int:
        """Width of the projection's input: all heads concatenated."""
        return self.n_heads * self.head_dim

    def sites(self, kind: str) -> tuple:
        """Every site of `kind` in the model, sorted (layer-major)."""
        if kind == "head":
            return head_sites(self.n_layers, self.n_heads)
        if kind == "mlp" and self.mlp_projections:
            return mlp_sites(self.n_layers)
        raise AdapterError(f"a {self.family} adapter has no sites of kind {kind!r}")

    def check_inside(self, location) -> None:
        """AdapterError naming the first site of `location` the model does not have."""
        bad = outside(location, self.sites(location[0].kind)) if location else []
        if bad:
            shape = f" x {self.n_heads} heads" if bad[0].kind == "head" else ""
            raise AdapterError(f"{bad[0]} is outside the model: it has {self.n_layers} layers{shape} (0-based)")

    # --- head sites: where they are hooked ---
    def out_proj(self, layer: int) -> nn.Module:
        """The module whose input concatenates layer `layer`'s heads."""
        return self.projections[layer]

    def head_slice(self, loc: HeadLoc) -> slice:
        return slice(loc.head * self.head_dim, (loc.head + 1) * self.head_dim)

    def all_heads(self) -> tuple[HeadLoc, ...]:
        return self.sites("head")

    # --- MLP sites: where they are hooked ---
    def mlp_out(self, layer: int) -> nn.Module:
        """The module whose output is layer `layer`'s MLP output (its down projection)."""
        return self.mlp_projections[layer]

    @property
    def mlp_width(self) -> int:
        """Width of the down projection's input: the MLP's hidden (intermediate) size."""
        weight = self.mlp_projections[0].weight
        return weight.shape[0] if self.fan_in_fan_out else weight.shape[1]

    @property
    def model_width(self) -> int:
        """Width of the residual stream: the down projection's output."""
        weight = self.mlp_projections[0].weight
        return weight.shape[1] if self.fan_in_fan_out else weight.shape[0]

    def describe(self) -> dict:
        return {"architecture": self.family, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "head_dim": self.head_dim}
