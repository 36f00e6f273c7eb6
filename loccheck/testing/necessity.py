"""Known-answer data for the necessity test: questions whose pairs are oriented by what chosen
heads of a `loccheck.testing` model favour (compared with those heads' output-projection columns
zeroed), and pairs that two redundant heads each keep on their own."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from loccheck.locations import HeadLoc
from loccheck.testing import LOWER, WORDS, _set_head_columns, char_tokenizer


def _questions(n_questions: int, seed: int, start: int = 0) -> list[str]:
    """`write_pairs`'s questions ("is {word}{number} real?", one per prompt), from the `start`-th on."""
    rng = np.random.default_rng(seed)
    used, out = set(), []
    for i in range(start + n_questions):
        word = WORDS[i % len(WORDS)] + str(int(rng.integers(10, 99)))
        if word in used:
            word += f"-{i}"
        used.add(word)
        out.append(f"is {word} real?")
    return out[start:]


def _without_heads(model, heads: Iterable[HeadLoc]):
    """A copy of `model` with `heads` zeroed (their columns of the output projection): what a
    zero ablation of them computes."""
    import copy

    import torch

    from loccheck.models import get_adapter

    copied = copy.deepcopy(model)
    adapter = get_adapter(copied)
    with torch.no_grad():
        for loc in heads:
            _set_head_columns(adapter, loc, adapter.out_proj(loc.layer).weight, 0.0)
    return copied


def yes_no_margins(model, questions: Sequence[str], without: Iterable[HeadLoc] = ()) -> np.ndarray:
    """log pi(" yes") - log pi(" no") per question ("qa" prompts, `char_tokenizer`), of `model`
    with the heads `without` zeroed."""
    from types import SimpleNamespace

    from loccheck.data.prompts import tokenize_pairs
    from loccheck.models.scoring import all_pair_logprobs

    pairs = tokenize_pairs(char_tokenizer(), [SimpleNamespace(prompt=q, chosen="yes", rejected="no")
                                              for q in questions], "qa")
    lp = all_pair_logprobs(_without_heads(model, without), pairs, 0).numpy()     # (n, 2)
    return lp[:, 0] - lp[:, 1]


def write_favoured_pairs(path: Path, model, heads: Iterable[HeadLoc], n_questions: int = 48,
                         seed: int = 0) -> Path:
    """`write_pairs`'s questions, each with the chosen answer the one `heads` favour: " yes" over
    " no" where zeroing `heads` lowers the model's margin log pi(" yes") - log pi(" no"), " no"
    over " yes" where it raises it. So the unedited model HAS a behaviour that needs these heads:
    zeroing them lowers every pair's preference margin, by |effect|, whatever a random model's
    own preference between yes and no is. (Other ablations replace the heads' output by
    something else than zero: their drop is measured, not built in.)"""
    heads = list(heads)
    questions = _questions(n_questions, seed)
    effect = yes_no_margins(model, questions) - yes_no_margins(model, questions, heads)
    with open(path, "w") as f:
        for i, (q, e) in enumerate(zip(questions, effect)):
            chosen, rejected = ("yes", "no") if e > 0 else ("no", "yes")
            f.write(json.dumps({"prompt": q, "chosen": chosen, "rejected": rejected, "group": f"q{i}"}) + "\n")
    return path


def letter_logprobs(model, questions: Sequence[str], without: Iterable[HeadLoc] = ()) -> np.ndarray:
    """(n_questions, 26) log pi(letter | "Q: {question} A: "), the letters a..z: the second token of
    a one-letter answer " x" (the first, the space, is the same for every answer)."""
    import torch

    from loccheck.data.prompts import answer_ids, prompt_ids

    tok = char_tokenizer()
    space = answer_ids(tok, "a", "qa")[0]
    letters = [tok.convert_tokens_to_ids(c) for c in LOWER]
    ablated = _without_heads(model, without)
    out = np.empty((len(questions), len(LOWER)))
    with torch.no_grad():
        for i, q in enumerate(questions):
            ids = torch.tensor([[*prompt_ids(tok, q, "qa", None), space]])
            out[i] = ablated(ids).logits[0, -1].float().log_softmax(-1)[letters].double().numpy()
    return out


def write_redundant_pairs(path: Path, model, heads: Sequence[HeadLoc], n_questions: int = 24,
                          seed: int = 0, margin: float = 0.05, max_candidates: int = 2000) -> Path:
    """Pairs that each of `heads` decides alone: one-letter answers " u" / " v", per question the
    pair for which the model prefers u, still prefers u with any one of `heads` zeroed, and prefers
    v with all of them zeroed (each by at least `margin` nats: the widest such pair; questions with
    none are skipped). With the heads made twins (`many_heads_model(twins=...)`), so either alone
    writes what the other does, the preference accuracy of the test pairs is 1 unedited, 1 with any
    one head zeroed, and 0 with all zeroed: each head is redundant, the set of them necessary."""
    heads = list(heads)
    variants = [[]] + [[h] for h in heads] + [heads]          # full, each one zeroed, all zeroed
    kept: list[tuple[str, str, str]] = []
    start = 0
    while len(kept) < n_questions and start < max_candidates:
        questions = _questions(64, seed, start)
        start += 64
        lp = np.stack([letter_logprobs(model, questions, v) for v in variants])   # (variants, n, 26)
        pair_margin = lp[:, :, :, None] - lp[:, :, None, :]                       # (variants, n, u, v)
        score = np.minimum(pair_margin[:-1].min(0), -pair_margin[-1])             # (n, u, v)
        for q, s in zip(questions, score):
            u, v = np.unravel_index(np.argmax(s), s.shape)
            if s[u, v] >= margin and len(kept) < n_questions:
                kept.append((q, LOWER[u], LOWER[v]))
    if len(kept) < n_questions:
        raise ValueError(f"found only {len(kept)} questions that {', '.join(map(str, heads))} decide each alone")
    with open(path, "w") as f:
        for i, (q, chosen, rejected) in enumerate(kept):
            f.write(json.dumps({"prompt": q, "chosen": chosen, "rejected": rejected, "group": f"q{i}"}) + "\n")
    return path
