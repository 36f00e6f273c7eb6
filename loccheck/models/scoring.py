"""Log-probabilities of answers given prompts, summed over the answer tokens only."""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from loccheck.data.prompts import TokenizedPair
from loccheck.models.windows import mask_windows, windowed


OnBatch = Callable[[torch.Tensor], None]


def answer_logprobs(model, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                    pad_id: int, *, on_batch: OnBatch | None = None, prefix=None) -> torch.Tensor:
    """log pi(answer | prompt) for each sequence, shape (batch,). Differentiable.

    The vocabulary projection runs only at positions that predict an answer token: for a
    small model most of the compute of a full `logits` tensor would be thrown away.

    Sequences are right-padded. If `on_batch` is given, it is called right before the forward
    with a bool tensor (batch, width) on the model's device that marks, in row i, positions
    [len(prompt_i) - 1, len(prompt_i) + len(answer_i)): the last prompt token, then every answer
    token. All but the final one predict an answer token; the final one's logits are dropped.
    Padding is never marked. (Position-dependent edits such as ITI use it; see `loccheck.iti`.)

    `prefix` (a `models.prefix.FrozenPrefix` of the prompt + answer token tuples, `sequence_prefix`)
    runs only the blocks above it.
    """
    device = next(model.parameters()).device
    rows, logits, targets = _answer_logits(model, prompts, answers, pad_id, on_batch, prefix)
    token_logp = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    return torch.zeros(len(prompts), device=device).index_add(0, rows, token_logp)


def padded(seqs: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input ids, attention mask), each (len(seqs), longest)."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, :len(seq)], mask[i, :len(seq)] = torch.tensor(list(seq), dtype=torch.long), 1
    return ids.to(device), mask.to(device)


def _fed(prefix, items):
    """The forward of `items` runs from the frozen prefix when there is one."""
    return prefix.feeding(items) if prefix is not None else contextlib.nullcontext()


def _answer_logits(model, prompts, answers, pad_id: int, on_batch: OnBatch | None = None, prefix=None):
    """One right-padded forward of prompt + answer sequences: (row of each answer token,
    float32 logits at the position that predicts it (n_tok, vocab), the token)."""
    device = next(model.parameters()).device
    seqs = [list(p) + list(a) for p, a in zip(prompts, answers)]
    ids, mask = padded(seqs, pad_id, device)
    positions = torch.zeros(ids.shape, dtype=torch.bool) if on_batch is not None else None
    rows, cols, targets = [], [], []
    for i, (p, a) in enumerate(zip(prompts, answers)):
        n = len(p) + len(a)
        if positions is not None:
            positions[i, len(p) - 1:n] = True
        rows += [i] * len(a)
        cols += range(len(p) - 1, n - 1)       # position t predicts token t + 1
        targets += a
    body = getattr(model, model.base_model_prefix)
    if on_batch is not None:
        on_batch(positions.to(device))
    with _fed(prefix, [tuple(q) for q in seqs]):
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
    rows_t = torch.tensor(rows, device=device)
    picked = hidden[rows_t, torch.tensor(cols, device=device)]                           # (n_tok, d)
    return rows_t, vocab_logits(model, picked), torch.tensor(targets, device=device)


@torch.no_grad()
def greedy_matches(model, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                   pad_id: int, batch_size: int = 32) -> list[bool]:
    """Whether greedy decoding from each prompt produces its answer's tokens first: every
    answer token is the argmax given the prompt and the answer tokens before it (one teacher-
    forced forward instead of a decoding loop; the same thing)."""
    out: list[bool] = []
    for start in range(0, len(prompts), batch_size):
        p, a = prompts[start:start + batch_size], answers[start:start + batch_size]
        rows, logits, targets = _answer_logits(model, p, a, pad_id)
        wrong = torch.zeros(len(p), dtype=torch.long, device=rows.device).index_add(
            0, rows, (logits.argmax(-1) != targets).long())
        out += (wrong == 0).tolist()
    return out


def vocab_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The model's logits from its last hidden states, in float32: the output embedding, then
    the final logit soft-capping of the families that have one (Gemma-2), which changes
    log-probabilities by nats at realistic logit scales. `models.checks` proves on every loaded
    model that these are its own logits."""
    logits = float32_logits(model.get_output_embeddings(), hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def float32_logits(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The vocabulary projection in float32 whatever the weights' dtype: in bfloat16 a
    log-probability near -20 has a resolution of 0.125, as large as the effects compared."""
    weight = head.weight
    bias = getattr(head, "bias", None)
    if weight.dtype == torch.float32 and hidden.dtype == torch.float32:
        return head(hidden)
    return torch.nn.functional.linear(hidden.float(), weight.float(),
                                      None if bias is None else bias.float())


def pair_logprobs(model, pairs: Sequence[TokenizedPair], pad_id: int, *,
                  on_batch: OnBatch | None = None, prefix=None, packed: bool = True) -> torch.Tensor:
    """(batch, 2) log-probabilities of the chosen and the rejected answer of each pair.

    One forward of the pairs packed (`packed_pairs`: each prompt once, both answers after it).
    With `on_batch`, whose positions are defined for one answer per row (`answer_logprobs`), or
    `packed=False`, or for a model whose layers' windows no packed mask can give
    (`windows.packable`), one forward over 2 * batch plain sequences instead (chosen answers
    first): the same numbers to float rounding. `prefix` (a `models.prefix.FrozenPrefix` of
    packed pairs holding these) runs only the blocks above it."""
    windows = _packed_windows(model) if on_batch is None and packed else None
    if windows is _UNPACKABLE or on_batch is not None or not packed:
        if prefix is not None:
            raise ValueError("a frozen prefix holds packed pairs; these are scored unpacked")
        prompts = [p.prompt for p in pairs] * 2
        answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        lp = answer_logprobs(model, prompts, answers, pad_id, on_batch=on_batch)
        return torch.stack([lp[: len(pairs)], lp[len(pairs):]], dim=1)
    device = next(model.parameters()).device
    batch = packed_pairs(pairs, pad_id, next(model.parameters()).dtype, device, windows=windows)
    body = getattr(model, model.base_model_prefix)
    with _fed(prefix, pairs):
        hidden = body(**batch.inputs).last_hidden_state
    logits = vocab_logits(model, hidden[batch.rows, batch.cols])
    token_logp = logits.log_softmax(-1).gather(-1, batch.targets[:, None]).squeeze(-1)
    return torch.zeros(len(pairs), 2, device=device).index_put((batch.rows, batch.answer), token_logp,
                                                               accumulate=True)


_UNPACKABLE = object()


def _packed_windows(model):
    """The windows a packed mask for `model` carries (`windows.mask_windows`), or _UNPACKABLE
    where no packed mask can give every layer its window: worked out once per call."""
    try:
        return mask_windows(model)
    except ValueError:
        return _UNPACKABLE


@dataclass(frozen=True)
class PackedPairs:
    inputs: dict             # the body's input_ids, attention_mask (4-D, or {layer type: 4-D}), position_ids
    rows: torch.Tensor       # for each answer token: its pair,
    cols: torch.Tensor       # the position whose output predicts it,
    targets: torch.Tensor    # the token,
    answer: torch.Tensor     # 0 chosen, 1 rejected


def pair_length(pair: TokenizedPair) -> int:
    return len(pair.prompt) + len(pair.chosen) + len(pair.rejected)


def packed_pairs(pairs: Sequence[TokenizedPair], pad_id: int, dtype=torch.float32, device=None, *,
                 windows: int | None | dict[str, int | None] = None) -> PackedPairs:
    """Each pair as one row: prompt, chosen, rejected, right-padded. The rejected answer's
    tokens take the positions right after the prompt (as the chosen ones do) and attend to the
    prompt and to each other, never to the chosen answer, so every answer token sees exactly
    what it sees in its own sequence: the same log-probabilities as two sequences, with the
    prompt computed once (most of a pair's tokens) and no second pass. The first token of both
    answers is predicted by the prompt's last position. The mask is additive (0 or the dtype's
    minimum), which the eager and sdpa attention implementations take; a padding position attends
    to its row's first token, so no row of the mask is empty.

    `windows` (`windows.mask_windows(model)`) are the layers' sliding windows, which transformers
    does not add to a mask it is given: one for every layer (None: none) gives one mask, a dict
    {layer type: window} one mask per layer type. A window is taken over position ids, so an
    answer token sees the last `window` positions of its own sequence."""
    width = max(map(pair_length, pairs))
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(pairs), width), dtype=torch.long)
    allowed = torch.zeros((len(pairs), width, width), dtype=torch.bool)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    rows, cols, targets, answer = [], [], [], []
    for i, pair in enumerate(pairs):
        p, c, n = len(pair.prompt), len(pair.chosen), pair_length(pair)
        ids[i, :n] = torch.tensor([*pair.prompt, *pair.chosen, *pair.rejected], dtype=torch.long)
        positions[i, :p + c] = torch.arange(p + c)
        positions[i, p + c:n] = torch.arange(p, n - c)
        allowed[i, :n, :n] = causal[:n, :n]
        allowed[i, p + c:n, p:p + c] = False          # the rejected answer does not see the chosen
        allowed[i, n:, 0] = True
        rows += [i] * (n - p)
        cols += list(range(p - 1, p + c - 1)) + ([p - 1] + list(range(p + c, n - 1)))[:n - p - c]
        targets += list(pair.chosen) + list(pair.rejected)
        answer += [0] * c + [1] * (n - p - c)
    made: dict = {}                                   # window that binds (or None) -> its mask

    def mask(window):                                 # (batch, 1, width, width), additive
        seen = windowed(allowed, positions, window)
        key = None if seen is allowed else window
        if key not in made:
            made[key] = torch.zeros(seen.shape, dtype=dtype).masked_fill_(
                ~seen, torch.finfo(dtype).min)[:, None].to(device)
        return made[key]
    masks = ({kind: mask(w) for kind, w in windows.items()} if isinstance(windows, dict) else mask(windows))
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)   # noqa: E731
    return PackedPairs({"input_ids": ids.to(device), "attention_mask": masks,
                        "position_ids": positions.to(device)},
                       as_tensor(rows), as_tensor(cols), as_tensor(targets), as_tensor(answer))


@torch.no_grad()
def all_pair_logprobs(model, pairs: Sequence[TokenizedPair], pad_id: int,
                      batch_size: int = 8, *, on_batch: OnBatch | None = None, prefix=None,
                      packed: bool = True) -> torch.Tensor:
    """(n_pairs, 2) log-probabilities without gradients, batched by length to limit padding.

    `on_batch`, `prefix` and `packed` as in `pair_logprobs`."""
    order = sorted(range(len(pairs)), key=lambda i: pair_length(pairs[i]))
    out = torch.empty(len(pairs), 2, dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        out[idx] = pair_logprobs(model, [pairs[i] for i in idx], pad_id,
                                 on_batch=on_batch, prefix=prefix, packed=packed).double().cpu()
    return out


@torch.no_grad()
def all_choice_logprobs(model, questions: Sequence, pad_id: int, batch_size: int = 16, *,
                        on_batch: OnBatch | None = None) -> list[tuple]:
    """For each question (`prompts.TokenizedChoices`), (log-probs of its true answers, of its
    false answers) as float64 numpy arrays; answers batched across questions."""
    items = [(q, kind, j) for q, c in enumerate(questions) for kind, answers in ((0, c.true), (1, c.false))
             for j in range(len(answers))]

    def seq(item):   # (prompt ids, answer ids) of (question, 0 true | 1 false, answer index)
        q, kind, j = item
        return questions[q].prompt, (questions[q].true, questions[q].false)[kind][j]

    items.sort(key=lambda item: sum(map(len, seq(item))))     # length-sorted: little padding
    out = [(np.empty(len(c.true)), np.empty(len(c.false))) for c in questions]
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        prompts, answers = zip(*(seq(it) for it in batch))
        lp = answer_logprobs(model, prompts, answers, pad_id, on_batch=on_batch).double().cpu().numpy()
        for (q, kind, j), value in zip(batch, lp):
            out[q][kind][j] = value
    return out


@torch.no_grad()
def side_effects(model, texts: Sequence[Sequence[int]], pad_id: int, batch_size: int = 8, *,
                 on_batch: OnBatch | None = None) -> dict[str, float]:
    """On texts unrelated to the behaviour, with whatever edit is attached to `model`:
    {"kl": the mean over predicted tokens of KL(unedited || edited) of the next-token
    distribution, "log_likelihood": the mean log-probability of each text's next token}. The
    unedited distribution is computed in the same pass with the edit's hooks suspended
    (`hooks.unedited`), so nothing vocabulary-sized is stored. float32 throughout."""
    from loccheck.models.hooks import unedited

    device = next(model.parameters()).device
    body = getattr(model, model.base_model_prefix)
    kl_sum, ll_sum, n = 0.0, 0.0, 0
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        batch = [texts[i] for i in order[start:start + batch_size]]
        ids, mask = padded(batch, pad_id, device)
        predicts = mask[:, 1:].bool()                     # position t predicts token t + 1
        if on_batch is not None:
            on_batch(mask.bool())                         # a position-dependent edit acts everywhere

        def logp():
            hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1][predicts]
            return vocab_logits(model, hidden).log_softmax(-1)      # (n_predicted, vocab)

        with unedited():
            base = logp()
        edited = logp()
        kl_sum += float((base.exp() * (base - edited)).sum())
        ll_sum += float(edited.gather(-1, ids[:, 1:][predicts][:, None]).sum())
        n += int(predicts.sum())
    return {"kl": kl_sum / n, "log_likelihood": ll_sum / n}


@torch.no_grad()
def _shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every prompt shares, leaving each at least its last token."""
    k = min(len(p) for p in prompts) - 1
    for i in range(k):
        if any(p[i] != prompts[0][i] for p in prompts):
            return i
    return max(k, 0)


@torch.no_grad()   # an attached edit's parameters want gradients: kept keys and values would keep every step's graph
def greedy_answers(model, prompts: Sequence[Sequence[int]], pad_id: int, eos_id: int | None,
                   max_new_tokens: int, *, on_batch: OnBatch | None = None,
                   done: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
    """The greedy continuation of each prompt, at most `max_new_tokens` tokens, stopping at
    `eos_id` or once `done(tokens so far)` says the answer cannot change any more (its first
    line break is there). The tokens every prompt starts with (TruthfulQA's QA primer) are
    computed once, the rest of each prompt once, left-padded, and each step then only the new
    token, against the key-value cache. An attached edit acts at every position of every
    forward, as when answers are scored: `on_batch` marks the last prompt token of each row and
    every generated one."""
    device = next(model.parameters()).device
    body = getattr(model, model.base_model_prefix)
    # transformers 5.25 renamed `past_key_values` (argument and output) to `cache`
    name = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
    n = len(prompts)
    shared = _shared_prefix(prompts) if n > 1 else 0
    cache, before = None, torch.zeros((n, 0), dtype=torch.long, device=device)
    if shared:                                         # one row, then the same keys and values for every row
        ids = torch.tensor([list(prompts[0][:shared])], device=device)
        if on_batch is not None:
            on_batch(torch.zeros((1, shared), dtype=torch.bool, device=device))
        step = body(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **{name: None})
        cache = getattr(step, name)
        cache.batch_repeat_interleave(n)
        before = torch.ones((n, shared), dtype=torch.long, device=device)
    rest = [p[shared:] for p in prompts]
    width = max(len(p) for p in rest)
    ids = torch.full((n, width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((n, width), dtype=torch.long, device=device)
    for i, p in enumerate(rest):                       # left-padded: every prompt ends at the last column
        ids[i, width - len(p):] = torch.tensor(p, device=device)
        mask[i, width - len(p):] = 1
    positions = shared + (mask.cumsum(-1) - 1).clamp(min=0)   # each row counts on from the shared tokens
    mask = torch.cat([before, mask], 1)
    out: list[list[int]] = [[] for _ in range(n)]
    live = [True] * n
    marked = torch.zeros((n, width), dtype=torch.bool, device=device)
    marked[:, -1] = True                               # the last prompt token
    for _ in range(max_new_tokens):
        if on_batch is not None:
            on_batch(marked)
        step = body(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{name: cache})
        cache = getattr(step, name)
        nxt = vocab_logits(model, step.last_hidden_state[:, -1]).argmax(-1)   # (n,)
        for i in range(n):
            if not live[i]:
                continue
            token = int(nxt[i])
            if token == eos_id:
                live[i] = False
                continue
            out[i].append(token)
            if done is not None and done(out[i]):
                live[i] = False
        if not any(live):
            break
        ids = nxt[:, None]                             # (n, 1); finished rows run on, unread
        mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long, device=device)], 1)
        positions = positions[:, -1:] + 1
        marked = torch.ones((n, 1), dtype=torch.bool, device=device)
    return out
