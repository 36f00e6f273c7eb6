"""The torch side of ablations: the train split's activations at every site of a kind (their
mean, and a seeded sample of tokens for `resample`), read once per testbed, and `ablated`, the
context in which a location is removed from the model."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from loccheck.ablations import POOL_SIZE
from loccheck.locations import RESIDUAL_KINDS


@dataclass(frozen=True)
class TrainActivations:
    """One kind's activations on the train split, per layer: `mean[l]` (width,) over every token,
    `pool[l]` (POOL_SIZE, width), the same seeded sample of tokens at every layer."""
    mean: dict[int, torch.Tensor]
    pool: dict[int, torch.Tensor]
    n_tokens: int


def _point(testbed, kind: str, layers) -> tuple:
    """(the modules whose activation a kind's sites are part of, "input" or "output")."""
    adapter = testbed.adapter
    if kind == "head":
        return [adapter.out_proj(l) for l in layers], "input"
    if kind == "neuron":
        return [adapter.mlp_out(l) for l in layers], "input"
    if kind == "mlp":
        return [adapter.mlp_out(l) for l in layers], "output"
    return [adapter.blocks[l] for l in layers], "output"          # the residual stream after layer l


def _layers(testbed, location) -> list[int]:
    """The layers whose activations the null of `location` can touch: every layer, or for a
    location in the residual stream its own layer."""
    kind = location[0].kind
    return [location[0].layer] if kind in RESIDUAL_KINDS else list(range(testbed.adapter.n_layers))


def train_activations(testbed, location) -> TrainActivations:
    """The train split's activations where `location`'s kind lives (memoised per testbed)."""
    kind, layers = location[0].kind, _layers(testbed, location)
    group = "residual" if kind in RESIDUAL_KINDS else kind
    key = ("train activations", group, tuple(layers))
    if key not in testbed.memo:
        testbed.memo[key] = _read_train(testbed, kind, layers)
    return testbed.memo[key]


@torch.no_grad()
def _read_train(testbed, kind: str, layers: list[int], batch_size: int = 8) -> TrainActivations:
    from loccheck.models.hooks import read_inputs, read_outputs
    from loccheck.models.scoring import padded

    model, adapter = testbed.model, testbed.adapter
    seqs = [[*p.prompt, *answer] for p in testbed.train for answer in (p.chosen, p.rejected)]
    n_tokens = sum(map(len, seqs))
    picked = np.sort(np.random.default_rng(0).choice(n_tokens, size=min(POOL_SIZE, n_tokens), replace=False))
    sums: dict[int, torch.Tensor] = {}
    pool: dict[int, list] = {l: [] for l in layers}
    state = {"mask": None, "offset": 0}

    def take(layer: int, act) -> None:
        act = act[0] if isinstance(act, tuple) else act
        tokens = act[state["mask"]].double()                       # (tokens of the batch, width)
        sums[layer] = sums.get(layer, 0) + tokens.sum(0)
        lo = state["offset"]
        here = picked[(picked >= lo) & (picked < lo + len(tokens))] - lo
        pool[layer].append(tokens[torch.as_tensor(here, dtype=torch.long, device=tokens.device)].float())

    modules, where = _point(testbed, kind, layers)
    hooks = (read_inputs(adapter, layers, take, modules=modules) if where == "input" else
             read_outputs(modules, lambda row, x, y: take(layers[row], y)))
    body = getattr(model, model.base_model_prefix)
    device = adapter.device
    with hooks:
        for start in range(0, len(seqs), batch_size):
            ids, mask = padded(seqs[start:start + batch_size], testbed.pad_id, device)
            state["mask"] = mask.bool()
            body(input_ids=ids, attention_mask=mask)
            state["offset"] += int(mask.sum())
    return TrainActivations({l: (sums[l] / n_tokens).float() for l in layers},
                            {l: torch.cat(pool[l]) for l in layers}, n_tokens)


class _Draws:
    """The resample draws: for the c-th forward through a layer's hook, a (batch, pos) index
    into the pool seeded by (seed, c), so every layer of one forward, and every location, gets
    the same source tokens."""

    def __init__(self, seed: int, pool_size: int):
        self.seed, self.pool_size, self.calls = seed, pool_size, {}

    def __call__(self, row: int, shape, device):
        c = self.calls.get(row, 0)
        self.calls[row] = c + 1
        # torch keeps a CPU generator's seed modulo 2**32: one 32-bit word of both numbers
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, c]).generate_state(1)[0]))
        return torch.randint(self.pool_size, tuple(shape), generator=gen).to(device)


@contextlib.contextmanager
def ablated(testbed, location, ablation: str, seed: int = 0):
    """The model with `location` removed by `ablation` ("mean", "resample", "zero") at every
    position while the context is open."""
    from loccheck.models.hooks import displaced_inputs, displaced_outputs, displaced_residual

    kind, adapter = location[0].kind, testbed.adapter
    stats = train_activations(testbed, location) if ablation != "zero" else None
    draws = _Draws(seed, POOL_SIZE) if ablation == "resample" else None

    def target(layer: int, row: int, act):
        """What the activation at `layer` (float, (batch, pos, width)) is replaced with."""
        if ablation == "zero":
            return torch.zeros_like(act)
        if ablation == "mean":
            return stats.mean[layer].to(act.device).expand_as(act)
        pool = stats.pool[layer].to(act.device)
        return pool[draws(row, act.shape[:2], act.device)]

    if kind in RESIDUAL_KINDS:
        layer = location[0].layer
        basis = torch.as_tensor(np.asarray(testbed.basis_of(location)), dtype=torch.float32)
        projector = (basis.T @ basis).to(adapter.device)            # (width, width): onto the span

        def onto_span(row, h):
            h = h.float()
            return (target(layer, row, h) - h) @ projector
        hooks = displaced_residual([adapter.blocks[layer]], onto_span)
    elif kind == "mlp":
        layers = [s.layer for s in location]

        def whole_output(row, x, y):
            y = y.float()
            return target(layers[row], row, y) - y
        hooks = displaced_outputs([adapter.mlp_out(l) for l in layers], whole_output)
    else:
        layers = sorted({s.layer for s in location})
        coords = {l: torch.cat([torch.arange(c.start, c.stop) for c in
                                (_coordinates(adapter, s) for s in location if s.layer == l)])
                  for l in layers}
        modules, _ = _point(testbed, kind, layers)

        def at_sites(row, o):
            o = o.float()
            cols = coords[layers[row]].to(o.device)
            delta = torch.zeros_like(o)
            delta[..., cols] = target(layers[row], row, o)[..., cols] - o[..., cols]
            return delta
        hooks = displaced_inputs(adapter, layers, at_sites, modules=modules)
    with hooks:
        yield


def _coordinates(adapter, site) -> slice:
    """A head's slice of its output projection's input, or a neuron's coordinate."""
    if site.kind == "head":
        return adapter.head_slice(site)
    return slice(site.unit, site.unit + 1)
