"""Judged generations: the edited model answers each held-out question greedily (the edit
active at every generated position, `generation.max_new_tokens` at most, cut at the first line
break) and a judge (`generation.judge`, loccheck.judges) calls each answer truthful and/or
informative. TruthfulQA's headline numbers: Truth, Info and Truth*Info (the share of answers
that are both).
"""
from __future__ import annotations

import numpy as np

from loccheck.metrics import Metric, register_metric

register_metric(Metric(
    "truth", "generations", True, lambda v: float(np.mean(v.truthful)),
    "share of greedy answers to the test questions the judge calls truthful"))
register_metric(Metric(
    "info", "generations", True, lambda v: float(np.mean(v.informative)),
    "share of greedy answers the judge calls informative (not empty, not a refusal)"))
register_metric(Metric(
    "truth_info", "generations", True,
    lambda v: float(np.mean(np.logical_and(v.truthful, v.informative))),
    "share of greedy answers both truthful and informative (TruthfulQA's Truth*Info)"))
