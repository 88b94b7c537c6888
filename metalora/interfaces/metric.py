"""The :class:`Metric` interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import Tensor

from metalora.settings import NoSettings


class Metric(ABC):
    """A score of predicted option probabilities against the correct options.

    ``probs`` is ``(N, O)``: each row sums to one over the example's options
    and is zero on padded positions (``option_mask`` False). ``targets`` is
    ``(N,)``, the index of the correct option. The result is one float per
    task; the evaluation protocol macro-averages it over tasks. A metric that
    is not defined on a task (misclassification AUROC when every query is
    answered correctly) returns ``nan``; the macro average is then over the
    tasks where it is defined.
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    description: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    @abstractmethod
    def compute(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> float:
        """The metric over one task's predictions."""
