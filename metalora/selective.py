"""Selective prediction: answer only the queries the model is most confident about.

The *confidence* of a prediction is the probability of its most probable option.
:func:`risk_coverage` is the curve that the selective-prediction metrics and the
risk-coverage figure are both read from.
"""

from __future__ import annotations

import torch
from torch import Tensor


def confidence_and_correct(probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Each query's confidence (the chosen option's probability) and whether it is right
    (1.0 or 0.0)."""
    confidence, chosen = probs.float().max(dim=-1)
    return confidence, (chosen == targets).float()


def risk_coverage(probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The risk-coverage curve: answering only the ``k`` most confident queries
    (``k = 1..N``, ties in query order), the coverage ``k / N`` and the error rate."""
    confidence, correct = confidence_and_correct(probs, targets)
    order = torch.sort(confidence, descending=True, stable=True).indices
    errors = torch.cumsum(1.0 - correct[order], dim=0)
    answered = torch.arange(1, len(order) + 1, dtype=torch.float32)
    return answered / len(order), errors / answered
