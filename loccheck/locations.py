"""Sites and locations (torch-free).

A *site* is one place an edit can act: an attention head, `L{layer}H{head}` (0-based), whose
value is its slice of the input of the layer's attention output projection; a layer's MLP,
`L{layer}M`, whose value is the MLP's output where it enters the residual stream; one of an MLP's
hidden units, `L{layer}N{unit}` (a neuron: one coordinate of the down projection's input); a
latent of a sparse autoencoder's dictionary at a layer, `L{layer}F{latent}` (its decoder row, a
direction of the residual stream after that layer); or a subspace of the residual stream after a
layer, `L{layer}S{dim}@{basis}`, named by where its basis comes from (a file's sha256, a Haar
draw, the identity). A *location* is a sorted tuple of distinct sites of one kind; a subspace is
a location of one site. Site kinds register here with their spelling; an adapter
(loccheck.models) says which sites a model has and where each one is hooked (a dictionary's
latents are the dictionary's), and the null draws from those sites, so nothing below assumes
heads.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Iterable, Protocol

from loccheck.registry import Registry


class Site(Protocol):
    kind: ClassVar[str]
    layer: int

    def __str__(self) -> str: ...


Location = tuple  # tuple[Site, ...], sorted, distinct, one kind

SITE_KINDS: Registry[type] = Registry("site kind")


def _parse(cls, text, expected: str):
    """The site of kind `cls` that `text` spells (its pattern's groups are its integer fields)."""
    m = cls.pattern.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{expected}, got {text!r}")
    return cls(*(int(g) for g in m.groups()))


@dataclass(frozen=True, order=True)
class HeadLoc:
    """Attention head `head` of layer `layer` (query heads in grouped-query models)."""
    layer: int
    head: int

    kind: ClassVar[str] = "head"
    noun: ClassVar[str] = "head"         # what prose calls it
    pattern: ClassVar[re.Pattern] = re.compile(r"L([0-9]+)H([0-9]+)")
    example: ClassVar[str] = "L12H3"
    listed: ClassVar[bool] = True        # a claim lists it under `sites:`

    @classmethod
    def parse(cls, text: str) -> "HeadLoc":
        return _parse(cls, text, "a head must look like 'L12H3' (0-based layer and head)")

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"


SITE_KINDS.register("head", HeadLoc)


@dataclass(frozen=True, order=True)
class MlpLoc:
    """The MLP of layer `layer`: its output (the down projection's), as it enters the residual stream."""
    layer: int

    kind: ClassVar[str] = "mlp"
    noun: ClassVar[str] = "MLP layer"
    pattern: ClassVar[re.Pattern] = re.compile(r"L([0-9]+)M")
    example: ClassVar[str] = "L12M"
    listed: ClassVar[bool] = True        # a claim lists it under `sites:`

    @classmethod
    def parse(cls, text: str) -> "MlpLoc":
        return _parse(cls, text, "an MLP site must look like 'L12M' (0-based layer)")

    def __str__(self) -> str:
        return f"L{self.layer}M"


SITE_KINDS.register("mlp", MlpLoc)


@dataclass(frozen=True, order=True)
class NeuronLoc:
    """Hidden unit `unit` of layer `layer`'s MLP: coordinate `unit` of its down projection's input."""
    layer: int
    unit: int

    kind: ClassVar[str] = "neuron"
    noun: ClassVar[str] = "neuron"
    pattern: ClassVar[re.Pattern] = re.compile(r"L([0-9]+)N([0-9]+)")
    example: ClassVar[str] = "L5N1234"
    listed: ClassVar[bool] = True        # a claim lists it under `sites:`

    @classmethod
    def parse(cls, text: str) -> "NeuronLoc":
        return _parse(cls, text, "a neuron must look like 'L5N1234' (0-based layer and hidden unit)")

    def __str__(self) -> str:
        return f"L{self.layer}N{self.unit}"


SITE_KINDS.register("neuron", NeuronLoc)


@dataclass(frozen=True, order=True)
class LatentLoc:
    """Latent `latent` of the claim's sparse-autoencoder dictionary, which reads and writes the
    residual stream after layer `layer`: its decoder row is a direction of that stream."""
    layer: int
    latent: int

    kind: ClassVar[str] = "latent"
    noun: ClassVar[str] = "SAE latent"
    pattern: ClassVar[re.Pattern] = re.compile(r"L([0-9]+)F([0-9]+)")
    example: ClassVar[str] = "L12F4123"
    listed: ClassVar[bool] = False       # named by index under `latents:`, with its dictionary

    @classmethod
    def parse(cls, text: str) -> "LatentLoc":
        return _parse(cls, text, "an SAE latent must look like 'L12F4123' (0-based layer and latent)")

    def __str__(self) -> str:
        return f"L{self.layer}F{self.latent}"


SITE_KINDS.register("latent", LatentLoc)


@dataclass(frozen=True, order=True)
class SubspaceLoc:
    """A `dim`-dimensional subspace of the residual stream after layer `layer`. `basis` says
    where its orthonormal basis comes from, and is what makes two subspaces the same:
    "sha256:<hex>" a file's (or a dictionary's named rows'), "haar:<seed>:<draw>" a uniform
    (Haar) draw of the null, "identity" the whole stream (dim is then the model's width),
    "without:<basis>" (or "without:latents:<i>,<j>") the orthogonal complement of another
    subspace (or of a dictionary's latents' span): the whole stream without a location."""
    layer: int
    dim: int
    basis: str

    kind: ClassVar[str] = "subspace"
    noun: ClassVar[str] = "subspace"
    pattern: ClassVar[re.Pattern] = re.compile(
        r"L([0-9]+)S([0-9]+)@((?:without:)?(?:sha256:[0-9a-f]{64}|haar:[0-9]+:[0-9]+|latents:[0-9]+(?:,[0-9]+)*)|identity)")
    example: ClassVar[str] = "L12S1@sha256:<64 hex digits>"
    listed: ClassVar[bool] = False       # named by its basis file under `subspace:`

    @classmethod
    def parse(cls, text: str) -> "SubspaceLoc":
        m = cls.pattern.fullmatch(text.strip()) if isinstance(text, str) else None
        if m is None:
            raise ValueError(f"a subspace must look like 'L12S1@sha256:...', 'L12S1@haar:0:3' or "
                             f"'L12S576@identity', got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)), m.group(3))

    def __str__(self) -> str:
        return f"L{self.layer}S{self.dim}@{self.basis}"

    @property
    def short(self) -> str:
        """Its spelling with a file's sha256 cut to 12 digits, for tables."""
        text = str(self)
        at = text.find("sha256:")
        return text if at < 0 else text[: at + 19]


SITE_KINDS.register("subspace", SubspaceLoc)

# The kinds whose sites are directions of the residual stream after a layer: their edit acts there.
RESIDUAL_KINDS = ("subspace", "latent")


def location_size(location: tuple) -> int:
    """How big a location is: its sites, or a subspace's dimensions."""
    return location[0].dim if location[0].kind == "subspace" else len(location)


def site_noun(kind: str) -> str:
    """What prose calls a site of `kind` ("head", "MLP layer")."""
    return SITE_KINDS[kind].noun if kind in SITE_KINDS else kind


def mlp_sites(n_layers: int) -> tuple[MlpLoc, ...]:
    """Every MLP site of an n_layers model, in layer order."""
    return tuple(MlpLoc(l) for l in range(n_layers))


def neuron_sites(n_layers: int, width: int) -> tuple[NeuronLoc, ...]:
    """Every hidden unit of an n_layers model whose MLPs have `width` units, layer-major."""
    return tuple(NeuronLoc(l, u) for l in range(n_layers) for u in range(width))


def head_sites(n_layers: int, n_heads: int) -> tuple[HeadLoc, ...]:
    """Every head of an n_layers x n_heads model, layer-major (the adapters' order)."""
    return tuple(HeadLoc(l, h) for l in range(n_layers) for h in range(n_heads))


def parse_site(text: str):
    """The site a canonical spelling names, of whichever registered kind matches it."""
    if isinstance(text, str):
        for _, cls in SITE_KINDS.items():
            if cls.pattern.fullmatch(text.strip()):
                return cls.parse(text)
    examples = " or ".join(repr(cls.example) for _, cls in SITE_KINDS.items() if cls.listed)
    raise ValueError(f"a site must look like {examples} (0-based), got {text!r}")


def make_location(sites: Iterable) -> Location:
    """Sites as a location: sorted, distinct, one kind (ValueError otherwise)."""
    sites = tuple(sites)
    if not sites:
        raise ValueError("a location needs at least one site")
    kinds = sorted({s.kind for s in sites})
    if len(kinds) > 1:
        raise ValueError(f"a location holds sites of one kind, got {', '.join(kinds)}")
    if len(set(sites)) != len(sites):
        raise ValueError(f"a location must not repeat a site, got {format_location(sites)}")
    return tuple(sorted(sites))


def parse_location(texts: Iterable[str]) -> Location:
    return make_location(parse_site(t) for t in texts)


def format_location(location) -> list[str]:
    """Canonical, sorted spelling of a location."""
    return [str(s) for s in sorted(location)]


def outside(location: Iterable, universe: Iterable) -> list:
    """The sites of `location` that are not among `universe` (a model's sites of that kind):
    the one "is this inside the model" check."""
    known = set(universe)
    return [s for s in location if s not in known]
