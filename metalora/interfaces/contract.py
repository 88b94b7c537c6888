"""The public types a learner is handed besides the model: batches, the protocol, ranks.

These are what :class:`~metalora.interfaces.learner.LearnerContext` holds, so that a
learner needs nothing internal:

* :class:`BatchSource` draws training batches on the run's device (the core's episode
  sampler is one);
* :class:`ProtocolSpec` is the evaluation protocol every learner shares, the numbers of
  test-time adaptation among them, typed;
* :class:`Ranks` is this process's place in a ``torchrun`` run, with the averaging a
  learner that trains across ranks needs.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor

    from metalora.prompts import Batch
    from metalora.records import Task, TaskRecord


@dataclass(frozen=True)
class ProtocolSpec:
    """The evaluation protocol every learner shares: support and query sets, test-time
    adaptation (``adapt_steps`` steps at ``adapt_lr`` on the support set, from the tested
    adapters, restored afterwards), a calibrator fitted on the support set (``calibrate``),
    support examples shown in each query's prompt (``in_context``), metrics."""

    support_batches: int = 5
    query_cap: int | None = None
    eval_batch_size: int = 8
    adapt_steps: int = 5
    adapt_lr: float = 1e-5
    metrics: tuple[str, ...] = ()
    calibrate: str = "none"
    in_context: int = 0


@runtime_checkable
class BatchSource(Protocol):
    """Draws batches of prompts, encoded and on the run's device."""

    batch_size: int

    def train_batch(self, task: Task, rng: random.Random) -> Batch:
        """``batch_size`` records of ``task`` drawn without replacement with ``rng``."""
        ...

    def shuffled_batches(self, records: Sequence[TaskRecord], rng: random.Random) -> list[Batch]:
        """All ``records`` once, shuffled with ``rng``, in batches of ``batch_size``."""
        ...

    def encode(self, records: Sequence[TaskRecord]) -> Batch:
        """``records`` as one batch."""
        ...


@runtime_checkable
class Ranks(Protocol):
    """This process's place among the ranks of a ``torchrun`` run (one rank otherwise)."""

    @property
    def rank(self) -> int:
        """This process's rank, 0 to ``world_size - 1``."""
        ...

    @property
    def world_size(self) -> int:
        """How many ranks."""
        ...

    @property
    def active(self) -> bool:
        """True when there is more than one rank."""
        ...

    @property
    def is_main(self) -> bool:
        """Rank 0."""
        ...

    def average_gradients(self, params: Iterable[Tensor], loss: float) -> float:
        """Average ``.grad`` of ``params`` over the ranks; return the mean ``loss``."""
        ...

    def average_(self, tensors: Iterable[Tensor]) -> None:
        """Replace each tensor, in place, by its mean over the ranks."""
        ...
