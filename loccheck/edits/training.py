"""Fit an edit by preference optimisation until it has converged, by one rule for every location.

Every location gets the same data order, batch size, learning-rate procedure, convergence rule
and cap: a comparison of optima is only fair if the optimiser treated them alike, and only a
comparison of *optima* if each edit got to its optimum.

The rule (`stop_reason`, the only place it is written). After each epoch the edit's objective on
the whole training set, L_e, is computed exactly (a no-grad pass, not the noisy batch losses;
the start L_0 is computed the same way, so an edit that does not move compares equal to it bit
for bit). An epoch that makes the objective worse than the best so far (or not finite) is a step
too far: it is undone (back to the best parameters, a fresh optimizer) and the learning rate is
halved. An epoch is *flat* when it improved the best objective by at most tol times the
improvement made so far, tol * (L_id - L_best), L_id being the objective of the identity edit,
or by no more than round-off (ROUNDOFF of L_id). The edit stops

- at the optimum, converged: L_best <= L* + tol * (L_id - L*) (IPO's minimum L* = 0 is
  attained when every pair's log-ratio is 1/(2 tau));
- when it is stuck: since the last epoch that improved it by more than that, PATIENCE flat
  epochs (one is not enough: an edit can stall for an epoch in a saddle and then fall again) or
  MAX_UNDONE undone ones (it cannot improve on its best even at an eighth of the rate). If it
  had improved on the identity by more than round-off
  (ROUNDOFF of L_id) it is at a "plateau", converged; otherwise it got nowhere, and is
  "stationary" (converged: no gradient ever reached its parameters, so it cannot move the
  objective at all, e.g. a location the output cannot see), "diverged" (an epoch's objective
  was not finite and no epoch improved on the identity) or "stalled" (a gradient, but steps lost in
  round-off: a learning rate too small to move it), neither converged;
- at `max_epochs`: "capped" (not converged), or one of the three above if it got nowhere.

An edit whose loss still falls at a steady rate is never called converged within the cap as
long as max_epochs * tol < 1. The edit keeps the parameters of its best epoch, so an edit that
blew up after it had improved keeps a finite best and is labelled by the rule, not "diverged".
The learning rate is constant after a linear warmup but for the halvings: a decaying schedule
would make any loss look flat by its end.

DPO has no optimum (its loss only approaches 0 as the margin grows without bound, so a
"plateau" would be set by the learning rate, not by the location): a DPO edit trains exactly
`max_epochs` epochs, stopped "budget", a budget-matched comparison, never "converged".

An edit can also start from another edit's parameters (`origin` is then the identity's
objective): the whole-model ceiling continued from a location's edit that fitted better
(`loccheck.run.verify`), whose curve starts at that edit's objective.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from loccheck.edits.objectives import preference_logratio, preference_loss
from loccheck.data.prompts import TokenizedPair
from loccheck.models.scoring import all_pair_logprobs, pair_logprobs


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


def identity_objective(cfg: "TrainConfig") -> float:
    """The objective of the identity edit, whose log-ratios are all 0 (exact)."""
    return float(preference_loss(cfg.objective, torch.zeros(1, dtype=torch.float64), tau=cfg.tau,
                                 beta=cfg.beta))


@dataclass(frozen=True)
class TrainResult:
    loss_curve: tuple[float, ...]        # training loss of each step's batch
    objective_curve: tuple[float, ...]   # whole-training-set objective: start, then each epoch
    initial_objective: float
    final_objective: float               # of the parameters kept (the best epoch)
    optimum: float
    converged: bool
    stopped: str                         # "optimum", "plateau", "stationary" (converged);
                                         # "capped", "stalled", "diverged", "budget" (DPO)
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
                    cfg: TrainConfig, pad_id: int, prefix=None, packed: bool = True, on_batch=None) -> float:
    """The objective on every training pair at the current parameters (no gradients)."""
    policy = all_pair_logprobs(model, pairs, pad_id, prefix=prefix, packed=packed,
                               on_batch=on_batch).to(reference.device)
    h = preference_logratio(policy, reference.double())
    return float(preference_loss(cfg.objective, h, tau=cfg.tau, beta=cfg.beta))


PATIENCE = 2       # flat epochs that stop an edit, since the last one that improved it
MAX_UNDONE = 3     # undone epochs that stop it: it cannot improve even at an eighth of the rate
ROUNDOFF = 1e-5    # an improvement on the identity of at most this share of its objective is
                   # float round-off (float32 log-probabilities), not progress
CONVERGED = ("optimum", "plateau", "stationary")


def stop_reason(cfg: TrainConfig, curve: Sequence[float], optimum: float, *, origin: float | None = None,
                moved: bool = True, capped: bool = False) -> str | None:
    """Why training stops after the objective curve [L_0, L_1, ..., L_e] (undone epochs included,
    at their values), or None to go on: the rule in the module docstring. `origin` is the
    identity edit's objective (default L_0), `moved` whether any gradient reached the
    parameters, `capped` whether the epoch budget is spent."""
    origin = curve[0] if origin is None else origin
    best, flat_run, undone_run = curve[0], 0, 0       # since the last epoch that improved it
    for value in curve[1:]:
        if not value <= best:                         # worse, or not finite: undone
            undone_run += 1
            continue
        improvement, best = best - value, value
        if improvement <= max(cfg.convergence_tol * (origin - best), ROUNDOFF * abs(origin)):
            flat_run += 1
        else:
            flat_run = undone_run = 0
    stuck = flat_run >= PATIENCE or undone_run >= MAX_UNDONE
    if len(curve) < 2:
        return None
    if cfg.objective == "dpo":
        return "budget" if capped else None
    if best <= optimum + cfg.convergence_tol * (origin - optimum):
        return "optimum"
    if not stuck and not capped:
        return None
    if origin - best <= ROUNDOFF * abs(origin):                  # it got nowhere
        return ("diverged" if not all(math.isfinite(v) for v in curve) else
                "stalled" if moved else "stationary")
    return "plateau" if stuck else "capped"


def train_edit(model, edit, pairs: Sequence[TokenizedPair], reference: torch.Tensor, cfg: TrainConfig,
               pad_id: int, on_step: Callable[[int, int, float], None] | None = None, *,
               freeze_prefix: bool = True, packed: bool = True, warm: bool = False) -> TrainResult:
    """Train `edit` (already attached to `model`, starting as the identity, or from another
    edit's parameters with `warm`) on `pairs` until it stops by the rule of the module docstring
    or reaches `cfg.max_epochs`; `reference` holds pi0's (n, 2) log-probabilities, computed
    once for all edits. The edit is left with its best epoch's parameters.

    Two ways of computing less, each giving the same numbers to float rounding: `packed` pairs
    (each prompt computed once for both answers, `scoring.packed_pairs`), and with them
    `freeze_prefix`: the blocks below the edit's lowest one run once for every training pair,
    not at every step (`models.prefix`). Both can be turned off to measure what they save."""
    from loccheck.models.prefix import lowest_edited_block, pair_prefix
    from loccheck.models.scoring import pair_length

    device = reference.device
    on_batch = getattr(edit, "on_batch", None)     # an edit at some positions only: scored unpacked
    packed = packed and on_batch is None
    prefix = None
    if freeze_prefix and packed:
        prefix = pair_prefix(model, getattr(edit, "adapter", None), lowest_edited_block(edit), pairs, pad_id)
    params = edit.trainable()
    per_epoch = cfg.steps_per_epoch(len(pairs))
    warmup = round(cfg.warmup_ratio * per_epoch)
    optimum = objective_optimum(cfg.objective)
    # computed, not assumed: an edit that never moves then compares equal to it bit for bit (the
    # identity's exact objective and this one differ by round-off, which differs between CPUs)
    curve = [whole_objective(model, pairs, reference, cfg, pad_id, prefix, packed, on_batch)]
    origin = identity_objective(cfg) if warm else curve[0]
    lr, backtracks, moved = cfg.learning_rate, 0, False
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    losses = []
    best, best_value = [p.detach().clone() for p in params], curve[0]
    stopped, total = "capped", per_epoch * cfg.max_epochs
    lengths = [pair_length(p) for p in pairs]
    for epoch in range(cfg.max_epochs):
        for idx in epoch_batches(lengths, cfg, epoch):
            for group in optimizer.param_groups:   # linear warmup over the first steps
                group["lr"] = lr * min(1.0, (len(losses) + 1) / warmup) if warmup else lr
            policy = pair_logprobs(model, [pairs[i] for i in idx], pad_id, prefix=prefix, packed=packed,
                                   on_batch=on_batch)
            h = preference_logratio(policy.double(), reference[idx].to(device))
            loss = preference_loss(cfg.objective, h, tau=cfg.tau, beta=cfg.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            moved = moved or any(p.grad is not None and bool(p.grad.any()) for p in params)
            optimizer.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(len(losses), total, losses[-1])
        curve.append(whole_objective(model, pairs, reference, cfg, pad_id, prefix, packed, on_batch))
        if curve[-1] <= best_value:                     # kept
            best, best_value = [p.detach().clone() for p in params], curve[-1]
        else:                                           # worse, or not finite: back to the best, at half the rate
            backtracks += 1
            lr /= 2
            with torch.no_grad():
                for p, b in zip(params, best):
                    p.copy_(b)
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        reason = stop_reason(cfg, curve, optimum, origin=origin, moved=moved or warm,
                             capped=epoch + 1 == cfg.max_epochs)
        if reason is not None:
            stopped = reason
            break
    with torch.no_grad():
        for p, b in zip(params, best):
            p.copy_(b)
    return TrainResult(tuple(losses), tuple(curve), origin, best_value, optimum,
                       stopped in CONVERGED, stopped, len(curve) - 1, backtracks)
