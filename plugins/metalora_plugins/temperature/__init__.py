"""Temperature scaling (``--calibrate temperature``), fitted per task on its support set.

The recalibrated probabilities are ``p_i^(1/T) / sum_j p_j^(1/T)`` over the example's
options: the learner's option log-probabilities divided by one temperature ``T``
(``T > 1`` softens, ``T < 1`` sharpens; the ranking of options, and so accuracy, is
unchanged). ``T`` minimises the negative log-likelihood of the support examples' answers
under the adapted learner. That NLL is convex in ``1/T``, so a golden-section search over
``log T`` in ``[min_temperature, max_temperature]`` finds it (deterministic, no learning
rate). The 10 support examples of the paper's protocol are the ones the learner adapted
on, so the fit is in-sample: after adaptation the support answers are more likely than
unseen ones, and the fitted ``T`` is if anything too small. There is no held-out
calibration set in a 10-example task, and splitting it would take examples from
adaptation; we keep the protocol's support set whole and say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from metalora import Calibrator, MetaloraError, hookimpl, setting

GOLDEN = (math.sqrt(5) - 1) / 2
SEARCH_STEPS = 60
"""Golden-section steps: the bracket shrinks by 0.618 per step, to 1e-12 of its width."""


@dataclass(frozen=True)
class TemperatureSettings:
    """Settings of ``temperature``."""

    min_temperature: float = setting(0.05, "Smallest temperature the fit may choose.", gt=0)
    max_temperature: float = setting(20.0, "Largest temperature the fit may choose.", gt=0)

    def check(self) -> None:
        if self.min_temperature >= self.max_temperature:
            raise MetaloraError(
                f"min_temperature ({self.min_temperature}) must be below max_temperature "
                f"({self.max_temperature})")


def option_log_probs(probs: Tensor, option_mask: Tensor) -> Tensor:
    """Log-probabilities on the options (clamped away from log 0), -inf elsewhere."""
    return probs.float().clamp_min(1e-12).log().masked_fill(~option_mask, float("-inf"))


def tempered(probs: Tensor, option_mask: Tensor, temperature: float) -> Tensor:
    """``probs`` at ``temperature``, renormalised over each example's options."""
    return torch.softmax(option_log_probs(probs, option_mask) / temperature, dim=-1)


def support_nll(probs: Tensor, targets: Tensor, option_mask: Tensor, temperature: float) -> float:
    """Mean NLL of ``targets`` under ``probs`` at ``temperature``."""
    logp = torch.log_softmax(option_log_probs(probs, option_mask) / temperature, dim=-1)
    return float(-logp.gather(1, targets[:, None]).mean())


class TemperatureScaling(Calibrator):
    """One temperature per task, minimising the support set's NLL."""

    name = "temperature"
    description = ("Temperature scaling fitted on each task's support set after adaptation "
                   "(NLL, golden-section search).")
    Settings = TemperatureSettings

    temperature: float = 1.0

    def fit(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> None:
        lo = math.log(self.settings.min_temperature)
        hi = math.log(self.settings.max_temperature)

        def loss(log_t: float) -> float:
            return support_nll(probs, targets, option_mask, math.exp(log_t))

        a, b = lo, hi
        c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
        fc, fd = loss(c), loss(d)
        for _ in range(SEARCH_STEPS):
            if fc <= fd:
                b, d, fd = d, c, fc
                c = b - GOLDEN * (b - a)
                fc = loss(c)
            else:
                a, c, fc = c, d, fd
                d = a + GOLDEN * (b - a)
                fd = loss(d)
        self.temperature = math.exp((a + b) / 2)

    def apply(self, probs: Tensor, option_mask: Tensor) -> Tensor:
        return tempered(probs, option_mask, self.temperature)


@hookimpl
def register_calibrators(register):
    register(TemperatureScaling)
