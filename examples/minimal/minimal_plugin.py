"""A complete metalora plugin in one file: a learner that takes a few AdamW steps per task.

Install it as a package whose ``pyproject.toml`` names this module in the
``metalora`` entry-point group::

    [project.entry-points.metalora]
    first-steps = "minimal_plugin"

then ``metalora run --learner first-steps --tasks demo``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from metalora import (
    LearnerContext,
    Register,
    SinglePairLearner,
    StepLog,
    Task,
    adamw,
    hookimpl,
    setting,
)


@dataclass(frozen=True)
class FirstStepsSettings:
    """Every field becomes a --option, a config-file key and a recorded setting."""

    first_steps_lr: float = setting(1e-4, "first-steps: AdamW learning rate.", gt=0)
    first_steps_per_task: int = setting(3, "first-steps: steps on each training task.", ge=1)


class FirstStepsLearner(SinglePairLearner):
    """One LoRA pair, a few steps on each task in turn (test-time adaptation and prediction
    come from SinglePairLearner)."""

    name = "first-steps"
    description = "A few AdamW steps on each training task in turn (tutorial example)."
    Settings = FirstStepsSettings

    def __init__(self, context: LearnerContext) -> None:
        super().__init__(context)
        self.optimizer = adamw(self.adapters.parameters(), self.settings.first_steps_lr)

    def steps_per_epoch(self, tasks: Sequence[Task]) -> int:
        return len(tasks) * self.settings.first_steps_per_task

    def train_epoch(self, tasks: Sequence[Task], epoch: int) -> Iterator[StepLog]:
        order = list(tasks)
        self.context.rng.shuffle(order)  # the run's seeded generator: reproducible
        for task in order:
            for step in range(self.settings.first_steps_per_task):
                batch = self.context.batches.train_batch(task, self.context.rng)
                loss = self.gradient_step(batch, self.optimizer)
                yield StepLog(epoch=epoch, task=task.name, step=step, loss=loss,
                              components={"nll": loss})


@hookimpl
def register_learners(register: Register) -> None:
    register(FirstStepsLearner)
