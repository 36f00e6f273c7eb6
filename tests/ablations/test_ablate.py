"""Ablations at every site kind (heads, neurons, MLP layers, subspaces, SAE latents), read where
the site lives by this file's own hooks on the Llama modules (not through the adapter): inside
`ablated`, the location's coordinates are the train mean (mean), zero (zero) or a row of the
train pool (resample: one draw per position shared by every site, the same for the same seed),
every other coordinate is untouched, and on exit the model computes what it computed before.
The train statistics are checked against activations read here, one unpadded sequence at a time.

Tolerances (float32 model, eps = 2**-23, float32 machine epsilon):
- heads, neurons, MLP layers: the hook adds (target - o) to o in float32, so a replaced value
  is fl(o + fl(target - o)), within eps * (|target| + |o|) of the target (two roundings of at
  most eps/2 of those magnitudes); the test allows twice that. Zero is exact (o + (-o) = 0),
  and an untouched coordinate gets + 0.0: exact.
- subspaces, latents: the hook adds (target - h) @ P, P = U^T U a (32, 32) float32 projector
  from the float32-rounded basis U: a float32 dot product of width 32 is within about
  32 * eps/2 of the sum of its terms' magnitudes, and U's rounding adds a few eps more. The
  test allows 64 * eps * (|h| + |target|)_max per position (64 eps ~ 7.6e-6 relative).
- train statistics read here vs by loccheck: one sequence at a time vs right-padded batches of
  8, so the matrix products round differently: rtol 1e-5 (~84 eps) of the layer's largest value.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from loccheck.ablations import ABLATIONS, POOL_SIZE, unsupported

pytestmark = pytest.mark.slow   # real forwards on a tiny Llama (torch)

WIDTH, N_HEADS = 32, 4                          # the known Llama: 2 layers, head_dim 8
HEAD_DIM = WIDTH // N_HEADS
EPS = 2.0 ** -23                               # float32 machine epsilon
LOCATIONS = {"head": "{sites: [L1H2, L0H0]}", "neuron": "{sites: [L1N5, L0N60, L0N7]}",
             "mlp": "{sites: [L0M]}",                       # layer 1's MLP is the untouched one
             "subspace": "{subspace: {layer: 0, basis: basis.npy}}",
             "latent": "{latents: [3, 0], dictionary: {path: sae.npz, key: W_dec, layer: 1}}"}
CASES = [(kind, a) for kind in LOCATIONS for a in ABLATIONS if unsupported(a, kind) is None]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def testbeds(known_llama, tmp_path_factory):
    """kind -> (testbed, location) on the known Llama, made once per kind."""
    from loccheck.claim import parse_claim
    from loccheck.run.testbed import prepare_testbed
    from loccheck.run.verify import claimed_location
    from loccheck.testing import claim_text

    root = tmp_path_factory.mktemp("ablate")
    rng = np.random.default_rng(0)
    np.save(root / "basis.npy", rng.standard_normal((2, WIDTH)))
    np.savez(root / "sae.npz", W_dec=rng.standard_normal((16, WIDTH)).astype(np.float32))
    model_dir, pairs = known_llama
    made = {}

    def make(kind):
        if kind not in made:
            text = claim_text(model_dir, pairs, ["L1H2"], n=2).replace(
                "location: {sites: [L1H2]}", f"location: {LOCATIONS[kind]}")
            claim = parse_claim(text, path=root / f"{kind}.yaml")
            testbed = prepare_testbed(claim, root / "cache")
            made[kind] = testbed, claimed_location(claim, testbed, None)
            assert made[kind][1][0].kind == kind
        return made[kind]
    return make


# --- reading activations where the sites live, with this file's own hooks ------------------------

def _module(model, kind: str, layer: int):
    """The module whose input ("head", "neuron") or output (the others) holds a kind's sites."""
    block = model.model.layers[layer]
    return {"head": block.self_attn.o_proj, "neuron": block.mlp.down_proj,
            "mlp": block.mlp.down_proj}.get(kind, block)


@contextlib.contextmanager
def _reading(model, kind: str, store: dict):
    """store[layer] = the activation (batch, pos, width) at every layer, as float64 (a copy)."""
    def keep(layer, act):
        act = act[0] if isinstance(act, tuple) else act
        store[layer] = act.detach().double().clone()

    handles = []
    for layer in range(len(model.model.layers)):
        module = _module(model, kind, layer)
        if kind in ("head", "neuron"):
            handles.append(module.register_forward_pre_hook(lambda m, args, l=layer: keep(l, args[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, args, y, l=layer: keep(l, y)))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _test_batch(testbed):
    """The test pairs' prompt + chosen sequences, right-padded: (ids, mask)."""
    import torch

    seqs = [list(p.prompt) + list(p.chosen) for p in testbed.test]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), testbed.pad_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    return ids, mask


def _forward(testbed, ablation=None, location=None, seed=0):
    """One forward of the test batch; (activations before the ablation's hook, after it,
    logits). The `raw` hooks are registered before `ablated` and the `seen` ones inside it, and
    hooks run in registration order, so both read the same forward on each side of the ablation."""
    import torch
    from loccheck.ablations.ablate import ablated

    kind = location[0].kind if location else "head"
    ids, mask = _test_batch(testbed)
    raw, seen = {}, {}
    with torch.no_grad(), _reading(testbed.model, kind, raw):
        with (ablated(testbed, location, ablation, seed) if ablation else contextlib.nullcontext()), \
                _reading(testbed.model, kind, seen):
            logits = testbed.model(input_ids=ids, attention_mask=mask).logits
    return raw, seen, logits


def _hooks(model) -> list:
    return [(name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._forward_hooks_with_kwargs))
            for name, m in model.named_modules()]


def _columns(location) -> dict[int, np.ndarray]:
    """layer -> the coordinates of a head or neuron location at that layer (computed here)."""
    cols: dict[int, list] = {}
    for site in location:
        cols.setdefault(site.layer, []).extend(
            range(site.head * HEAD_DIM, (site.head + 1) * HEAD_DIM) if site.kind == "head" else [site.unit])
    return {layer: np.array(sorted(c)) for layer, c in cols.items()}


def _train_tokens(testbed, kind: str) -> dict:
    """layer -> (n_tokens, width) float64: the activation at every token of every train sequence
    (prompt + chosen, prompt + rejected), run one at a time, unpadded."""
    import torch

    rows: dict[int, list] = {}
    store: dict = {}
    with torch.no_grad(), _reading(testbed.model, kind, store):
        for pair in testbed.train:
            for answer in (pair.chosen, pair.rejected):
                testbed.model(input_ids=torch.tensor([[*pair.prompt, *answer]]))
                for layer, act in store.items():
                    rows.setdefault(layer, []).append(act[0])
    return {layer: torch.cat(r).numpy() for layer, r in rows.items()}


# --- the tests -------------------------------------------------------------------------------------

def _close_to(got, want, tol) -> np.ndarray:
    return np.abs(got - want) <= tol


def _within(error, tol, what: str) -> None:
    error, tol = np.broadcast_arrays(error, tol)
    bad = error > tol
    assert not bad.any(), f"{what}: an error of {error[bad].max():.3g} where {tol[bad].min():.3g} is allowed"


def _pool_matches(values, pool, tol) -> np.ndarray:
    """(batch, pos, POOL) bool: which pool rows each position's values (batch, pos, k) equal
    to `tol` (batch, pos, k)."""
    return _close_to(values[:, :, None, :], pool[None, None], tol[:, :, None, :]).all(-1)


@pytest.mark.parametrize("kind, ablation", CASES)
def test_only_the_location_is_replaced_and_the_model_is_restored(testbeds, kind, ablation):
    import torch
    from loccheck.ablations.ablate import train_activations

    testbed, location = testbeds(kind)
    hooks_before = _hooks(testbed.model)
    _, unablated, logits_before = _forward(testbed)
    raw, seen, logits = _forward(testbed, ablation, location, seed=0)
    stats = train_activations(testbed, location) if ablation != "zero" else None
    assert not torch.equal(logits, logits_before), "the ablation changed nothing the test can see"
    if kind in ("head", "neuron", "mlp"):
        cols = (_columns(location) if kind != "mlp"
                else {s.layer: np.arange(WIDTH) for s in location})        # an MLP layer: its whole output
        shared = None                                                   # resample: pool rows every layer matches
        for layer in raw:
            o, new = raw[layer].numpy(), seen[layer].numpy()
            inside = cols.get(layer, np.array([], dtype=int))
            outside = np.setdiff1d(np.arange(o.shape[-1]), inside)
            assert np.array_equal(new[..., outside], o[..., outside]), f"layer {layer}: other coordinates moved"
            if not inside.size:
                continue
            got, o_in = new[..., inside], o[..., inside]
            if ablation == "zero":
                assert np.array_equal(got, np.zeros_like(got))
                continue
            if ablation == "mean":
                want = np.broadcast_to(stats.mean[layer].double().numpy()[inside], got.shape)
                assert _close_to(got, want, 2 * EPS * (np.abs(want) + np.abs(o_in))).all()
                continue
            pool = stats.pool[layer].double().numpy()[:, inside]        # (POOL, k)
            tol = 2 * EPS * (np.abs(o_in) + np.abs(pool).max(0))        # |target| <= its column's max
            matches = _pool_matches(got, pool, tol)
            assert matches.any(-1).all(), f"layer {layer}: a position holds no row of the train pool"
            shared = matches if shared is None else shared & matches
            assert shared.any(-1).all(), "the sites' layers drew different train tokens at one position"
            assert len({tuple(np.flatnonzero(m)) for m in matches.reshape(-1, len(pool))}) > 1
    else:                                                               # a subspace of the residual stream
        layer = location[0].layer
        U = np.asarray(testbed.basis_of(location), dtype=np.float64)   # (k, width), orthonormal rows
        for other in raw:                                               # one hook, at the location's layer
            if other != layer:
                assert torch.equal(seen[other], raw[other])
        h, new = raw[layer].numpy(), seen[layer].numpy()                # (batch, pos, width)
        P = U.T @ U
        # (pad positions of this model hold an exact zero stream after layer 0: its layer-0
        # heads are dead and the pad embedding is zero, so a zero tolerance must hold there)
        target = {"zero": 0.0, "mean": None, "resample": None}[ablation]
        if ablation == "mean":
            mean = stats.mean[layer].double().numpy()
            want_in = np.broadcast_to(mean @ P, h.shape)
            target = np.abs(mean).max()
        elif ablation == "resample":
            pool = stats.pool[layer].double().numpy()                   # (POOL, width)
            target = np.abs(pool).max()
        else:
            want_in = np.zeros_like(h)
        tol = 64 * EPS * (np.abs(h).max(-1, keepdims=True) + target)   # (batch, pos, 1)
        _within(np.abs((new - h) @ (np.eye(WIDTH) - P)), tol, "the stream moved outside the location's span")
        if ablation == "resample":
            matches = _pool_matches(new @ U.T, pool @ U.T, np.broadcast_to(tol, (*h.shape[:2], len(U))))
            assert matches.any(-1).all(), "a position's span component is no train token's"
            assert len({tuple(np.flatnonzero(m)) for m in matches.reshape(-1, len(pool))}) > 1
        else:
            _within(np.abs(new @ P - want_in), tol, f"the span's component is not the {ablation} ablation's")
    # after the context: no hook left, the same logits bit for bit
    assert _hooks(testbed.model) == hooks_before
    _, after, logits_after = _forward(testbed)
    assert torch.equal(logits_after, logits_before)
    assert all(torch.equal(after[layer], unablated[layer]) for layer in after)


@pytest.mark.parametrize("kind", list(LOCATIONS))
def test_the_same_seed_draws_the_same_tokens(testbeds, kind):
    import torch

    testbed, location = testbeds(kind)
    _, first, logits_first = _forward(testbed, "resample", location, seed=3)
    _, again, logits_again = _forward(testbed, "resample", location, seed=3)
    assert torch.equal(logits_first, logits_again)
    assert all(torch.equal(first[layer], again[layer]) for layer in first)
@pytest.mark.parametrize("kind", list(LOCATIONS))
def test_another_seed_draws_other_tokens(testbeds, kind):
    import torch

    testbed, location = testbeds(kind)
    _, first, logits_first = _forward(testbed, "resample", location, seed=3)
    _, other, logits_other = _forward(testbed, "resample", location, seed=4)
    assert not torch.equal(first[location[0].layer], other[location[0].layer])
    assert not torch.equal(logits_first, logits_other)


@pytest.mark.parametrize("kind", list(LOCATIONS))
def test_train_statistics_are_the_train_tokens(testbeds, kind):
    """The mean is the mean over every token of the train sequences read here; the pool is
    min(POOL_SIZE, n) of those tokens, the same tokens at every layer."""
    from loccheck.ablations.ablate import train_activations

    testbed, location = testbeds(kind)
    stats = train_activations(testbed, location)
    tokens = _train_tokens(testbed, kind)
    n = sum(len(p.prompt) + len(a) for p in testbed.train for a in (p.chosen, p.rejected))
    assert stats.n_tokens == n == len(tokens[0])
    residual = kind in ("subspace", "latent")
    assert sorted(stats.mean) == ([location[0].layer] if residual else sorted(tokens))
    rows = None
    for layer in stats.mean:
        scale = np.abs(tokens[layer]).max()
        np.testing.assert_allclose(stats.mean[layer].double().numpy(), tokens[layer].mean(0),
                                   rtol=0, atol=1e-5 * scale)
        pool = stats.pool[layer].double().numpy()
        assert pool.shape == (min(POOL_SIZE, n), tokens[layer].shape[1])
        same = _close_to(pool[:, None, :], tokens[layer][None], 1e-5 * scale).all(-1)   # (POOL, n)
        assert same.any(1).all(), f"layer {layer}: a pool row is no train token's activation"
        rows = same if rows is None else rows & same
        assert rows.any(1).all(), "the pools' rows are not the same tokens at every layer"
    # many different tokens (not more: above layer 0's dead heads a token's stream is its character's alone)
    assert len({tuple(np.flatnonzero(r)) for r in rows}) > 16


def test_statistics_are_read_once_per_testbed(testbeds):
    from loccheck.ablations.ablate import train_activations

    testbed, location = testbeds("head")
    assert train_activations(testbed, location) is train_activations(testbed, location[:1])
