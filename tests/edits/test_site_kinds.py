"""The optimal edit at every site kind (heads, MLP layers, neurons, subspaces, SAE latents), at
every position policy: it starts as the identity (the model's outputs bit for bit), leaves the
model as it was, is rebuilt from its stored parameters to score what it scored on every metric
(side effects and judged greedy answers too, at the answer's positions as well), writes only
where its location lets it, and lies inside its ceiling's family (absorbed, the same function)."""
from __future__ import annotations

import numpy as np
import pytest

from loccheck.edits import EDIT_METHODS
from loccheck.locations import SubspaceLoc
from loccheck.metrics import METRICS

pytestmark = pytest.mark.slow   # real edits on a tiny Llama (torch)

METHOD = EDIT_METHODS["optimal"]
LOCATIONS = {"head": "{sites: [L1H2, L0H0]}", "mlp": "{sites: [L1M]}", "neuron": "{sites: [L1N5, L0N60]}",
             "subspace": "{subspace: {layer: 0, basis: basis.npy}}",
             "latent": "{latents: [3, 0], dictionary: {path: sae.npz, key: W_dec, layer: 1}}"}
WIDTH = 32


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    rng = np.random.default_rng(0)
    np.save(root / "basis.npy", rng.standard_normal((2, WIDTH)))
    np.savez(root / "sae.npz", W_dec=rng.standard_normal((16, WIDTH)).astype(np.float32))
    return root


def _testbed(known_llama, files, kind, positions="all"):
    from loccheck.claim import parse_claim
    from loccheck.run.testbed import prepare_testbed
    from loccheck.testing import claim_text

    model_dir, pairs = known_llama
    edit = ("{max_epochs: 2, batch_size: 4, learning_rate: 0.05, ceiling_learning_rate: 0.05, "
            f"init_std: 0.1, positions: {positions}}}")
    texts = files / "texts.txt"                       # for the side-effect metrics
    texts.write_text("the river runs to the sea\nan apple fell down\n")
    every_metric = f"metrics: [{', '.join(METRICS)}]\nside_effects: {{path: '{texts}'}}\n"
    text = claim_text(model_dir, pairs, ["L1H2"], n=2, edit=edit, extra=every_metric).replace(
        "location: {sites: [L1H2]}", f"location: {LOCATIONS[kind]}")
    claim = parse_claim(text, path=files / f"{kind}.yaml")
    return claim, prepare_testbed(claim, files / "cache")


def _ceiling(testbed, location):
    from loccheck.run.verify import ceiling_location

    return ceiling_location(location, testbed.adapter)


def _logprobs(testbed, on_batch=None):
    from loccheck.models.scoring import all_pair_logprobs

    return all_pair_logprobs(testbed.model, testbed.test, testbed.pad_id, on_batch=on_batch).numpy()


@pytest.mark.parametrize("positions", ["all", "answer"])
@pytest.mark.parametrize("kind", list(LOCATIONS))
def test_every_kind_starts_as_the_identity_and_restores(known_llama, files, kind, positions):
    from loccheck.run.verify import claimed_location

    claim, testbed = _testbed(known_llama, files, kind, positions)
    location = claimed_location(claim, testbed, None)
    assert location[0].kind == kind
    settings = METHOD.settings(claim.edits[0], verdict_metric="preference_margin", site_kind=kind)
    before = _logprobs(testbed)
    edit = METHOD.initial(testbed, settings, location)
    assert (edit.on_batch is None) == (positions == "all")
    same_way = before if edit.on_batch is None else _logprobs(testbed, on_batch=lambda mask: None)
    with edit.attached(testbed.model):
        assert np.array_equal(_logprobs(testbed, on_batch=edit.on_batch), same_way)
    fitted = METHOD.fit(testbed, settings, location)
    assert np.array_equal(_logprobs(testbed), before), "the model changed"
    with fitted.edit.attached(testbed.model):       # every metric: side effects and judged answers too
        scored = testbed.score(list(METRICS), on_batch=fitted.edit.on_batch)
    assert scored["preference_margin"] != pytest.approx(testbed.score(["preference_margin"])["preference_margin"])
    restored = METHOD.restore(testbed, settings, location, fitted.edit.state())
    with restored.attached(testbed.model):
        assert testbed.score(list(METRICS), on_batch=restored.on_batch) == scored
    # inside its ceiling's family: the ceiling started from it computes the same function
    ceiling = METHOD.initial(testbed, METHOD.settings(claim.edits[0], verdict_metric="preference_margin",
                                                      site_kind=kind, ceiling=True), _ceiling(testbed, location))
    ceiling.absorb(fitted.edit)
    with ceiling.attached(testbed.model):
        absorbed = _logprobs(testbed, on_batch=ceiling.on_batch)
    with fitted.edit.attached(testbed.model):
        np.testing.assert_allclose(absorbed, _logprobs(testbed, on_batch=fitted.edit.on_batch), atol=1e-5)


def _stream(testbed, layer, edit=None):
    """The residual stream after `layer` for the first test pair, edited by `edit` if given."""
    import contextlib
    import torch
    from loccheck.models.hooks import read_outputs

    got = []
    ids = torch.tensor([list(testbed.test[0].prompt) + list(testbed.test[0].chosen)])
    with (edit.attached(testbed.model) if edit else contextlib.nullcontext()), \
            read_outputs([testbed.adapter.blocks[layer]], lambda r, x, y: got.append(y[0] if isinstance(y, tuple) else y)), \
            torch.no_grad():
        testbed.model(input_ids=ids)
    return got[0][0].double().numpy()


@pytest.mark.parametrize("kind", ["subspace", "latent"])
def test_a_subspace_edit_writes_only_inside_its_span(known_llama, files, kind):
    import torch
    from loccheck.run.verify import claimed_location

    claim, testbed = _testbed(known_llama, files, kind)
    location = claimed_location(claim, testbed, None)
    settings = METHOD.settings(claim.edits[0], verdict_metric="preference_margin", site_kind=kind)
    edit = METHOD.initial(testbed, settings, location)
    with torch.no_grad():
        edit.b.normal_(generator=torch.Generator().manual_seed(1))     # a large, arbitrary write
        edit.a.mul_(50)
    U = testbed.basis_of(location)
    moved = _stream(testbed, location[0].layer, edit) - _stream(testbed, location[0].layer)
    assert np.abs(moved).max() > 1e-2                                    # it does write
    outside = moved - (moved @ U.T) @ U
    assert np.abs(outside).max() < 1e-6 * max(1.0, np.abs(moved).max())


def test_neuron_sites_are_the_down_projections_input_units(known_llama, files):
    """L{l}N{u} is unit u of act(gate(x)) * up(x), the Llama MLP's hidden activation."""
    import torch
    from loccheck.models.hooks import read_outputs

    _, testbed = _testbed(known_llama, files, "neuron")
    mlp = testbed.model.model.layers[1].mlp
    got = {}
    ids = torch.tensor([list(testbed.test[0].prompt)])
    with read_outputs([mlp.down_proj], lambda r, x, y: got.update(x=x)), \
            read_outputs([mlp], lambda r, x, y: got.update(mlp_in=x)), torch.no_grad():
        testbed.model(input_ids=ids)
    hidden = mlp.act_fn(mlp.gate_proj(got["mlp_in"])) * mlp.up_proj(got["mlp_in"])
    assert got["x"].shape[-1] == testbed.adapter.mlp_width == 64
    assert torch.equal(got["x"], hidden)


def test_the_ceiling_of_a_subspace_is_the_whole_stream_at_its_layer(known_llama, files):
    from loccheck.run.verify import claimed_location

    claim, testbed = _testbed(known_llama, files, "subspace")
    location = claimed_location(claim, testbed, None)
    assert _ceiling(testbed, location) == (SubspaceLoc(0, WIDTH, "identity"),)
    assert np.array_equal(testbed.basis_of(_ceiling(testbed, location)), np.eye(WIDTH))
    U = testbed.basis_of(location)
    np.testing.assert_allclose(U @ U.T, np.eye(2), atol=1e-12)
