"""Known answers for neuron claims: tiny 3-layer models in which one hidden unit, L1N5, is the
only one whose down-projection column is not zero (`loccheck.testing.known_neuron_model`),
trained on pairs an edit can learn (" yes" over " no").

Why each verdict is forced, on every architecture in FAMILIES:

* The edit displaces only the named units, x_u <- x_u + (a . x) b_u, and the down projection
  multiplies a dead unit by a zero column: a dead unit's edit is exactly the identity, gain 0.0.
* The live claim {L1N5}: the null seed draws 19 single units, none of them L1N5 (asserted), so
  every null gain is exactly 0 and any positive claim gain gives p = 1/20. The ceiling (every
  unit of every layer) writes through the same one live column, from the same initial read
  vector, at the same rate: it is the claim's edit step for step (ratio 1, to float rounding).
* A dead unit of the same layer ({L1N7}): gain 0.0, tied by every dead draw: p = 1, FALSIFIED.
* `match_layers: true` draws the null from layer 1's units only; the verdict is the same.
"""
from __future__ import annotations

import pytest

from loccheck.claim import parse_claim
from loccheck.locations import NeuronLoc, neuron_sites
from loccheck.stats.null import sample_null_locations
from loccheck.testing import FAMILIES, claim_text, write_model_dir, write_pairs
from loccheck.run.verify import verify

pytestmark = pytest.mark.slow   # fits edits on tiny models (torch)

N_LAYERS, WIDTH = 3, 64          # the smallest MLP width among FAMILIES' tiny configs
LIVE, DEAD = NeuronLoc(1, 5), NeuronLoc(1, 7)
N, ALPHA, RHO, NULL_SEED = 19, 0.05, 0.8, 4
BUDGET = ("{max_epochs: 20, convergence_tol: 0.005, batch_size: 4, learning_rate: 0.05, "
          "init_std: 0.1, tau: 0.5, ceiling_learning_rate: 0.05}")
SPLIT = "{train: 0.5, validation: 0.0, test: 0.5, seed: 0}"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("known-neurons") / "pairs.jsonl", n_questions=48)


@pytest.fixture(scope="module", params=FAMILIES)
def known(request, tmp_path_factory):
    family = request.param
    folder = tmp_path_factory.mktemp(f"known-neurons-{family}")
    return family, write_model_dir(folder, family, [LIVE], n_layers=N_LAYERS)


def _verify(known, pairs, tmp_path, site, extra=""):
    family, model_dir = known
    text = claim_text(model_dir, pairs, [str(site)], n=N, alpha=ALPHA, rho=RHO, edit=BUDGET,
                      split=SPLIT, random_seed=NULL_SEED)
    if extra:
        text = text.replace(f"seed: {NULL_SEED}}}", f"seed: {NULL_SEED}, {extra}}}")
    result = verify(parse_claim(text, path=tmp_path / f"{family}.yaml"), write_report=False,
                    progress=False)
    print(f"{family} {site} {extra}: {result.verdict} p = {result.p_value:.4g} claim "
          f"{result.claim_gain:.4g} whole model {result.ceiling_gain:.4g}")
    return result


@pytest.mark.parametrize("layers", [None, (1,)])
def test_the_null_seed_never_draws_the_live_unit(layers):
    sites = neuron_sites(N_LAYERS, WIDTH)
    matched = [LIVE] if layers else None
    draws = sample_null_locations(sites, size=1, n=N, seed=NULL_SEED, match_layers_of=matched)
    assert all(d != (LIVE,) for d in draws)
    assert all(d[0].layer == 1 for d in draws) or layers is None


@pytest.mark.parametrize("extra", ["", "match_layers: true"])
def test_the_live_neuron_is_supported(known, pairs, tmp_path, extra):
    result = _verify(known, pairs, tmp_path, LIVE, extra)
    assert result.null_gains == [0.0] * N                 # dead units, bit for bit
    assert result.p_value == 1 / (N + 1) <= ALPHA
    assert result.claim_gain > 0.05
    # one live column: the same edit, step for step; bit for bit under AVX-512 kernels, to 1e-5
    # under AVX2 ones, where the claim's frozen prefix (blocks below layer 1 run once) and the
    # ceiling's full forward (it edits layer 0 too) round differently
    assert result.ceiling_gain == pytest.approx(result.claim_gain, rel=1e-5)
    assert result.verdict == "SUPPORTED"
    claim, ceiling = result.edits[0], result.edits[1]
    assert claim["location"] == [str(LIVE)] and ceiling["location"] == "all"
    assert all(e["converged"] for e in result.edits)


def test_a_dead_neuron_is_falsified(known, pairs, tmp_path):
    result = _verify(known, pairs, tmp_path, DEAD)
    assert result.claim_gain == 0.0
    assert result.p_value == 1.0
    assert result.verdict == "FALSIFIED"
