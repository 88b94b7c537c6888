"""The run engine: composes a suite, a model, learners and metrics into one run.

The protocol (paper section 5.1), identical for every learner:

* For each learner and seed: seed everything, let the learner attach its
  adapters, and train for ``epochs`` epochs (an epoch is one pass of
  ``Learner.train_epoch`` over the training tasks; task order is shuffled by
  the learner with its seeded ``context.rng``). Every step is logged to
  ``log.jsonl`` (and TensorBoard when installed); a NaN/inf loss stops the
  run with a clear message.
* Every ``eval_every`` epochs (and only at multiples of it), the learner is
  validated on the suite's validation tasks with the shared test-time
  adaptation protocol (:func:`metalora.evaluation.evaluate`, which restores
  every RNG state, so validating never changes the training trajectory).
* After every epoch a checkpoint is written (:mod:`metalora.checkpoint`):
  the latest one, and the best one by the validation ``select_metric``
  (default accuracy; on ties the earlier epoch wins).
* The test tasks are evaluated ONCE per learner and seed, with the adapters
  of the best-validation epoch. If nothing was validated (the suite has no
  validation tasks, ``eval_every = 0``, or ``epochs < eval_every``) the test
  uses the last epoch. A learner whose first epoch yields no optimisation
  step (``pretrained``) is validated once, as "epoch 0", and tested as is.
* Metrics are macro-averaged over test tasks per seed and reported as mean ±
  standard error over seeds (:mod:`metalora.stats`), as a Table-1-style
  table (:mod:`metalora.reporting`), with figures (:mod:`metalora.plots`).

Interruption and resume: Ctrl-C (``KeyboardInterrupt``) stops the run with
:class:`RunInterrupted`; the run directory then holds every finished
learner/seed pair and the latest epoch checkpoint of the unfinished one.
:meth:`Engine.from_run_dir` (``metalora run --resume RUN_DIR``) rebuilds the
engine from ``config.json``, skips finished pairs, and restarts the
unfinished pair from its latest checkpoint (adapters, learner state, every
RNG state, validation history), dropping the log lines written after that
checkpoint, so the resumed run ends exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import shlex
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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

from metalora import logging_sinks
from metalora.activity import doing, tag
from metalora.batching import PromptEncoder
from metalora.checkpoint import CheckpointStore, TrainingState, capture_rng, restore_rng
from metalora.config import (
    ResolvedConfig,
    RunSettings,
    all_setting_infos,
    settings_dict,
)
from metalora.distributed import Distributed, from_environment
from metalora.episodes import Episode, EpisodeSampler
from metalora.errors import MetaloraError, TrainingDiverged
from metalora.evaluation import EvalResult, evaluate
from metalora.interfaces import DataOptions, Learner, LearnerContext, Metric, Prior, StepLog
from metalora.logging_sinks import RunLogger
from metalora.models import LoadedModel, load_model
from metalora.models.checkpointing import enable_gradient_checkpointing
from metalora.plugins import PluginManager
from metalora.precision import autocast
from metalora.progress_log import ProgressLog, format_metrics
from metalora.records import Suite, Task
from metalora.reporting import format_mean_se, write_results
from metalora.rundir import (
    ADAPTERS_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    PLOTS_DIR,
    PREDICTIONS_FILE,
    PROGRESS_FILE,
    STATE_FILE,
    TENSORBOARD_DIR,
    file_size,
    read_config,
    read_json,
    save_adapters,
    seed_dir,
    truncate_file,
    write_json,
)
from metalora.seeding import seed_everything
from metalora.settings import build_settings
from metalora.stats import mean_se

INITIAL_ADAPTERS_FILE = "adapters-initial.safetensors"
"""Written when training diverges before the first checkpoint: the last good adapters."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

SELECTION_BEST = "best-validation"
SELECTION_LAST = "last-epoch"
SELECTION_MIXED = "mixed"


def resume_command(run_dir: Path) -> str:
    """The shell command that continues the run in ``run_dir``."""
    return f"metalora run --resume {shlex.quote(str(run_dir))}"


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C; its directory can be resumed (see :func:`resume_command`)."""

    def __init__(self, run_dir: Path, detail: str = "") -> None:
        super().__init__(detail)
        self.run_dir = run_dir
        self.detail = detail

    @property
    def resume_command(self) -> str:
        return resume_command(self.run_dir)


class RunCallback:
    """Optional hooks into a run (subclass and override; every method is a no-op here)."""

    def on_step(self, learner: str, seed: int, step: StepLog) -> None:
        """After each optimisation step has been logged."""

    def on_epoch_end(self, learner: str, seed: int, epoch: int,
                     validation: dict[str, float] | None) -> None:
        """After ``epoch`` epochs are done, validated (if due) and checkpointed."""


@dataclass
class SeedResult:
    """One learner trained and tested with one seed."""

    learner: str
    seed: int
    test: EvalResult
    path: Path
    tested_epoch: int | None = None
    """The epoch whose adapters were tested (epochs finished; 0 = untrained)."""
    selection: str = SELECTION_LAST
    """How the tested epoch was chosen: ``best-validation`` or ``last-epoch``."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Validation records: ``{"epoch": e, "<metric>": value, ...}``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (a seed's ``metrics.json``)."""
        return {**self.test.to_dict(), "tested_epoch": self.tested_epoch,
                "selection": self.selection, "validation": self.history}

    @classmethod
    def load(cls, learner: str, seed: int, path: Path) -> SeedResult:
        """Read back a finished seed from its directory."""
        data = read_json(path / METRICS_FILE, "seed metrics")
        return cls(learner=learner, seed=seed,
                   test=EvalResult.load(data, path / PREDICTIONS_FILE), path=path,
                   tested_epoch=data.get("tested_epoch"),
                   selection=data.get("selection", SELECTION_LAST),
                   history=list(data.get("validation", [])))


@dataclass
class RunSummary:
    """All results of a run, with mean ± SE over seeds."""

    run_dir: Path
    suite: str
    metric_names: list[str]
    results: dict[str, list[SeedResult]] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    """Epochs, validation schedule and selection rule the results come from."""

    def summary(self) -> dict[str, dict[str, tuple[float, float]]]:
        """learner -> metric -> (mean, standard error) of the macro average over seeds.

        With one seed there is no spread over seeds; the standard error is then
        the bootstrap one over the query examples, where it was computed.
        """
        out: dict[str, dict[str, tuple[float, float]]] = {}
        for learner, seeds in self.results.items():
            out[learner] = {}
            for metric in self.metric_names:
                mean, se = mean_se([r.test.macro[metric] for r in seeds])
                if len(seeds) == 1:
                    se = seeds[0].test.example_se.get(metric, 0.0)
                out[learner][metric] = (mean, se)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``metrics.json``)."""
        summary = self.summary()
        return {
            "suite": self.suite,
            "metrics": self.metric_names,
            "protocol": self.protocol,
            "learners": {
                learner: {
                    "summary": {m: {"mean": v[0], "se": v[1]} for m, v in summary[learner].items()},
                    "seeds": {str(r.seed): r.to_dict() for r in seeds},
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


@dataclass
class _Protocol:
    """What every learner/seed of one run shares: episodes, metrics, the selection rule."""

    run_dir: Path
    tasks: list[Task]
    validation: list[Episode]
    test: list[Episode]
    metrics: dict[str, Metric]
    validation_metrics: dict[str, Metric]
    select_metric: str
    higher_is_better: bool


class Engine:
    """Runs learners on a suite under one protocol. See the module docstring."""

    def __init__(self, config: ResolvedConfig, plugins: PluginManager,
                 console: Console | None = None,
                 callbacks: Sequence[RunCallback] = ()) -> None:
        self.config = config
        self.plugins = plugins
        self.console = console or Console(stderr=True)
        self.callbacks = list(callbacks)
        self.run: RunSettings = config.run
        self.resume_dir: Path | None = None
        """Set by :meth:`from_run_dir`: the run directory to continue."""
        self.distributed = Distributed()
        """This process's rank: joined from the environment by :meth:`execute` under torchrun."""
        self.progress_log = ProgressLog(self.console)
        """Plain progress lines (console when it is not a terminal; ``progress.log``)."""
        self._validate_names()
        self.suite: Suite | None = None
        self.loaded: LoadedModel | None = None
        self.episodes: EpisodeSampler | None = None
        self._state: dict[str, Any] = {}
        self._current: str = ""

    @classmethod
    def from_run_dir(cls, run_dir: Path | str, plugins: PluginManager,
                     console: Console | None = None,
                     callbacks: Sequence[RunCallback] = ()) -> Engine:
        """An engine that continues the run in ``run_dir`` with its recorded settings."""
        run_dir = Path(run_dir)
        recorded = read_config(run_dir)
        run_fields = {f.name for f in dataclasses.fields(RunSettings)}
        given = recorded.get("given") or {}
        values = {**given, **{k: v for k, v in recorded.items() if k in run_fields}}
        config = ResolvedConfig(values=values, infos=all_setting_infos(plugins),
                                learner_values=dict(recorded.get("learner_settings") or {}))
        engine = cls(config, plugins, console=console, callbacks=callbacks)
        engine.resume_dir = run_dir
        return engine

    # -- set-up ----------------------------------------------------------------
    def _validate_names(self) -> None:
        """Fail fast, before loading anything, on unknown plugin names and bad settings."""
        if not self.run.learner:
            raise MetaloraError("no learner given; valid choices: "
                                + ", ".join(self.plugins.registry("learner").names()))
        for name in self.run.learner:
            self.plugins.registry("learner").get(name)
        if len(set(self.run.learner)) != len(self.run.learner):
            raise MetaloraError(f"learner given twice in {','.join(self.run.learner)!r}")
        self.plugins.registry("suite").get(self.run.tasks)
        for name in self.run.metrics:
            self.plugins.registry("metric").get(name)
        self.plugins.registry("metric").get(self.run.select_metric)
        if self.run.data_dir is not None and not Path(self.run.data_dir).is_dir():
            raise MetaloraError(f"data directory {self.run.data_dir!r} does not exist")
        if not self.run.seeds:
            raise MetaloraError("no seed given; pass e.g. --seeds 0 or --seeds 0,1,2")
        if len(set(self.run.seeds)) != len(self.run.seeds):
            raise MetaloraError(f"seed given twice in {self.run.seeds}")
        if self.run.epochs < 0:
            raise MetaloraError(f"epochs must be 0 or more, got {self.run.epochs}")
        if self.run.eval_every < 0:
            raise MetaloraError(
                f"eval_every must be 0 (never) or a number of epochs, got {self.run.eval_every}")

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
            settings_cls = getattr(sampler, "Settings", None)
            settings = (build_settings(settings_cls, self.config.values)
                        if settings_cls is not None else None)
            with doing(f"loading suite {self.run.tasks!r}"):
                self.suite = sampler.load(DataOptions(
                    data_dir=data_dir, seed=0, skip_bad_records=self.run.skip_bad_records,
                    settings=settings))
            if self.run.max_train_tasks is not None:
                self.suite.train = self.suite.train[: self.run.max_train_tasks]
            if self.run.max_eval_tasks is not None:
                self.suite.test = self.suite.test[: self.run.max_eval_tasks]
                self.suite.validation = self.suite.validation[: self.run.max_eval_tasks]
        return self.suite

    def load_test_episodes(self) -> tuple[Suite, dict[str, Metric], list[Episode]]:
        """Load the suite and the model; the suite, the metrics and its test episodes.

        A suite without test tasks is one error line.
        """
        suite = self.load_suite()
        if not suite.test:
            raise MetaloraError(f"suite '{suite.name}' has no test tasks")
        self.load_model()
        return suite, self.metrics(), [self.episodes.episode(t) for t in suite.test]

    def load_model(self) -> LoadedModel:
        """Load (once) the model named by ``model`` and build the batch machinery."""
        if self.loaded is None:
            device = self.device()
            with doing(f"loading model {self.run.model!r}"):
                self.loaded = load_model(self.run.model, dtype=DTYPES[self.run.dtype],
                                         device=device, notify=self.note)
            if self.run.gradient_checkpointing:
                enable_gradient_checkpointing(self.loaded.model, f"model {self.run.model!r}")
            encoder = PromptEncoder(self.loaded.tokenizer, max_length=self.run.max_length)
            self.episodes = EpisodeSampler(
                encoder, batch_size=self.run.batch_size, support_batches=self.run.support_batches,
                query_cap=self.run.query_cap, eval_batch_size=self.run.eval_batch_size,
                seed=0, device=device)
        return self.loaded

    def note(self, text: str) -> None:
        """Tell the person running this something, on the engine's console (one plain line)."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def precision(self) -> contextlib.AbstractContextManager[None]:
        """The context for forward passes: ``torch.autocast`` as the ``autocast`` setting says."""
        return autocast(self.device(), self.run.autocast)

    def device(self) -> str:
        """The resolved ``device`` setting; under torchrun on GPUs, this rank's GPU."""
        device = resolve_device(self.run.device)
        if self.distributed.active and device == "cuda":
            return f"cuda:{self.distributed.local_rank}"
        return device

    def learner_settings(self, name: str) -> Any:
        """A learner's settings: its defaults overridden by the given (or recorded) values."""
        cls = self.plugins.registry("learner").get(name)
        values = {**self.config.values, **self.config.learner_values.get(name, {})}
        return build_settings(cls.Settings, values)

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
            make_prior=self.make_prior, distributed=self.distributed)
        return cls(context)

    def resolved_config(self) -> dict[str, Any]:
        """Everything needed to rebuild this run: core settings, each learner's settings,
        and the values given explicitly (``given``, which also carries prior settings)."""
        return {
            **settings_dict(self.run),
            "learner_settings": {n: settings_dict(self.learner_settings(n))
                                 for n in self.run.learner},
            "given": dict(self.config.values),
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

    def protocol_dict(self, validated: bool) -> dict[str, Any]:
        """The protocol the results come from (stored in metrics.json and results.json).

        ``test_at`` is ``best-validation``, ``last-epoch``, or ``mixed`` when
        some learner/seed was never validated (``epochs < eval_every``).
        """
        return {
            "epochs": self.run.epochs,
            "eval_every": self.run.eval_every,
            "select_metric": self.run.select_metric,
            "test_at": SELECTION_BEST if validated else SELECTION_LAST,
            "seeds": list(self.run.seeds),
        }

    @staticmethod
    def _test_at(summary: RunSummary) -> str:
        selections = {r.selection for seeds in summary.results.values() for r in seeds}
        return selections.pop() if len(selections) == 1 else SELECTION_MIXED

    # -- run state (state.json) -------------------------------------------------------
    def _write_state(self, run_dir: Path, status: str | None = None) -> None:
        if status is not None:
            self._state["status"] = status
        self._state["updated"] = datetime.now().isoformat(timespec="seconds")
        write_json(run_dir / STATE_FILE, self._state)

    def _load_state(self, run_dir: Path) -> None:
        path = run_dir / STATE_FILE
        self._state = read_json(path, "run state") if path.exists() else {}
        if self._state.get("status") == "running" and _alive(self._state):
            raise MetaloraError(
                f"run {str(run_dir)!r} is still running (process {self._state.get('pid')}); "
                "wait for it or stop it before resuming (if it is not running, set \"status\" "
                f"in {STATE_FILE} to \"interrupted\")")
        self._state.setdefault("pairs", {})

    # -- running -------------------------------------------------------------------
    def execute(self) -> RunSummary:
        """Run every learner for every seed; write and return the results.

        SIGTERM is handled like Ctrl-C while the run executes (a batch
        scheduler's preemption also leaves a resumable run directory).
        Under torchrun every rank calls it (see :mod:`metalora.distributed`).
        """
        self._join_ranks()
        if self.resume_dir is not None:
            self._load_state(self.resume_dir)  # fail fast, before loading anything
        suite = self.load_suite()
        if not suite.test:
            raise MetaloraError(f"suite '{suite.name}' has no test tasks")
        self.load_model()
        for note in suite.notes:
            self.console.print(f"[dim]{suite.name}: {note}[/dim]")
        metrics = self.metrics()
        validated = self.run.eval_every > 0 and bool(suite.validation)
        if self.run.eval_every > 0 and not suite.validation:
            self.console.print(f"[dim]{suite.name} has no validation tasks: test metrics are "
                               "taken at the last epoch[/dim]")
        if (self.config.values.get("tensorboard") and
                logging_sinks.tensorboard_writer_class() is None):  # said only when asked for
            self.console.print("[dim]tensorboard is not installed: TensorBoard logging "
                               "skipped (pip install tensorboard)[/dim]")
        run_dir = self._open_run_dir()
        self._state.update(pid=os.getpid(), host=socket.gethostname(),
                           resume=resume_command(run_dir))
        self._write_state(run_dir, "running")
        if self.distributed.is_main:
            self.progress_log.open(run_dir / PROGRESS_FILE)
        self._progress_line(f"run directory {run_dir}: {', '.join(self.run.learner)} on "
                            f"{suite.name} ({len(suite.train)} training, "
                            f"{len(suite.validation)} validation, {len(suite.test)} test tasks)")

        validation_metrics = dict(metrics)
        select = self.run.select_metric
        if select not in validation_metrics:
            validation_metrics[select] = self.plugins.registry("metric").get(select)()
        protocol = _Protocol(
            run_dir=run_dir, tasks=suite.train,
            validation=[self.episodes.episode(t) for t in suite.validation] if validated else [],
            test=[self.episodes.episode(t) for t in suite.test], metrics=metrics,
            validation_metrics=validation_metrics, select_metric=select,
            higher_is_better=bool(validation_metrics[select].higher_is_better))
        summary = RunSummary(run_dir=run_dir, suite=suite.name, metric_names=list(metrics),
                             protocol=self.protocol_dict(validated))
        try:
            with _terminate_as_interrupt():
                for name in self.run.learner:
                    summary.results[name] = []
                    for seed in self.run.seeds:
                        summary.results[name].append(self.run_seed(name, seed, protocol))
                        self._current = "writing the results"
                        summary.protocol["test_at"] = self._test_at(summary)
                        write_json(run_dir / METRICS_FILE, summary.to_dict())
                        write_results(summary, run_dir)
                if self.distributed.is_main:
                    self.write_plots(summary)
        except KeyboardInterrupt:
            self._write_state(run_dir, "interrupted")
            raise RunInterrupted(run_dir, self._current) from None
        except BaseException as exc:
            tag(exc, f"running {self._current}" if self._current else "running")
            self._write_state(run_dir, "failed")
            raise
        else:
            self._write_state(run_dir, "finished")
            self._progress_line("finished")
        finally:
            self.progress_log.close()
            if not self.distributed.is_main:  # a rank's private copy of the run directory
                shutil.rmtree(run_dir, ignore_errors=True)
        return summary

    def _join_ranks(self) -> None:
        """Join a torchrun process group, if any; refuse learners that cannot train in one."""
        self.distributed = from_environment()
        if not self.distributed.active:
            return
        registry = self.plugins.registry("learner")
        able = [n for n in registry.names() if registry.get(n).supports_distributed]
        for name in self.run.learner:
            if not registry.get(name).supports_distributed:
                raise MetaloraError(f"learner {name!r} cannot train in a torchrun run "
                                    f"(WORLD_SIZE={self.distributed.world_size}); learners "
                                    f"that can: {', '.join(able)}")
        if not self.distributed.is_main:
            self.console = Console(quiet=True)

    def _open_run_dir(self) -> Path:
        """The run directory, created (or resumed) by rank 0.

        Every other rank of a torchrun run works in a private temporary copy
        (deleted at the end), so that only rank 0 writes the real one.
        """
        if self.distributed.is_main:
            if self.resume_dir is not None:
                run_dir = self.resume_dir
                self.console.print(f"Resuming {run_dir}")
            else:
                run_dir = self.make_run_dir()
                write_json(run_dir / CONFIG_FILE, self.resolved_config())
                self._state = {"pairs": {}}
            self.distributed.broadcast(str(run_dir))
            return run_dir
        shared = Path(self.distributed.broadcast(""))
        private = Path(tempfile.mkdtemp(prefix=f"metalora-rank{self.distributed.rank}-"))
        if self.resume_dir is not None:
            shutil.copytree(shared, private, dirs_exist_ok=True)
        else:
            self._state = {"pairs": {}}
        return private

    def run_seed(self, name: str, seed: int, protocol: _Protocol) -> SeedResult:
        """Train, validate, checkpoint and test one learner with one seed (or load it if done)."""
        run_dir = protocol.run_dir
        out = seed_dir(run_dir, name, seed)
        key = f"{name}/seed-{seed}"
        self._current = f"{name} seed {seed}"
        if self.resume_dir is not None and (out / METRICS_FILE).exists():
            self.console.print(f"[dim]{name} seed {seed}: finished earlier, kept[/dim]")
            return SeedResult.load(name, seed, out)
        log_path = run_dir / LOG_FILE
        store = CheckpointStore(out / CHECKPOINT_DIR)
        resumed = store.load("latest") if self.resume_dir is not None else None
        learner = self.build_learner(name, seed)
        try:
            if resumed is not None:
                learner.adapters.restore(resumed.adapters)
                learner.load_state_dict(resumed.learner_state)
                restore_rng(resumed.rng, learner.context.rng)
                training = resumed.training
                truncate_file(log_path, training.log_offset)
                purge_step: int | None = training.global_step + 1
                self.console.print(f"{name} seed {seed}: resuming after epoch {training.epoch}")
            else:
                pair = self._state["pairs"].get(key)
                if pair is not None:  # started before, interrupted before its first checkpoint
                    truncate_file(log_path, int(pair.get("log_offset", file_size(log_path))))
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(run_dir / TENSORBOARD_DIR / name / f"seed-{seed}",
                              ignore_errors=True)
                training = TrainingState(log_offset=file_size(log_path))
                purge_step = None
            if not self.distributed.is_main:
                # same initial adapters as rank 0, but this rank's own batches and noise
                rank_seed = f"{seed}:{self.distributed.rank}:{training.epoch}"
                learner.context.rng.seed(rank_seed)
                torch.manual_seed(random.Random(rank_seed).getrandbits(63))
            self._state["pairs"][key] = {"status": "running", "log_offset": training.log_offset}
            self._write_state(run_dir)
            with RunLogger(run_dir, log_path, name, seed, tensorboard=self.run.tensorboard,
                           purge_step=purge_step) as logger, self._progress() as progress, \
                    self.precision():
                self.train(learner, name, seed, protocol, training, store, logger, progress)
            if training.best_epoch is not None:
                best = store.load("best")
                learner.adapters.restore(best.adapters)
                learner.load_state_dict(best.learner_state)
                tested, selection = training.best_epoch, SELECTION_BEST
            else:
                tested, selection = training.epoch, SELECTION_LAST
            self._current = f"{name} seed {seed}, testing"
            with self.precision():
                result = self.test(learner, name, seed, protocol.test, protocol.metrics)
            save_adapters(out / ADAPTERS_FILE, learner.adapters.snapshot(),
                          metadata={"epoch": str(tested)})
            result.save_predictions(out / PREDICTIONS_FILE)
            seed_result = SeedResult(name, seed, result, out, tested_epoch=tested,
                                     selection=selection, history=list(training.history))
            write_json(out / METRICS_FILE, seed_result.to_dict())
            self._state["pairs"][key] = {"status": "done", "log_offset": file_size(log_path)}
            self._write_state(run_dir)
            return seed_result
        finally:
            learner.adapters.remove()

    @contextmanager
    def _progress(self) -> Iterator[Progress]:
        """Progress bars in a terminal; elsewhere none (:meth:`_progress_line` reports)."""
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
            disable=not self.progress_log.bars)
        with progress:
            yield progress

    def _progress_line(self, text: str) -> None:
        """One plain progress line (rank 0 only): see :mod:`metalora.progress_log`."""
        if self.distributed.is_main:
            self.progress_log.line(text)

    def train(self, learner: Learner, name: str, seed: int, protocol: _Protocol,
              training: TrainingState, store: CheckpointStore, logger: RunLogger,
              progress: Progress) -> None:
        """Train from ``training.epoch`` to ``epochs``, validating and checkpointing each epoch.

        Mutates ``training``. A learner whose first epoch yields no step does
        not train: it is validated once as epoch 0.
        """
        epochs = self.run.epochs
        dealt = self._epoch_tasks(protocol.tasks, seed, 0)
        per_epoch = learner.steps_per_epoch(dealt) if dealt else 0
        bar = progress.add_task(
            f"{name} seed {seed}: train", total=per_epoch * epochs or None,
            completed=per_epoch * training.epoch)
        # The "last good adapters" before any epoch has finished are the initial ones.
        initial = learner.adapters.snapshot() if not store.exists() else None
        started = time.perf_counter()
        while training.trains and training.epoch < epochs:
            epoch = training.epoch
            self._current = f"{name} seed {seed}, training epoch {epoch + 1}"
            steps, loss_sum = 0, 0.0
            for step in learner.train_epoch(self._epoch_tasks(protocol.tasks, seed, epoch),
                                            epoch):
                steps += 1
                loss_sum += step.loss
                training.global_step += 1
                logger.step(step, training.global_step)
                for callback in self.callbacks:
                    callback.on_step(name, seed, step)
                if not self._all_finite(step.loss):
                    logger.flush()
                    if store.exists():
                        kept = (f"the checkpoint after epoch {training.epoch} is kept in "
                                f"{store.directory}")
                    else:
                        path = seed_dir(protocol.run_dir, name, seed) / INITIAL_ADAPTERS_FILE
                        save_adapters(path, initial or {})
                        kept = f"no epoch had finished; the initial adapters are kept in {path}"
                    raise TrainingDiverged(
                        f"{name} (seed {seed}): loss became {step.loss} at epoch {epoch}, "
                        f"task {step.task or '-'}, step {step.step}; {kept}")
                progress.advance(bar)
            if steps == 0 and epoch == 0:
                training.trains = False
                progress.update(bar, total=0, description=f"{name} seed {seed}: no training")
                self._progress_line(f"{name} seed {seed}: no training (tested as it is)")
                break
            training.epoch += 1
            self._progress_line(
                f"{name} seed {seed}: epoch {training.epoch}/{epochs} done, "
                f"{time.perf_counter() - started:.1f} s elapsed, {steps} steps, "
                f"mean loss {loss_sum / steps:.4f}")
            record = None
            if protocol.validation and training.epoch % self.run.eval_every == 0:
                record = self._validate(learner, name, seed, protocol, training, logger,
                                        progress)
            self._checkpoint(learner, training, store, logger, record)
            self._describe(progress, bar, name, seed, training, record)
            for callback in self.callbacks:
                callback.on_epoch_end(name, seed, training.epoch, record)
        if protocol.validation and training.epoch == 0 and not training.history:
            record = self._validate(learner, name, seed, protocol, training, logger, progress)
            self._checkpoint(learner, training, store, logger, record)
            self._describe(progress, bar, name, seed, training, record)

    def _validate(self, learner: Learner, name: str, seed: int, protocol: _Protocol,
                  training: TrainingState, logger: RunLogger,
                  progress: Progress) -> dict[str, Any]:
        """Validate, update the best epoch, log; return the validation record."""
        self._current = f"{name} seed {seed}, validating epoch {training.epoch}"
        bar = progress.add_task(f"{name} seed {seed}: validate", total=len(protocol.validation))
        started = time.perf_counter()
        result = self._evaluate(learner, protocol.validation, protocol.validation_metrics, seed,
                                on_task=lambda _task: progress.advance(bar))
        progress.remove_task(bar)
        metrics = result.macro
        value = metrics[protocol.select_metric]
        best = training.best_value
        improved = best is None or (value > best if protocol.higher_is_better else value < best)
        if improved:
            training.best_epoch, training.best_value = training.epoch, value
        self._progress_line(
            f"{name} seed {seed}: validated epoch {training.epoch} "
            f"({len(protocol.validation)} tasks, {time.perf_counter() - started:.1f} s): "
            f"{format_metrics(metrics)}; best {protocol.select_metric} at epoch "
            f"{training.best_epoch}")
        record = {"epoch": training.epoch, **metrics}
        training.history.append(record)
        logger.validation(training.epoch, metrics, best=improved)
        return {**record, "best": improved}

    def _checkpoint(self, learner: Learner, training: TrainingState, store: CheckpointStore,
                    logger: RunLogger, record: dict[str, Any] | None) -> None:
        self._current = f"{logger.learner} seed {logger.seed}, saving epoch {training.epoch}"
        training.log_offset = logger.flush()
        store.save(learner.adapters.snapshot(), learner.state_dict(),
                   capture_rng(learner.context.rng, learner.context.device), training,
                   is_best=bool(record and record["best"]))

    def _describe(self, progress: Progress, bar: Any, name: str, seed: int,
                  training: TrainingState, record: dict[str, Any] | None) -> None:
        text = f"{name} seed {seed}: epoch {training.epoch}/{self.run.epochs}"
        select = self.run.select_metric
        if record is not None:
            percent = select == "accuracy"
            label = "acc" if percent else select
            text += (f", val {label} {format_mean_se(record[select], 0.0, percent, 1)}"
                     f", best @{training.best_epoch}")
        progress.update(bar, description=text)

    def test(self, learner: Learner, name: str, seed: int, episodes: list[Episode],
             metrics: dict[str, Metric]) -> EvalResult:
        """Evaluate on the test episodes with the shared protocol."""
        started = time.perf_counter()
        with self._progress() as progress:
            bar = progress.add_task(f"{name} seed {seed}: test", total=len(episodes))
            result = self._evaluate(learner, episodes, metrics, seed,
                                    on_task=lambda _task: progress.advance(bar))
        result.example_se = result.bootstrap_se(metrics, seed=seed)
        self._progress_line(
            f"{name} seed {seed}: tested ({len(episodes)} tasks, "
            f"{time.perf_counter() - started:.1f} s): {format_metrics(result.macro)}")
        return result

    def _evaluate(self, learner: Learner, episodes: list[Episode], metrics: dict[str, Metric],
                  seed: int, on_task: Callable[[str], None] | None = None) -> EvalResult:
        """:func:`~metalora.evaluation.evaluate`; under torchrun each rank takes its share
        of the episodes and every rank gets all results (they equal a single process's:
        each task's evaluation is seeded by the task)."""
        if not self.distributed.active:
            return evaluate(learner, episodes, metrics, seed=seed, on_task=on_task)
        mine = evaluate(learner, self.distributed.deal_all(episodes), metrics, seed=seed,
                        on_task=on_task)
        return EvalResult(tasks=self.distributed.gather_dealt(mine.tasks, len(episodes)))

    def _epoch_tasks(self, tasks: list[Task], seed: int, epoch: int) -> list[Task]:
        """The training tasks of this rank for ``epoch`` (all of them without torchrun)."""
        if not self.distributed.active or not tasks:
            return tasks
        order = list(tasks)
        random.Random(f"{seed}:{epoch}").shuffle(order)
        dealt = self.distributed.deal(order)
        if not dealt:
            raise MetaloraError(f"{len(tasks)} training task(s) for "
                                f"{self.distributed.world_size} ranks: each rank needs one")
        return dealt

    def _all_finite(self, loss: float) -> bool:
        """Whether ``loss`` is finite (on every rank, under torchrun: they stop together)."""
        if self.distributed.active:
            return self.distributed.all_finite(loss)
        return math.isfinite(loss)

    def write_plots(self, summary: RunSummary) -> list[Path]:
        """Validation curves and reliability diagrams (skipped with a note without matplotlib)."""
        if not self.run.plots:
            return []
        from metalora.plots import PlotsUnavailable, write_plots

        histories = {n: [r.history for r in seeds] for n, seeds in summary.results.items()}
        predictions = {n: [(t.probs, t.targets) for r in seeds for t in r.test.tasks]
                       for n, seeds in summary.results.items()}
        try:
            return write_plots(histories, predictions, summary.run_dir / PLOTS_DIR,
                               suite=summary.suite)
        except PlotsUnavailable:
            self.console.print("[dim]matplotlib is not installed: plots skipped "
                               "(pip install 'metalora\\[plots]')[/dim]")
        except Exception as exc:  # a figure must never cost a finished run its results
            self.console.print(f"[yellow]Warning:[/yellow] plots skipped: "
                               f"{type(exc).__name__}: {exc}")
        return []


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into ``KeyboardInterrupt`` (main thread only; the old handler comes back)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _alive(state: dict[str, Any]) -> bool:
    """Whether the process recorded in ``state`` still runs on this host."""
    pid, host = state.get("pid"), state.get("host")
    if not isinstance(pid, int) or host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # Linux: a recycled pid of another program is not our run
        try:
            return b"metalora" in cmdline.read_bytes()
        except OSError:
            return True
    return True
