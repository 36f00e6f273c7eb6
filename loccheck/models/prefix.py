"""The frozen prefix: the residual stream entering the lowest edited block, computed once.

An edit hooked at or above block l (a head's output projection or an MLP's down projection
inside block l) cannot change what blocks 0 .. l-1 compute, nor the input of block l. So for a
fixed set of inputs that input is computed once, before training, and every training step and
whole-set evaluation runs only blocks l, l+1, ...: the forward below l is done once per fit
instead of once per step (backward stops at l anyway). The blocks below l stay in the model's
list, each passing its input on without computing (`hooks.started_at`), so every block keeps its
index and with it its layer type: a sliding-window layer above l gets its windowed mask. An
input's states do not depend on the batch it is computed in (right padding; a row never attends
to another row or to padding), so they are kept per input and re-padded into whatever batch it
later joins; the result equals the plain forward to float rounding (tests/models/test_prefix.py,
test_sliding_windows.py).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Hashable, Sequence

import torch

from loccheck.models.hooks import StopForward, read_outputs, started_at, stopped_at
from loccheck.models.windows import mask_windows, packable


class FrozenPrefix:
    """The input of block `first` for each of `items`, computed once with whatever is attached
    to `model` now (nothing below `first` may be edited later). `batch_inputs(items)` gives the
    body's keyword inputs for a list of items, right-padded; `size(item)` its unpadded length.
    The blocks below `first`, skipped later, return their input in the structure block
    `first` - 1 returned here (a tensor, or a tuple whose [0] is the residual stream)."""

    def __init__(self, model, adapter, first: int, items: Sequence[Hashable],
                 batch_inputs: Callable[[list], dict], size: Callable[[Hashable], int],
                 batch_size: int = 16):
        if not 0 < first < adapter.n_layers:
            raise ValueError(f"a frozen prefix starts at block 1 .. {adapter.n_layers - 1}, not {first}")
        self.first = first
        self._blocks = model.get_submodule(adapter.blocks_path)
        self._skipped = _passing_on(None)
        self.states: dict = {}
        todo = sorted(set(items), key=size)
        body = getattr(model, model.base_model_prefix)
        got: list = []

        def read(row, x, y):                   # block first - 1's output: what a skipped block returns
            self._skipped = _passing_on(y)

        with torch.no_grad(), stopped_at(adapter.blocks[first], got.append), \
                read_outputs([self._blocks[first - 1]], read):
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                got.clear()
                try:
                    body(**batch_inputs(batch))
                except StopForward:
                    pass
                for i, item in enumerate(batch):
                    self.states[item] = got[0][i, :size(item)].detach().clone()

    @contextlib.contextmanager
    def feeding(self, items: Sequence[Hashable]):
        """While open, a forward of `items` (a batch as `batch_inputs` makes it, in this order)
        runs only blocks `first`, ... from the stored states. An item it does not hold is a
        KeyError, never a guess."""
        states = [self.states[item] for item in items]
        hidden = states[0].new_zeros((len(items), max(len(h) for h in states), states[0].shape[-1]))
        for i, h in enumerate(states):
            hidden[i, :len(h)] = h
        with started_at(self._blocks, self.first, lambda: hidden, self._skipped):
            yield


def _passing_on(example) -> Callable:
    """What a skipped block returns for its input x, shaped as a block's output `example` was:
    x, or (x, None, ...) for a block that returns a tuple (None: no example, a tensor)."""
    if example is None or isinstance(example, torch.Tensor):
        return lambda x: x
    if isinstance(example, tuple) and example and isinstance(example[0], torch.Tensor):
        rest = (None,) * (len(example) - 1)
        return lambda x: (x,) + rest
    raise TypeError(f"a decoder block returned a {type(example).__name__}; a frozen prefix needs a tensor "
                    "or a tuple whose [0] is the residual stream")


def lowest_edited_block(edit) -> int:
    """The lowest block an edit is hooked in (0 when it does not say: no prefix is frozen)."""
    return min(getattr(edit, "layers", None) or [0])


def _freezable(adapter, first: int) -> bool:
    """Whether there are blocks below `first` to freeze and the adapter knows where they are."""
    return first > 0 and adapter is not None and bool(adapter.blocks_path)


def pair_prefix(model, adapter, first: int, pairs, pad_id: int) -> FrozenPrefix | None:
    """The prefix of preference pairs packed as `scoring.pair_logprobs` runs them
    (`scoring.packed_pairs`, with the model's windows) below block `first`, or None when there is
    none to freeze, or the model's pairs are not packed (`windows.packable`)."""
    from loccheck.models.scoring import packed_pairs, pair_length

    if not _freezable(adapter, first) or not packable(model):      # not packable: scored unpacked
        return None
    weight, windows = next(model.parameters()), mask_windows(model)
    return FrozenPrefix(model, adapter, first, pairs, lambda batch: packed_pairs(
        batch, pad_id, weight.dtype, weight.device, windows=windows).inputs, pair_length)


def sequence_prefix(model, adapter, first: int, seqs, pad_id: int) -> FrozenPrefix | None:
    """The prefix of plain token sequences (prompt + answer, as `scoring.answer_logprobs` runs
    them) below block `first`, or None when there is none to freeze."""
    from loccheck.models.scoring import padded

    if not _freezable(adapter, first):
        return None
    device = next(model.parameters()).device

    def batch_inputs(batch):
        ids, mask = padded(batch, pad_id, device)
        return {"input_ids": ids, "attention_mask": mask}
    return FrozenPrefix(model, adapter, first, [tuple(s) for s in seqs], batch_inputs, len)
