"""What loccheck needs to know about a model: which sites it has and where each is hooked.

Head sites: head h of layer l is the slice [h*head_dim, (h+1)*head_dim) of the input of layer
l's output projection (Llama `self_attn.o_proj`, GPT-2 `attn.c_proj`, GPT-NeoX
`attention.dense`). MLP sites: the MLP of layer l is the output of its down projection (Llama
`mlp.down_proj`, GPT-2 `mlp.c_proj`, GPT-NeoX `mlp.dense_4h_to_h`), which most architectures
add to the residual stream as it is; Gemma-2/3 and OLMo-2 pass it through a norm first
(`mlp_after`), and a mixture of experts has no single down projection, so its site is the
sparse block's output (`experts`). `models.families` says where each architecture keeps these
modules and `models.checks` proves it on the loaded model; edits, probes and tracing hook them
through `loccheck.models.hooks`. A new site kind adds its sites and hook point here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from loccheck.errors import AdapterError
from loccheck.locations import HeadLoc, head_sites, mlp_sites, neuron_sites, outside

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
    mlp_names: tuple[str, ...] = ()  # full module name of each layer's MLP site
    mlp_projections: tuple[nn.Module, ...] = ()
    blocks: tuple[nn.Module, ...] = ()  # the decoder layers (their output: the residual stream)
    blocks_path: str = ""            # full module name of the list of decoder layers
    mlp_read_width: int = 0          # width of what an MLP edit reads: hidden units, or the experts' output
    model_width: int = 0             # width of the residual stream
    mlp_after: tuple[nn.Module, ...] = ()   # per layer, the norm between the MLP site and the residual add
    mlp_after_name: str = ""
    note: str = ""                   # what a reader should know about where the sites are
    experts: bool = False            # the MLP sites are mixtures of experts
    checks: dict | None = None       # each structural check's largest deviation, once checked (models.checks)

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
        if kind == "neuron" and self.mlp_projections:
            if self.experts:
                raise AdapterError(f"a {self.family} model's MLPs are mixtures of experts: each expert "
                                   "has its own hidden units, and no unit is one MLP's neuron; claim "
                                   "its MLP layers (L12M) instead")
            return neuron_sites(self.n_layers, self.mlp_read_width)
        raise AdapterError(f"a {self.family} adapter has no sites of kind {kind!r}")

    def check_inside(self, location) -> None:
        """AdapterError naming the first site of `location` the model does not have."""
        bad = outside(location, self.sites(location[0].kind)) if location else []
        if bad:
            shape = {"head": f" x {self.n_heads} heads",
                     "neuron": f" x {self.mlp_read_width} MLP hidden units"}.get(bad[0].kind, "")
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
        """The module whose output is layer `layer`'s MLP site (its down projection, or the
        sparse block of experts)."""
        return self.mlp_projections[layer]

    @property
    def mlp_width(self) -> int:
        """Width of what an MLP edit reads: the down projection's input (the MLP's hidden
        units), or for experts the block's output (the residual stream's width)."""
        return self.mlp_read_width

    @property
    def device(self):
        return next(self.projections[0].parameters()).device

    def where(self) -> dict[str, str]:
        """Where each kind of site is hooked, for the report."""
        first = self.proj_names[0].replace(".0.", ".*.", 1)
        mlp = self.mlp_names[0].replace(".0.", ".*.", 1) if self.mlp_names else ""
        after = f", then {self.mlp_after_name}" if self.mlp_after_name else ""
        return {"heads": f"slices of the input of {first}",
                **({"mlp": f"the output of {mlp}{after}"} if mlp else {})}

    def describe(self) -> dict:
        return {"architecture": self.family, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "head_dim": self.head_dim}
