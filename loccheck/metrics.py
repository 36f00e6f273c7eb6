"""Behaviour metrics on held-out pairs. Each edit's score is its metric minus the unedited
model's (the gain). New metrics register here with a function of the per-pair log-probs."""
from __future__ import annotations

from typing import Callable

import numpy as np

# name -> f(logprobs (n_pairs, 2): chosen, rejected) -> float
METRICS: dict[str, Callable[[np.ndarray], float]] = {
    # mean of log pi(y+|x) - log pi(y-|x)
    "preference_margin": lambda lp: float(np.mean(lp[:, 0] - lp[:, 1])),
    # share of pairs with log pi(y+|x) > log pi(y-|x) (a tie is not a win)
    "preference_accuracy": lambda lp: float(np.mean(lp[:, 0] > lp[:, 1])),
}


def compute_metrics(logprobs: np.ndarray) -> dict[str, float]:
    return {name: fn(logprobs) for name, fn in METRICS.items()}


def gains(edited: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    return {name: edited[name] - base[name] for name in base}
