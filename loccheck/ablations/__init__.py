"""Ablations: what a location's activations are replaced with when it is removed (necessity).

Each kind replaces, at every token position, the location's part of the activation where its
sites live (a head's slice of its output projection's input, a neuron's coordinate of the down
projection's input, an MLP layer's output, a subspace's component of the residual stream):

- `mean`: the mean of that activation over every token of the train split's sequences (each
  pair's prompt with its chosen and with its rejected answer);
- `resample`: the activation at a token drawn at random from those sequences (one draw per
  position, shared by every site of the location, seeded: every location gets the same draws);
- `zero`: zero.

Torch-free: `loccheck.ablations.ablate` holds the torch side.
"""
from __future__ import annotations

from dataclasses import dataclass

from loccheck.registry import Registry


@dataclass(frozen=True)
class Ablation:
    name: str
    description: str
    site_kinds: tuple[str, ...]          # the kinds of location it can remove
    refused: str = ""                    # why the other kinds cannot be


ABLATIONS: Registry[Ablation] = Registry("ablation")

_ALL = ("head", "mlp", "neuron", "subspace", "latent")
for _ablation in (
        Ablation("mean", "replaced by its mean over the train split's tokens", _ALL),
        Ablation("resample", "replaced by its value at a random token of the train split", _ALL),
        Ablation("zero", "replaced by zero", ("head", "mlp", "neuron", "subspace"),
                 refused="zeroing a latent means setting its activation to zero, which needs the sparse "
                         "autoencoder's encoder; loccheck reads only its decoder (use mean or resample, "
                         "which replace the span of the latents' decoder rows)")):
    ABLATIONS.register(_ablation.name, _ablation)

# Tokens of the train split kept per layer for `resample` (a seeded sample of every token)
POOL_SIZE = 256


def unsupported(ablation: str, site_kind: str) -> str | None:
    """Why `ablation` cannot remove a location of `site_kind` (None when it can)."""
    a = ABLATIONS[ablation]
    if site_kind in a.site_kinds:
        return None
    return f"a {ablation} ablation cannot remove {site_kind} sites: {a.refused}"
