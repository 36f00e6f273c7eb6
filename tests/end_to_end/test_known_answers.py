"""Known answers: tiny models in which only head L1H2 reaches the residual stream (every other
head's slice of the output projection is zero, tests/known_models.py), trained on pairs that a
live head can learn (" yes" over " no"). The verdicts follow from the maths below, not from
luck, for every architecture in FAMILIES: these tests are the proof that each adapter slices
heads where the model concatenates them (a wrong slice edits a dead head and gains nothing).

To add an architecture: register its adapter, give `tiny_model` (tests/conftest.py) a config
for it and add it to FAMILIES there; `known_model` zeroes the dead heads through the adapter.

Why each verdict is forced:

* A dead head's edit writes W_h b_h with W_h = 0: its effect on every logit is exactly zero,
  so its gain is exactly 0.0 (tested bit for bit), whatever the budget.
* The live claim {L1H2} (size 1): every random single head is dead, so every null gain is
  exactly 0, and any positive claim gain gives p = 1/(N+1) = 0.05 <= alpha (N = 19). The
  random-location seed (13) is one whose 19 draws never hit L1H2 even without the exclusion
  of the claimed set (see test_calibration.py), so this holds either way; asserted below.
* Effectiveness (claim gain >= rho * whole-model gain) is the one part that depends on
  optimisation. The ceiling is the same edit with every head unmasked, and the dead heads'
  columns of W are zero, so it can do exactly what the live head can: nothing more. IPO's
  loss (h - 1/(2 tau))^2 is minimised at the same margin h* = 1/(2 tau) = 1 for every pair,
  whichever edit is trained. Both edits converge by the training rule (asserted) and reach h*
  on the training pairs (final objectives asserted), and carry it to the held-out pairs:
  ratios 0.93, 1.00 and 1.06 on llama, gpt2 and gpt_neox. rho = 0.8 leaves room for that.
* A dead head named instead ({L0H1}): claim gain 0.0, every dead null head ties with it, ties
  count against the claim, so p = 1 > alpha: FALSIFIED.
* Live and dead mixed ({L0H1, L1H2}): the dead head adds nothing (its edit parameters get
  exactly zero gradient and stay at their start, b = 0), so the edit at any pair that contains
  L1H2 is the single-head edit at L1H2, bit for bit: those random pairs tie with the claim
  and count against it. p = (1 + k)/(N + 1), k = random pairs containing L1H2; in a model of
  8 heads about a quarter of all pairs contain it (7 of 28), so p is about 0.25 and the claim
  is FALSIFIED: naming a live head next to a dead one is no more special than a random pair
  that happens to hold the live head. (In a model with many heads k would be 0 and the verdict
  SUPPORTED: the method tests "this set beats random sets of its size", nothing finer.)
"""
from __future__ import annotations

import pytest

from loccheck.testing import FAMILIES
from loccheck.testing import claim_text, write_model_dir, write_pairs
from loccheck.claim import parse_claim
from loccheck.locations import HeadLoc, head_sites
from loccheck.stats.null import sample_null_locations
from loccheck.run.verify import verify

pytestmark = pytest.mark.slow   # fits edits on tiny models (torch)


def draw_null(*args, n_layers=None, n_heads=None, **kw):
    """sample_null_locations over the head sites of an n_layers x n_heads model."""
    if args:
        return sample_null_locations(*args, **kw)
    return sample_null_locations(head_sites(n_layers, n_heads), **kw)


LIVE, DEAD = HeadLoc(1, 2), HeadLoc(0, 1)
N, ALPHA, RHO, NULL_SEED = 19, 0.05, 0.8, 13
TAU = 0.5                       # IPO target margin h* = 1 / (2 tau) = 1
# Every edit converges (a tight tolerance, a generous cap); the ceiling has its own learning rate,
# the same for every claim (0.05 * sqrt(1/8), as the size rule of earlier versions gave a 1-head claim).
BUDGET = ("{max_epochs: 40, convergence_tol: 0.005, batch_size: 4, learning_rate: 0.05, "
          f"ceiling_learning_rate: 0.0177, init_std: 0.1, tau: {TAU}}}")
# The mixed claim's verdict does not depend on how far the edits get (only on the exact ties),
# so it runs on a short budget; the dead claim reuses the live claim's fits from the cache.
SHORT = BUDGET.replace("max_epochs: 40", "max_epochs: 2")
SPLIT = "{train: 0.5, validation: 0.0, test: 0.5, seed: 0}"   # 24 train, 24 test questions


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("known-answers") / "pairs.jsonl", n_questions=48)


@pytest.fixture(scope="module", params=FAMILIES)
def known(request, tmp_path_factory):
    family = request.param
    return family, write_model_dir(tmp_path_factory.mktemp(f"known-{family}"), family, [LIVE])


def _verify(known, pairs, tmp_path, heads, budget=BUDGET, stop=None):
    family, model_dir = known
    text = claim_text(model_dir, pairs, [str(h) for h in heads], n=N, alpha=ALPHA, rho=RHO,
                      edit=budget, split=SPLIT, random_seed=NULL_SEED, stop=stop)
    result = verify(parse_claim(text, path=tmp_path / f"{family}.yaml"), write_report=False,
                    progress=False)
    print(f"{family} {'+'.join(map(str, heads))}: {result.verdict} p = {result.p_value:.4g} "
          f"claim gain {result.claim_gain:.4g} whole model {result.ceiling_gain:.4g} "
          f"ratio {result.optimality_ratio:.3f}")
    return result


def _random(result):
    return [e for e in result.edits if e["role"] == "random"]


def test_the_null_seed_never_draws_the_live_head():
    # The null may draw the claimed head (that keeps it exact); this seed's 19 draws happen to be
    # dead heads only, so the known answer is p = 1/20.
    kw = dict(n_layers=2, n_heads=4, size=1, n=N, seed=NULL_SEED)
    assert all(d != (LIVE,) for d in draw_null(**kw))


def test_live_head_is_supported(known, pairs, tmp_path):
    result = _verify(known, pairs, tmp_path, [LIVE])
    assert [e["location"] for e in _random(result) if e["location"] == [str(LIVE)]] == []
    assert result.null_gains == [0.0] * N                 # dead heads, bit for bit
    assert result.claim_gain > 0
    assert result.p_value == 1 / (N + 1) <= ALPHA
    assert all(e["converged"] for e in result.edits)     # every edit by the rule, none capped
    claim, full = result.edits[0], result.edits[1]
    h_star = 1 / (2 * TAU)
    for edit in (claim, full):                            # both reached IPO's optimum ...
        assert edit["final_objective"] < 0.02, edit["role"]
        assert 0.8 * h_star < edit["gains"][result.metric] < 1.2 * h_star, edit["role"]
    # ... and the whole model, whose only live write is the same head, is no better: the fair
    # ceiling makes the live head as effective as the whole model, ratio near 1
    assert 0.85 < result.optimality_ratio < 1.15
    assert not result.test["ceiling_short"]
    assert result.verdict == "SUPPORTED"


def test_dead_head_is_falsified(known, pairs, tmp_path):
    result = _verify(known, pairs, tmp_path, [DEAD])
    assert result.claim_gain == 0.0                       # exactly: W_h = 0
    dead = [e["gains"][result.metric] for e in _random(result) if e["location"] != [str(LIVE)]]
    assert dead and all(g == 0.0 for g in dead)           # ties, counted against the claim
    assert all(g > 0 for g in result.null_gains if g != 0.0)
    assert result.p_value == 1.0
    assert result.verdict == "FALSIFIED"


def test_live_and_dead_heads_together_are_falsified(known, pairs, tmp_path):
    result = _verify(known, pairs, tmp_path, [DEAD, LIVE], budget=SHORT, stop="full")
    assert result.claim_gain > 0
    with_live = [e for e in _random(result) if str(LIVE) in e["location"]]
    for e in _random(result):
        gain = e["gains"][result.metric]
        # every pair holding the live head is the single-head edit at it (computed from another
        # block's prefix: equal to float32 round-off, a tie for the test); the others are dead
        if e in with_live:
            assert gain == pytest.approx(result.claim_gain, rel=1e-4), e["location"]
        else:
            assert gain == 0.0, e["location"]
    k = len(with_live)
    assert k >= 1
    assert result.p_value == (1 + k) / (N + 1) > ALPHA
    assert result.verdict == "FALSIFIED"


def test_the_sequential_null_stops_at_the_first_tie_with_the_same_verdict(known, pairs, tmp_path):
    """N = 19, alpha = 0.05: one random location at least as good as the claim decides the test
    (the full null's p would be at least 2/20 > alpha). The mixed claim ties with the first
    random pair that holds the live head, so the null stops there: p = h / l = 1 / l."""
    full = _verify(known, pairs, tmp_path, [DEAD, LIVE], budget=SHORT, stop="full")
    seq = _verify(known, pairs, tmp_path, [DEAD, LIVE], budget=SHORT)
    first = next(i for i, e in enumerate(_random(full)) if str(LIVE) in e["location"])
    assert seq.n_null_fitted == first + 1 < N and seq.test["stopped_early"]
    assert seq.p_value == 1 / (first + 1) > ALPHA
    assert seq.verdict == full.verdict == "FALSIFIED"
    assert seq.null_gains == full.null_gains[:first + 1]      # the same draws, in the same order
    # the live head alone: no random location reaches it, so all 19 are fitted, as they must be
    live = _verify(known, pairs, tmp_path, [LIVE])
    assert live.n_null_fitted == N and not live.test["stopped_early"] and live.verdict == "SUPPORTED"


def test_the_ceiling_is_one_optimum_whichever_claim_asks(known, pairs, tmp_path):
    """The whole-model edit's settings do not depend on the claim (its own learning rate), so the
    live claim and the dead claim, on the same model, data and budget, get the same ceiling: the
    same fit, converged by its own rule, and at least as good on the training pairs as every
    location's edit fitted beside it (to the rule's tolerance, tol x the identity's objective),
    so it was not continued from any of them."""
    live, dead = (_verify(known, pairs, tmp_path, heads) for heads in ([LIVE], [DEAD]))
    ceilings = [r.edits[1] for r in (live, dead)]
    assert ceilings[0]["role"] == ceilings[1]["role"] == "ceiling"
    assert ceilings[0]["gains"] == ceilings[1]["gains"]
    assert ceilings[0]["final_objective"] == ceilings[1]["final_objective"]
    assert live.ceiling_gain == dead.ceiling_gain
    tol_span = 0.005 * (1 / (2 * TAU)) ** 2
    for result in (live, dead):
        ceiling = result.edits[1]
        assert ceiling["converged"] and "continued_from" not in ceiling
        best = min(e["final_objective"] for e in result.edits if e["role"] != "ceiling")
        assert ceiling["final_objective"] <= best + tol_span


def test_every_other_location_replaces_draws_where_the_space_is_small(known, pairs, tmp_path):
    """draw: every: the 8 single heads or 28 pairs of the model are few enough to fit every one.
    The live head against the 7 dead heads: p = 1/8 exactly, the least any single head can get,
    so no single head can be shown special at alpha = 0.05 (UNDERPOWERED, saying why). The mixed
    pair against the other 27 pairs: exactly 6 hold the live head and tie with it, p = 7/28,
    with no draw of the claim itself and no luck in which pairs were drawn."""
    family, model_dir = known

    def run(heads, budget):
        text = claim_text(model_dir, pairs, [str(h) for h in heads], n=None, draw="every", alpha=ALPHA,
                          rho=RHO, edit=budget, split=SPLIT, random_seed=NULL_SEED, stop="full")
        return verify(parse_claim(text, path=tmp_path / f"{family}.yaml"), write_report=False, progress=False)

    live = run([LIVE], BUDGET)
    assert sorted(e["location"] for e in _random(live)) == sorted(
        [str(h)] for h in head_sites(2, 4) if h != LIVE)
    assert live.null_gains == [0.0] * 7 and live.claim_gain > 0
    assert live.p_value == 1 / 8 and live.verdict == "UNDERPOWERED"
    assert live.test["verdict_reason"].startswith("The model has only 8 locations of the claim's shape")
    mixed = run([DEAD, LIVE], SHORT)
    with_live = [e for e in _random(mixed) if str(LIVE) in e["location"]]
    assert len(_random(mixed)) == 27 and len(with_live) == 6
    assert mixed.p_value == 7 / 28 and mixed.verdict == "FALSIFIED"
