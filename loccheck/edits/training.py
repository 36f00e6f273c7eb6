"""Fit an edit by preference optimisation until it has converged, by one rule for every location.

Every location gets the same data order, batch size, learning-rate procedure, convergence rule
and cap: a comparison of optima is only fair if the optimiser treated them alike, and only a
comparison of *optima* if each edit got to its optimum.

The rule. After each epoch the edit's objective on the whole training set, L_e, is computed
exactly (a no-grad pass at the current parameters, not the noisy batch losses). The edit has
converged when either

- it reached the objective's optimum: L_e <= L* + tol * (L_0 - L*) (IPO's loss has minimum
  L* = 0, reached when every pair's log-ratio is 1/(2 tau); DPO's infimum is 0 too), or
- it stopped improving: in each of the last PATIENCE epochs, the epoch improved the best
  objective by at most tol times the improvement made so far,
  0 <= (L_best_before - L_e) <= tol * (L_0 - L_best). (One flat epoch is not enough: an edit
  can stall for an epoch in a saddle and then fall again.) An edit whose gradient is exactly
  zero (a location that cannot reach the output) is at its optimum and converges this way after
  PATIENCE epochs; one whose loss still falls at a steady rate is never called converged
  within the cap as long as max_epochs * tol < 1.

An epoch that makes the objective worse is a step too far, not a plateau: the edit goes back to
its best parameters and the learning rate is halved (a fresh optimizer state), up to
`MAX_BACKTRACKS` times. An edit that still cannot improve on its best after that has converged
to it ("plateau") if it had made at least tol of the attainable improvement; if it had not,
its steps are lost in round-off (a learning rate too small to move it) and it is reported
"stalled", not converged. Otherwise it runs until `max_epochs` and is reported "capped". The edit keeps
the parameters of its best epoch. The learning rate is constant after a linear warmup but for
those halvings: a decaying schedule would make any loss look flat by its end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from loccheck.edits.objectives import preference_logratio, preference_loss
from loccheck.prompts import TokenizedPair
from loccheck.scoring import all_pair_logprobs, pair_logprobs


@dataclass(frozen=True)
class TrainConfig:
    objective: str = "ipo"
    tau: float = 0.1
    beta: float = 0.1
    batch_size: int = 4
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0          # share of the first epoch's steps with linear warmup
    max_epochs: int = 10
    convergence_tol: float = 0.02
    seed: int = 0

    def __post_init__(self):
        if self.max_epochs < 1 or self.batch_size < 1:
            raise ValueError(f"`max_epochs` and `batch_size` must be >= 1, got {self.max_epochs} "
                             f"and {self.batch_size}")

    def steps_per_epoch(self, n_pairs: int) -> int:
        return math.ceil(n_pairs / self.batch_size)


def objective_optimum(objective: str) -> float:
    """The smallest value the objective can take: 0 for IPO (attained) and DPO (the infimum)."""
    if objective not in ("ipo", "dpo"):
        raise ValueError(f"`objective` must be 'ipo' or 'dpo', got {objective!r}")
    return 0.0


@dataclass(frozen=True)
class TrainResult:
    loss_curve: tuple[float, ...]        # training loss of each step's batch
    objective_curve: tuple[float, ...]   # whole-training-set objective: start, then each epoch
    initial_objective: float
    final_objective: float               # of the parameters kept (the best epoch)
    optimum: float
    converged: bool
    stopped: str                         # "optimum", "plateau" (converged); "capped", "stalled", "diverged"
    epochs: int
    backtracks: int = 0                  # epochs undone, each halving the learning rate

    @property
    def attained(self) -> float:
        """Share of the attainable improvement made: (L_0 - L_final) / (L_0 - L*)."""
        span = self.initial_objective - self.optimum
        return (self.initial_objective - self.final_objective) / span if span > 0 else float("nan")


BUCKET = 8   # batches per length bucket


def epoch_batches(lengths: Sequence[int], cfg: TrainConfig, epoch: int) -> list[list[int]]:
    """The batches of pair indices of one epoch, a function of (lengths, cfg, epoch) only, so
    every location sees the same ones. Length-bucketed: a random permutation is cut into
    chunks of BUCKET batches, each chunk sorted by the pairs' lengths (tokens of the prompt and
    both answers) and cut into batches, and the batches shuffled, so a batch pads little."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(epoch,)))
    perm = rng.permutation(len(lengths))
    size, chunk = cfg.batch_size, cfg.batch_size * BUCKET
    batches = []
    for start in range(0, len(perm), chunk):
        part = sorted(perm[start:start + chunk].tolist(), key=lambda i: (lengths[i], i))
        batches += [part[i:i + size] for i in range(0, len(part), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def whole_objective(model, pairs: Sequence[TokenizedPair], reference: torch.Tensor,
                    cfg: TrainConfig, pad_id: int, prefix=None, packed: bool = True) -> float:
    """The objective on every training pair at the current parameters (no gradients)."""
    policy = all_pair_logprobs(model, pairs, pad_id, prefix=prefix, packed=packed).to(reference.device)
    h = preference_logratio(policy, reference.double())
    return float(preference_loss(cfg.objective, h, tau=cfg.tau, beta=cfg.beta))


PATIENCE = 2   # consecutive flat epochs that make a plateau


def flat(cfg: TrainConfig, curve: Sequence[float]) -> bool:
    """Whether the last epoch of the curve [L_0, ..., L_e] improved the best objective by at most
    tol times the improvement made so far (and did not make it worse)."""
    if len(curve) < 2 or not math.isfinite(curve[-1]):
        return False
    best_before, best = min(curve[:-1]), min(curve)
    return 0 <= best_before - curve[-1] <= cfg.convergence_tol * (curve[0] - best)


def converged_by(cfg: TrainConfig, curve: Sequence[float], optimum: float,
                 n_flat: int | None = None) -> str | None:
    """Why the objective curve [L_0, L_1, ..., L_e] counts as converged, or None (the rule in
    the module docstring). `n_flat` is how many epochs in a row were flat (default: counted
    from the curve itself)."""
    start, last = curve[0], curve[-1]
    if not math.isfinite(last):
        return None
    if last <= optimum + cfg.convergence_tol * (start - optimum):
        return "optimum"
    if n_flat is None:
        n_flat = 0
        while n_flat < len(curve) - 1 and flat(cfg, curve[:len(curve) - n_flat]):
            n_flat += 1
    return "plateau" if n_flat >= PATIENCE else None


MAX_BACKTRACKS = 3


def train_edit(model, edit, pairs: Sequence[TokenizedPair], reference: torch.Tensor, cfg: TrainConfig,
               pad_id: int, on_step: Callable[[int, int, float], None] | None = None, *,
               freeze_prefix: bool = True, packed: bool = True) -> TrainResult:
    """Train `edit` (already attached to `model`, starting as the identity) on `pairs` until it
    converges or reaches `cfg.max_epochs`; `reference` holds pi0's (n, 2) log-probabilities,
    computed once for all edits. The edit is left with its best epoch's parameters.

    Two ways of computing less, each giving the same numbers to float rounding: `packed` pairs
    (each prompt computed once for both answers, `scoring.packed_pairs`), and with them
    `freeze_prefix`: the blocks below the edit's lowest one run once for every training pair,
    not at every step (`models.prefix`). Both can be turned off to measure what they save."""
    from loccheck.models.prefix import lowest_edited_block, pair_prefix
    from loccheck.scoring import pair_length

    device = reference.device
    prefix = None
    if freeze_prefix and packed:
        prefix = pair_prefix(model, getattr(edit, "adapter", None), lowest_edited_block(edit), pairs, pad_id)
    params = edit.trainable()
    per_epoch = cfg.steps_per_epoch(len(pairs))
    warmup = round(cfg.warmup_ratio * per_epoch)
    optimum = objective_optimum(cfg.objective)
    # The edit starts as the identity, so every log-ratio is 0: the starting objective is exact.
    start = float(preference_loss(cfg.objective, torch.zeros(1, dtype=torch.float64), tau=cfg.tau,
                                  beta=cfg.beta))
    lr, backtracks = cfg.learning_rate, 0
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    losses, curve, n_flat = [], [start], 0
    best = [p.detach().clone() for p in params]
    stopped, total = "capped", per_epoch * cfg.max_epochs
    lengths = [pair_length(p) for p in pairs]
    for epoch in range(cfg.max_epochs):
        for idx in epoch_batches(lengths, cfg, epoch):
            for group in optimizer.param_groups:   # linear warmup over the first steps
                group["lr"] = lr * min(1.0, (len(losses) + 1) / warmup) if warmup else lr
            policy = pair_logprobs(model, [pairs[i] for i in idx], pad_id, prefix=prefix, packed=packed)
            h = preference_logratio(policy.double(), reference[idx].to(device))
            loss = preference_loss(cfg.objective, h, tau=cfg.tau, beta=cfg.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(len(losses), total, losses[-1])
        curve.append(whole_objective(model, pairs, reference, cfg, pad_id, prefix, packed))
        if not (curve[-1] <= min(curve[:-1])):          # worse than its best, or not finite
            if backtracks == MAX_BACKTRACKS:
                # it cannot improve on its best even at a fraction of the rate: that is its
                # optimum, unless it never got anywhere
                progress = (start - min(curve)) / (start - optimum) if start > optimum else 0.0
                stopped = ("diverged" if not math.isfinite(curve[-1]) else
                           "plateau" if progress >= cfg.convergence_tol else "stalled")
                break
            backtracks += 1                             # back to the best, at half the rate
            lr /= 2
            with torch.no_grad():
                for p, b in zip(params, best):
                    p.copy_(b)
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
            n_flat = 0
            continue
        best = [p.detach().clone() for p in params]
        n_flat = n_flat + 1 if flat(cfg, curve) else 0
        reason = converged_by(cfg, curve, optimum, n_flat)
        if reason is not None:
            stopped = reason
            break
    if stopped == "capped" and not math.isfinite(curve[-1]):
        stopped = "diverged"        # its last epochs blew up, however many it had left
    with torch.no_grad():
        for p, b in zip(params, best):
            p.copy_(b)
    finite = [c for c in curve if math.isfinite(c)]
    return TrainResult(tuple(losses), tuple(curve), start, min(finite), optimum,
                       stopped in ("optimum", "plateau"), stopped, len(curve) - 1, backtracks)
