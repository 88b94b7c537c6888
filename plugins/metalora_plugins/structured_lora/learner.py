"""Structured LoRA (paper section 5.1.1).

One LoRA pair and one AdamW optimiser for the whole run. An epoch visits the
training tasks one at a time, in an order shuffled per epoch with the run's
seeded RNG, and takes ``steps_per_task`` steps on batches drawn from the
current task. Nothing is ever reset or copied back: the adapters after task
``i`` are where task ``i + 1`` starts, the optimiser's moments carry over from
task to task and from epoch to epoch, and there is no global variable. What
distinguishes it from ``lora`` is only the task-structured order of the
batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from metalora import LearnerContext, SinglePairLearner, StepLog, Task, adamw, setting


@dataclass(frozen=True)
class StructuredLoraSettings:
    """Settings of ``structured-lora``."""

    lr: float = setting(1e-5, "structured-lora: AdamW learning rate (paper: 1e-5).", gt=0)
    weight_decay: float = setting(0.01, "AdamW weight decay.", ge=0)
    steps_per_task: int = setting(
        5, "structured-lora: optimisation steps on each training task per visit (paper: 5).", ge=1)


class StructuredLoraLearner(SinglePairLearner):
    """One LoRA pair trained on one task after another with a persistent AdamW."""

    name = "structured-lora"
    description = ("One LoRA pair trained task by task, 5 steps each, no reset, "
                   "no global variable (baseline).")
    Settings = StructuredLoraSettings
    supports_distributed = True

    def __init__(self, context: LearnerContext) -> None:
        super().__init__(context)
        self.optimizer = adamw(self.adapters.parameters(), self.settings.lr,
                               self.settings.weight_decay)

    def steps_per_epoch(self, tasks: Sequence[Task]) -> int:
        return len(tasks) * max(self.settings.steps_per_task, 0)

    def train_epoch(self, tasks: Sequence[Task], epoch: int) -> Iterator[StepLog]:
        """Visit the tasks in a freshly shuffled order, ``steps_per_task`` AdamW steps each."""
        episodes, rng = self.context.batches, self.context.rng
        order = list(tasks)
        rng.shuffle(order)
        for task in order:
            for step in range(self.settings.steps_per_task):
                value = self.gradient_step(episodes.train_batch(task, rng), self.optimizer,
                                           synchronise=True)
                yield StepLog(epoch=epoch, task=task.name, step=step, loss=value,
                              components={"nll": value})
