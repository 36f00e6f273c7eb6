"""Known-answer models and data for tests (loccheck's own, and a paper's that wants them):
tiny random models of each supported architecture built from configs (nothing is
downloaded), models in which only chosen heads reach the residual stream, a character
tokenizer, and a preference dataset an edit can learn. Saved to folders, they go through the
same loading path as any model a claim names. torch is imported inside the functions.

To add an architecture: register its adapter, give `tiny_model` a config for it and list it
in FAMILIES; `known_model` zeroes the dead heads through the adapter (`head_slice`,
`fan_in_fan_out`), so it needs nothing new, and tests/test_known_answers.py runs its known
answers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from loccheck.locations import HeadLoc, MlpLoc

FAMILIES = ["llama", "gpt2", "gpt_neox"]
VOCAB = 100   # room for the character tokenizer of tests/known_models.py
INIT = 0.5


def tiny_model(family: str, seed: int = 0, n_layers: int = 2):
    """A 2-layer (or `n_layers`), 4-head, width-32 causal LM with random weights, in eval mode
    and frozen.

    The weights are drawn wider than the default (std 0.5, not 0.02): a default-initialised
    tiny model predicts almost the same distribution whatever its hidden state, so no edit
    could move it, and tests of training would test nothing."""
    import torch
    from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                              LlamaConfig, LlamaForCausalLM)

    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
            num_attention_heads=4, num_key_value_heads=2, initializer_range=INIT, bos_token_id=1, eos_token_id=2,
            pad_token_id=0))
    elif family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=n_layers, n_head=4, initializer_range=INIT,
                                           bos_token_id=1, eos_token_id=2, pad_token_id=0))
    elif family == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
            num_attention_heads=4, initializer_range=INIT, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    else:
        raise ValueError(family)
    return model.eval().requires_grad_(False)


def char_tokenizer():
    """One token per printable ASCII character (ids 4..98); no download, no BOS."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for c in range(32, 127):
        vocab[chr(c)] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def known_model(family: str, live: Iterable[HeadLoc], seed: int = 0):
    """A tiny model whose output projections read only the `live` heads: every other head's
    slice of each projection's input is multiplied by zero weights."""
    import torch

    from loccheck.models import get_adapter

    model = tiny_model(family, seed=seed)
    adapter = get_adapter(model)
    live = set(live)
    with torch.no_grad():
        for loc in adapter.all_heads():
            if loc in live:
                continue
            weight = adapter.out_proj(loc.layer).weight
            cols = adapter.head_slice(loc)
            if adapter.fan_in_fan_out:          # GPT-2 Conv1D: weight is (in, out)
                weight[cols, :] = 0
            else:                               # nn.Linear: weight is (out, in)
                weight[:, cols] = 0
    return model


def known_mlp_model(family: str, live: Iterable[MlpLoc], n_layers: int, seed: int = 0):
    """A tiny model of `n_layers` in which only the `live` layers' MLPs reach the residual
    stream: every parameter of every other layer's MLP is zero, so its hidden activation is
    zero (act(0) = 0 in all three families) and so is its output. An edit of a dead MLP's down
    projection, which reads that hidden activation, is then exactly the identity."""
    import torch

    from loccheck.models import get_adapter

    model = tiny_model(family, seed=seed, n_layers=n_layers)
    adapter = get_adapter(model)
    live = set(live)
    with torch.no_grad():
        for site in adapter.sites("mlp"):
            if site not in live:
                mlp = model.get_submodule(adapter.mlp_names[site.layer].rsplit(".", 1)[0])
                for param in mlp.parameters():
                    param.zero_()
    return model


def write_model_dir(path: Path, family: str, live: Iterable, seed: int = 0, n_layers: int = 2) -> Path:
    """A known-answer model saved with its tokenizer: live heads (HeadLoc), or live MLP layers
    (MlpLoc) in an `n_layers` model."""
    path.mkdir(parents=True, exist_ok=True)
    live = list(live)
    if live and live[0].kind == "mlp":
        model = known_mlp_model(family, live, n_layers, seed)
    else:
        model = known_model(family, live, seed)
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "glass", "piano", "ocean", "lemon",
         "candle", "forest", "rocket", "silver", "garden", "planet", "violet", "marble", "winter",
         "copper", "falcon", "harbor", "island", "jungle", "kettle", "ladder", "meadow", "needle"]


def write_pairs(path: Path, n_questions: int = 24, seed: int = 0) -> Path:
    """Preference pairs with one learnable rule: the chosen answer is " yes", the rejected " no"."""
    rng = np.random.default_rng(seed)
    used = set()
    with open(path, "w") as f:
        for i in range(n_questions):
            word = WORDS[i % len(WORDS)] + str(int(rng.integers(10, 99)))
            if word in used:   # one question per prompt: a repeated prompt would leak across splits
                word += f"-{i}"
            used.add(word)
            f.write(json.dumps({"prompt": f"is {word} real?", "chosen": "yes", "rejected": "no",
                                "group": f"q{i}"}) + "\n")
    return path


DEFAULT_EDIT = "{max_epochs: 3, batch_size: 4, learning_rate: 0.05, init_std: 0.1}"
DEFAULT_SPLIT = "{train: 0.5, validation: 0.25, test: 0.25, seed: 0}"


def claim_text(model_dir: Path, data: Path, heads: list[str], *, n: int = 19, alpha: float = 0.05,
               expect: str | None = None, extra: str = "", edit: str = DEFAULT_EDIT,
               split: str = DEFAULT_SPLIT, random_seed: int = 0, rho: float | None = None,
               edits: str | None = None, stop: str | None = None) -> str:
    """A claim file for a known-answer model: qa prompts, a short fixed budget (`edit` and
    `split` are YAML flow mappings that replace the defaults whole; `edit` is the one optimal
    edit, `edits` a flow list of several that replaces it)."""
    lines = [f'claim: "The behaviour lives in {", ".join(heads)}."',
             f"model: {{name: '{model_dir}', device: cpu}}",
             f"behavior: {{dataset: jsonl, path: '{data}', prompt_format: qa,",
             f"           split: {split}}}",
             f"location: {{sites: [{', '.join(heads)}]}}",
             f"edits: {edits or '[' + edit + ']'}",
             f"random_locations: {{n: {n}, seed: {random_seed}" + (f", stop: {stop}" if stop else "") + "}",
             f"verdict: {{alpha: {alpha}" + (f", rho: {rho}" if rho is not None else "") + "}"]
    if expect:
        lines.append(f"expect: {expect}")
    return "\n".join(lines) + "\n" + extra


def head_grid(n_layers: int, n_heads: int) -> tuple[HeadLoc, ...]:
    """Every head site of a model of `n_layers` x `n_heads`, in adapter order (layer-major)."""
    from loccheck.locations import head_sites

    return head_sites(n_layers, n_heads)


def write_known_facts(path: Path, model, n_facts: int = 24, n_relations: int = 3, seed: int = 0) -> Path:
    """A known_1000.json of facts this tiny model knows (with `char_tokenizer`): prompts
    "{subject} {xy}", a four-letter subject and a two-letter word, whose greedy continuation is a
    space and then a letter, which becomes the attribute. Relations take turns, so each has
    facts to flip to and attributes to draw counterfactuals from."""
    import torch

    tok = char_tokenizer()
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    ids_of = {c: tok.convert_tokens_to_ids(c) for c in letters + [" "]}
    letter_of = {i: c for c, i in ids_of.items() if c != " "}
    records: list[dict] = []
    seen: set[str] = set()
    for _ in range(100):
        subjects = ["".join(rng.choice(letters, 4)).capitalize() for _ in range(1024)]
        prompts = [f"{s} {''.join(rng.choice(letters, 2))}" for s in subjects]
        ids = torch.tensor([tok(p).input_ids for p in prompts])
        with torch.no_grad():
            first = model(ids).logits[:, -1].argmax(-1)
            second = model(torch.cat([ids, first[:, None]], 1)).logits[:, -1].argmax(-1)
        for s, p, a, b in zip(subjects, prompts, first.tolist(), second.tolist()):
            if a == ids_of[" "] and b in letter_of and s not in seen:
                seen.add(s)
                records.append({"known_id": len(records), "subject": s, "attribute": letter_of[b],
                                "template": "{}" + p[len(s):], "prediction": " " + letter_of[b],
                                "prompt": p, "relation_id": f"P{len(records) % n_relations}"})
                if len(records) == n_facts:
                    path.write_text(json.dumps(records, indent=1))
                    return path
    raise ValueError(f"found only {len(records)} facts this model knows")
