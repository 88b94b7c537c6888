"""Optimisation helpers shared by learners: AdamW and a few plain gradient steps."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from metalora.prompts import Batch
from metalora.scoring import answer_loss


def adamw(params: Iterable[nn.Parameter], lr: float,
          weight_decay: float = 0.01) -> torch.optim.AdamW:
    """The optimiser every learner uses (paper section 5.1.1)."""
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay)


def fit_steps(model: nn.Module, params: Sequence[nn.Parameter], batches: Sequence[Batch],
              steps: int, lr: float, loss_over: str = "vocab") -> list[float]:
    """``steps`` AdamW steps on the answer loss, cycling through ``batches``; returns the losses.

    This is the test-time adaptation of the non-Bayesian learners: a fresh
    optimiser each time, one batch per step.
    """
    if steps <= 0 or not batches:
        return []
    optimizer = adamw(params, lr)
    losses = []
    for step in range(steps):
        loss = answer_loss(model, batches[step % len(batches)], over=loss_over)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses
