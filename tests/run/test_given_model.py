"""`loccheck.verify(claim, model=..., tokenizer=...)`: a model the researcher already has loaded.

The known-answer Llama (only head L1H2 reaches the residual stream) saved to a folder and
named in the claim is the reference: the same model passed in must give the same numbers, be
given back exactly as it came (weights bit for bit, no hooks, its requires_grad and training
flags), also when the run fails midway, and be cached under the identity of its weights."""
from __future__ import annotations

import copy
import json

import pytest

pytestmark = pytest.mark.slow   # fits edits on a tiny model (torch)

EDIT = "{max_epochs: 2, batch_size: 4, learning_rate: 0.05, ceiling_learning_rate: 0.05, init_std: 0.1}"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def claim_path(tmp_path_factory):
    """A known-answer claim on a model folder: 16 questions, a null of 4, two epochs."""
    from loccheck.locations import HeadLoc
    from loccheck.testing import claim_text, write_model_dir, write_pairs

    root = tmp_path_factory.mktemp("given-model")
    folder = write_model_dir(root / "model", "llama", [HeadLoc(1, 2)])
    pairs = write_pairs(root / "pairs.jsonl", n_questions=16)
    path = root / "claim.yaml"
    path.write_text(claim_text(folder, pairs, ["L1H2"], n=4, edit=EDIT, random_seed=13))
    return path


def load(claim_path):
    """The claim's model as loccheck loads it from its folder (the same attention, the same bits)."""
    from loccheck.models.loading import load_model

    return load_model(str(claim_path.parent / "model"), device="cpu")


@pytest.fixture(scope="module")
def by_folder(claim_path, tmp_path_factory):
    from loccheck import verify

    root = tmp_path_factory.mktemp("by-folder")
    return verify(claim_path, out_dir=root / "report", cache_dir=root / "cache", progress=False)


def snapshot(model) -> dict:
    """Everything verify must leave as it found: weights (bytes), flags and hooks."""
    import torch

    return {"weights": {k: (v.dtype, v.device, v.detach().reshape(-1).view(torch.uint8).clone())
                        for k, v in model.state_dict().items()},
            "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
            "training": {n: m.training for n, m in model.named_modules()},
            "hooks": {n: [list(getattr(m, h)) for h in ("_forward_hooks", "_forward_pre_hooks",
                                                         "_forward_hooks_with_kwargs",
                                                         "_forward_pre_hooks_with_kwargs")]
                      for n, m in model.named_modules()}}


def assert_as_before(model, before: dict) -> None:
    import torch

    after = snapshot(model)
    assert after["weights"].keys() == before["weights"].keys()
    for k, (dtype, device, raw) in before["weights"].items():
        assert after["weights"][k][:2] == (dtype, device) and torch.equal(after["weights"][k][2], raw), k
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]


def unsettle(model) -> None:
    """Flags loccheck changes while it runs: some parameters trainable, a layer in train mode."""
    model.lm_head.weight.requires_grad_(True)
    model.model.layers[0].self_attn.q_proj.weight.requires_grad_(True)
    model.model.layers[1].train()


@pytest.fixture(scope="module")
def passed(claim_path, tmp_path_factory):
    """verify with the model passed in, twice (the second from the cache), and the snapshot
    of the model before the first call."""
    from loccheck import verify

    loaded = load(claim_path)
    unsettle(loaded.model)
    before = snapshot(loaded.model)
    root = tmp_path_factory.mktemp("passed")
    first = verify(claim_path, out_dir=root / "report", cache_dir=root / "cache", progress=False,
                   model=loaded.model, tokenizer=loaded.tokenizer)
    again = verify(claim_path, out_dir=root / "again", cache_dir=root / "cache", progress=False,
                   model=loaded.model, tokenizer=loaded.tokenizer)
    return loaded, before, first, again, root


def test_passed_model_gives_the_folder_numbers(by_folder, passed):
    first = passed[2]
    assert first.verdict == by_folder.verdict
    assert first.p_value == by_folder.p_value
    assert (first.claim_gain, first.ceiling_gain) == (by_folder.claim_gain, by_folder.ceiling_gain)
    assert first.null_gains == by_folder.null_gains
    assert first.claim_gain > 0 and first.n_fitted > 0       # the fits were made, not looked up


def test_passed_model_is_left_as_it_came(passed):
    loaded, before = passed[:2]
    assert_as_before(loaded.model, before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in loaded.model.modules())
    assert loaded.model.model.layers[1].training and not loaded.model.model.layers[0].training
    assert loaded.model.lm_head.weight.requires_grad


def test_same_passed_model_is_served_from_the_cache(passed):
    first, again = passed[2:4]
    assert again.n_fitted == 0 and again.n_scored == 0
    assert again.null_gains == first.null_gains and again.p_value == first.p_value


def test_a_changed_weight_is_not_served_from_the_cache(passed):
    import torch

    from loccheck import verify

    loaded, _, first, _, root = passed
    changed = copy.deepcopy(loaded.model)
    with torch.no_grad():
        changed.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3
    result = verify(first.payload["claim_file"], out_dir=root / "changed", cache_dir=root / "cache",
                    progress=False, model=changed, tokenizer=loaded.tokenizer)
    assert result.n_fitted == first.n_fitted
    assert result.payload["model"]["weights_sha256"] != first.payload["model"]["weights_sha256"]
    assert result.payload["model"]["config_sha256"] == first.payload["model"]["config_sha256"]


def test_report_and_result_say_passed_in(passed):
    first, root = passed[2], passed[4]
    model = json.loads((root / "report" / "result.json").read_text())["model"]
    assert model["resolved"] == "passed in"
    assert model["source"] == "passed in (LlamaForCausalLM, float32, cpu)"
    assert model["sha256"] == first.payload["model"]["sha256"] and len(model["weights_sha256"]) == 64
    report = (root / "report" / "report.md").read_text()
    line = f"- Model: passed in (LlamaForCausalLM, float32, cpu), weights sha256 `{model['weights_sha256']}`"
    assert line in report
    assert "loccheck.verify(" in report and "model=model, tokenizer=tokenizer" in report


def test_passed_model_is_left_as_it_came_when_verify_fails_midway(claim_path, tmp_path, monkeypatch):
    """A failure while an edit's hooks are attached to the model (scoring the first fitted
    edit): the error goes through, and the model comes back as it was, its own hook kept."""
    from loccheck import verify
    from loccheck.run.testbed import Testbed

    loaded = load(claim_path)
    unsettle(loaded.model)
    loaded.model.model.norm.register_forward_hook(lambda module, args, out: None)   # the caller's own
    before = snapshot(loaded.model)
    real_score, seen = Testbed.score, {}

    def score(self, *args, **kwargs):
        hooked = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in self.model.modules())
        if hooked > 1:                       # an edit is attached (beyond the caller's hook)
            seen.update(hooked=hooked, requires_grad=any(p.requires_grad for p in self.model.parameters()),
                        training=any(m.training for m in self.model.modules()))
            raise RuntimeError("late failure")
        return real_score(self, *args, **kwargs)
    monkeypatch.setattr(Testbed, "score", score)
    with pytest.raises(RuntimeError, match="late failure"):
        verify(claim_path, out_dir=tmp_path / "r", cache_dir=tmp_path / "cache", progress=False,
               model=loaded.model, tokenizer=loaded.tokenizer)
    assert seen == {"hooked": seen["hooked"], "requires_grad": False, "training": False}   # as loccheck runs
    assert_as_before(loaded.model, before)
    assert len(loaded.model.model.norm._forward_hooks) == 1


def _one_line_error(claim_path, model, tokenizer, **kwargs) -> str:
    from loccheck import verify
    from loccheck.errors import LoccheckError

    with pytest.raises(LoccheckError) as err:
        verify(claim_path, write_report=False, progress=False, model=model, tokenizer=tokenizer, **kwargs)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_meta_model_is_refused(claim_path):
    import torch
    from transformers import LlamaForCausalLM

    from loccheck.testing import char_tokenizer, tiny_model

    with torch.device("meta"):
        skeleton = LlamaForCausalLM(tiny_model("llama").config)
    text = _one_line_error(claim_path, skeleton, char_tokenizer())
    assert "meta device" in text and "never loaded" in text


def test_flash_attention_is_refused(claim_path):
    from loccheck.testing import char_tokenizer, tiny_model

    model = tiny_model("llama")
    model.config._attn_implementation = "flash_attention_2"
    text = _one_line_error(claim_path, model, char_tokenizer())
    assert "flash_attention_2" in text and 'attn_implementation="sdpa" or "eager"' in text


def test_offloaded_and_quantised_models_are_refused(claim_path):
    import torch

    from loccheck.testing import char_tokenizer, tiny_model

    model = tiny_model("llama")
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers": "disk", "lm_head": 0}
    assert "offloaded by accelerate" in _one_line_error(claim_path, model, char_tokenizer())
    model = tiny_model("llama")
    model.lm_head.weight = torch.nn.Parameter(torch.zeros(100, 32, dtype=torch.int8), requires_grad=False)
    assert "quantised weights" in _one_line_error(claim_path, model, char_tokenizer())


def test_ray_and_misuse_are_refused(claim_path):
    from loccheck import verify
    from loccheck.testing import char_tokenizer, tiny_model

    model = tiny_model("llama")
    assert "cannot run on Ray" in _one_line_error(claim_path, model, char_tokenizer(), executor="ray")
    with pytest.raises(ValueError, match="`tokenizer` was given without `model`"):
        verify(claim_path, write_report=False, progress=False, tokenizer=char_tokenizer())
    with pytest.raises(TypeError, match="`tokenizer` must be"):
        verify(claim_path, write_report=False, progress=False, model=model)


def test_an_executor_elsewhere_cannot_rebuild_a_passed_model(claim_path, tmp_path):
    """An executor that runs the job runner in another process (here: pickled and unpickled)
    gets a one-line error, never a testbed built from the claim's model.name."""
    import pickle

    from loccheck.run.executors import SerialExecutor

    class Elsewhere(SerialExecutor):
        name = "elsewhere"

        def imap(self, fn, jobs):
            return super().imap(pickle.loads(pickle.dumps(fn)), jobs)
    loaded = load(claim_path)
    text = _one_line_error(claim_path, loaded.model, loaded.tokenizer, executor=Elsewhere(),
                           cache_dir=tmp_path / "cache")
    assert "exists only in the process it was passed to" in text


def test_identity_tells_weights_config_and_tokenizer_apart():
    import torch

    from loccheck.models.given import given_identity
    from loccheck.testing import char_tokenizer, tiny_model

    model, tok = tiny_model("llama"), char_tokenizer()
    base = given_identity(model, tok)
    assert given_identity(copy.deepcopy(model), char_tokenizer()) == base
    nudged = copy.deepcopy(model)
    with torch.no_grad():
        nudged.lm_head.weight[3, 3] += 1e-3
    assert given_identity(nudged, tok)["weights"] != base["weights"]
    assert given_identity(copy.deepcopy(model).to(torch.bfloat16), tok)["weights"] != base["weights"]
    configured = copy.deepcopy(model)
    configured.config.rms_norm_eps = 1e-3
    assert given_identity(configured, tok)["config"] != base["config"]
    other = given_identity(model, char_tokenizer(extra=["yes"]))
    assert other["tokenizer"] != base["tokenizer"] and other["weights"] == base["weights"]
    assert len({base["sha256"], other["sha256"]}) == 2


def test_localize_takes_a_passed_model(claim_path, tmp_path):
    """`loccheck.localize` (the CLI's `localize`) on the passed model ranks as on its folder."""
    import loccheck
    from loccheck.claim import load_claim

    path = tmp_path / "probed.yaml"
    path.write_text(claim_path.read_text().replace("location: {sites: [L1H2]}", "location: {from_heuristic: true}")
                    + "heuristic: {method: probe, top_k: 2}\n")
    claim = load_claim(path)
    sites, scores, _ = loccheck.localize(claim, cache_dir=tmp_path / "a")
    loaded = load(claim_path)
    unsettle(loaded.model)
    before = snapshot(loaded.model)
    given_sites, given_scores, _ = loccheck.localize(claim, cache_dir=tmp_path / "b", model=loaded.model,
                                                     tokenizer=loaded.tokenizer)
    assert (given_sites, given_scores) == (sites, scores)
    assert_as_before(loaded.model, before)


def test_left_as_found_removes_a_hook_left_behind():
    """The guard itself: a hook registered inside and never removed (a failing run's) is gone."""
    from loccheck.models.given import left_as_found
    from loccheck.testing import tiny_model

    model = tiny_model("llama").train()
    before = snapshot(model)
    with pytest.raises(KeyError):
        with left_as_found(model):
            assert not model.training and not any(p.requires_grad for p in model.parameters())
            model.model.layers[0].self_attn.o_proj.register_forward_pre_hook(lambda m, a: None)
            raise KeyError("inside")
    assert_as_before(model, before)
