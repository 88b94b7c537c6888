"""The :class:`Prior` interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import Tensor

from metalora.settings import NoSettings


class Prior(ABC):
    """A prior p(theta) over the global parameters of a Bayesian learner.

    ``theta`` is given one layer at a time as the dense mean ``mu`` and
    log-variance ``log_var`` of an adapted weight (both ``d_out x d_in``).
    The learner sums the result over layers, so a prior must be a sum over
    elements (or at least over layers).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    @abstractmethod
    def negative_log_density(self, mu: Tensor, log_var: Tensor) -> Tensor:
        """-log p(theta) for one layer, a scalar that autograd can differentiate."""
