"""Metrics against independent references (hand formulas, sklearn, the torchmetrics module
API)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from metalora_plugins.metrics import (
    Accuracy,
    AccuracyAt50,
    AccuracyAt80,
    AdaptiveCalibrationError,
    AreaUnderRiskCoverage,
    BinSettings,
    BrierScore,
    ExpectedCalibrationError,
    MacroF1,
    MisclassificationAUROC,
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


# --- selective prediction, misclassification detection, macro-F1, bins (sklearn / by hand) ---

def _confidence_correct(probs, targets):
    conf = probs.max(1).values.numpy()
    correct = (probs.argmax(1) == targets).numpy()
    return conf, correct


def _hand_risk_coverage(conf: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Risk when answering the k most confident queries, k = 1..N, by a plain loop."""
    order = sorted(range(len(conf)), key=lambda i: (-conf[i], i))
    risks, wrong = [], 0
    for k, i in enumerate(order, start=1):
        wrong += int(not correct[i])
        risks.append(wrong / k)
    return np.array(risks)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selective_prediction_against_a_hand_risk_coverage_curve(seed):
    probs, targets, mask = _random_predictions(seed=seed)
    risks = _hand_risk_coverage(*_confidence_correct(probs, targets))
    assert AreaUnderRiskCoverage().compute(probs, targets, mask) == pytest.approx(
        risks.mean(), abs=1e-6)
    n = len(risks)
    assert AccuracyAt50().compute(probs, targets, mask) == pytest.approx(
        1 - risks[n // 2 - 1], abs=1e-6)
    assert AccuracyAt80().compute(probs, targets, mask) == pytest.approx(
        1 - risks[int(0.8 * n) - 1], abs=1e-6)


def test_selective_prediction_rewards_confidence_that_ranks_errors_last():
    """Same answers, same accuracy: confidence high on the right ones gives a lower AURC and
    a higher accuracy at 50% than confidence high on the wrong ones."""
    targets = torch.tensor([0, 0, 0, 0])
    good = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.45, 0.55]])
    bad = torch.tensor([[0.55, 0.45], [0.6, 0.4], [0.1, 0.9], [0.2, 0.8]])
    mask = torch.ones(4, 2, dtype=torch.bool)
    assert Accuracy().compute(good, targets, mask) == Accuracy().compute(bad, targets, mask)
    assert AreaUnderRiskCoverage().compute(good, targets, mask) < AreaUnderRiskCoverage().compute(
        bad, targets, mask)
    assert AccuracyAt50().compute(good, targets, mask) == 1.0
    assert AccuracyAt50().compute(bad, targets, mask) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_misclassification_auroc_and_macro_f1_match_sklearn(seed):
    from sklearn.metrics import f1_score, roc_auc_score

    probs, targets, mask = _random_predictions(seed=seed)
    conf, correct = _confidence_correct(probs, targets)
    assert MisclassificationAUROC().compute(probs, targets, mask) == pytest.approx(
        roc_auc_score(correct, conf), abs=1e-6)
    assert MacroF1().compute(probs, targets, mask) == pytest.approx(
        f1_score(targets.numpy(), probs.argmax(1).numpy(), average="macro"), abs=1e-6)


def test_misclassification_auroc_is_undefined_when_every_answer_agrees():
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    assert math.isnan(MisclassificationAUROC().compute(probs, torch.tensor([0, 0]), mask))
    assert math.isnan(MisclassificationAUROC().compute(probs, torch.tensor([1, 1]), mask))


def _hand_adaptive_ece(conf: np.ndarray, correct: np.ndarray, bins: int) -> float:
    order = np.argsort(conf, kind="stable")
    groups = np.array_split(order, bins)
    return sum(len(g) * abs(conf[g].mean() - correct[g].mean()) for g in groups) / len(conf)


@pytest.mark.parametrize("bins", [1, 5, 15])
def test_ece_bins_is_a_setting_of_both_calibration_errors(bins):
    probs, targets, mask = _random_predictions(seed=3)
    settings = BinSettings(ece_bins=bins)
    assert ExpectedCalibrationError(settings).compute(probs, targets, mask) == pytest.approx(
        _hand_ece(probs.numpy(), targets.numpy(), bins=bins), abs=1e-6)
    conf, correct = _confidence_correct(probs, targets)
    assert AdaptiveCalibrationError(settings).compute(probs, targets, mask) == pytest.approx(
        _hand_adaptive_ece(conf, correct.astype(float), bins), abs=1e-6)


def test_ece_bins_is_read_from_the_run_settings_and_checked():
    from metalora import api
    from metalora.errors import MetaloraError

    spec = api.run_spec(learner="lora", tasks="demo", model="tiny", ece_bins=4)
    assert spec.settings["ece"].ece_bins == 4 and spec.settings["adaptive_ece"].ece_bins == 4
    with pytest.raises(MetaloraError, match="ece_bins"):
        api.run_spec(learner="lora", tasks="demo", model="tiny", ece_bins=0)


def test_a_metric_undefined_on_a_task_is_left_out_of_the_macro_average_and_saved_as_null():
    from metalora.evaluation import EvalResult, TaskResult

    def task(name, auroc):
        return TaskResult(task=name, metrics={"accuracy": 0.5, "misclassification_auroc": auroc},
                          probs=torch.zeros(1, 2), targets=torch.zeros(1, dtype=torch.long),
                          option_mask=torch.ones(1, 2, dtype=torch.bool))

    result = EvalResult(tasks=[task("a", 0.8), task("b", math.nan), task("c", 0.6)])
    assert result.macro["misclassification_auroc"] == pytest.approx(0.7)
    saved = result.to_dict()
    assert saved["tasks"]["b"]["misclassification_auroc"] is None
    alone = EvalResult(tasks=[task("b", math.nan)])
    assert math.isnan(alone.macro["misclassification_auroc"])
