"""Built-in metrics: accuracy, ECE (torchmetrics semantics), NLL and Brier score."""

from __future__ import annotations

import torch
from torch import Tensor

from metalora import Metric, hookimpl

ECE_BINS = 15


class Accuracy(Metric):
    """Fraction of examples whose most probable option is correct."""

    name = "accuracy"
    description = "Top-1 accuracy."

    def compute(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> float:
        return float((probs.argmax(dim=-1) == targets).float().mean())


class ExpectedCalibrationError(Metric):
    """Top-label ECE, 15 equal-width bins, L1 (torchmetrics ``MulticlassCalibrationError``)."""

    name = "ece"
    higher_is_better = False
    description = "Expected calibration error (top-label, 15 bins, L1), as a fraction."

    def compute(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> float:
        # imported here: torchmetrics imports transformers, which commands without a model skip
        from torchmetrics.functional.classification import multiclass_calibration_error

        return float(multiclass_calibration_error(
            probs.float(), targets, num_classes=probs.shape[-1], n_bins=ECE_BINS, norm="l1"))


class NegativeLogLikelihood(Metric):
    """Mean negative log-probability of the correct option."""

    name = "nll"
    higher_is_better = False
    description = "Negative log-likelihood of the correct option."

    def compute(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> float:
        picked = probs.gather(1, targets[:, None]).squeeze(1).clamp_min(1e-12)
        return float(-picked.log().mean())


class BrierScore(Metric):
    """Mean squared error between the option probabilities and the one-hot answer."""

    name = "brier"
    higher_is_better = False
    description = "Brier score over the example's options."

    def compute(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> float:
        onehot = torch.nn.functional.one_hot(targets, probs.shape[-1]).float()
        return float((((probs - onehot) ** 2) * option_mask).sum(-1).mean())


@hookimpl
def register_metrics(register):
    for metric in (Accuracy, ExpectedCalibrationError, NegativeLogLikelihood, BrierScore):
        register(metric)
