"""Contracts every registered edit method, heuristic and metric must keep, driven by the
registries: a method added to a registry is tested here without a line of new test code."""
from __future__ import annotations

import math

import numpy as np
import pytest

from loccheck.edits import EDIT_METHODS
from loccheck.heuristics import HEURISTICS
from loccheck.metrics import METRICS, NEEDS

pytestmark = pytest.mark.slow   # they fit real edits on a tiny model (torch)


@pytest.fixture(scope="module")
def testbed(known_llama, tmp_path_factory):
    """The testbed of a known-answer claim that lists every edit method that edits heads on any data."""
    from loccheck.run.testbed import prepare_testbed
    from loccheck.claim import parse_claim
    from loccheck.testing import claim_text

    model_dir, pairs = known_llama
    edits = "[" + ", ".join(f"{{method: {name}}}" for name, m in EDIT_METHODS.items()
                            if "head" in m.site_kinds and m.datasets is None) + "]"
    root = tmp_path_factory.mktemp("contracts")
    texts = root / "texts.txt"                       # for the side-effect metrics
    texts.write_text("the river runs to the sea\nan apple fell down\n")
    every_metric = f"metrics: [{', '.join(METRICS)}]\nside_effects: {{path: '{texts}'}}\n"
    claim = parse_claim(claim_text(model_dir, pairs, ["L1H2", "L0H0"], n=2, edits=edits, extra=every_metric),
                        path=root / "contracts.yaml")
    return claim, prepare_testbed(claim, root / "cache")


def _logprobs(testbed, on_batch=None):
    from loccheck.models.scoring import all_pair_logprobs

    return all_pair_logprobs(testbed.model, testbed.test, testbed.pad_id, on_batch=on_batch).numpy()


def _outputs(testbed):
    """Test-pair log-probabilities and the full logits of one sequence: bit-for-bit evidence."""
    import torch

    ids = torch.tensor([list(testbed.test[0].prompt) + list(testbed.test[0].chosen)])
    with torch.no_grad():
        logits = testbed.model(input_ids=ids).logits
    return _logprobs(testbed), logits.numpy()


def _settings(claim, testbed, name, ceiling=False):
    section = next(e for e in claim.edits if e.method == name)
    size, kind = len(claim.location.parsed), claim.site_kind
    return EDIT_METHODS[name].settings(section, size=len(testbed.adapter.sites(kind)) if ceiling else size,
                                       claim_size=size, verdict_metric=claim.verdict.metric, site_kind=kind,
                                       ceiling=ceiling)


@pytest.mark.parametrize("name", list(EDIT_METHODS))
@pytest.mark.parametrize("where", ["location", "ceiling"])
def test_edit_starts_as_the_identity_and_detaches_cleanly(testbed, facts_testbed, name, where):
    method = EDIT_METHODS[name]
    claim, testbed = _testbed_for(method, testbed, facts_testbed)
    location = claim.location.parsed if where == "location" else None
    settings = _settings(claim, testbed, name, ceiling=where == "ceiling")
    before = _outputs(testbed)
    edit = method.initial(testbed, settings, location)
    # Bit for bit against the unedited model scored the same way: an edit that scores through
    # `on_batch` is scored unpacked, other arithmetic than the packed pairs of `before`, whose
    # rounding differs with the CPU's kernels; the same operations in the same order do not.
    same_way = before[0] if edit.on_batch is None else _logprobs(testbed, on_batch=lambda mask: None)
    with edit.attached(testbed.model):
        lp = _logprobs(testbed, on_batch=edit.on_batch)
    assert np.array_equal(lp, same_way), f"{name}: the initial edit is not the identity"
    fitted = method.fit(testbed, settings, location)
    after = _outputs(testbed)
    assert all(np.array_equal(a, b) for a, b in zip(before, after)), f"{name}: the model changed"
    # the stored parameters rebuild the same edit: a later metric scores what the fit scored
    with fitted.edit.attached(testbed.model):
        scored = testbed.score(list(METRICS), on_batch=fitted.edit.on_batch)
    restored = method.restore(testbed, settings, location, fitted.edit.state())
    with restored.attached(testbed.model):
        assert testbed.score(list(METRICS), on_batch=restored.on_batch) == scored
    assert all(a.dtype == np.float32 for a in fitted.edit.state().values())


@pytest.fixture(scope="module")
def facts_testbed(tmp_path_factory):
    """A testbed of facts a tiny model knows (dataset: known_facts) at an MLP location, listing every
    edit method that edits MLP sites: for the methods and heuristics that need facts."""
    from loccheck.run.testbed import prepare_testbed
    from loccheck.claim import parse_claim
    from loccheck.locations import MlpLoc
    from loccheck.models.loading import load_model
    from loccheck.testing import write_known_facts, write_model_dir

    root = tmp_path_factory.mktemp("contracts-facts")
    folder = write_model_dir(root / "m", "gpt_neox", [MlpLoc(1)], n_layers=3)
    facts = write_known_facts(root / "known_1000.json", load_model(str(folder), device="cpu").model, n_facts=8)
    texts = root / "texts.txt"                       # side effects, and rome's key statistics
    texts.write_text("\n".join(f"the river {i} runs to the sea {i * 7}" for i in range(40)))
    edits = ", ".join(f"{{method: {name}" + (f", stats_path: '{texts}'" if name == "rome" else "") + "}"
                      for name, m in EDIT_METHODS.items() if "mlp" in m.site_kinds)
    claim = parse_claim(f"claim: x\nmodel: {{name: '{folder}', device: cpu}}\n"
                        f"behavior: {{dataset: known_facts, path: '{facts}', split: {{train: 0.5, "
                        "validation: 0.0, test: 0.5}}\nlocation: {sites: [L1M]}\n"
                        f"edits: [{edits}]\nmetrics: [{', '.join(METRICS)}]\n"
                        f"side_effects: {{path: '{texts}'}}\n", path=root / "facts.yaml")
    return claim, prepare_testbed(claim, root / "cache")


def _testbed_for(method, testbed, facts_testbed):
    """The head testbed for methods that edit heads on any data, else the facts testbed."""
    if "head" in method.site_kinds and method.datasets is None:
        return testbed
    return facts_testbed


@pytest.mark.parametrize("name", list(HEURISTICS))
def test_heuristic_refuses_data_with_a_test_split(testbed, facts_testbed, name):
    datasets = HEURISTICS[name].datasets
    claim, testbed = facts_testbed if datasets is not None and "jsonl" not in datasets else testbed
    section = HEURISTICS[name].section(method=name)
    with pytest.raises(TypeError, match="never see the test questions"):
        HEURISTICS[name].propose(section, testbed.loaded, testbed.data, testbed.cache_root)
    proposal = HEURISTICS[name].propose(section, testbed.loaded, testbed.data.without_test(), testbed.cache_root)
    if HEURISTICS[name].kind is None:
        assert proposal is None
    else:   # a ranking of every site of its kind, best first
        ranked = [site for site, _ in proposal.ranked]
        assert sorted(ranked) == sorted(testbed.adapter.sites(HEURISTICS[name].kind))


@pytest.mark.parametrize("name", list(METRICS))
def test_metric_states_its_inputs_and_direction(name):
    metric = METRICS[name]
    assert metric.name == name and metric.needs in NEEDS and metric.description
    assert isinstance(metric.higher_is_better, bool)
    assert metric.improvement(1.0) == (1.0 if metric.higher_is_better else -1.0)
    if metric.needs == "pair_logprobs":
        value = metric.fn(np.array([[-1.0, -2.0], [-3.0, -1.5]]))
        assert isinstance(value, float) and math.isfinite(value)
