"""Log-probabilities of answers given prompts, summed over the answer tokens only."""
from __future__ import annotations

from typing import Sequence

import torch

from loccheck.prompts import TokenizedPair


def answer_logprobs(model, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                    pad_id: int) -> torch.Tensor:
    """log pi(answer | prompt) for each sequence, shape (batch,). Differentiable.

    The vocabulary projection runs only at positions that predict an answer token: for a
    small model most of the compute of a full `logits` tensor would be thrown away.
    """
    device = next(model.parameters()).device
    seqs = [list(p) + list(a) for p, a in zip(prompts, answers)]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    rows, cols, targets = [], [], []
    for i, (p, a) in enumerate(zip(prompts, answers)):
        n = len(p) + len(a)
        ids[i, :n] = torch.tensor(seqs[i])
        mask[i, :n] = 1
        rows += [i] * len(a)
        cols += range(len(p) - 1, n - 1)       # position t predicts token t + 1
        targets += a
    body = getattr(model, model.base_model_prefix)
    hidden = body(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    picked = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]  # (n_tok, d)
    logp = model.get_output_embeddings()(picked).float().log_softmax(-1)                   # (n_tok, vocab)
    token_logp = logp.gather(-1, torch.tensor(targets, device=device)[:, None]).squeeze(-1)
    return torch.zeros(len(seqs), device=device).index_add(0, torch.tensor(rows, device=device), token_logp)


def pair_logprobs(model, pairs: Sequence[TokenizedPair], pad_id: int) -> torch.Tensor:
    """(batch, 2) log-probabilities of the chosen and the rejected answer of each pair."""
    prompts = [p.prompt for p in pairs] * 2
    answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    lp = answer_logprobs(model, prompts, answers, pad_id)
    return torch.stack([lp[: len(pairs)], lp[len(pairs):]], dim=1)


@torch.no_grad()
def all_pair_logprobs(model, pairs: Sequence[TokenizedPair], pad_id: int,
                      batch_size: int = 8) -> torch.Tensor:
    """(n_pairs, 2) log-probabilities without gradients, batched by length to limit padding."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].prompt) + len(pairs[i].chosen)
                   + len(pairs[i].rejected))
    out = torch.empty(len(pairs), 2, dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        out[idx] = pair_logprobs(model, [pairs[i] for i in idx], pad_id).double().cpu()
    return out
