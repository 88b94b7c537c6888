"""The run engine: composes a suite, a model, learners and metrics into one run.

For each learner and seed: seed everything, let the learner attach its
adapters, train for ``epochs`` (logging every step to ``log.jsonl`` and
stopping with a clear message on a NaN/inf loss; the adapters of the last
finished epoch stay on disk), evaluate on the test tasks with the shared
protocol, write adapters and metrics, and detach the adapters so the next
learner starts from the same base model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from metalora.batching import PromptEncoder
from metalora.config import ResolvedConfig, RunSettings, settings_dict
from metalora.episodes import Episode, EpisodeSampler
from metalora.errors import MetaloraError, TrainingDiverged
from metalora.evaluation import EvalResult, evaluate
from metalora.interfaces import DataOptions, Learner, LearnerContext, Metric, Prior
from metalora.models import LoadedModel, load_model
from metalora.plugins import PluginManager
from metalora.records import Suite, Task
from metalora.rundir import (
    ADAPTERS_FILE,
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    save_adapters,
    seed_dir,
    write_json,
)
from metalora.seeding import seed_everything
from metalora.settings import build_settings
from metalora.stats import mean_se

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class SeedResult:
    """One learner trained and tested with one seed."""

    learner: str
    seed: int
    test: EvalResult
    path: Path


@dataclass
class RunSummary:
    """All results of a run, with mean ± SE over seeds."""

    run_dir: Path
    suite: str
    metric_names: list[str]
    results: dict[str, list[SeedResult]] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, tuple[float, float]]]:
        """learner -> metric -> (mean, standard error) of the macro average over seeds."""
        return {
            learner: {
                metric: mean_se([r.test.macro[metric] for r in seeds])
                for metric in self.metric_names
            }
            for learner, seeds in self.results.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``metrics.json``)."""
        summary = self.summary()
        return {
            "suite": self.suite,
            "metrics": self.metric_names,
            "learners": {
                learner: {
                    "summary": {m: {"mean": v[0], "se": v[1]} for m, v in summary[learner].items()},
                    "seeds": {str(r.seed): r.test.to_dict() for r in seeds},
                }
                for learner, seeds in self.results.items()
            },
        }


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MetaloraError(
            f"device {name!r} requested but CUDA is not available; valid choices: auto, cpu")
    return name


class Engine:
    """Runs learners on a suite under one protocol. See the module docstring."""

    def __init__(self, config: ResolvedConfig, plugins: PluginManager,
                 console: Console | None = None) -> None:
        self.config = config
        self.plugins = plugins
        self.console = console or Console(stderr=True)
        self.run: RunSettings = config.run
        self._validate_names()
        self.suite: Suite | None = None
        self.loaded: LoadedModel | None = None
        self.episodes: EpisodeSampler | None = None

    # -- set-up ----------------------------------------------------------------
    def _validate_names(self) -> None:
        """Fail fast, before loading anything, on unknown plugin names."""
        if not self.run.learner:
            raise MetaloraError("no learner given; valid choices: "
                                + ", ".join(self.plugins.registry("learner").names()))
        for name in self.run.learner:
            self.plugins.registry("learner").get(name)
        self.plugins.registry("suite").get(self.run.tasks)
        for name in self.run.metrics:
            self.plugins.registry("metric").get(name)
        if self.run.data_dir is not None and not Path(self.run.data_dir).is_dir():
            raise MetaloraError(f"data directory {self.run.data_dir!r} does not exist")
        if not self.run.seeds:
            raise MetaloraError("no seed given; pass e.g. --seeds 0 or --seeds 0,1,2")

    def metrics(self) -> dict[str, Metric]:
        """The metrics to report, instantiated."""
        registry = self.plugins.registry("metric")
        names = self.run.metrics or registry.names()
        return {name: registry.get(name)() for name in names}

    def load_suite(self) -> Suite:
        """Load (once) the suite named by ``tasks``."""
        if self.suite is None:
            sampler = self.plugins.registry("suite").get(self.run.tasks)
            data_dir = Path(self.run.data_dir) if self.run.data_dir else None
            self.suite = sampler.load(DataOptions(
                data_dir=data_dir, seed=0, skip_bad_records=self.run.skip_bad_records))
            if self.run.max_train_tasks is not None:
                self.suite.train = self.suite.train[: self.run.max_train_tasks]
            if self.run.max_eval_tasks is not None:
                self.suite.test = self.suite.test[: self.run.max_eval_tasks]
                self.suite.validation = self.suite.validation[: self.run.max_eval_tasks]
        return self.suite

    def load_model(self) -> LoadedModel:
        """Load (once) the model named by ``model`` and build the batch machinery."""
        if self.loaded is None:
            device = resolve_device(self.run.device)
            self.loaded = load_model(self.run.model, dtype=DTYPES[self.run.dtype], device=device)
            encoder = PromptEncoder(self.loaded.tokenizer, max_length=self.run.max_length)
            self.episodes = EpisodeSampler(
                encoder, batch_size=self.run.batch_size, support_batches=self.run.support_batches,
                query_cap=self.run.query_cap, eval_batch_size=self.run.eval_batch_size,
                seed=0, device=device)
        return self.loaded

    def learner_settings(self, name: str) -> Any:
        """A learner's settings: its defaults overridden by the given values."""
        cls = self.plugins.registry("learner").get(name)
        return build_settings(cls.Settings, self.config.values)

    def make_prior(self, name: str) -> Prior:
        """A registered prior with its settings resolved from this run's config."""
        cls = self.plugins.registry("prior").get(name)
        return cls(build_settings(cls.Settings, self.config.values))

    def build_learner(self, name: str, seed: int) -> Learner:
        """Seed everything and instantiate a learner (it attaches its adapters)."""
        loaded = self.load_model()
        rng = seed_everything(seed)
        cls = self.plugins.registry("learner").get(name)
        context = LearnerContext(
            model=loaded.model, encoder=self.episodes.encoder, episodes=self.episodes,
            run=self.run, settings=self.learner_settings(name), rng=rng,
            make_prior=self.make_prior)
        return cls(context)

    def resolved_config(self) -> dict[str, Any]:
        """Everything needed to rebuild this run: core settings and each learner's settings."""
        return {
            **settings_dict(self.run),
            "learner_settings": {n: settings_dict(self.learner_settings(n))
                                 for n in self.run.learner},
        }

    def make_run_dir(self) -> Path:
        """Create a fresh run directory (never reusing an existing one)."""
        base = Path(self.run.output_dir)
        stem = self.run.run_name or (
            f"{datetime.now():%Y%m%d-%H%M%S}-{self.run.tasks}-{'+'.join(self.run.learner)}")
        path = base / stem
        suffix = 1
        while path.exists():
            suffix += 1
            path = base / f"{stem}-{suffix}"
        path.mkdir(parents=True)
        return path

    # -- running -------------------------------------------------------------------
    def execute(self) -> RunSummary:
        """Run every learner for every seed; write and return the results."""
        suite = self.load_suite()
        if not suite.test:
            raise MetaloraError(f"suite '{suite.name}' has no test tasks")
        self.load_model()
        for note in suite.notes:
            self.console.print(f"[dim]{suite.name}: {note}[/dim]")
        metrics = self.metrics()
        run_dir = self.make_run_dir()
        write_json(run_dir / CONFIG_FILE, self.resolved_config())
        summary = RunSummary(run_dir=run_dir, suite=suite.name, metric_names=list(metrics))
        test_episodes = [self.episodes.episode(task) for task in suite.test]
        for name in self.run.learner:
            summary.results[name] = []
            for seed in self.run.seeds:
                learner = self.build_learner(name, seed)
                try:
                    out = seed_dir(run_dir, name, seed)
                    self.train(learner, name, seed, suite.train, out, run_dir / LOG_FILE)
                    result = self.test(learner, name, seed, test_episodes, metrics)
                    save_adapters(out / ADAPTERS_FILE, learner.adapters.snapshot())
                    write_json(out / METRICS_FILE, result.to_dict())
                    summary.results[name].append(SeedResult(name, seed, result, out))
                finally:
                    learner.adapters.remove()
                write_json(run_dir / METRICS_FILE, summary.to_dict())
        return summary

    @contextmanager
    def _progress(self) -> Iterator[Progress]:
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
        with progress:
            yield progress

    def train(self, learner: Learner, name: str, seed: int, tasks: list[Task], out: Path,
              log_path: Path) -> None:
        """Train for ``epochs``; log steps; keep the last good adapters on disk."""
        if self.run.epochs <= 0 or not tasks:
            return
        per_epoch = learner.steps_per_epoch(tasks)
        if per_epoch == 0:
            return
        with self._progress() as progress, log_path.open("a") as log:
            bar = progress.add_task(f"{name} seed {seed}: train", total=per_epoch * self.run.epochs)
            for epoch in range(self.run.epochs):
                for step in learner.train_epoch(tasks, epoch):
                    log.write(json.dumps({"learner": name, "seed": seed, **step.to_dict()}) + "\n")
                    if not math.isfinite(step.loss):
                        log.flush()
                        raise TrainingDiverged(
                            f"{name} (seed {seed}): loss became {step.loss} at epoch {epoch}, "
                            f"task {step.task or '-'}, step {step.step}; the adapters of the last "
                            f"finished epoch are kept in {out / ADAPTERS_FILE}")
                    progress.advance(bar)
                save_adapters(out / ADAPTERS_FILE, learner.adapters.snapshot())

    def test(self, learner: Learner, name: str, seed: int, episodes: list[Episode],
             metrics: dict[str, Metric]) -> EvalResult:
        """Evaluate on the test episodes with the shared protocol."""
        with self._progress() as progress:
            bar = progress.add_task(f"{name} seed {seed}: test", total=len(episodes))
            return evaluate(learner, episodes, metrics, seed=seed,
                            on_task=lambda _task: progress.advance(bar))
