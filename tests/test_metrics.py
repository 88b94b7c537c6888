"""Metrics against independent references (hand-written ECE, torchmetrics module API)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from metalora_plugins.metrics import (
    Accuracy,
    BrierScore,
    ExpectedCalibrationError,
    NegativeLogLikelihood,
)


def _random_predictions(n: int = 200, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n_options = torch.randint(2, 5, (n,), generator=gen)
    mask = torch.arange(4)[None, :] < n_options[:, None]
    logits = torch.randn(n, 4, generator=gen) * 2
    probs = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    targets = (torch.rand(n, generator=gen) * n_options).long()
    return probs, targets, mask


def _hand_ece(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    conf = probs.max(1)
    correct = (probs.argmax(1) == targets).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_a_hand_computation_and_the_torchmetrics_module(seed):
    probs, targets, mask = _random_predictions(seed=seed)
    ours = ExpectedCalibrationError().compute(probs, targets, mask)
    assert ours == pytest.approx(_hand_ece(probs.numpy(), targets.numpy()), abs=1e-6)
    module = MulticlassCalibrationError(num_classes=4, n_bins=15, norm="l1")
    assert ours == pytest.approx(float(module(probs, targets)), abs=1e-7)


def test_accuracy_nll_and_brier_by_hand():
    probs = torch.tensor([[0.7, 0.3, 0, 0], [0.2, 0.5, 0.3, 0], [0.1, 0.2, 0.3, 0.4]])
    targets = torch.tensor([0, 2, 3])
    mask = probs > 0
    assert Accuracy().compute(probs, targets, mask) == pytest.approx(2 / 3)
    nll = -(np.log(0.7) + np.log(0.3) + np.log(0.4)) / 3
    assert NegativeLogLikelihood().compute(probs, targets, mask) == pytest.approx(nll, rel=1e-6)
    brier = ((0.3**2 + 0.3**2) + (0.2**2 + 0.5**2 + 0.7**2)
             + (0.1**2 + 0.2**2 + 0.3**2 + 0.6**2)) / 3
    assert BrierScore().compute(probs, targets, mask) == pytest.approx(brier, rel=1e-6)
