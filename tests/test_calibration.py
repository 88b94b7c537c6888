"""Temperature scaling (``--calibrate temperature``): the fit against a brute-force grid,
NLL lowered on a miscalibrated toy, and the calibrator acting inside the protocol."""

from __future__ import annotations

import math

import pytest
import torch

from metalora.calibration import CalibratedLearner
from metalora.errors import MetaloraError
from metalora_plugins.metrics import Accuracy, NegativeLogLikelihood
from metalora_plugins.temperature import (
    TemperatureScaling,
    TemperatureSettings,
    support_nll,
    tempered,
)


def _overconfident(n: int, seed: int, sharpness: float = 4.0):
    """Answers drawn from softmax(z); predictions softmax(sharpness * z): overconfident."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=gen)
    targets = torch.multinomial(torch.softmax(z, -1), 1, generator=gen).squeeze(1)
    probs = torch.softmax(sharpness * z, -1)
    return probs, targets, torch.ones(n, 4, dtype=torch.bool)


def test_the_fitted_temperature_is_the_grid_minimum_of_the_support_nll():
    probs, targets, mask = _overconfident(50, seed=0)
    calibrator = TemperatureScaling()
    calibrator.fit(probs, targets, mask)
    grid = torch.exp(torch.linspace(math.log(0.05), math.log(20), 4001)).tolist()
    best = min(grid, key=lambda t: support_nll(probs, targets, mask, t))
    assert calibrator.temperature == pytest.approx(best, rel=2e-3)
    assert calibrator.temperature > 2  # it undoes the sharpening (true temperature 4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_temperature_fitted_on_support_lowers_held_out_nll_and_keeps_accuracy(seed):
    support = _overconfident(10, seed=seed)
    query = _overconfident(500, seed=100 + seed)
    calibrator = TemperatureScaling()
    calibrator.fit(*support)
    calibrated = calibrator.apply(query[0], query[2])
    nll, acc = NegativeLogLikelihood(), Accuracy()
    assert nll.compute(calibrated, query[1], query[2]) < nll.compute(*query)
    assert acc.compute(calibrated, query[1], query[2]) == acc.compute(*query)
    assert torch.allclose(calibrated.sum(-1), torch.ones(500))


def test_tempering_stays_on_each_examples_options():
    probs = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.3, 0.5]])
    mask = probs > 0
    out = tempered(probs, mask, 2.0)
    assert out[0, 2] == 0 and torch.allclose(out.sum(-1), torch.ones(2))
    expected = torch.sqrt(torch.tensor([0.7, 0.3]))
    assert torch.allclose(out[0, :2], expected / expected.sum())
    assert torch.allclose(tempered(probs, mask, 1.0), probs)


def test_temperature_bounds_are_checked():
    with pytest.raises(MetaloraError, match="min_temperature"):
        TemperatureSettings(min_temperature=3.0, max_temperature=2.0).check()


class _Fixed:
    """A stand-in learner predicting fixed overconfident probabilities for each batch."""

    name = "fixed"
    mean_pair = "default"
    adapted_pairs = ()

    def __init__(self):
        self.context = type("Context", (), {"settings": None})()
        self.adapted = 0

    def adapt(self, support):
        self.adapted += 1

    def predict_proba(self, batch):
        return batch.probs


class _Batch:
    def __init__(self, probs, targets, mask):
        self.probs, self.targets, self.option_mask = probs, targets, mask


def test_the_wrapper_adapts_the_learner_then_fits_on_its_support_predictions():
    inner = _Fixed()
    wrapped = CalibratedLearner(inner, TemperatureScaling())  # type: ignore[arg-type]
    support = [_Batch(*_overconfident(5, seed=s)) for s in (1, 2)]
    query = _Batch(*_overconfident(200, seed=3))
    assert torch.equal(wrapped.predict_proba(query), query.probs)  # no fit yet: unchanged
    wrapped.adapt(support)
    assert inner.adapted == 1
    all_support = [torch.cat([getattr(b, k) for b in support]) for k in
                   ("probs", "targets", "option_mask")]
    alone = TemperatureScaling()
    alone.fit(*all_support)
    assert wrapped.calibrator.temperature == alone.temperature != 1.0
    assert torch.allclose(wrapped.predict_proba(query), alone.apply(query.probs,
                                                                    query.option_mask))
    with pytest.raises(MetaloraError, match="support set"):
        wrapped.adapt([])


def test_calibration_in_the_protocol_changes_probabilities_not_answers(plugins,
                                                                     finished_tiny_run):
    from rich.console import Console

    import metalora.api as ml

    run_dir = finished_tiny_run.run_dir
    plain = ml.evaluate(run_dir, learner=["lora"], seeds=[0], plugins=plugins,
                        console=Console(quiet=True))
    scaled = ml.evaluate(run_dir, learner=["lora"], seeds=[0], plugins=plugins,
                         console=Console(quiet=True), settings={"calibrate": "temperature"})
    before, after = plain.results["lora"][0].test, scaled.results["lora"][0].test
    for a, b in zip(before.tasks, after.tasks, strict=True):
        assert torch.equal(a.probs.argmax(-1), b.probs.argmax(-1))
        assert not torch.allclose(a.probs, b.probs)
    assert after.macro["accuracy"] == before.macro["accuracy"]


def test_an_unknown_calibrator_is_one_line_naming_the_choices(plugins):
    import metalora.api as ml

    with pytest.raises(MetaloraError, match="unknown calibrator 'platt'; valid choices: none, "
                                            "temperature"):
        ml.run_spec(plugins=plugins, learner="lora", tasks="demo", model="tiny",
                    calibrate="platt")
