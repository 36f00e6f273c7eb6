"""The frozen prefix: the residual stream entering the lowest edited block, computed once.

An edit hooked at or above block l (a head's output projection or an MLP's down projection
inside block l) cannot change what blocks 0 .. l-1 compute, nor the input of block l. So for a
fixed set of token sequences that input is computed once, before training, and every training
step and whole-set evaluation runs only blocks l, l+1, ...: the forward below l is done once per
fit instead of once per step (backward stops at l anyway). A sequence's states do not depend on
the batch it is computed in (right padding, causal attention), so they are kept per sequence
and re-padded into whatever batch it later joins; the result equals the plain forward to float
rounding (tests/test_prefix.py).
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import torch

from loccheck.models.hooks import StopForward, started_at, stopped_at
from loccheck.scoring import padded


class FrozenPrefix:
    """The input of block `first` for each of `seqs`, computed once with whatever is attached to
    `model` now (nothing below `first` may be edited later)."""

    def __init__(self, model, adapter, seqs: Iterable[Sequence[int]], first: int, pad_id: int,
                 batch_size: int = 16):
        if not 0 < first < adapter.n_layers:
            raise ValueError(f"a frozen prefix starts at block 1 .. {adapter.n_layers - 1}, not {first}")
        self.model, self.adapter, self.first, self.pad_id = model, adapter, first, pad_id
        owner, _, self._name = adapter.blocks_path.rpartition(".")
        self._owner = model.get_submodule(owner)
        self.states: dict[tuple[int, ...], torch.Tensor] = {}
        todo = sorted({tuple(s) for s in seqs}, key=len)
        body = getattr(model, model.base_model_prefix)
        device = next(model.parameters()).device
        got: list = []
        with torch.no_grad(), stopped_at(adapter.blocks[first], got.append):
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                ids, mask = padded(batch, pad_id, device)
                got.clear()
                try:
                    body(input_ids=ids, attention_mask=mask)
                except StopForward:
                    pass
                for i, seq in enumerate(batch):
                    self.states[seq] = got[0][i, :len(seq)].detach().clone()

    def covers(self, seqs: Iterable[Sequence[int]]) -> bool:
        return all(tuple(s) in self.states for s in seqs)

    @contextlib.contextmanager
    def feeding(self, seqs: Sequence[Sequence[int]]):
        """While open, a forward of `seqs` (right-padded to their longest, in this order) runs
        only blocks `first`, ... from the stored states."""
        width = max(map(len, seqs))
        first = self.states[tuple(seqs[0])]
        hidden = first.new_zeros((len(seqs), width, first.shape[-1]))
        for i, seq in enumerate(seqs):
            hidden[i, :len(seq)] = self.states[tuple(seq)]
        with started_at(self._owner, self._name, self.first, lambda: hidden):
            yield


def lowest_edited_block(edit) -> int:
    """The lowest block an edit is hooked in (0 when it does not say: no prefix is frozen)."""
    return min(getattr(edit, "layers", None) or [0])


def frozen_prefix(model, edit, seqs: Iterable[Sequence[int]], pad_id: int) -> FrozenPrefix | None:
    """The prefix below `edit`'s lowest block, or None when there is none to freeze."""
    first = lowest_edited_block(edit)
    adapter = getattr(edit, "adapter", None)
    if first == 0 or adapter is None or not adapter.blocks_path:
        return None
    return FrozenPrefix(model, adapter, seqs, first, pad_id)

