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
VOCAB = 64
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
