"""The :class:`Learner` interface and what the engine hands a learner."""

from __future__ import annotations

import random
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from metalora.adapter_config import AdapterConfig
from metalora.distributed import Distributed
from metalora.interfaces.contract import BatchSource, ProtocolSpec, Ranks
from metalora.settings import NoSettings

if TYPE_CHECKING:
    from metalora.adapters import AdapterHandle
    from metalora.interfaces.prior import Prior
    from metalora.prompts import Batch
    from metalora.records import Task


@dataclass
class StepLog:
    """One optimisation step, as the engine logs it (JSONL) and checks it (NaN)."""

    epoch: int
    task: str | None
    step: int
    loss: float
    phase: str = "train"
    """E.g. ``"train"``, ``"inner"`` or ``"outer"``."""
    components: dict[str, float] = field(default_factory=dict)
    """Named loss terms, e.g. ``{"nll": ..., "kl": ..., "prior": ...}``."""

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-ready mapping."""
        return {
            "epoch": self.epoch,
            "task": self.task,
            "step": self.step,
            "phase": self.phase,
            "loss": self.loss,
            **self.components,
        }


DEPRECATED_FIELDS = {
    "episodes": "batches", "distributed": "ranks", "encoder": "batches.encode",
    "run": "protocol (adapt_steps, adapt_lr, ...), batches.batch_size, train_loss and adapter",
}
"""Fields of earlier versions, still readable for one release, and what replaces each."""


@dataclass
class LearnerContext:
    """Everything a learner needs, built by the engine for one run and seed.

    All of it is public API: the types are :class:`~metalora.interfaces.contract.BatchSource`,
    :class:`~metalora.interfaces.contract.ProtocolSpec`,
    :class:`~metalora.adapter_config.AdapterConfig` and
    :class:`~metalora.interfaces.contract.Ranks`. The fields of earlier versions
    (``episodes``, ``encoder``, ``run``, ``distributed``) still read, with a
    :class:`DeprecationWarning`, for one release.
    """

    model: nn.Module
    """The causal LM with frozen base weights (adapters are attached by the learner)."""
    batches: BatchSource
    """Draws training batches on the run's device: ``train_batch(task, rng)``,
    ``shuffled_batches(records, rng)``, ``encode(records)``; ``batch_size``."""
    protocol: ProtocolSpec
    """The evaluation protocol every learner shares; a learner's ``adapt`` takes
    ``protocol.adapt_steps`` steps at ``protocol.adapt_lr``."""
    adapter: AdapterConfig
    """The run's LoRA setup: rank, alpha and target modules."""
    settings: Any
    """The learner's own ``Settings`` instance."""
    rng: random.Random
    """Seeded Python RNG for task order and batch draws (the engine saves and restores it)."""
    train_loss: str = "vocab"
    """The answer loss's normalisation: ``vocab`` or ``options`` (pass it to
    :func:`~metalora.scoring.answer_loss` as ``over``)."""
    make_prior: Callable[[str], Prior] = field(default=lambda name: None)  # type: ignore[assignment]
    """Builds a registered prior by name, with its settings resolved from the run's config."""
    ranks: Ranks = field(default_factory=Distributed)
    """This process's rank in a ``torchrun`` run (one rank by default); a learner that sets
    ``supports_distributed`` averages its global gradients with it."""
    seed: int = 0
    """The run's seed for this learner (``rng`` starts from it)."""
    legacy_run: Any = field(default=None, repr=False)
    """The core's settings object that ``run`` returned (deprecated; do not use)."""

    def stream(self, *keys: object) -> random.Random:
        """A seeded random stream of its own for ``keys``, independent of :attr:`rng`.

        Common random numbers: at one seed every task-structured learner draws
        its task order and its ``inner_steps`` batches per task from ``rng`` in
        the same order, so they all see the same batches. A draw that only
        some learners make (ABMLL's outer batch, MAML's query batch) comes
        from ``stream("outer", epoch, task)`` instead, which leaves ``rng``
        where every other learner has it. The stream depends only on the seed
        and the keys, so it needs no checkpointing.
        """
        return random.Random(":".join(str(k) for k in (self.seed, *keys)))

    @property
    def adapter_config(self) -> AdapterConfig:
        """The same as :attr:`adapter`."""
        return self.adapter

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.model.parameters()).device

    def _deprecated(self, name: str) -> None:
        warnings.warn(f"LearnerContext.{name} is deprecated; use {DEPRECATED_FIELDS[name]}",
                      DeprecationWarning, stacklevel=3)

    @property
    def episodes(self) -> BatchSource:
        """Deprecated: :attr:`batches`."""
        self._deprecated("episodes")
        return self.batches

    @property
    def encoder(self) -> Any:
        """Deprecated: :attr:`batches` (``batches.encode``)."""
        self._deprecated("encoder")
        return getattr(self.batches, "encoder", None)

    @property
    def distributed(self) -> Ranks:
        """Deprecated: :attr:`ranks`."""
        self._deprecated("distributed")
        return self.ranks

    @property
    def run(self) -> Any:
        """Deprecated: :attr:`protocol`, ``batches.batch_size``, :attr:`train_loss` and
        :attr:`adapter` hold what a learner needs of the core's settings."""
        self._deprecated("run")
        return self.legacy_run


class Learner(ABC):
    """A way to train LoRA adapters across tasks and adapt them to a new task.

    Lifecycle, driven by :mod:`metalora.runs.engine`:

    1. ``__init__`` attaches the learner's adapter pairs to ``context.model``
       (:func:`metalora.adapters.attach_adapters`) and builds its optimisers.
    2. :meth:`train_epoch` runs one pass over the training tasks, yielding a
       :class:`StepLog` per optimisation step.
    3. For each evaluated task the engine snapshots every adapter tensor,
       calls :meth:`adapt` on the support batches, :meth:`predict_proba` on
       the query batches, and restores the snapshot exactly.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings
    mean_pair: ClassVar[str] = "default"
    """The adapter pair whose ``s * B @ A`` is the (global mean) weight update.

    Pruning merges it and PEFT export writes it.
    """
    supports_distributed: ClassVar[bool] = False
    """True when the learner can train in a ``torchrun`` run: it averages the gradients of
    its global parameters over the ranks (``context.ranks.average_gradients``)
    before every global step, on every rank, and takes the same number of steps per task."""

    export_sidecar_pairs: ClassVar[tuple[str, ...] | None] = None
    """The pairs ``metalora export`` writes beside the PEFT weights of :attr:`mean_pair`
    (``None``: every other pair)."""
    adapted_pairs: ClassVar[tuple[str, ...]] = ()
    """After :meth:`adapt`: the pair holding the task-adapted mean update, then any pairs
    to save beside it (``metalora adapt --save-adapter``); empty: :attr:`mean_pair` alone
    (a learner that adapts its one pair in place)."""
    evaluation_settings: ClassVar[tuple[str, ...]] = ()
    """The learner's own settings that act in :meth:`adapt` or prediction, so that
    ``metalora eval`` and ``adapt`` may change them for an evaluation (``--set NAME=...``);
    any other of its settings acts in training only and is refused there."""
    supports_gradient_checkpointing: ClassVar[bool] = True
    """False when the learner cannot train with ``gradient_checkpointing`` (e.g. it computes
    gradients with :mod:`torch.func`, which does not support the saved-tensor hooks that
    activation checkpointing relies on); such a run is refused before anything loads."""

    def __init__(self, context: LearnerContext) -> None:
        self.context = context
        self.settings = context.settings

    @property
    @abstractmethod
    def adapters(self) -> AdapterHandle:
        """The adapter pairs this learner attached to the model."""

    def steps_per_epoch(self, tasks: Sequence[Task]) -> int:
        """How many :class:`StepLog` entries :meth:`train_epoch` yields (for progress bars)."""
        return 0

    @abstractmethod
    def train_epoch(self, tasks: Sequence[Task], epoch: int) -> Iterator[StepLog]:
        """One pass over ``tasks``, yielding after each optimisation step."""

    @abstractmethod
    def adapt(self, support: Sequence[Batch]) -> None:
        """Test-time adaptation on one unseen task's support batches (mutates adapters)."""

    @abstractmethod
    def predict_proba(self, batch: Batch) -> Tensor:
        """``(B, O)`` option probabilities, renormalised over each example's options."""

    def predict_samples(self, batch: Batch) -> Tensor | None:
        """``(S, B, O)``: the option probabilities under each of ``S`` weight samples, for a
        learner whose :meth:`predict_proba` averages samples (Bayesian model averaging);
        ``None``, the default, for one that predicts with one set of weights."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything beyond the adapter tensors needed to resume (optimiser states)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what :meth:`state_dict` returned."""
