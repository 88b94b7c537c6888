"""Built-in metrics: accuracy, calibration, proper scores, selective prediction, macro-F1.

Every metric takes one task's ``(N, O)`` option probabilities; the protocol
macro-averages over tasks. The predicted option is the most probable one and
its probability is the *confidence*.

* ``accuracy``, ``macro_f1`` (torchmetrics; the options are the classes).
* ``nll``, ``brier``: proper scores.
* ``ece`` (torchmetrics, equal-width bins) and ``adaptive_ece`` (equal-mass bins),
  both with ``ece_bins`` bins.
* Selective prediction: answer only the most confident queries. ``aurc`` is the
  area under the risk-coverage curve, ``acc_at_50`` / ``acc_at_80`` the accuracy
  on the most confident 50% / 80% of the queries, and ``misclassification_auroc``
  how well the confidence ranks correct answers above wrong ones (torchmetrics;
  not defined, ``nan``, on a task whose queries are all right or all wrong).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from metalora import Metric, confidence_and_correct, hookimpl, risk_coverage, setting

ECE_BINS = 15


@dataclass(frozen=True)
class BinSettings:
    """Settings of ``ece`` and ``adaptive_ece``."""

    ece_bins: int = setting(ECE_BINS, "Bins of the calibration errors ece (equal-width) and "
                                      "adaptive_ece (equal-mass).", ge=1)


class Accuracy(Metric):
    """Fraction of examples whose most probable option is correct."""

    name = "accuracy"
    description = "Top-1 accuracy."

    def compute(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> float:
        return float((probs.argmax(dim=-1) == targets).float().mean())


class ExpectedCalibrationError(Metric):
    """Top-label ECE, ``ece_bins`` equal-width bins, L1 (torchmetrics
    ``MulticlassCalibrationError``)."""

    name = "ece"
    higher_is_better = False
    description = "Expected calibration error (top-label, equal-width bins, L1), a fraction."
    Settings = BinSettings

    def compute(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> float:
        # imported here: torchmetrics imports transformers, which commands without a model skip
        from torchmetrics.functional.classification import multiclass_calibration_error

        return float(multiclass_calibration_error(
            probs.float(), targets, num_classes=probs.shape[-1], n_bins=self.settings.ece_bins,
            norm="l1"))


class AdaptiveCalibrationError(Metric):
    """Top-label ECE over equal-mass bins: the queries sorted by confidence and split into
    ``ece_bins`` groups of (nearly) equal size, so that no bin is nearly empty."""

    name = "adaptive_ece"
    higher_is_better = False
    description = "Calibration error over equal-mass confidence bins (top-label, L1)."
    Settings = BinSettings

    def compute(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> float:
        confidence, correct = confidence_and_correct(probs, targets)
        order = torch.sort(confidence, stable=True).indices
        total = 0.0
        for group in torch.tensor_split(order, min(self.settings.ece_bins, len(order))):
            gap = confidence[group].mean() - correct[group].mean()
            total += len(group) * float(gap.abs())
        return total / len(order)


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


class MacroF1(Metric):
    """F1 averaged over the options that are the answer or the prediction of some query
    (torchmetrics ``multiclass_f1_score``, macro; the metric CrossFit reports)."""

    name = "macro_f1"
    description = "Macro-averaged F1 over the options as classes."

    def compute(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> float:
        from torchmetrics.functional.classification import multiclass_f1_score

        return float(multiclass_f1_score(probs.argmax(dim=-1), targets,
                                         num_classes=probs.shape[-1], average="macro"))


class AreaUnderRiskCoverage(Metric):
    """Mean error rate over the coverages ``1/N .. 1`` of the risk-coverage curve (AURC):
    low when the wrong answers are the least confident ones."""

    name = "aurc"
    higher_is_better = False
    description = "Area under the risk-coverage curve (selective prediction)."

    def compute(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> float:
        return float(risk_coverage(probs, targets)[1].mean())


class AccuracyAtCoverage(Metric):
    """Accuracy on the ``coverage`` fraction of queries answered with most confidence."""

    coverage: ClassVar[float]
    description = "Accuracy on the most confident fraction of the queries."

    def compute(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> float:
        _, risk = risk_coverage(probs, targets)
        answered = max(1, math.ceil(self.coverage * len(risk) - 1e-9))
        return 1.0 - float(risk[answered - 1])


class AccuracyAt50(AccuracyAtCoverage):
    name = "acc_at_50"
    coverage = 0.5
    description = "Accuracy on the 50% most confident queries."


class AccuracyAt80(AccuracyAtCoverage):
    name = "acc_at_80"
    coverage = 0.8
    description = "Accuracy on the 80% most confident queries."


class MisclassificationAUROC(Metric):
    """AUROC of the confidence as a detector of correct answers (torchmetrics
    ``binary_auroc``): the chance that a right answer is more confident than a wrong one."""

    name = "misclassification_auroc"
    description = "AUROC of confidence separating right from wrong answers (nan if all agree)."

    def compute(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> float:
        from torchmetrics.functional.classification import binary_auroc

        confidence, correct = confidence_and_correct(probs, targets)
        if correct.min() == correct.max():
            return math.nan
        return float(binary_auroc(confidence, correct.long()))


METRICS: tuple[type[Metric], ...] = (
    Accuracy, ExpectedCalibrationError, NegativeLogLikelihood, BrierScore, AdaptiveCalibrationError,
    MacroF1, AreaUnderRiskCoverage, AccuracyAt50, AccuracyAt80, MisclassificationAUROC)


@hookimpl
def register_metrics(register):
    for metric in METRICS:
        register(metric)
