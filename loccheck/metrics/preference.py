"""Preference metrics on held-out pairs, from the (n_pairs, 2) log-probabilities of the chosen
and the rejected answer (summed over answer tokens)."""
from __future__ import annotations

import numpy as np

from loccheck.metrics import Metric, register_metric

register_metric(Metric(
    "preference_margin", "pair_logprobs", True,
    lambda lp: float(np.mean(lp[:, 0] - lp[:, 1])),
    "mean of log pi(y+|x) - log pi(y-|x) over the test pairs (nats)"))
register_metric(Metric(
    "preference_accuracy", "pair_logprobs", True,
    lambda lp: float(np.mean(lp[:, 0] > lp[:, 1])),
    "share of test pairs with log pi(y+|x) > log pi(y-|x) (a tie is not a win)"))
