"""Side effects of an edit on texts unrelated to the behaviour (`side_effects:` in the claim;
by default ROME's known facts): what the edit costs elsewhere.

- kl: mean per-token KL(unedited || edited) of the next-token distribution; 0 for the
  unedited model, lower is better.
- log_likelihood: mean per-token log-probability of the texts; its gain is the change an edit
  makes, higher is better (an edit that damages the model lowers it).
"""
from __future__ import annotations

from loccheck.metrics import Metric, register_metric

register_metric(Metric(
    "kl", "side_texts", False, lambda s: s["kl"],
    "mean per-token KL(unedited || edited) of the next-token distribution on the side-effect texts"))
register_metric(Metric(
    "log_likelihood", "side_texts", True, lambda s: s["log_likelihood"],
    "mean per-token log-likelihood of the side-effect texts (nats)"))
