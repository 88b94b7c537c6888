"""The evaluation protocol (SPEC sections 3.4 and 4), identical for every learner.

For each evaluated task: snapshot every adapter tensor, let the learner adapt
on the support batches (test-time adaptation), score the query batches,
restore the snapshot exactly. Metrics are computed per task and
macro-averaged over tasks. Randomness inside evaluation (e.g. weight
sampling) comes from a generator seeded per task, and the global RNG state
is restored afterwards, so evaluating never changes how training continues.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from metalora.episodes import Episode
from metalora.interfaces.learner import Learner
from metalora.interfaces.metric import Metric


@dataclass
class TaskResult:
    """Predictions and metrics of one evaluated task."""

    task: str
    metrics: dict[str, float]
    probs: Tensor
    targets: Tensor
    option_mask: Tensor

    @property
    def size(self) -> int:
        return int(self.targets.shape[0])


@dataclass
class EvalResult:
    """Per-task results and their macro average."""

    tasks: list[TaskResult] = field(default_factory=list)

    @property
    def macro(self) -> dict[str, float]:
        """Each metric averaged over tasks (every task weighs the same)."""
        if not self.tasks:
            return {}
        names = self.tasks[0].metrics.keys()
        return {n: sum(t.metrics[n] for t in self.tasks) / len(self.tasks) for n in names}

    def to_dict(self) -> dict:
        """JSON-ready metrics (predictions are left out)."""
        return {
            "macro": self.macro,
            "tasks": {t.task: {"n": t.size, **t.metrics} for t in self.tasks},
        }


def compute_metrics(metrics: Mapping[str, Metric], probs: Tensor, targets: Tensor,
                    option_mask: Tensor) -> dict[str, float]:
    """Every metric over one set of predictions."""
    return {name: float(m.compute(probs, targets, option_mask)) for name, m in metrics.items()}


def evaluate(learner: Learner, episodes: Sequence[Episode], metrics: Mapping[str, Metric],
             seed: int = 0, on_task: Callable[[str], None] | None = None) -> EvalResult:
    """Adapt-evaluate-restore on each episode; see the module docstring."""
    handle = learner.adapters
    result = EvalResult()
    model = learner.context.model
    was_training = model.training
    model.eval()
    for episode in episodes:
        snapshot = handle.snapshot()
        device = learner.context.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(_task_seed(seed, episode.task))
            try:
                learner.adapt(episode.support)
                with torch.no_grad():
                    probs = torch.cat(
                        [learner.predict_proba(b).float().cpu() for b in episode.query])
            finally:
                handle.restore(snapshot)
        targets = torch.cat([b.targets.cpu() for b in episode.query])
        mask = torch.cat([b.option_mask.cpu() for b in episode.query])
        result.tasks.append(TaskResult(
            task=episode.task, metrics=compute_metrics(metrics, probs, targets, mask),
            probs=probs, targets=targets, option_mask=mask))
        if on_task is not None:
            on_task(episode.task)
    model.train(was_training)
    return result


def _task_seed(seed: int, task: str) -> int:
    return zlib.crc32(f"{seed}:{task}".encode())
