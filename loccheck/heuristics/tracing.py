"""Causal tracing (ROME, Meng et al. 2022) with two corruptions: where restoring a clean state
brings a corrupted run's answer back.

For a fact (a prompt holding a subject, and the first token of its true attribute):

1. the clean run gives p_clean, the probability of the answer token after the prompt, and the
   output of every site at every token;
2. the corrupted run replaces the subject: `noise` adds Gaussian noise of `scale` times the
   spread of the subject tokens' embeddings to the subject tokens' embeddings (several
   samples, the same samples for every restoration), `subject_flip` (Reber's proposal) puts
   another subject of the same relation with the same number of tokens in its place, so each
   corrupted run is a real input; p_corrupt is the answer's probability, averaged over them;
3. for each layer l and token t, the corrupted run is repeated with the output of the sites of
   the window around l (ROME: `window` layers, l - window // 2 up to l + window - window // 2,
   clipped) at token t set to their clean values: p_restored(l, t). The indirect effect is
   p_restored(l, t) - p_corrupt; the total effect p_clean - p_corrupt.

Sites are MLP outputs (`mlp`, the down projection: what an MLP claim names) or layer outputs
(`layer`, the residual stream after block l; restoring it at every token restores the clean
run exactly). Tokens are summarised in ROME's six groups (`GROUPS`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

GROUPS = ("first subject token", "middle subject tokens", "last subject token",
          "first subsequent token", "further tokens", "last token")
MAX_ROWS = 64      # corrupted sequences per forward pass


@dataclass(frozen=True)
class TraceInput:
    ids: tuple[int, ...]            # the prompt's token ids
    span: tuple[int, int]           # the subject's tokens [start, end)
    answer: int                     # the first token of the true attribute


@dataclass(frozen=True)
class FactTrace:
    p_clean: float
    p_corrupt: float
    restored: np.ndarray            # (n_layers, n_tokens) p_restored
    span: tuple[int, int]

    @property
    def effects(self) -> np.ndarray:
        """(n_layers, n_tokens) indirect effects."""
        return self.restored - self.p_corrupt

    @property
    def total_effect(self) -> float:
        return self.p_clean - self.p_corrupt


def token_groups(n_tokens: int, span: tuple[int, int]) -> list[list[int]]:
    """The token positions of each of GROUPS (a group may be empty, or share a token)."""
    s, e = span
    return [[s], list(range(s + 1, e - 1)), [e - 1], [e] if e < n_tokens else [],
            list(range(e + 1, n_tokens - 1)), [n_tokens - 1]]


def grouped(values: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    """(n_layers, n_tokens) -> (n_layers, len(GROUPS)) means over each group's tokens (NaN: empty)."""
    out = np.full((values.shape[0], len(GROUPS)), np.nan)
    for g, tokens in enumerate(token_groups(values.shape[1], span)):
        if tokens:
            out[:, g] = values[:, tokens].mean(axis=1)
    return out


def window_layers(layer: int, window: int, n_layers: int) -> list[int]:
    return list(range(max(0, layer - window // 2), min(n_layers, layer - window // 2 + window)))


def embedding_spread(model, items: Sequence[TraceInput]) -> float:
    """Standard deviation of the subject tokens' embedding coordinates (ROME's noise unit)."""
    import torch

    emb = model.get_input_embeddings().weight
    tokens = sorted({t for it in items for t in it.ids[it.span[0]:it.span[1]]})
    with torch.no_grad():
        return float(emb[torch.tensor(tokens, device=emb.device)].float().std())


def _site_modules(adapter, kind: str) -> list:
    if kind == "mlp":
        return [adapter.mlp_out(l) for l in range(adapter.n_layers)]
    if kind == "layer":
        return list(adapter.blocks)
    raise ValueError(f"`kind` must be 'mlp' or 'layer', got {kind!r}")


def _first(y):
    """A block returns a tensor or a tuple whose first item is its output."""
    return y[0] if isinstance(y, tuple) else y


def _with_first(y, value):
    return (value,) + tuple(y[1:]) if isinstance(y, tuple) else value


def _answer_probs(model, ids, answer: int):
    from loccheck.models.scoring import vocab_logits

    body = getattr(model, model.base_model_prefix)
    hidden = body(input_ids=ids).last_hidden_state[:, -1]
    return vocab_logits(model, hidden).softmax(-1)[:, answer]


def trace_fact(model, adapter, item: TraceInput, corrupted_ids, embedding_noise=None, *,
               window: int = 10, kind: str = "mlp") -> FactTrace:
    """Trace one fact. `corrupted_ids` (n, n_tokens): the corrupted inputs (for noise, the prompt
    n times); `embedding_noise` (n, n_tokens, d) or None: added to their input embeddings."""
    import torch

    from loccheck.models.hooks import replaced_outputs

    device = next(model.parameters()).device
    modules = _site_modules(adapter, kind)
    n_layers, n_tokens = len(modules), len(item.ids)
    corrupted_ids = torch.as_tensor(corrupted_ids, device=device)
    n = corrupted_ids.shape[0]
    clean: list = [None] * n_layers

    def keep_clean(row, y):
        clean[row] = _first(y)[0].detach()                            # (n_tokens, d)
    embed = model.get_input_embeddings()

    def corrupt(rows: torch.Tensor):                                  # which sample each row is
        if embedding_noise is None:
            return contextlib.nullcontext()
        noise = torch.as_tensor(embedding_noise, device=device)[rows]
        return replaced_outputs([embed], lambda row, y: (y.float() + noise).to(y.dtype))

    restored = np.empty((n_layers, n_tokens))
    with torch.no_grad():
        with replaced_outputs(modules, keep_clean):
            p_clean = float(_answer_probs(model, torch.tensor([item.ids], device=device), item.answer)[0])
        everyone = torch.arange(n, device=device)
        with corrupt(everyone):
            p_corrupt = float(_answer_probs(model, corrupted_ids, item.answer).mean())
        per_chunk = max(1, MAX_ROWS // n)
        for layer in range(n_layers):
            patched = window_layers(layer, window, n_layers)
            for t0 in range(0, n_tokens, per_chunk):
                tokens = torch.arange(t0, min(n_tokens, t0 + per_chunk), device=device)
                rows = everyone.repeat(len(tokens))                   # row r: sample r % n ...
                at = tokens.repeat_interleave(n)                      # ... restored at token at[r]
                r = torch.arange(len(rows), device=device)

                def restore(row, y, m=patched):
                    out = _first(y).clone()
                    out[r, at] = clean[m[row]][at].to(out.dtype)
                    return _with_first(y, out)
                with corrupt(rows), replaced_outputs([modules[m] for m in patched], restore):
                    p = _answer_probs(model, corrupted_ids[rows], item.answer)
                restored[layer, t0:t0 + len(tokens)] = p.view(len(tokens), n).mean(1).cpu().numpy()
    return FactTrace(p_clean, p_corrupt, restored, item.span)


def noise_for(item: TraceInput, n_samples: int, scale: float, spread: float, width: int, seed: int):
    """(n_samples, n_tokens, width) Gaussian noise on the subject's tokens, zero elsewhere."""
    rng = np.random.default_rng(seed)
    noise = np.zeros((n_samples, len(item.ids), width), dtype=np.float32)
    s, e = item.span
    noise[:, s:e] = rng.standard_normal((n_samples, e - s, width)) * scale * spread
    return noise
