"""IPO and DPO against values worked out by hand."""
import math

import pytest
import torch

from loccheck.edits.objectives import dpo_loss, ipo_loss, preference_logratio, preference_loss

pytestmark = pytest.mark.slow   # torch losses (torch)


def test_logratio_by_hand():
    policy = torch.tensor([[-3.0, -5.0], [-2.0, -1.0]])
    reference = torch.tensor([[-4.0, -4.0], [-2.5, -1.5]])
    # pair 0: (-3 + 4) - (-5 + 4) = 2 ; pair 1: (-2 + 2.5) - (-1 + 1.5) = 0
    assert preference_logratio(policy, reference).tolist() == [2.0, 0.0]


def test_ipo_by_hand():
    h = torch.tensor([2.0, 0.0, 5.0])
    # tau = 0.1 -> target 5: ((2-5)^2 + (0-5)^2 + 0) / 3 = 34 / 3
    assert ipo_loss(h, 0.1).item() == pytest.approx(34 / 3)
    # tau = 0.5 -> target 1: (1 + 1 + 16) / 3 = 6
    assert ipo_loss(h, 0.5).item() == pytest.approx(6.0)


def test_dpo_by_hand():
    h = torch.tensor([2.0, 0.0])
    expected = (math.log(1 + math.exp(-0.2)) + math.log(2)) / 2   # -log sigmoid(x) = log(1 + e^-x)
    assert dpo_loss(h, 0.1).item() == pytest.approx(expected)


def test_unknown_objective():
    with pytest.raises(ValueError, match="`objective`"):
        preference_loss("kto", torch.zeros(2), tau=0.1, beta=0.1)
