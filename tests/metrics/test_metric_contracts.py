"""The contract every registered metric keeps, driven by the registry: a metric added to
`loccheck.metrics` is tested here without a line of new test code. It names its input and its
direction, and computes a finite float from a well-formed input. No torch."""
from __future__ import annotations

import math

import numpy as np
import pytest

from loccheck.metrics import METRICS, NEEDS


@pytest.mark.parametrize("name", list(METRICS))
def test_metric_states_its_inputs_and_direction(name):
    metric = METRICS[name]
    assert metric.name == name and metric.needs in NEEDS and metric.description
    assert isinstance(metric.higher_is_better, bool)
    assert metric.improvement(1.0) == (1.0 if metric.higher_is_better else -1.0)
    if metric.needs == "pair_logprobs":
        value = metric.fn(np.array([[-1.0, -2.0], [-3.0, -1.5]]))
        assert isinstance(value, float) and math.isfinite(value)
