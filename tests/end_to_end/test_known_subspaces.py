"""Known answers for residual-stream claims (subspaces, SAE latents): a tiny 2-layer Llama whose
residual stream never holds a planted unit vector v and whose output reads that stream only
along v (`loccheck.testing.known_direction_model`), trained on pairs an edit can learn
(" yes" over " no"). The location is the stream after layer 1, the last.

Why each verdict is forced:

* An edit that writes orthogonally to v leaves v . h = 0 and with it every logit 0 (the output
  uniform), to float rounding: its gain is 0 to 1e-4.
* An edit along v moves every logit; one along a random direction u moves v . n(h) by at most
  |u . v| of what v can (n the final RMS norm, which any orthogonal write also inflates), and
  in a 32-wide stream |u . v|^2 is about 1/32: the planted direction gains several times what
  the best of 19 Haar draws does, so p = 1/20, SUPPORTED.
* A direction orthogonal to v: gain 0, below every Haar draw: p = 1, FALSIFIED.
* A dictionary whose latent 0 is v and whose 15 others are orthogonal to it: latent 0 is
  SUPPORTED against the other latents (their gains are all 0), latent 3 FALSIFIED (the null
  seed draws latent 0); against Haar draws, latent 3 is FALSIFIED too.
"""
from __future__ import annotations

import numpy as np
import pytest

from loccheck.claim import parse_claim
from loccheck.run.verify import verify
from loccheck.testing import char_tokenizer, claim_text, known_direction_model, planted_direction, write_pairs

pytestmark = pytest.mark.slow   # fits edits on a tiny model (torch)

WIDTH, N, ALPHA, RHO = 32, 19, 0.05, 0.5
# Null seeds: 0's 19 draws of one latent of 16 never hold latent 0; 1's hold it twice (asserted)
# scale 1 puts the IPO target (margin 1/tau = 10 nats over an answer's tokens) beyond what a
# random direction's share of v can reach; the ceiling (every direction of the stream) and the
# planted direction reach it alike.
BUDGET = ("{max_epochs: 40, convergence_tol: 0.005, batch_size: 4, learning_rate: 0.05, "
          "init_std: 0.1, tau: 0.1, ceiling_learning_rate: 0.05}")
SPLIT = "{train: 0.5, validation: 0.0, test: 0.5, seed: 0}"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("known-subspaces")
    v = planted_direction(WIDTH, 0)
    w = np.random.default_rng(5).standard_normal(WIDTH)
    w -= (w @ v) * v
    others = np.random.default_rng(1).standard_normal((15, WIDTH))
    others -= np.outer(others @ v, v)
    np.save(root / "v.npy", v)
    np.save(root / "w.npy", w / np.linalg.norm(w))
    np.save(root / "sae.npy", np.vstack([v, others]).astype(np.float32))
    model = known_direction_model(v, n_layers=2)
    model.save_pretrained(root / "model")
    char_tokenizer().save_pretrained(root / "model")
    return root, write_pairs(root / "pairs.jsonl", n_questions=48)


def _verify(planted, tmp_path, location, draw=None, stop=None, seed=0):
    root, pairs = planted
    text = claim_text(root / "model", pairs, ["L0H0"], n=N, alpha=ALPHA, rho=RHO, edit=BUDGET, split=SPLIT,
                      stop=stop, random_seed=seed)
    text = text.replace("location: {sites: [L0H0]}", f"location: {location}")
    if draw:
        text = text.replace(f"{{n: {N}, seed: {seed}", f"{{n: {N}, seed: {seed}, draw: {draw}")
    result = verify(parse_claim(text, path=root / "claim.yaml"), write_report=False, progress=False,
                    cache_dir=tmp_path / "cache")
    print(f"{location} {draw}: {result.verdict} p = {result.p_value:.4g} claim {result.claim_gain:.4g} "
          f"ceiling {result.ceiling_gain:.4g} null {sorted(result.null_gains)[-3:]}")
    return result


def _randoms(result):
    return [e for e in result.edits if e["role"] == "random"]


def test_the_planted_direction_is_supported_against_haar_draws(planted, tmp_path):
    result = _verify(planted, tmp_path, "{subspace: {layer: 1, basis: v.npy}}")
    assert result.verdict == "SUPPORTED" and result.p_value == 1 / (N + 1)
    assert max(result.null_gains) < result.claim_gain / 2
    assert result.edits[0]["location"][0].startswith("L1S1@sha256:")
    assert result.edits[1]["location"] == [f"L1S{WIDTH}@identity"]
    # beside the layer's ceiling, the whole model's edit (every head), reported, not tested
    assert result.edits[2]["role"] == "whole_model" and result.edits[2]["location"] == "all"
    assert result.test["whole_model"]["gain"] == result.edits[2]["gains"]["preference_margin"]
    assert [e["location"][0] for e in _randoms(result)[:2]] == ["L1S1@haar:0:0", "L1S1@haar:0:1"]


def test_an_orthogonal_direction_is_falsified(planted, tmp_path):
    result = _verify(planted, tmp_path, "{subspace: {layer: 1, basis: w.npy}}")
    assert abs(result.claim_gain) < 1e-4
    assert result.verdict == "FALSIFIED" and result.p_value == 1.0


def test_the_live_latent_is_supported_against_the_other_latents(planted, tmp_path):
    result = _verify(planted, tmp_path, "{latents: [0], dictionary: {path: sae.npy, layer: 1}}")
    assert all(abs(g) < 1e-4 for g in result.null_gains) and len(result.null_gains) == N
    assert result.verdict == "SUPPORTED" and result.p_value == 1 / (N + 1)
    assert all(e["location"] != ["L1F0"] for e in _randoms(result))


@pytest.mark.parametrize("draw", [None, "haar"])
def test_a_dead_latent_is_falsified(planted, tmp_path, draw):
    # the full null: a dead latent's gain and the other dead latents' are float rounding (1e-7),
    # which only the draw of latent 0 decides
    result = _verify(planted, tmp_path, "{latents: [3], dictionary: {path: sae.npy, layer: 1}}", draw, "full",
                     seed=1)
    assert abs(result.claim_gain) < 1e-4
    assert result.verdict == "FALSIFIED"
    if draw is None:
        assert ["L1F0"] in [e["location"] for e in _randoms(result)] and result.p_value >= 2 / (N + 1)
    else:
        assert result.p_value == 1.0


def test_localize_pins_the_direction_as_a_file_the_claim_names(planted, tmp_path, monkeypatch):
    """`loccheck localize` on a direction_probe claim writes the direction beside the new claim
    and names it by its sha256; `verify` on the heuristic's claim and on the pinned file fits
    the same subspace (the same location, so the same cache keys)."""
    from loccheck.claim import load_claim
    from loccheck.cli import main
    from loccheck.run.verify import inspect

    root, pairs = planted
    monkeypatch.setenv("LOCCHECK_CACHE_DIR", str(tmp_path / "cache"))
    split = "{train: 0.5, validation: 0.25, test: 0.25, seed: 0}"
    text = claim_text(root / "model", pairs, ["L0H0"], n=N, edit=BUDGET, split=split).replace(
        "location: {sites: [L0H0]}",
        "location: {from_heuristic: true}\nheuristic: {method: direction_probe, top_k: 1, layers: [1]}")
    (tmp_path / "probe.yaml").write_text(text)
    assert main(["localize", str(tmp_path / "probe.yaml")]) == 0
    pinned = load_claim(tmp_path / "probe_localized.yaml")
    spec = pinned.location.subspace
    assert spec.layer == 1 and spec.basis == "probe_localized.npy" and pinned.heuristic.top_k == 1
    site = inspect(pinned, out_dir=None, cache_dir=tmp_path / "cache").residual.location[0]
    assert str(site) == f"L1S1@sha256:{spec.sha256}"
    found = verify(load_claim(tmp_path / "probe.yaml"), write_report=False, progress=False,
                   overrides={"random_locations.n": 1})
    assert found.edits[0]["location"] == [str(site)]
