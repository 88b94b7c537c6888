"""Regular LoRA (paper section 5.1.1, SPEC section 4)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from metalora.adapters import AdapterHandle, attach_adapters
from metalora.batching import Batch
from metalora.interfaces import Learner, LearnerContext, StepLog
from metalora.optim import adamw, fit_steps
from metalora.records import Task
from metalora.scoring import answer_loss, option_probs
from metalora.settings import setting


@dataclass(frozen=True)
class LoraSettings:
    """Settings of ``lora``."""

    lr: float = setting(5e-5, "Training learning rate (AdamW; for maml the outer step).")
    weight_decay: float = setting(0.01, "AdamW weight decay.")
    steps_per_task: int = setting(
        5, "An epoch of lora draws len(training tasks) x steps_per_task batches from the "
           "shuffled union of all training examples (the compute of one pass of the "
           "task-structured learners); 0 = one full pass over every example.")


class LoraLearner(Learner):
    """One LoRA pair trained on shuffled batches from all training tasks together."""

    name = "lora"
    description = "Regular LoRA on the shuffled union of the training tasks (baseline)."
    Settings = LoraSettings

    def __init__(self, context: LearnerContext) -> None:
        super().__init__(context)
        self._adapters = attach_adapters(context.model, context.adapter_config, ["default"])
        self.optimizer = adamw(self._adapters.parameters(), self.settings.lr,
                               self.settings.weight_decay)

    @property
    def adapters(self) -> AdapterHandle:
        return self._adapters

    def _batches_per_epoch(self, tasks: Sequence[Task]) -> int:
        if self.settings.steps_per_task > 0:
            return len(tasks) * self.settings.steps_per_task
        total = sum(len(t) for t in tasks)
        return -(-total // self.context.run.batch_size)

    def steps_per_epoch(self, tasks: Sequence[Task]) -> int:
        return self._batches_per_epoch(tasks)

    def train_epoch(self, tasks: Sequence[Task], epoch: int) -> Iterator[StepLog]:
        records = [r for t in tasks for r in t.records]
        episodes, rng = self.context.episodes, self.context.rng
        if self.settings.steps_per_task > 0:
            k = min(self.context.run.batch_size, len(records))
            n_batches = self._batches_per_epoch(tasks)
            batches: Iterator[Batch] = (
                episodes.encode(rng.sample(records, k)) for _ in range(n_batches))
        else:
            batches = iter(episodes.shuffled_batches(records, rng))
        for step, batch in enumerate(batches):
            loss = answer_loss(self.context.model, batch, over=self.context.run.train_loss)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            value = float(loss.detach())
            yield StepLog(epoch=epoch, task=None, step=step, loss=value, components={"nll": value})

    def adapt(self, support: Sequence[Batch]) -> None:
        run = self.context.run
        fit_steps(self.context.model, self._adapters.parameters(), support, run.adapt_steps,
                  run.adapt_lr, run.train_loss)

    def predict_proba(self, batch: Batch) -> Tensor:
        return option_probs(self.context.model, batch)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
