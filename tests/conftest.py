"""Shared fixtures: tiny random-weight models of each supported architecture (nothing is
downloaded), and the data folder CI points LOCCHECK_DATA_DIR at."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=200, deadline=None)
settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent
VOCAB = 100   # room for the character tokenizer of tests/known_models.py
INIT = 0.5


def tiny_model(family: str, seed: int = 0):
    """A 2-layer, 4-head, width-32 causal LM with random weights, in eval mode and frozen.

    The weights are drawn wider than the default (std 0.5, not 0.02): a default-initialised
    tiny model predicts almost the same distribution whatever its hidden state, so no edit
    could move it, and tests of training would test nothing."""
    import torch
    from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                              LlamaConfig, LlamaForCausalLM)

    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, initializer_range=INIT, bos_token_id=1, eos_token_id=2,
            pad_token_id=0))
    elif family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, initializer_range=INIT,
                                           bos_token_id=1, eos_token_id=2, pad_token_id=0))
    elif family == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, initializer_range=INIT, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    else:
        raise ValueError(family)
    return model.eval().requires_grad_(False)


FAMILIES = ["llama", "gpt2", "gpt_neox"]


@pytest.fixture(params=FAMILIES)
def family_model(request):
    return request.param, tiny_model(request.param)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder: $LOCCHECK_DATA_DIR, else ../shared/data beside the repo."""
    path = Path(os.environ.get("LOCCHECK_DATA_DIR") or REPO.parent / "shared" / "data").resolve()
    if not (path / "TruthfulQA.csv").is_file():
        pytest.skip(f"TruthfulQA.csv not found in {path} (set LOCCHECK_DATA_DIR)")
    return path


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Fitted edits go to a fresh cache per test session, so a test that fits really fits; the
    converted SmolLM2 weights (a minute to convert) are shared with the user's cache."""
    from loccheck.cache import cache_dir

    real = cache_dir()
    root = tmp_path_factory.mktemp("loccheck-cache")
    (real / "models").mkdir(parents=True, exist_ok=True)
    (root / "models").symlink_to(real / "models", target_is_directory=True)
    previous = os.environ.get("LOCCHECK_CACHE_DIR")
    os.environ["LOCCHECK_CACHE_DIR"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("LOCCHECK_CACHE_DIR", None)
    else:
        os.environ["LOCCHECK_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def known_llama(tmp_path_factory):
    """A tiny Llama in which only head L1H2 reaches the residual stream, and pairs it can learn."""
    from known_models import write_model_dir, write_pairs
    from loccheck.locations import HeadLoc

    root = tmp_path_factory.mktemp("known-llama")
    return write_model_dir(root / "model", "llama", [HeadLoc(1, 2)]), write_pairs(root / "pairs.jsonl")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models are ~40x slower with two torch threads competing for two busy cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
