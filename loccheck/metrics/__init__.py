"""Metrics of an edited model on held-out data: a registry of `Metric`s.

A metric declares what it is computed from (`needs`: "pair_logprobs", the (n_pairs, 2)
log-probabilities of the chosen and rejected answers of the test pairs; "choice_logprobs", for
each test question the log-probabilities of all its true and all its false answers;
"side_texts", the edit's effect on texts unrelated to the behaviour; "generations", judged
greedy answers to the test questions) and its direction.
Each edit's score is its metric minus the unedited model's (the gain); the test against the
null compares *improvements*, the gain signed by the direction, so "larger is better" holds
for every metric. Scores are cached per (fitted edit, metric): adding a metric to a claim
scores the stored edits and refits none of them.

To add a metric: a module in this folder that calls `register_metric`, imported below.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from loccheck.registry import Registry

NEEDS = ("pair_logprobs", "choice_logprobs", "side_texts", "generations")   # what the testbed can make


@dataclass(frozen=True)
class Metric:
    name: str
    needs: str                       # one of NEEDS
    higher_is_better: bool
    fn: Callable[[Any], float]       # inputs of kind `needs` -> the metric's value
    description: str

    def __post_init__(self):
        if self.needs not in NEEDS:
            raise ValueError(f"`needs` must be one of {NEEDS}, got {self.needs!r}")
        if not isinstance(self.higher_is_better, bool):
            raise TypeError(f"`higher_is_better` must be a bool, got {self.higher_is_better!r}")

    def improvement(self, gain: float) -> float:
        """The gain signed so that larger is better (what the null test compares)."""
        return gain if self.higher_is_better else -gain


METRICS: Registry[Metric] = Registry("metric")


def register_metric(metric: Metric) -> Metric:
    return METRICS.register(metric.name, metric)


def compute_metrics(names, inputs: dict[str, Any]) -> dict[str, float]:
    """{name: value} for the named metrics, from {need: input}."""
    return {name: float(METRICS[name].fn(inputs[METRICS[name].needs])) for name in names}


from loccheck.metrics import generation, preference, side_effects, truthfulqa_mc  # noqa: E402,F401
