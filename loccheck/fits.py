"""Fit one edit at one location and score it on the test pairs: the optimal edit (trained by
preference optimisation) or ITI's heuristic edit (an alpha swept on the validation pairs).
Every location goes through the same function with the same inputs but the heads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from loccheck.locations import HeadLoc, format_heads
from loccheck.metrics import compute_metrics, gains
from loccheck.models.base import Adapter
from loccheck.progress import Progress
from loccheck.prompts import TokenizedPair
from loccheck.scoring import all_pair_logprobs
from loccheck.training import EditConfig, train_edit


@dataclass
class Bench:
    """Everything every fit shares: the model, the tokenized splits, the unedited model's
    reference log-probabilities (train) and metrics (test), computed once."""
    model: object
    adapter: Adapter
    pad_id: int
    train: Sequence[TokenizedPair]
    validation: Sequence[TokenizedPair]
    test: Sequence[TokenizedPair]
    base_metrics: dict[str, float]     # unedited model on the test pairs
    progress: Progress
    _reference: torch.Tensor | None = None

    @property
    def reference(self) -> torch.Tensor:
        """(n_train, 2) log pi0 of chosen and rejected: computed once, and only if an edit
        has to be trained (a run served from the cache never needs it)."""
        if self._reference is None:
            device = next(self.model.parameters()).device
            self._reference = all_pair_logprobs(self.model, self.train, self.pad_id).to(device)
        return self._reference

    def test_metrics(self, on_batch=None) -> dict[str, float]:
        return compute_metrics(all_pair_logprobs(self.model, self.test, self.pad_id,
                                                 on_batch=on_batch).numpy())


def _record(method: str, role: str, index: int | None, heads, n_params: int, metrics: dict,
            base: dict, **extra) -> dict:
    return {"method": method, "role": role, "index": index,
            "location": "all" if heads is None else format_heads(heads), "n_params": n_params,
            "metrics": metrics, "gains": gains(metrics, base), **extra}


def label(role: str, index: int | None, method: str) -> str:
    name = {"claim": "claim", "full": "whole model"}.get(role, f"random {index}")
    return f"{name} [{method}]"


def fit_optimal(bench: Bench, role: str, index: int | None, heads: Sequence[HeadLoc] | None,
                cfg: EditConfig, a_init: torch.Tensor, read: str, metric: str) -> dict:
    from loccheck.edits import FullLoraEdit, HeadEdit

    edit = FullLoraEdit(bench.adapter, a_init) if heads is None else \
        HeadEdit(bench.adapter, heads, a_init, read=read)
    name = label(role, index, "optimal")
    bench.progress.begin_edit(name, cfg.n_steps(len(bench.train)))
    with edit.attached(bench.model):
        fit = train_edit(bench.model, edit, bench.train, bench.reference, cfg, bench.pad_id,
                         on_step=bench.progress.step)
        metrics = bench.test_metrics()
    record = _record("optimal", role, index, heads, edit.n_params, metrics, bench.base_metrics,
                     learning_rate=cfg.learning_rate, steps=len(fit.loss_curve), epochs=cfg.epochs,
                     final_loss=fit.final_loss, still_falling=fit.still_falling,
                     loss_curve=list(fit.loss_curve))
    bench.progress.end_edit(name, record["gains"][metric], fit.final_loss, fit.still_falling)
    return record


def fit_iti(bench: Bench, role: str, index: int | None, heads: Sequence[HeadLoc] | None,
            directions, alphas: Sequence[float], metric: str) -> dict:
    """ITI at `heads`: the alpha with the best validation metric, then its test metrics."""
    from loccheck.iti import ITIEdit, sweep_alpha

    name = label(role, index, "iti")
    bench.progress.begin_edit(name, len(alphas))
    def make(alpha: float) -> ITIEdit:
        bench.progress.step(0, len(alphas))
        return ITIEdit(bench.adapter, heads, directions, alpha, positions="answer")
    best, by_alpha = sweep_alpha(bench.model, make, bench.validation, alphas, metric, bench.pad_id)
    edit = ITIEdit(bench.adapter, heads, directions, best, positions="answer")
    with edit.attached(bench.model):
        metrics = bench.test_metrics(on_batch=edit.set_positions)
    record = _record("iti", role, index, heads, edit.n_params, metrics, bench.base_metrics,
                     alpha=best, validation_by_alpha={f"{a:g}": v for a, v in by_alpha.items()})
    bench.progress.end_edit(name, record["gains"][metric])
    return record


def count_effective(null_gains: Sequence[float], full_gain: float, rho: float) -> int | None:
    """How many null locations reach rho of the whole-model gain (None when that gain <= 0)."""
    if not full_gain > 0:
        return None
    return int(np.sum(np.asarray(null_gains) >= rho * full_gain))
