"""``pretrained``: the off-the-shelf model, zero-shot unless asked to adapt at test time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor

from metalora import hookimpl
from metalora.adapters import AdapterHandle, attach_adapters
from metalora.batching import Batch
from metalora.interfaces import Learner, LearnerContext, StepLog
from metalora.optim import fit_steps
from metalora.records import Task
from metalora.scoring import option_probs
from metalora.settings import setting


@dataclass(frozen=True)
class PretrainedSettings:
    """Settings of ``pretrained``."""

    pretrained_adapt: bool = setting(
        False, "Let `pretrained` adapt at test time like the other learners (default: zero-shot).")


class PretrainedLearner(Learner):
    """No training. A zero-initialised LoRA pair exists only for optional test-time adaptation."""

    name = "pretrained"
    description = "The pretrained model, evaluated zero-shot (baseline)."
    Settings = PretrainedSettings

    def __init__(self, context: LearnerContext) -> None:
        super().__init__(context)
        self._adapters = attach_adapters(context.model, context.adapter_config, ["default"])

    @property
    def adapters(self) -> AdapterHandle:
        return self._adapters

    def train_epoch(self, tasks: Sequence[Task], epoch: int) -> Iterator[StepLog]:
        return iter(())

    def adapt(self, support: Sequence[Batch]) -> None:
        if self.settings.pretrained_adapt:
            run = self.context.run
            fit_steps(self.context.model, self._adapters.parameters(), support, run.adapt_steps,
                      run.adapt_lr, run.train_loss)

    def predict_proba(self, batch: Batch) -> Tensor:
        return option_probs(self.context.model, batch)


@hookimpl
def register_learners(register):
    register(PretrainedLearner)
