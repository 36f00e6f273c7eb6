"""Causal tracing (loccheck.heuristics.tracing) on tiny models, and the causal_tracing heuristic end to end
on facts a tiny model knows.

Known answers: in a model where only layer 2's MLP (of 4) is live, restoring a dead MLP's
output changes nothing (its output is 0 in the clean and the corrupted run alike), so with a
window of one layer the indirect effect is exactly 0 at every dead layer and the trace peaks
at the live one. With zero noise the corrupted run is the clean run: every effect is 0, and so
is the total effect. Restoring the residual stream after the last layer at the last token
restores the clean answer probability exactly.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from loccheck.claim import parse_claim
from loccheck.heuristics.causal_tracing import flip_partners, trace_inputs
from loccheck.locations import MlpLoc
from loccheck.models import get_adapter
from loccheck.testing import FAMILIES, char_tokenizer, known_mlp_model, write_known_facts, write_model_dir
from loccheck.data.known_facts import subject_span
from loccheck.heuristics.tracing import (GROUPS, TraceInput, embedding_spread, grouped, noise_for, token_groups,
                                         trace_fact, window_layers)
from loccheck.run.verify import verify

pytestmark = pytest.mark.slow   # tiny torch models

LIVE = MlpLoc(2)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


def _item(model, prompt="Abcd lives in", subject="Abcd"):
    tok = char_tokenizer()
    ids = tuple(tok(prompt).input_ids)
    with torch.no_grad():
        answer = int(model(torch.tensor([ids])).logits[0, -1].argmax())
    return TraceInput(ids, subject_span(tok, prompt, subject, ids), answer)


def _noise(model, item, n=4, scale=3.0):
    width = model.get_input_embeddings().weight.shape[1]
    return noise_for(item, n, scale, embedding_spread(model, [item]), width, seed=0)


def test_token_groups_and_windows():
    assert subject_span(char_tokenizer(), "I saw Abcd there", "Abcd", char_tokenizer()("I saw Abcd there").input_ids) == (6, 10)
    assert token_groups(8, (2, 5)) == [[2], [3], [4], [5], [6], [7]]
    assert token_groups(4, (3, 4)) == [[3], [], [3], [], [], [3]]     # a subject at the end
    assert window_layers(0, 10, 30) == list(range(0, 5)) and window_layers(12, 10, 30) == list(range(7, 17))
    assert window_layers(29, 10, 30) == list(range(24, 30)) and window_layers(3, 1, 30) == [3]
    g = grouped(np.arange(8.0)[None, :], (2, 5))
    assert g.tolist() == [[2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]


@pytest.mark.parametrize("family", FAMILIES)
def test_tracing_peaks_at_the_live_mlp(family):
    model = known_mlp_model(family, [LIVE], n_layers=4)
    item = _item(model)
    trace = trace_fact(model, get_adapter(model), item, torch.tensor([item.ids] * 4), _noise(model, item),
                       window=1)
    effects = trace.effects
    assert trace.p_corrupt != trace.p_clean
    for layer in (0, 1, 3):       # a dead MLP restores nothing (to the rounding of another batch size)
        assert np.abs(effects[layer]).max() < 1e-6, layer
    assert np.abs(effects[LIVE.layer]).max() > 1e-3
    # wider windows hold the live layer for every centre within reach
    wide = trace_fact(model, get_adapter(model), item, torch.tensor([item.ids] * 4), _noise(model, item),
                      window=3)
    assert np.allclose(wide.effects[1], effects[2], atol=1e-6) and np.abs(wide.effects[0]).max() < 1e-6


def test_zero_noise_restores_everything(family_model):
    family, model = family_model
    item = _item(model)
    trace = trace_fact(model, get_adapter(model), item, torch.tensor([item.ids] * 3),
                       _noise(model, item, n=3, scale=0.0), window=1)
    # zero noise is the clean run computed in another batch: float32 round-off of a probability
    # (1.3e-6 with AVX2 kernels), nothing more
    assert abs(trace.total_effect) < 1e-5 and np.abs(trace.effects).max() < 1e-5


def test_restoring_the_last_residual_state_restores_the_clean_run(family_model):
    family, model = family_model
    item = _item(model)
    trace = trace_fact(model, get_adapter(model), item, torch.tensor([item.ids] * 3), _noise(model, item, 3),
                       window=1, kind="layer")
    assert abs(trace.restored[-1, -1] - trace.p_clean) < 1e-6
    assert abs(trace.p_corrupt - trace.p_clean) > 1e-4


def test_subject_flip_keeps_every_token_but_the_subject(tmp_path):
    from loccheck.data.behavior import load_behavior
    from loccheck.models.loading import load_model

    folder = write_model_dir(tmp_path / "m", "gpt_neox", [LIVE], n_layers=4)
    loaded = load_model(str(folder), device="cpu")
    facts = write_known_facts(tmp_path / "known_1000.json", loaded.model, n_facts=12)
    data = load_behavior(dataset="known_facts", path=str(facts), base_dir=None, split=(0.75, 0.0, 0.25)).without_test()
    traced, items = trace_inputs(loaded, data, max_facts=50)
    assert len(items) == len(data.train)
    n_flipped = 0
    for i, item in enumerate(items):
        for ids in flip_partners(loaded, traced, items, i, n=3, seed=0):
            n_flipped += 1
            s, e = item.span
            assert len(ids) == len(item.ids) and ids[:s] == item.ids[:s] and ids[e:] == item.ids[e:]
            assert ids[s:e] != item.ids[s:e]
    assert n_flipped > 0


def _claim(tmp_path, corruption: str, family: str = "gpt_neox"):
    folder = write_model_dir(tmp_path / "m", family, [LIVE], n_layers=4)
    from loccheck.models.loading import load_model

    facts = write_known_facts(tmp_path / "known_1000.json", load_model(str(folder), device="cpu").model,
                              n_facts=24)
    return parse_claim(f"""\
claim: "The facts live in the MLP that tracing picks."
model: {{name: '{folder}', device: cpu}}
behavior: {{dataset: known_facts, path: '{facts}', split: {{train: 0.5, validation: 0.0, test: 0.5, seed: 0}}}}
location: {{from_heuristic: true}}
heuristic: {{method: causal_tracing, top_k: 1, corruption: {corruption}, window: 1, samples: 3,
             aggregate: last_token}}
edits: [{{max_epochs: 2, batch_size: 4, learning_rate: 0.05, init_std: 0.1}}]
random_locations: {{n: 3, seed: 0}}
verdict: {{alpha: 0.25}}
""", path=tmp_path / f"tracing_{corruption}.yaml")


@pytest.mark.parametrize("corruption", ["noise", "subject_flip"])
def test_the_heuristic_proposes_the_live_mlp_and_reports_its_trace(tmp_path, corruption):
    claim = _claim(tmp_path, corruption)
    result = verify(claim, out_dir=tmp_path / "report", progress=False, cache_dir=tmp_path / "cache")
    assert result.payload["location"] == ["L2M"]
    evidence = result.payload["heuristic_evidence"]
    assert evidence["corruption"] == corruption and evidence["peak"] == "L2M"
    assert evidence["n_facts"] + evidence["n_skipped"] == 12 and evidence["groups"] == list(GROUPS)
    effects = np.array(evidence["effects"], dtype=float)                  # (layers, groups)
    dead = effects[[0, 1, 3]]
    assert effects.shape == (4, 6) and np.abs(dead[~np.isnan(dead)]).max() < 1e-6
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## The heuristic: causal tracing" in report
    assert json.loads((tmp_path / "report" / "result.json").read_text())["data"]["n_pairs_kept"] == 24


def test_localize_pins_the_traced_layer(tmp_path, capsys, monkeypatch):
    from loccheck.claim import load_claim
    from loccheck.cli import main

    import yaml

    path = tmp_path / "tracing.yaml"
    path.write_text(yaml.safe_dump(_claim(tmp_path, "noise").effective_config()))
    monkeypatch.setenv("LOCCHECK_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "pinned.yaml"
    assert main(["localize", str(path), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith(f"# Written by `loccheck localize {path}`: the 1 MLP layers with the largest")
    pinned = load_claim(out)
    assert pinned.location.sites == ("L2M",) and set(pinned.heuristic.layer_effects) == {"L2M"}
    result = verify(pinned, write_report=False, progress=False, cache_dir=tmp_path / "cache")
    assert result.payload["heuristic_evidence"]["pinned_layers_reselected"] is True


def test_no_flip_partner_is_an_error_naming_the_claim_file(tmp_path):
    """Each relation of the facts holds one train subject and one test subject: subject-flip
    tracing sees the train facts only, so no fact has a partner. The error names the claim's
    file and field, from `verify`'s heuristic and from `trace-vs-edit`."""
    import yaml

    from loccheck.data.behavior import load_behavior
    from loccheck.errors import ClaimError
    from loccheck.studies.trace_vs_edit.command import trace_vs_edit
    from loccheck.run.verify import propose_location

    claim = _claim(tmp_path, "subject_flip")
    facts = tmp_path / "known_1000.json"
    split = load_behavior(dataset="known_facts", path=str(facts), base_dir=None, split=(0.5, 0.0, 0.5))
    train = [p.prompt for p in split.train]
    test = [p.prompt for p in split.test]
    records = json.loads(facts.read_text())
    by_prompt = {r["prompt"]: r for r in records}
    free = list(test)
    for i, prompt in enumerate(train):       # pair each train fact with a test fact of another attribute
        mate = next(q for q in free if by_prompt[q]["attribute"] != by_prompt[prompt]["attribute"])
        free.remove(mate)
        by_prompt[prompt]["relation_id"] = by_prompt[mate]["relation_id"] = f"R{i}"
    facts.write_text(json.dumps(records))
    again = load_behavior(dataset="known_facts", path=str(facts), base_dir=None, split=(0.5, 0.0, 0.5))
    assert [p.prompt for p in again.train] == train              # the same split, relations re-drawn
    config = claim.effective_config()
    claim = parse_claim(yaml.safe_dump(config, sort_keys=False), path=tmp_path / "flip.yaml")
    with pytest.raises(ClaimError, match=r"flip.yaml(:\d+)*: heuristic.corruption: subject_flip tracing "
                                         r"found no flip partner"):
        propose_location(claim, cache_dir=tmp_path / "cache")
    config["location"] = {"sites": ["L2M"]}
    claim = parse_claim(yaml.safe_dump(config, sort_keys=False), path=tmp_path / "flip.yaml")
    with pytest.raises(ClaimError, match=r"flip.yaml(:\d+)*: heuristic.corruption: subject_flip tracing"):
        trace_vs_edit(claim, out_dir=tmp_path / "tve", cache_dir=tmp_path / "cache")
