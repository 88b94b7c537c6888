"""The :class:`Calibrator` interface: a post-hoc map of one task's option probabilities,
fitted on that task's support set after test-time adaptation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import Tensor

from metalora.settings import NoSettings


class Calibrator(ABC):
    """Recalibrates a learner's predictions on one task (``--calibrate NAME``).

    For each evaluated task the protocol adapts the learner on the support set,
    predicts the support examples with the adapted adapters, calls :meth:`fit` on
    those predictions, and then passes every query prediction through :meth:`apply`.
    It works with any learner: the learner is not changed, only its output.

    ``probs`` is ``(N, O)``, each row summing to one over the example's options
    (``option_mask`` True) and zero elsewhere; ``targets`` is ``(N,)``. The support
    set is the one the learner adapted on, so the fit is in-sample: say so when you
    report it.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    @abstractmethod
    def fit(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> None:
        """Fit on one task's support predictions (replacing any earlier fit)."""

    @abstractmethod
    def apply(self, probs: Tensor, option_mask: Tensor) -> Tensor:
        """The recalibrated ``(N, O)`` probabilities (rows sum to one over the options)."""
