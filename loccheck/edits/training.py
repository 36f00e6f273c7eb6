"""Fit an edit by preference optimisation. Every location gets the same data order, budget,
schedule and seed: a comparison of optima is only fair if the optimiser treated them alike."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from loccheck.edits.objectives import preference_logratio, preference_loss
from loccheck.prompts import TokenizedPair
from loccheck.scoring import pair_logprobs


@dataclass(frozen=True)
class TrainConfig:
    objective: str = "ipo"
    tau: float = 0.1
    beta: float = 0.1
    epochs: int = 2
    batch_size: int = 4
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_steps: int | None = None
    seed: int = 0
    convergence_tol: float = 0.05

    def n_steps(self, n_pairs: int) -> int:
        steps = self.epochs * math.ceil(n_pairs / self.batch_size)
        return min(steps, self.max_steps) if self.max_steps else steps


@dataclass(frozen=True)
class TrainResult:
    loss_curve: tuple[float, ...]     # training loss of each step's batch
    final_loss: float                 # mean loss over the last quarter of the steps
    still_falling: bool


def batch_order(n_pairs: int, cfg: TrainConfig) -> list[list[int]]:
    """The batches of pair indices, epoch after epoch; a function of (n_pairs, cfg) only."""
    rng = np.random.default_rng(cfg.seed)
    batches = []
    for _ in range(cfg.epochs):
        perm = rng.permutation(n_pairs)
        batches += [perm[i:i + cfg.batch_size].tolist() for i in range(0, n_pairs, cfg.batch_size)]
    return batches[: cfg.n_steps(n_pairs)]


MIN_STEPS_TO_JUDGE = 8


def convergence(losses: Sequence[float], tol: float) -> tuple[float, bool]:
    """(final loss, still falling?). The final loss is the mean over the last quarter of the
    steps; the edit is still falling when that is lower than the mean of the quarter before by
    more than `tol` (relative). Fewer than MIN_STEPS_TO_JUDGE steps cannot show a plateau
    (one noisy batch against another), so such a short run counts as still falling."""
    n = len(losses)
    window = max(1, n // 4)
    last = float(np.mean(losses[n - window:])) if n else float("nan")
    if n < MIN_STEPS_TO_JUDGE:
        return last, True
    previous = float(np.mean(losses[n - 2 * window: n - window]))
    return last, (previous - last) > tol * max(abs(previous), 1e-12)


def train_edit(model, edit, pairs: Sequence[TokenizedPair], reference: torch.Tensor, cfg: TrainConfig,
               pad_id: int, on_step: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Train `edit` (already attached to `model`) on `pairs`; `reference` holds pi0's (n, 2)
    log-probabilities, computed once for all edits."""
    from transformers import get_cosine_schedule_with_warmup

    params = edit.trainable()
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    batches = batch_order(len(pairs), cfg)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * len(batches)),
                                                len(batches))
    device = reference.device
    losses = []
    for step, idx in enumerate(batches):
        policy = pair_logprobs(model, [pairs[i] for i in idx], pad_id)      # (batch, 2)
        h = preference_logratio(policy.double(), reference[idx].to(device))
        loss = preference_loss(cfg.objective, h, tau=cfg.tau, beta=cfg.beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break   # a diverged edit is reported as such, not silently kept training
        if on_step is not None:
            on_step(step + 1, len(batches), losses[-1])
    final, falling = convergence(losses, cfg.convergence_tol)
    return TrainResult(tuple(losses), final, falling or not math.isfinite(final))
