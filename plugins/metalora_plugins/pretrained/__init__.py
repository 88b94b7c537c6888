"""``pretrained``: the off-the-shelf model, zero-shot unless asked to adapt at test time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from metalora import Batch, SinglePairLearner, StepLog, Task, hookimpl, setting


@dataclass(frozen=True)
class PretrainedSettings:
    """Settings of ``pretrained``."""

    pretrained_adapt: bool = setting(
        False, "Let `pretrained` adapt at test time like the other learners (default: zero-shot).")


class PretrainedLearner(SinglePairLearner):
    """No training. A zero-initialised LoRA pair exists only for optional test-time adaptation."""

    name = "pretrained"
    description = "The pretrained model, evaluated zero-shot (baseline)."
    supports_distributed = True  # no training step to synchronise
    Settings = PretrainedSettings
    evaluation_settings = ("pretrained_adapt",)

    def train_epoch(self, tasks: Sequence[Task], epoch: int) -> Iterator[StepLog]:
        return iter(())

    def adapt(self, support: Sequence[Batch]) -> None:
        if self.settings.pretrained_adapt:
            super().adapt(support)


@hookimpl
def register_learners(register):
    register(PretrainedLearner)
