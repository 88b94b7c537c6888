"""Reptile (Nichol et al. 2018) on one LoRA pair (paper section 5.1.1).

Per training task, in an order shuffled per epoch with the run's seeded RNG:

1. snapshot the meta-parameters ``theta`` (the adapter tensors);
2. take ``inner_steps`` AdamW steps (lr ``lr``, paper: 5 steps at 1e-5) on
   batches drawn from the task, on the adapters in place, giving ``theta_i``;
3. write ``theta <- theta + reptile_epsilon * (theta_i - theta)`` (paper: 0.5).

Only the snapshot of the one pair exists besides the adapters themselves, so
memory does not grow with the number of tasks.

Outer step (``reptile_outer``): ``interpolate`` (default, the paper's) is step
3 above. ``adamw`` instead treats ``theta - theta_i`` as a gradient (the
pseudo-gradient Nichol et al. mention feeding to an adaptive optimiser) and
takes one step of a persistent outer AdamW at ``reptile_outer_lr``. That is the
control for ABMLL under its default ``literal`` reading, whose outer step is
this pseudo-gradient (projected on the LoRA factors) fed to AdamW: any gap
between ``abmll`` and this ``reptile`` is not the optimiser's.

Inner optimiser: by default a fresh AdamW for every task, so the inner loop
of training is exactly the shared test-time adaptation (a fresh
AdamW, a few steps, the same kind of batches) and Reptile meta-learns an
initialisation for that very procedure; each task's ``theta_i`` depends only
on ``theta`` and the task's batches. With ``reptile_persistent_optimizer`` one
AdamW is kept for the whole run instead (its moments carry over from task to
task, as in OpenAI's supervised-reptile); its state is then part of
:meth:`ReptileLearner.state_dict`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metalora import LearnerContext, SinglePairLearner, StepLog, Task, adamw, setting


@dataclass(frozen=True)
class ReptileSettings:
    """Settings of ``reptile``."""

    lr: float = setting(1e-5, "reptile: learning rate of the inner AdamW steps (paper: 1e-5).",
                        gt=0)
    weight_decay: float = setting(0.01, "AdamW weight decay.", ge=0)
    inner_steps: int = setting(5, "Inner-loop steps per training task (paper: K = 5).", ge=1)
    reptile_epsilon: float = setting(
        0.5, "reptile: outer step size eps in theta <- theta + eps (theta_i - theta) "
             "(paper: 0.5).", gt=0, le=1)
    reptile_persistent_optimizer: bool = setting(
        False, "reptile: keep one inner AdamW for the whole run instead of a fresh one per task.")
    reptile_outer: str = setting(
        "interpolate", "reptile: outer step. 'interpolate': theta <- theta + eps (theta_i - "
                       "theta) (paper). 'adamw': theta - theta_i as a gradient to a persistent "
                       "outer AdamW at reptile_outer_lr (the control for abmll's literal "
                       "reading).", choices=("interpolate", "adamw"))
    reptile_outer_lr: float = setting(
        1e-3, "reptile: learning rate of the outer AdamW (reptile_outer = adamw).", gt=0)


def reptile_interpolate(theta: Tensor, theta_i: Tensor, epsilon: float) -> Tensor:
    """The Reptile outer update ``theta + epsilon * (theta_i - theta)``."""
    return theta + epsilon * (theta_i - theta)


class ReptileLearner(SinglePairLearner):
    """Reptile: a few AdamW steps per task, then move ``theta`` part of the way there."""

    name = "reptile"
    description = ("Reptile: 5 AdamW steps per task from theta, then "
                   "theta <- theta + eps (theta_i - theta), eps = 0.5 (baseline).")
    Settings = ReptileSettings
    supports_distributed = True

    def __init__(self, context: LearnerContext) -> None:
        super().__init__(context)
        if self.settings.reptile_persistent_optimizer:
            self.optimizer = self._new_optimizer()
        self.outer_optimizer: torch.optim.AdamW | None = None
        if self.settings.reptile_outer == "adamw":
            self.outer_optimizer = adamw(self._adapters.parameters(),
                                         self.settings.reptile_outer_lr,
                                         self.settings.weight_decay)

    def _new_optimizer(self) -> torch.optim.AdamW:
        return adamw(self._adapters.parameters(), self.settings.lr, self.settings.weight_decay)

    def steps_per_epoch(self, tasks: Sequence[Task]) -> int:
        """``inner_steps`` inner logs plus one outer log per task."""
        return len(tasks) * (max(self.settings.inner_steps, 0) + 1)

    def train_epoch(self, tasks: Sequence[Task], epoch: int) -> Iterator[StepLog]:
        """Per task (shuffled): inner AdamW steps in place, then the Reptile interpolation.

        Yields one ``phase="inner"`` log per inner step and one ``phase="outer"``
        log after the interpolation (its loss is the mean inner loss of the task,
        ``shift`` the L2 norm of ``eps (theta_i - theta)`` over all adapter tensors).
        """
        episodes, rng = self.context.batches, self.context.rng
        order = list(tasks)
        rng.shuffle(order)
        for task in order:
            theta = self._adapters.snapshot()
            optimizer = self.optimizer if self.optimizer is not None else self._new_optimizer()
            losses = []
            for step in range(self.settings.inner_steps):
                value = self.gradient_step(episodes.train_batch(task, rng), optimizer)
                losses.append(value)
                yield StepLog(epoch=epoch, task=task.name, step=step, loss=value, phase="inner",
                              components={"nll": value})
            optimizer.zero_grad(set_to_none=True)
            shift = self._outer_update(theta)
            mean = sum(losses) / len(losses) if losses else 0.0
            yield StepLog(epoch=epoch, task=task.name, step=self.settings.inner_steps, loss=mean,
                          phase="outer", components={"nll": mean, "shift": shift})

    @torch.no_grad()
    def _outer_update(self, theta: dict[str, Tensor]) -> float:
        """The outer step from ``theta`` (the adapters hold ``theta_i``); return the norm of
        the move. ``interpolate`` writes ``theta + eps (theta_i - theta)``; ``adamw`` puts
        ``theta`` back and steps the outer AdamW on the gradient ``theta - theta_i``."""
        epsilon = self.settings.reptile_epsilon
        params = self._adapters.named_parameters()
        # a torchrun run moves theta towards the mean of the ranks' theta_i
        self.context.ranks.average_(params.values())
        if self.outer_optimizer is not None:
            for name, param in params.items():
                param.grad = theta[name] - param
                param.copy_(theta[name])
            self.outer_optimizer.step()
            self.outer_optimizer.zero_grad(set_to_none=True)
            return sum(float((p - theta[n]).pow(2).sum()) for n, p in params.items()) ** 0.5
        squared = 0.0
        for name, param in params.items():
            new = reptile_interpolate(theta[name], param, epsilon)
            squared += float((new - theta[name]).pow(2).sum())
            param.copy_(new)
        return squared ** 0.5

    def state_dict(self) -> dict[str, Any]:
        """The persistent optimisers' states (the inner one's and the outer AdamW's)."""
        outer = None if self.outer_optimizer is None else self.outer_optimizer.state_dict()
        return {**super().state_dict(), "outer_optimizer": outer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.outer_optimizer is not None and state.get("outer_optimizer") is not None:
            self.outer_optimizer.load_state_dict(state["outer_optimizer"])
