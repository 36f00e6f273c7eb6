"""Preference objectives on h, the chosen-minus-rejected log-ratio of the edited vs the original
model: h = [log pi(y+|x) - log pi0(y+|x)] - [log pi(y-|x) - log pi0(y-|x)] (METHOD.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def preference_logratio(policy: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """h for each pair; `policy` and `reference` are (batch, 2): chosen, rejected."""
    return (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])


def ipo_loss(h: torch.Tensor, tau: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, eq. 17): mean of (h - 1/(2 tau))^2."""
    return ((h - 1.0 / (2.0 * tau)) ** 2).mean()


def dpo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO: mean of -log sigmoid(beta h)."""
    return -F.logsigmoid(beta * h).mean()


def preference_loss(objective: str, h: torch.Tensor, *, tau: float, beta: float) -> torch.Tensor:
    if objective == "ipo":
        return ipo_loss(h, tau)
    if objective == "dpo":
        return dpo_loss(h, beta)
    raise ValueError(f"`objective` must be 'ipo' or 'dpo', got {objective!r}")
