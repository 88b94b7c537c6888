"""Regular LoRA (paper section 5.1.1)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from metalora import (
    Batch,
    LearnerContext,
    MetaloraError,
    SinglePairLearner,
    StepLog,
    Task,
    adamw,
    setting,
)


@dataclass(frozen=True)
class LoraSettings:
    """Settings of ``lora``."""

    lr: float = setting(5e-5, "lora: AdamW learning rate (paper: 5e-5).", gt=0)
    weight_decay: float = setting(0.01, "AdamW weight decay.", ge=0)
    steps_per_task: int = setting(
        5, "An epoch of lora draws len(training tasks) x steps_per_task batches from the "
           "shuffled union of all training examples (the compute of one pass of the "
           "task-structured learners); 0 = one full pass over every example.", ge=0)


class LoraLearner(SinglePairLearner):
    """One LoRA pair trained on shuffled batches from all training tasks together."""

    name = "lora"
    description = "Regular LoRA on the shuffled union of the training tasks (baseline)."
    Settings = LoraSettings
    supports_distributed = True

    def __init__(self, context: LearnerContext) -> None:
        super().__init__(context)
        self.optimizer = adamw(self.adapters.parameters(), self.settings.lr,
                               self.settings.weight_decay)

    def _batches_per_epoch(self, tasks: Sequence[Task]) -> int:
        if self.settings.steps_per_task > 0:
            return len(tasks) * self.settings.steps_per_task
        total = sum(len(t) for t in tasks)
        return -(-total // self.context.batches.batch_size)

    def steps_per_epoch(self, tasks: Sequence[Task]) -> int:
        return self._batches_per_epoch(tasks)

    def epoch_batches(self, tasks: Sequence[Task]) -> Iterator[Batch]:
        """One epoch's training batches, drawn from the run's ``rng``."""
        records = [r for t in tasks for r in t.records]
        episodes, rng = self.context.batches, self.context.rng
        if self.settings.steps_per_task > 0:
            k = min(self.context.batches.batch_size, len(records))
            for _ in range(self._batches_per_epoch(tasks)):
                yield episodes.encode(rng.sample(records, k))
        else:
            yield from episodes.shuffled_batches(records, rng)

    def train_step(self, batch: Batch, epoch: int, step: int, tasks: Sequence[Task]) -> StepLog:
        """One training step on ``batch`` (a subclass may change the objective)."""
        value = self.gradient_step(batch, self.optimizer, synchronise=True)
        return StepLog(epoch=epoch, task=None, step=step, loss=value, components={"nll": value})

    def train_epoch(self, tasks: Sequence[Task], epoch: int) -> Iterator[StepLog]:
        if self.settings.steps_per_task <= 0 and self.context.ranks.active:
            raise MetaloraError("lora: steps_per_task 0 (one pass over every example) gives the "
                                "ranks of a torchrun run different step counts; set it to 1 "
                                "or more")
        for step, batch in enumerate(self.epoch_batches(tasks)):
            yield self.train_step(batch, epoch, step, tasks)
