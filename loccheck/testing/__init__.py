"""Known-answer models and data for tests (loccheck's own, and a paper's that wants them):
tiny random models of each supported architecture built from configs (nothing is
downloaded), models in which only chosen heads reach the residual stream, a character
tokenizer, and a preference dataset an edit can learn. Saved to folders, they go through the
same loading path as any model a claim names. torch is imported inside the functions.

To add an architecture: give its `model_type` a layout in `models/families.py` and a tiny
config in TINY_CONFIGS here; `known_model` zeroes the dead heads through the adapter
(`head_slice`, `fan_in_fan_out`), so it needs nothing new, and tests/models/test_families.py
runs every contract and the planted known answers on it. FAMILIES, the three families every
training test runs on, get the known answers in more depth (tests/end_to_end/).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from loccheck.locations import HeadLoc, MlpLoc, NeuronLoc

FAMILIES = ["llama", "gpt2", "gpt_neox"]   # the families every known-answer and training test runs on
VOCAB = 100   # room for the character tokenizer of tests/known_models.py
INIT = 0.5

_SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
              num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_EXPERTS = dict(num_experts_per_tok=2, moe_intermediate_size=16)
# Every family loccheck has an adapter for: its config class and what differs from _SIZES.
# Gemma-2's final logit soft-capping is set low so that it changes these small logits by a lot.
TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 8}),
    "gemma": ("GemmaConfig", {"head_dim": 8}),
    "gemma2": ("Gemma2Config", {"head_dim": 8, "final_logit_softcapping": 2.0}),
    "gemma3_text": ("Gemma3TextConfig", {"head_dim": 8}),
    "phi3": ("Phi3Config", {}),
    "phi": ("PhiConfig", {}),
    "olmo2": ("Olmo2Config", {}),
    "starcoder2": ("Starcoder2Config", {}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "olmoe": ("OlmoeConfig", {"num_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": ("Qwen2MoeConfig", {"num_experts": 4, **_EXPERTS, "shared_expert_intermediate_size": 32}),
    "qwen3_moe": ("Qwen3MoeConfig", {"num_experts": 4, **_EXPERTS, "head_dim": 8}),
    "gptj": ("GPTJConfig", {"rotary_dim": 4}),
    "falcon": ("FalconConfig", {}),
    "gpt2": ("GPT2Config", {}),
    "gpt_neox": ("GPTNeoXConfig", {}),
}
ALL_FAMILIES = list(TINY_CONFIGS)


def tiny_model(family: str, seed: int = 0, n_layers: int = 2):
    """A 2-layer (or `n_layers`), 4-head, width-32 causal LM of `family` (any of ALL_FAMILIES)
    with random weights, in eval mode and frozen.

    The weights are drawn wider than the default (std 0.5, not 0.02): a default-initialised
    tiny model predicts almost the same distribution whatever its hidden state, so no edit
    could move it, and tests of training would test nothing."""
    import torch
    import transformers

    if family not in TINY_CONFIGS:
        raise ValueError(f"no tiny config for {family!r}; families: {', '.join(ALL_FAMILIES)}")
    name, extra = TINY_CONFIGS[family]
    config = getattr(transformers, name)(**{**_SIZES, "num_hidden_layers": n_layers,
                                            "initializer_range": INIT, **extra})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    return model.eval().requires_grad_(False)


def token_pairs(seed: int = 0, n: int = 7) -> list:
    """`n` preference pairs of random token ids (3..59): prompts of 2-8 tokens, answers of 1-4."""
    from loccheck.data.prompts import TokenizedPair

    rng = np.random.default_rng(seed)

    def seq(lo, hi):
        return tuple(int(t) for t in rng.integers(3, 60, size=int(rng.integers(lo, hi))))
    return [TokenizedPair(seq(2, 9), seq(1, 5), seq(1, 5)) for _ in range(n)]


def char_tokenizer(extra: Sequence[str] = (), split: str = "."):
    """One token per printable ASCII character (ids 4..98), then one per string of `extra`
    (ids 99, ...; `split` is the regex that cuts text into tokens); no download, no BOS."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for token in [chr(c) for c in range(32, 127)] + list(extra):
        vocab[token] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(split), behavior="isolated")
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
            _set_head_columns(adapter, loc, adapter.out_proj(loc.layer).weight, 0)
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
                # the MLP: the site's parent (the down projection's), or the sparse block itself
                name = adapter.mlp_names[site.layer]
                mlp = model.get_submodule(name if adapter.experts else name.rsplit(".", 1)[0])
                for param in mlp.parameters():
                    param.zero_()
    return model


def known_neuron_model(family: str, live: Iterable[NeuronLoc], n_layers: int, seed: int = 0):
    """A tiny model of `n_layers` in which only the `live` hidden units reach the residual
    stream: every other unit's column of its layer's down projection is zero. A dead unit still
    computes its activation, but whatever an edit adds to it is multiplied by zero weights."""
    import torch

    from loccheck.models import get_adapter

    model = tiny_model(family, seed=seed, n_layers=n_layers)
    adapter = get_adapter(model)
    live = set(live)
    with torch.no_grad():
        for layer in range(adapter.n_layers):
            weight = adapter.mlp_out(layer).weight
            dead = [u for u in range(adapter.mlp_width) if NeuronLoc(layer, u) not in live]
            if adapter.fan_in_fan_out:          # GPT-2 Conv1D: weight is (in, out)
                weight[dead, :] = 0
            else:
                weight[:, dead] = 0
    return model


def planted_direction(width: int, seed: int = 0) -> np.ndarray:
    """A unit vector of R^width, and with it `known_direction_model`'s readout."""
    v = np.random.default_rng(seed).standard_normal(width)
    return v / np.linalg.norm(v)


def known_direction_model(direction: np.ndarray, n_layers: int = 2, seed: int = 0, scale: float = 1.0):
    """A tiny Llama whose residual stream never holds the unit vector v = `direction` and
    whose output reads that stream only along v.

    Every write to the stream (the embeddings, each layer's attention and MLP output
    projection) has its v component projected out, and the unembedding is E v^T (E random, the
    final norm's weights ones): every logit is E_t (v . n(h)), n the final RMS norm. Unedited,
    v . h = 0 at every position, so every logit is 0; an edit of the stream after the last layer
    reaches the output only through its component along v. An edit orthogonal to v leaves
    v . h = 0 (to float rounding) and the output uniform, however it rescales the norm; one along
    a direction u moves v . n(h) by at most |u . v| of what one along v can."""
    import torch

    model = tiny_model("llama", seed=seed, n_layers=n_layers)
    v = torch.as_tensor(direction, dtype=torch.float32)
    away = torch.eye(v.numel()) - torch.outer(v, v)                     # projects v out
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        embed = model.get_input_embeddings().weight                     # (vocab, d)
        embed.copy_(embed @ away)
        for layer in model.model.layers:
            for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):  # weight (d, in)
                proj.weight.copy_(away @ proj.weight)
        model.model.norm.weight.fill_(1.0)
        e = torch.randn(model.config.vocab_size, generator=gen) * scale
        model.get_output_embeddings().weight.copy_(e[:, None] * v[None, :])
    return model


def write_model_dir(path: Path, family: str, live: Iterable, seed: int = 0, n_layers: int = 2) -> Path:
    """A known-answer model saved with its tokenizer: live heads (HeadLoc), live MLP layers
    (MlpLoc) or live neurons (NeuronLoc) in an `n_layers` model."""
    path.mkdir(parents=True, exist_ok=True)
    live = list(live)
    if live and live[0].kind == "neuron":
        model = known_neuron_model(family, live, n_layers, seed)
    elif live and live[0].kind == "mlp":
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


DEFAULT_EDIT = "{max_epochs: 3, batch_size: 4, learning_rate: 0.05, ceiling_learning_rate: 0.05, init_std: 0.1}"
DEFAULT_SPLIT = "{train: 0.5, validation: 0.25, test: 0.25, seed: 0}"


def claim_text(model_dir: Path, data: Path, heads: list[str], *, n: int | None = 19, alpha: float = 0.05,
               expect: str | None = None, extra: str = "", edit: str = DEFAULT_EDIT,
               split: str = DEFAULT_SPLIT, random_seed: int = 0, rho: float | None = None,
               edits: str | None = None, stop: str | None = None, draw: str | None = None) -> str:
    """A claim file for a known-answer model: qa prompts, a short fixed budget (`edit` and
    `split` are YAML flow mappings that replace the defaults whole; `edit` is the one optimal
    edit, `edits` a flow list of several that replaces it). `n=None` leaves n out (draw: every)."""
    lines = [f'claim: "The behaviour lives in {", ".join(heads)}."',
             f"model: {{name: '{model_dir}', device: cpu}}",
             f"behavior: {{dataset: jsonl, path: '{data}', prompt_format: qa,",
             f"           split: {split}}}",
             f"location: {{sites: [{', '.join(heads)}]}}",
             f"edits: {edits or '[' + edit + ']'}",
             "random_locations: {" + (f"n: {n}, " if n is not None else "") + f"seed: {random_seed}"
             + (f", stop: {stop}" if stop else "") + (f", draw: {draw}" if draw else "") + "}",
             f"verdict: {{alpha: {alpha}" + (f", rho: {rho}" if rho is not None else "") + "}"]
    if expect:
        lines.append(f"expect: {expect}")
    return "\n".join(lines) + "\n" + extra


LOWER = "abcdefghijklmnopqrstuvwxyz"


def write_known_facts(path: Path, model, n_facts: int = 24, n_relations: int = 3, seed: int = 0) -> Path:
    """A known_1000.json of facts this tiny model knows (with `char_tokenizer`): prompts
    "{subject} {xy}", a four-letter subject and a two-letter word, whose greedy continuation is a
    space and then a letter, which becomes the attribute. Relations take turns, so each has
    facts to flip to and attributes to draw counterfactuals from."""
    import torch

    tok = char_tokenizer()
    rng = np.random.default_rng(seed)
    letters = list(LOWER)
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


GATED_VOCAB = 128   # the character tokenizer's 99 ids and 26 spaced letters


def spaced_char_tokenizer():
    """`char_tokenizer` plus one token per space and lower-case letter (" a" .. " z", ids
    99..124), so a one-letter attribute after a space (" k", as `answer_ids` spells it) is one
    token, predicted at the prompt's last token."""
    return char_tokenizer([" " + c for c in LOWER], split=" [a-z]|.")


def gated_mlp_model(live: MlpLoc, n_layers: int = 4, open_letters: str = LOWER[:13], seed: int = 0,
                    gate: float = 4.0, scale: float = 100.0, answer_boost: float = 3.0):
    """A tiny Llama (width 32, ReLU MLPs; for `spaced_char_tokenizer`) whose only live MLP,
    layer `live.layer`, is gated by the current token: it is silent, its hidden activation
    exactly zero, at every token but the `open_letters`.

    - The gate is residual coordinate 31. Only the token embedding writes it (its row of every
      o_proj and down projection is zero, and Llama has no biases): +`gate` for the open
      letters, -`gate` for every other token. RMSNorm scales it by a positive number, so its
      sign reaches the live MLP unchanged; that MLP's gate projection reads coordinate 31 alone,
      with positive weights, so ReLU(gate) * up is exactly 0 at a closed token and non-zero
      at an open one. Every other layer's MLP is all zeros.
    - The live MLP's down projection is `scale` times its random draw, so at an open token its
      output dominates the residual stream, and with it the prediction made there.
    - The spaced letters' unembeddings are `answer_boost` times longer, so the greedy next
      token after a word is usually a spaced letter (`write_gated_facts` keeps those words)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = spaced_char_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=GATED_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=INIT, hidden_act="relu",
        bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval().requires_grad_(False)
    g = model.config.hidden_size - 1
    with torch.no_grad():
        embed = model.get_input_embeddings().weight               # (vocab, d)
        embed[:, g] = -gate
        embed[[tok.convert_tokens_to_ids(c) for c in open_letters], g] = gate
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.o_proj.weight[g] = 0                   # (d, d): row g writes coordinate g
            if i != live.layer:
                for param in layer.mlp.parameters():
                    param.zero_()
        mlp = model.model.layers[live.layer].mlp
        weights = mlp.gate_proj.weight[:, g].abs() + 0.1          # (d_ff,) all positive
        mlp.gate_proj.weight.zero_()
        mlp.gate_proj.weight[:, g] = weights
        mlp.down_proj.weight.mul_(scale)
        mlp.down_proj.weight[g] = 0
        model.lm_head.weight[[tok.convert_tokens_to_ids(" " + c) for c in LOWER]] *= answer_boost
    return model


def write_gated_model_dir(path: Path, live: MlpLoc, n_layers: int = 4, open_letters: str = LOWER[:13],
                          seed: int = 0, **kwargs) -> Path:
    """`gated_mlp_model` saved with `spaced_char_tokenizer`."""
    path.mkdir(parents=True, exist_ok=True)
    gated_mlp_model(live, n_layers, open_letters, seed, **kwargs).save_pretrained(path)
    spaced_char_tokenizer().save_pretrained(path)
    return path


def write_gated_facts(path: Path, model, open_letters: str = LOWER[:13], n_facts: int = 32,
                      n_relations: int = 3, seed: int = 0) -> Path:
    """A known_1000.json for `gated_mlp_model`: each prompt is its subject alone, a capitalised
    four-letter word, so the subject's last token is the prompt's last token; the attribute is
    the model's greedy next token, a spaced letter. Half the facts' subjects end in an open
    letter, half in a closed one. Relations take turns."""
    import torch

    tok = spaced_char_tokenizer()
    rng = np.random.default_rng(seed)
    letter_of = {tok.convert_tokens_to_ids(" " + c): c for c in LOWER}
    records: list[dict] = []
    left = {True: n_facts // 2, False: n_facts - n_facts // 2}   # open, closed
    for _ in range(100):
        subjects = ["".join(rng.choice(list(LOWER), 4)).capitalize() for _ in range(1024)]
        ids = torch.tensor([tok(s).input_ids for s in subjects])
        with torch.no_grad():
            first = model(ids).logits[:, -1].argmax(-1).tolist()
        for s, a in zip(subjects, first):
            opened = s[-1] in open_letters
            if a in letter_of and left[opened] and s not in {r["subject"] for r in records}:
                left[opened] -= 1
                records.append({"known_id": len(records), "subject": s, "attribute": letter_of[a],
                                "template": "{}", "prediction": " " + letter_of[a], "prompt": s,
                                "relation_id": f"P{len(records) % n_relations}"})
                if len(records) == n_facts:
                    path.write_text(json.dumps(records, indent=1))
                    return path
    raise ValueError(f"found only {len(records)} facts this model knows")


def write_tracing_claim(folder: Path, live: Iterable[MlpLoc] = (MlpLoc(2),), n_layers: int = 4,
                        n_facts: int = 16) -> Path:
    """A causal-tracing claim of `live` in `folder`: `write_model_dir`'s GPT-NeoX of `n_layers`
    whose only live MLPs are `live`, `n_facts` facts it knows (`write_known_facts`, split half
    train, half test), a text sample for ROME's key statistics, tracing with 2 samples, window
    1 and the last token's aggregate, and a short ROME edit (10 value steps). Returns the
    claim's path."""
    from loccheck.models.loading import load_model

    live = list(live)
    model_dir = write_model_dir(folder / "model", "gpt_neox", live, n_layers=n_layers)
    facts = write_known_facts(folder / "known_1000.json", load_model(str(model_dir), device="cpu").model,
                              n_facts=n_facts)
    stats = folder / "stats.txt"
    stats.write_text("\n".join(f"Word{i} is near {i * 3} and {i % 7}" for i in range(300)))
    claim = folder / "tracing.yaml"
    claim.write_text(f"""\
claim: "The facts live in the MLP that tracing picks."
model: {{name: '{model_dir}', device: cpu}}
behavior: {{dataset: known_facts, path: '{facts}', split: {{train: 0.5, validation: 0.0, test: 0.5, seed: 0}}}}
location: {{sites: [{', '.join(str(s) for s in live)}]}}
heuristic: {{method: causal_tracing, samples: 2, window: 1, aggregate: last_token}}
edits: [{{method: optimal}}, {{method: rome, stats_path: '{stats}', v_steps: 10}}]
""")
    return claim


# --- necessity: models with many heads (or twin heads) and pairs oriented by what heads do -------

def many_heads_model(family: str, live: Iterable[HeadLoc], n_layers: int = 4, n_heads: int = 16,
                     head_dim: int = 4, seed: int = 0, twins: Iterable[tuple[HeadLoc, HeadLoc]] = ()):
    """`known_model` with more sites: an `n_layers` x `n_heads` model of `family` (width
    n_heads * head_dim, one key/value head per query head) whose output projections read only the
    `live` heads. `twins`: pairs (a, b) of heads of one layer, both listed in `live`; b is made a
    copy of a (its query, key and value weights and its columns of the output projection), so the
    two compute the same output and write the same thing: either one alone writes what the other
    does (layouts with separate q/k/v projections, as Llama's; others raise ValueError). Random
    single heads of a model of K heads hit a given one with probability 1/K: the necessity null's
    smallest p-values need K well above N."""
    import torch
    import transformers

    from loccheck.models import get_adapter

    if family not in TINY_CONFIGS:
        raise ValueError(f"no tiny config for {family!r}; families: {', '.join(ALL_FAMILIES)}")
    name, extra = TINY_CONFIGS[family]
    width = n_heads * head_dim
    sizes = {**_SIZES, "hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": n_heads,
             "num_key_value_heads": n_heads, "num_hidden_layers": n_layers, "initializer_range": INIT,
             **extra, **({"head_dim": head_dim} if "head_dim" in extra else {})}
    config = getattr(transformers, name)(**sizes)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)
    adapter = get_adapter(model)
    live = set(live)
    with torch.no_grad():
        for a, b in twins:
            if a.layer != b.layer:
                raise ValueError(f"`twins` must be heads of one layer, got {a} and {b}")
            out_proj = adapter.out_proj(a.layer)
            attention = _attention_of(model, out_proj)
            src, dst = adapter.head_slice(a), adapter.head_slice(b)
            for proj_name in ("q_proj", "k_proj", "v_proj"):
                proj = getattr(attention, proj_name, None)
                if proj is None:
                    raise ValueError(f"`twins` needs separate q/k/v projections; {family}'s attention has none")
                proj.weight[dst] = proj.weight[src]                       # (n_heads * head_dim, width)
                if proj.bias is not None:
                    proj.bias[dst] = proj.bias[src]
            _set_head_columns(adapter, b, out_proj.weight, _head_columns(adapter, a, out_proj.weight))
        for loc in adapter.all_heads():
            if loc not in live:
                _set_head_columns(adapter, loc, adapter.out_proj(loc.layer).weight, 0.0)
    return model


def _attention_of(model, out_proj):
    """The attention module whose output projection is `out_proj`."""
    for module in model.modules():
        if any(child is out_proj for child in module.children()):
            return module
    raise ValueError("no module holds this output projection")


def _head_columns(adapter, loc: HeadLoc, weight):
    """A head's slice of its output projection's weight: the columns it reads (rows for Conv1D)."""
    cols = adapter.head_slice(loc)
    return weight[cols, :] if adapter.fan_in_fan_out else weight[:, cols]


def _set_head_columns(adapter, loc: HeadLoc, weight, value) -> None:
    cols = adapter.head_slice(loc)
    if adapter.fan_in_fan_out:          # GPT-2 Conv1D: weight is (in, out)
        weight[cols, :] = value
    else:                               # nn.Linear: weight is (out, in)
        weight[:, cols] = value


def write_many_heads_model_dir(path: Path, family: str, live: Iterable[HeadLoc], n_layers: int = 4,
                               n_heads: int = 16, head_dim: int = 4, seed: int = 0,
                               twins: Iterable[tuple[HeadLoc, HeadLoc]] = ()) -> Path:
    """`many_heads_model` saved with `char_tokenizer`."""
    path.mkdir(parents=True, exist_ok=True)
    many_heads_model(family, live, n_layers, n_heads, head_dim, seed, twins).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


# The necessity test's known-answer data (pairs oriented by what chosen heads favour)
from loccheck.testing.necessity import (letter_logprobs, write_favoured_pairs, write_redundant_pairs,  # noqa: E402
                                        yes_no_margins)
