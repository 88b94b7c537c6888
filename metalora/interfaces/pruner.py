"""The :class:`Pruner` interface: which output neurons of which layers to zero.

A pruner only *selects*. :mod:`metalora.pruning` hands it the merged weight
``W = W0 + mu`` of every layer in scope (``mu = s * B @ A`` of the learner's
global-mean pair, zero for layers without adapters) and applies its choice
to an in-memory model, keeping the learner's adapters consistent (see
:func:`metalora.pruning.apply_pruning`). Keeping the pruner a pure function
of the weights makes it easy to test and lets the core guarantee that the
saved run is never modified and that every ratio starts from the same model.

Pruning is structured by output neuron (a row of ``W``, as in the paper's
section 5.2): a pruned row's weights and bias entry become zero, so the
neuron's output is zero before test-time adaptation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor

from metalora.settings import NoSettings


class Pruner(ABC):
    """Chooses the output neurons (rows) of each layer to zero for a given ratio.

    Subclasses set ``name`` (how ``--pruner`` selects them), optionally
    ``description`` and ``Settings`` (a settings dataclass, see
    :mod:`metalora.settings`), and implement :meth:`select`. Register them
    with ``@hookimpl def register_pruners(register): register(MyPruner)``.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    @abstractmethod
    def select(self, weights: Mapping[str, Tensor], ratio: float) -> dict[str, Tensor]:
        """The rows to zero in each layer.

        Args:
            weights: module name -> merged weight ``W0 + mu`` (``d_out x d_in``,
                float32, read-only: do not modify).
            ratio: fraction of output neurons to prune, in ``[0, 1)``.

        Returns:
            module name -> 1-D ``int64`` tensor of row indices to zero (sorted,
            unique, possibly empty), for every module of ``weights``.
        """
