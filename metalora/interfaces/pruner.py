"""The :class:`Pruner` interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import nn

from metalora.settings import NoSettings


class Pruner(ABC):
    """Removes weights from a model in place to test its robustness.

    The caller hands in an in-memory copy whose adapters' global mean is
    already merged into the base weights; the pruner zeroes what it selects
    and returns, per pruned module name, how many units it zeroed.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    @abstractmethod
    def prune(self, model: nn.Module, ratio: float,
              modules: dict[str, nn.Linear]) -> dict[str, int]:
        """Prune ``ratio`` of ``modules`` (name -> linear layer of ``model``) in place."""
