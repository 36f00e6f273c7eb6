"""Known answers for MLP-layer claims: tiny 8-layer models in which only layer 5's MLP reaches
the residual stream (every parameter of every other layer's MLP is zero,
`loccheck.testing.known_mlp_model`), trained on pairs an edit can learn (" yes" over " no").

Why each verdict is forced, on every architecture in FAMILIES:

* A dead layer's MLP has hidden activation exactly 0, so the rank-1 edit of its down
  projection, (x . a) b, is exactly 0 at every position: its gain is exactly 0.0, and its
  parameters get exactly zero gradient.
* The live claim {L5M}: the null seed (4) draws 19 single layers, none of them L5M (asserted),
  so every null gain is exactly 0 and any positive claim gain gives p = 1/20 <= alpha. The
  ceiling is the same edit on every layer; the dead layers add nothing, so it can do exactly
  what L5M can: at the same learning rate it is the claim's edit bit for bit (ratio exactly 1).
* A dead layer named instead ({L2M}): gain 0.0, tied by every dead draw (ties count against
  the claim): p = 1, FALSIFIED, decided by the first draw (the sequential null stops there).
"""
from __future__ import annotations

import pytest

from loccheck.claim import parse_claim
from loccheck.locations import MlpLoc, mlp_sites
from loccheck.stats.null import sample_null_locations
from loccheck.testing import FAMILIES, claim_text, write_model_dir, write_pairs
from loccheck.run.verify import verify

pytestmark = pytest.mark.slow   # fits edits on tiny models (torch)

N_LAYERS = 8
LIVE, DEAD = MlpLoc(5), MlpLoc(2)
N, ALPHA, RHO, NULL_SEED, TAU = 19, 0.05, 0.8, 4, 0.5
# The ceiling trains at the claims' rate (ceiling_learning_rate = learning_rate): its dead layers
# get exactly zero gradient, so its live layer follows the claim's edit step for step (the same
# initial a row, b = 0, the same batches) and the two are the same edit, bit for bit. At a third
# of the rate (the paper's size rule) the ceiling, on gpt2, fits the training pairs as well but
# generalises to half the claim's gain (ratio 1.87).
BUDGET = ("{max_epochs: 40, convergence_tol: 0.005, batch_size: 4, learning_rate: 0.05, "
          f"init_std: 0.1, tau: {TAU}, ceiling_learning_rate: 0.05}}")
SPLIT = "{train: 0.5, validation: 0.0, test: 0.5, seed: 0}"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("known-mlp") / "pairs.jsonl", n_questions=48)


@pytest.fixture(scope="module", params=FAMILIES)
def known(request, tmp_path_factory):
    family = request.param
    folder = tmp_path_factory.mktemp(f"known-mlp-{family}")
    return family, write_model_dir(folder, family, [LIVE], n_layers=N_LAYERS)


def _verify(known, pairs, tmp_path, site):
    family, model_dir = known
    text = claim_text(model_dir, pairs, [str(site)], n=N, alpha=ALPHA, rho=RHO, edit=BUDGET,
                      split=SPLIT, random_seed=NULL_SEED)
    result = verify(parse_claim(text, path=tmp_path / f"{family}.yaml"), write_report=False,
                    progress=False)
    print(f"{family} {site}: {result.verdict} p = {result.p_value:.4g} claim {result.claim_gain:.4g} "
          f"whole model {result.ceiling_gain:.4g} ratio {result.optimality_ratio:.3f}")
    return result


def test_the_null_seed_never_draws_the_live_layer():
    draws = sample_null_locations(mlp_sites(N_LAYERS), size=1, n=N, seed=NULL_SEED)
    assert all(d != (LIVE,) for d in draws)


def test_live_mlp_layer_is_supported(known, pairs, tmp_path):
    result = _verify(known, pairs, tmp_path, LIVE)
    assert result.null_gains == [0.0] * N                 # dead layers, bit for bit
    assert result.p_value == 1 / (N + 1) <= ALPHA
    assert all(e["converged"] for e in result.edits)
    claim, full = result.edits[0], result.edits[1]
    assert full["location"] == "all"
    assert claim["final_objective"] < 0.05           # near IPO's optimum 0 (from 1 at the start)
    # the same edit, computed from another block's prefix: equal to float32 round-off carried
    # through 40 epochs (bit for bit with AVX-512 kernels, 2.4e-7 apart with AVX2's), measured
    # against the objective's scale, its start (1)
    assert full["final_objective"] == pytest.approx(claim["final_objective"], abs=1e-5)
    assert result.ceiling_gain == pytest.approx(result.claim_gain, rel=1e-4) and result.claim_gain > 0
    assert result.optimality_ratio == pytest.approx(1.0, rel=1e-4)
    assert result.verdict == "SUPPORTED"


def test_dead_mlp_layer_is_falsified(known, pairs, tmp_path):
    result = _verify(known, pairs, tmp_path, DEAD)
    assert result.claim_gain == 0.0                       # exactly: its hidden activation is 0
    # the first dead draw ties with it, which decides the sequential null at once
    assert result.null_gains == [0.0] and result.n_null_fitted == 1
    assert result.p_value == 1.0
    assert result.verdict == "FALSIFIED"
