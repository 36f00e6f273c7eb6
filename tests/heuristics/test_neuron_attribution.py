"""The neuron_attribution heuristic (loccheck.heuristics.neuron_attribution) on tiny models.

Known answer: in `known_neuron_model(family, [L1N5])` every hidden unit but L1N5 has a zero
column in its layer's down projection, so the log-odds' gradient with respect to it is exactly
0, and so is its gradient x activation score: L1N5 ranks first and every other unit scores 0.0,
the zeros ordered by (layer, unit). The per-pair statistics are checked against a plain
per-sequence computation (no batching, no padding), which pins the positions convention.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from loccheck.data.behavior import load_behavior
from loccheck.errors import ClaimError, LoccheckError
from loccheck.files import write_json_atomic
from loccheck.heuristics import HEURISTICS, Proposal
from loccheck.heuristics.neuron_attribution import (NeuronAttribution, NeuronAttributionSection, binned_scores,
                                                    neuron_scores, pair_statistics)
from loccheck.locations import NeuronLoc
from loccheck.models import get_adapter
from loccheck.models.loading import LoadedModel
from loccheck.models.scoring import answer_logprobs
from loccheck.testing import FAMILIES, char_tokenizer, known_neuron_model, tiny_model, token_pairs, write_pairs

pytestmark = pytest.mark.slow   # tiny torch models

LIVE = NeuronLoc(1, 5)
N_LAYERS = 3
H = HEURISTICS["neuron_attribution"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = write_pairs(tmp_path_factory.mktemp("neurons") / "pairs.jsonl", n_questions=24)
    return load_behavior(dataset="jsonl", path=str(path), base_dir=None, split=(0.5, 0.25, 0.25)).without_test()


def _loaded(model) -> LoadedModel:
    info = {"sha256": "test", "name": "test", "commit": None, "dtype": "float32", "device": "cpu"}
    return LoadedModel(model, char_tokenizer(), info, get_adapter(model))


def _propose(loaded, data, tmp_path, **fields):
    return H.propose(NeuronAttributionSection(method="neuron_attribution", **fields), loaded, data, tmp_path)


def test_scores_are_the_standardised_effect_and_the_mean_gradient():
    stats = np.array([[[1.0, 0.0, -2.0, 3.0]],
                      [[3.0, 0.0, -2.0, -3.0]]])          # (n_pairs, n_layers, width)
    score, mean = neuron_scores(stats, "activation_difference")
    std = np.array([np.sqrt(2.0), 0.0, 0.0, np.sqrt(18.0)])
    eps = 1e-4 * np.sqrt(36 / 8)                          # 1e-4 x the layer's RMS difference
    np.testing.assert_allclose(mean, [[2.0, 0.0, -2.0, 0.0]])
    np.testing.assert_allclose(score, [[2.0 / (std[0] + eps), 0.0, 2.0 / eps, 0.0]])
    tiny = np.concatenate([stats, 1e-9 * stats], axis=1)  # a layer of rounding-sized differences
    np.testing.assert_allclose(neuron_scores(tiny, "activation_difference")[0], np.concatenate([score, score]))
    assert neuron_scores(np.zeros((3, 2, 4)), "activation_difference")[0].tolist() == [[0.0] * 4] * 2
    noise = np.concatenate([stats, np.full((2, 1, 1), 1e-9)], axis=2)   # a constant, rounding-sized unit
    assert neuron_scores(noise, "activation_difference")[0][0, 4] < 1e-4
    score, mean = neuron_scores(stats, "gradient_x_activation")
    np.testing.assert_array_equal(score, [[2.0, 0.0, 2.0, 0.0]])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        neuron_scores(stats[:1], "activation_difference")
    with pytest.raises(ValueError, match="`score` must be one of"):
        neuron_scores(stats, "t")
    with pytest.raises(ValueError, match=r"shape \(n_pairs, n_layers, width\)"):
        neuron_scores(stats[:, 0], "gradient_x_activation")


def _by_hand(model, adapter, pair, layer: int, score: str) -> np.ndarray:
    """One pair's statistic of layer `layer`'s units, one sequence at a time (no padding)."""
    out = []
    for answer, sign in ((pair.chosen, 1.0), (pair.rejected, -1.0)):
        p, a = len(pair.prompt), len(answer)
        seen = {}

        def hook(module, args):
            x = args[0].detach().clone().requires_grad_(score == "gradient_x_activation")
            seen["x"] = x
            return (x,)

        handle = adapter.mlp_out(layer).register_forward_pre_hook(hook)
        try:
            with torch.enable_grad():
                lp = answer_logprobs(model, [pair.prompt], [answer], 0)[0]
        finally:
            handle.remove()
        x = seen["x"][0, p - 1:p + a - 1]                   # (a, width): the positions that predict the answer
        if score == "activation_difference":
            out.append(sign * x.detach().mean(0))
        else:
            (g,) = torch.autograd.grad(sign * lp, [seen["x"]])
            out.append((g[0, p - 1:p + a - 1] * x.detach()).sum(0))
    return (out[0] + out[1]).double().numpy()


@pytest.mark.parametrize("score", ["activation_difference", "gradient_x_activation"])
def test_batched_statistics_are_the_per_sequence_ones(score):
    model = tiny_model("llama", n_layers=2)
    adapter = get_adapter(model)
    pairs = token_pairs(seed=3, n=5)                       # prompts and answers of different lengths
    stats = pair_statistics(model, adapter, pairs, [0, 1], score=score, pad_id=0, batch_pairs=3)
    assert stats.shape == (5, 2, adapter.mlp_width) and stats.dtype == np.float64
    for i, pair in enumerate(pairs):
        for row, layer in enumerate([0, 1]):
            np.testing.assert_allclose(stats[i, row], _by_hand(model, adapter, pair, layer, score),
                                       rtol=1e-4, atol=1e-5)
    assert not adapter.mlp_out(0)._forward_pre_hooks and not adapter.mlp_out(0)._forward_hooks


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_x_activation_ranks_the_live_unit_first(family, data, tmp_path):
    loaded = _loaded(known_neuron_model(family, [LIVE], n_layers=N_LAYERS))
    proposal = _propose(loaded, data, tmp_path, score="gradient_x_activation", top_k=1)
    (first, score), *rest = proposal.ranked
    assert first == LIVE and score > 0
    assert [s for _, s in rest] == [0.0] * len(rest)       # every dead unit's gradient is exactly 0
    assert [site for site, _ in rest] == sorted(site for site, _ in rest)
    assert sorted(site for site, _ in proposal.ranked) == sorted(loaded.adapter.sites("neuron"))
    assert proposal.top(1) == (LIVE,) and proposal.raw.n_pairs == len(data.train)


def test_activation_difference_ranking_is_deterministic_complete_and_sorted(data, tmp_path):
    loaded = _loaded(known_neuron_model("llama", [LIVE], n_layers=N_LAYERS))
    a = _propose(loaded, data, tmp_path)
    b = _propose(loaded, data, tmp_path)
    assert a.ranked == b.ranked
    sites = [site for site, _ in a.ranked]
    assert sorted(sites) == sorted(loaded.adapter.sites("neuron")) and len(set(sites)) == len(sites)
    keys = [(-score, site.layer, site.unit) for site, score in a.ranked]
    assert keys == sorted(keys) and all(np.isfinite(score) and score >= 0 for _, score in a.ranked)
    assert a.raw.score == "activation_difference" and a.raw.scores.shape == (N_LAYERS, loaded.adapter.mlp_width)


def test_layers_restrict_the_ranking(data, tmp_path):
    loaded = _loaded(known_neuron_model("llama", [LIVE], n_layers=N_LAYERS))
    proposal = _propose(loaded, data, tmp_path, score="gradient_x_activation", layers=[2, 1])
    assert {site.layer for site, _ in proposal.ranked} == {1, 2} and proposal.raw.layers == (1, 2)
    assert proposal.ranked[0][0] == LIVE and len(proposal.ranked) == 2 * loaded.adapter.mlp_width


def test_bad_input_is_one_line_about_its_field(data, tmp_path):
    loaded = _loaded(known_neuron_model("llama", [LIVE], n_layers=N_LAYERS))
    with pytest.raises(LoccheckError, match=r"^heuristic.layers: layer 3 is outside the model: it has 3 layers") as err:
        _propose(loaded, data, tmp_path, layers=[1, 3])
    assert err.value.key == "heuristic.layers"
    width = loaded.adapter.mlp_width
    with pytest.raises(LoccheckError, match=f"top_k {width + 1} is more than the {width} units") as err:
        _propose(loaded, data, tmp_path, layers=[1], top_k=width + 1)
    assert err.value.key == "heuristic.top_k"
    for layers in ([], [1, 1]):
        with pytest.raises(ValidationError):
            NeuronAttributionSection(method="neuron_attribution", layers=layers)
    experts = _loaded(tiny_model("mixtral"))
    with pytest.raises(LoccheckError, match="mixtures of experts") as err:
        _propose(experts, data, tmp_path)
    assert err.value.key == "heuristic.method" and "\n" not in str(err.value)


def test_an_empty_layer_list_in_a_claim_names_the_field(tmp_path):
    from loccheck.claim import parse_claim
    from loccheck.testing import claim_text

    text = claim_text(tmp_path / "model", tmp_path / "pairs.jsonl", ["L1N5"],
                      extra="heuristic: {method: neuron_attribution, layers: []}\n")
    with pytest.raises(ClaimError) as err:
        parse_claim(text, path=tmp_path / "c.yaml")
    assert err.value.key == "heuristic.layers" and "at least 1 item" in str(err.value)
    assert "\n" not in str(err.value)


def test_evidence_pinning_and_report(data, tmp_path):
    loaded = _loaded(known_neuron_model("llama", [LIVE], n_layers=N_LAYERS))
    section = NeuronAttributionSection(method="neuron_attribution", score="gradient_x_activation", top_k=2)
    proposal = H.propose(section, loaded, data, tmp_path)
    location = proposal.top(2)
    evidence = json.loads(json.dumps(H.evidence(section, proposal, location, False), allow_nan=False))
    assert evidence["score"] == "gradient_x_activation" and evidence["layers"] == [0, 1, 2]
    assert evidence["top"][0]["site"] == "L1N5" and evidence["claimed_ranks"]["L1N5"] == 1
    assert evidence["selected"] == [str(s) for s in location] and len(evidence["top"]) == 20
    assert evidence["bin_width"] == 1 and len(evidence["binned_scores"]) == N_LAYERS   # 64 units: unbinned
    assert evidence["binned_scores"][1][5] == float(f"{proposal.score(LIVE):.4g}") > 0
    again = H.evidence(section, proposal, (NeuronLoc(0, 0),), True)
    assert again["pinned_units_reselected"] is False and again["claimed_scores"] == {"L0N0": 0.0}
    scores = {str(s): proposal.score(s) for s in location}
    pinned, why = H.pinned(proposal, location, scores)
    assert set(pinned["neuron_scores"]) == {str(s) for s in location} and "train pairs" in why
    NeuronAttributionSection(method="neuron_attribution", **pinned)      # what localize writes validates
    claimed = (LIVE, NeuronLoc(2, 63))                        # L2N63 ranks last: outside the top 20
    evidence = json.loads(json.dumps(H.evidence(section, proposal, claimed, True), allow_nan=False))
    assert evidence["claimed_ranks"] == {"L1N5": 1, "L2N63": len(proposal.ranked)}
    lines = "\n".join(H.report_lines({"heuristic_evidence": evidence, "location": ["L1N5", "L2N63"]}))
    assert "## The heuristic: neuron attribution" in lines and "L1N5 (claimed)" in lines
    assert f"| {len(proposal.ranked)} " in lines and "L2N63 (claimed)" in lines
    assert "now selects others: L0N0, L1N5" in lines


def test_binned_scores_are_the_maxima_of_runs_of_units():
    scores = np.array([[3.0, 1.0, 2.0, 0.0, 9.0, 4.0, 5.0, 8.0, 6.0, 7.0],
                       [0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25]])
    binned, step = binned_scores(scores, columns=4)       # runs of ceil(10 / 4) = 3 units; the last has 1
    assert step == 3 and binned.tolist() == [[3.0, 9.0, 8.0, 7.0], [0.5, 0.0, 0.0, 0.25]]
    binned, step = binned_scores(scores, columns=10)
    assert step == 1 and binned.tolist() == scores.tolist()
    binned, step = binned_scores(np.zeros((32, 14336)))    # a Llama-3-8B MLP: 56 units a column
    assert step == 56 and binned.shape == (32, 256)


def _synthetic(layers, width: int, seed: int = 0) -> Proposal:
    """A proposal of lognormal scores (many magnitudes, so long decimals) without a model."""
    rng = np.random.default_rng(seed)
    scores = rng.lognormal(-3.0, 3.0, size=(len(layers), width))
    raw = NeuronAttribution("activation_difference", tuple(layers), scores, scores - 1.0, 12)
    return Proposal(tuple(raw.ranked()), raw=raw)


def test_heatmap_is_drawn_from_result_json_alone_and_deterministic(tmp_path):
    from loccheck.render.figures import plt

    proposal = _synthetic([1, 4, 7], 600)                  # 200 columns of 3 units
    section = NeuronAttributionSection(method="neuron_attribution")
    claimed = (NeuronLoc(4, 300), NeuronLoc(4, 301), NeuronLoc(9, 0))   # L9: not a ranked layer
    evidence = json.loads(json.dumps(H.evidence(section, proposal, claimed, False), allow_nan=False))
    grid, scores = evidence["binned_scores"], proposal.raw.scores
    assert evidence["bin_width"] == 3 and len(grid) == 3 and {len(row) for row in grid} == {200}
    assert grid[1][100] == float(f"{scores[1, 300:303].max():.4g}")
    assert evidence["claimed_scores"]["L9N0"] is None
    r = {"heuristic_evidence": evidence, "location": [str(s) for s in claimed]}
    assert "![activation_difference score of every unit" in "\n".join(H.report_lines(r))
    assert "](neuron_attribution_heatmap.png)" in "\n".join(H.report_lines(r))
    H.report_figures(r, tmp_path)
    path = tmp_path / "neuron_attribution_heatmap.png"
    first = path.read_bytes()
    assert first[:8] == PNG_MAGIC
    H.report_figures(r, tmp_path)
    assert path.read_bytes() == first                      # deterministic
    H.report_figures({**r, "location": ["L9N0"]}, tmp_path)    # only a claim outside the ranked layers
    H.report_figures({**r, "location": []}, tmp_path)
    assert not plt.get_fignums()
    old = {k: v for k, v in evidence.items() if k not in ("binned_scores", "bin_width")}
    H.report_figures({"heuristic_evidence": old, "location": []}, tmp_path / "old")   # an older result.json
    assert "](neuron_attribution_heatmap.png)" not in "\n".join(H.report_lines({"heuristic_evidence": old}))
    assert not (tmp_path / "old").exists()


def test_evidence_stays_small(tmp_path):
    """A 32-layer model's binned scores are 32 x 256 numbers of at most 10 characters: as
    result.json writes them (indent 2, one a line, 8 spaces deep) under 20 bytes each, so the
    whole evidence stays under 32 x 256 x 20 bytes + 8 kB (~172 kB) however wide the MLP."""
    proposal = _synthetic(range(32), 2560)                  # 256 columns of 10 units
    evidence = H.evidence(NeuronAttributionSection(method="neuron_attribution"), proposal,
                          (NeuronLoc(3, 73),), False)
    assert np.shape(evidence["binned_scores"]) == (32, 256)
    size = write_json_atomic({"heuristic_evidence": evidence}, tmp_path / "result.json").stat().st_size
    assert size < 32 * 256 * 20 + 8000
    assert len(json.dumps(evidence)) < 32 * 256 * 12 + 4000   # compact JSON: ", " and 10 characters a number
