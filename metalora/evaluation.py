"""The evaluation protocol, identical for every learner.

For each evaluated task: snapshot every adapter tensor, let the learner adapt
on the support batches (test-time adaptation), score the query batches,
restore the snapshot exactly. Metrics are computed per task and
macro-averaged over tasks. Randomness inside evaluation (e.g. weight
sampling) comes from torch's global generator seeded per task; every RNG
state (torch, CUDA, Python's ``random``, NumPy and the learner's
``context.rng``) is restored afterwards, so evaluating -- validation during
training included -- never changes how training continues.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from torch import Tensor

from metalora.distributed import Distributed
from metalora.episodes import Episode
from metalora.errors import MetaloraError
from metalora.files import atomic_write_bytes
from metalora.interfaces.learner import Learner
from metalora.interfaces.metric import Metric
from metalora.records import TaskRecord


@dataclass
class TaskResult:
    """Predictions and metrics of one evaluated task."""

    task: str
    metrics: dict[str, float]
    probs: Tensor
    targets: Tensor
    option_mask: Tensor
    records: list[TaskRecord] = field(default_factory=list)
    """The query records, in the same order (empty for results read back from a file)."""
    demonstrations: list[int] | None = None
    """In-context demonstrations in each query's prompt (``None``: none asked for)."""

    @property
    def size(self) -> int:
        return int(self.targets.shape[0])


BOOTSTRAP_RESAMPLES = 200


@dataclass
class EvalResult:
    """Per-task results and their macro average."""

    tasks: list[TaskResult] = field(default_factory=list)
    example_se: dict[str, float] = field(default_factory=dict)
    """Bootstrap standard error over query examples of each macro metric (see
    :meth:`bootstrap_se`); empty unless computed."""

    def bootstrap_se(self, metrics: Mapping[str, Metric], resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> dict[str, float]:
        """The standard error of each macro metric over query examples, by the bootstrap.

        Each resample draws every task's query examples with replacement (seeded)
        and recomputes every metric per task and their macro average; the
        standard error is the standard deviation over resamples. It measures
        how much the score depends on which queries were drawn: the
        uncertainty to show beside a single seed's number.
        """
        if not self.tasks:
            return {}
        gen = torch.Generator().manual_seed(seed)
        draws: dict[str, list[float]] = {name: [] for name in metrics}
        for _ in range(resamples):
            per_task: dict[str, list[float]] = {name: [] for name in metrics}
            for task in self.tasks:
                pick = torch.randint(task.size, (task.size,), generator=gen)
                scores = compute_metrics(metrics, task.probs[pick], task.targets[pick],
                                         task.option_mask[pick])
                for name, value in scores.items():
                    per_task[name].append(value)
            for name, values in per_task.items():
                draws[name].append(macro_average(values))
        return {name: _finite_std(values) for name, values in draws.items()}

    @property
    def macro(self) -> dict[str, float]:
        """Each metric averaged over tasks (every task weighs the same; a task where a
        metric is not defined, ``nan``, is left out of that metric's average)."""
        if not self.tasks:
            return {}
        names = self.tasks[0].metrics.keys()
        return {n: macro_average([t.metrics[n] for t in self.tasks]) for n in names}

    def to_dict(self) -> dict:
        """JSON-ready metrics (predictions are left out; a metric not defined is null)."""
        data = {
            "macro": _json_numbers(self.macro),
            "tasks": {t.task: {"n": t.size, **_json_numbers(t.metrics)} for t in self.tasks},
        }
        if self.example_se:
            data["macro_se_over_examples"] = _json_numbers(self.example_se)
        return data

    def save_predictions(self, path: Path) -> None:
        """Atomically write every task's probabilities, targets and option mask (safetensors)."""
        tensors: dict[str, Tensor] = {}
        for i, t in enumerate(self.tasks):
            tensors[f"{i}.probs"] = t.probs.float().contiguous()
            tensors[f"{i}.targets"] = t.targets.long().contiguous()
            tensors[f"{i}.option_mask"] = t.option_mask.bool().contiguous()
        data = save_safetensors(
            tensors, metadata={"tasks": json.dumps([t.task for t in self.tasks])})
        atomic_write_bytes(path, data)

    def write_predictions_jsonl(self, path: Path) -> None:
        """Atomically write one JSON line per query example: ``{"task", "index" (in the
        seeded query set), "probs" (one per option), "label" (the correct option's index),
        "demonstrations" (in-context ones in its prompt, when asked for), "source"
        (file:line or row id, when known), "input", "options"}``, in query-set order; the
        last three trace a prediction back to its record."""
        lines = []
        for t in self.tasks:
            for index in range(t.size):
                count = int(t.option_mask[index].sum())
                probs = [round(float(p), 6) for p in t.probs[index, :count]]
                line: dict[str, Any] = {"task": t.task, "index": index, "probs": probs,
                                        "label": int(t.targets[index])}
                if t.demonstrations is not None:
                    line["demonstrations"] = t.demonstrations[index]
                if t.records:
                    record = t.records[index]
                    line.update(source=record.source, input=record.input,
                                options=list(record.options))
                lines.append(json.dumps(line))
        atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode())

    @classmethod
    def load(cls, metrics: Mapping[str, Any], predictions: Path) -> EvalResult:
        """Rebuild a result from its :meth:`to_dict` form and :meth:`save_predictions` file."""
        if not predictions.exists():
            raise MetaloraError(f"predictions file {str(predictions)!r} does not exist")
        with safe_open(str(predictions), framework="pt") as handle:
            names = json.loads((handle.metadata() or {}).get("tasks", "[]"))
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        per_task = metrics.get("tasks", {})
        result = cls(example_se={k: math.nan if v is None else float(v) for k, v in
                                 (metrics.get("macro_se_over_examples") or {}).items()})
        for i, name in enumerate(names):
            values = {k: math.nan if v is None else float(v)
                      for k, v in per_task.get(name, {}).items() if k != "n"}
            result.tasks.append(TaskResult(
                task=name, metrics=values, probs=tensors[f"{i}.probs"],
                targets=tensors[f"{i}.targets"], option_mask=tensors[f"{i}.option_mask"]))
        return result


def macro_average(values: Sequence[float]) -> float:
    """The mean of the defined (finite) values; ``nan`` when none is."""
    defined = [v for v in values if math.isfinite(v)]
    return sum(defined) / len(defined) if defined else math.nan


def _finite_std(values: Sequence[float]) -> float:
    defined = [v for v in values if math.isfinite(v)]
    return float(torch.tensor(defined, dtype=torch.float64).std()) if len(defined) > 1 \
        else math.nan


def _json_numbers(values: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (float(v) if math.isfinite(v) else None) for k, v in values.items()}


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
    device = learner.context.device
    for episode in episodes:
        snapshot = handle.snapshot()
        with preserved_rng(learner.context.rng, device):
            torch.manual_seed(_task_seed(seed, episode.task))
            try:
                learner.adapt(episode.support)
                with torch.no_grad():
                    probs = episode.in_query_order(torch.cat(
                        [learner.predict_proba(b).float().cpu() for b in episode.query]))
            finally:
                handle.restore(snapshot)
        targets = episode.in_query_order(torch.cat([b.targets.cpu() for b in episode.query]))
        mask = episode.in_query_order(torch.cat([b.option_mask.cpu() for b in episode.query]))
        result.tasks.append(TaskResult(
            task=episode.task, metrics=compute_metrics(metrics, probs, targets, mask),
            probs=probs, targets=targets, option_mask=mask, records=episode.query_records(),
            demonstrations=episode.demonstrations))
        if on_task is not None:
            on_task(episode.task)
    model.train(was_training)
    return result


def evaluate_across_ranks(distributed: Distributed, learner: Learner,
                          episodes: Sequence[Episode], metrics: Mapping[str, Metric],
                          seed: int = 0,
                          on_task: Callable[[str], None] | None = None) -> EvalResult:
    """:func:`evaluate`; under torchrun each rank takes its share of the episodes and every
    rank gets all results (they equal a single process's: each task's evaluation is seeded
    by the task). ``on_task`` hears of every task once: this rank's as each ends, the
    other ranks' when their results arrive, so a count against all episodes ends full."""
    if not distributed.active:
        return evaluate(learner, episodes, metrics, seed=seed, on_task=on_task)
    mine = evaluate(learner, distributed.deal_all(episodes), metrics, seed=seed,
                    on_task=on_task)
    tasks = distributed.gather_dealt(mine.tasks, len(episodes))
    if on_task is not None:
        for index, task in enumerate(tasks):
            if index % distributed.world_size != distributed.rank:
                on_task(task.task)
    return EvalResult(tasks=tasks)


@contextlib.contextmanager
def preserved_rng(learner_rng: random.Random | None = None,
                  device: torch.device | None = None) -> Iterator[None]:
    """Restore every RNG state on exit: torch (CPU, and CUDA on a GPU), Python, NumPy, ``rng``."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    learner_state = learner_rng.getstate() if learner_rng is not None else None
    devices = [device] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        if learner_rng is not None and learner_state is not None:
            learner_rng.setstate(learner_state)


def _task_seed(seed: int, task: str) -> int:
    return zlib.crc32(f"{seed}:{task}".encode())
