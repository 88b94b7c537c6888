"""The training loop: composes a suite, a model, learners and metrics into one run.

The protocol (paper section 5.1), identical for every learner:

* For each learner and seed: seed everything, let the learner attach its adapters, and
  train for ``epochs`` passes of ``Learner.train_epoch`` over the training tasks. Every
  step is logged to ``log.jsonl`` (and every ``--logger``), each epoch's mean NLL to the
  console; a NaN/inf loss stops the run with a clear message.
* Every ``eval_every`` epochs the learner is validated on the validation
  tasks with the shared test-time adaptation protocol
  (:func:`metalora.evaluation.evaluate`, which restores every RNG state, so
  validating never changes the training trajectory).
* After every epoch a checkpoint is written (:mod:`metalora.runs.checkpoint`):
  the latest one, and the best one by the validation ``select_metric``
  (default accuracy; on ties the earlier epoch wins).
* The test tasks are evaluated ONCE per learner and seed, with the adapters of the
  best-validation epoch; the last epoch's when nothing was validated (no validation
  tasks, ``eval_every = 0`` or ``epochs < eval_every``). A learner whose first epoch
  yields no optimisation step (``pretrained``) is validated once, as "epoch 0", and
  tested as is. Each evaluated task is one progress line (:mod:`metalora.runs.progress`).
* Metrics are macro-averaged over test tasks per seed and reported as mean ±
  standard error over seeds (:mod:`metalora.runs.results`,
  :mod:`metalora.runs.reporting`), with figures (:mod:`metalora.runs.plots`).

Interruption and resume: Ctrl-C or SIGTERM stops the run with
:class:`~metalora.runs.state.RunInterrupted`, leaving every finished pair and the unfinished
one's latest epoch checkpoint. ``metalora run --resume RUN_DIR`` skips finished pairs
(rebuilding a missing tested-adapters file) and restarts the unfinished one from its
checkpoint (adapters, learner state, RNG states, validation history, log offset): it ends
as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from metalora.activity import tag
from metalora.config import ResolvedConfig, RunSettings
from metalora.distributed import Distributed, from_environment
from metalora.episodes import Episode
from metalora.errors import MetaloraError, TrainingDiverged
from metalora.evaluation import EvalResult, evaluate_across_ranks
from metalora.files import remove_stale_temporaries, require_writable_directory
from metalora.interfaces import Learner, Metric
from metalora.plugins import PluginManager
from metalora.records import Task
from metalora.runs.callbacks import RunCallback
from metalora.runs.checkpoint import (
    CheckpointStore,
    TrainingState,
    capture_rng,
    rebuild_tested_adapters,
    restore_rng,
)
from metalora.runs.logging_sinks import RunLogger
from metalora.runs.progress import (
    EpochTerms,
    ProgressLog,
    epoch_description,
    format_metrics,
    progress_bars,
    task_progress,
)
from metalora.runs.provenance import RunRecord, model_record, session_record
from metalora.runs.reporting import write_results
from metalora.runs.results import (
    SELECTION_BEST,
    SELECTION_LAST,
    RunSummary,
    SeedResult,
    protocol_record,
)
from metalora.runs.rundir import (
    ADAPTERS_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    PREDICTIONS_JSONL_FILE,
    PROGRESS_FILE,
    file_size,
    save_adapters,
    seed_dir,
    truncate_file,
    write_json,
)
from metalora.runs.setup import RunSetup, resolve_device
from metalora.runs.state import (
    RunInterrupted,
    load_state,
    resume_command,
    terminate_as_interrupt,
    write_state,
)
from metalora.spec import RunSpec
from metalora.stats import improves

INITIAL_ADAPTERS_FILE = "adapters-initial.safetensors"
"""Written when training diverges before the first checkpoint: the last good adapters."""


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
    """Runs learners on a suite under one protocol. See the module docstring.

    The engine owns a :class:`~metalora.runs.setup.RunSetup` (``self.setup``: the
    checked settings, and the suite, model and learners they name) and adds the
    training loop, the run directory and its records. The set-up's members are
    reachable through the engine too (``engine.run``, ``engine.build_learner(...)``).
    """

    def __init__(self, config: ResolvedConfig | RunSpec | RunSetup, plugins: PluginManager,
                 console: Console | None = None, callbacks: Sequence[RunCallback] = ()) -> None:
        self.setup = (config if isinstance(config, RunSetup)
                      else RunSetup(config, plugins, console))
        self.plugins = plugins
        self.callbacks = list(callbacks)
        self.progress_log = ProgressLog(self.setup.console)
        """Plain progress lines (console when it is not a terminal; ``progress.log``)."""
        self._state: dict[str, Any] = {}
        self._current: str = ""

    @classmethod
    def from_run_dir(cls, run_dir: Path | str, plugins: PluginManager,
                     console: Console | None = None,
                     callbacks: Sequence[RunCallback] = ()) -> Engine:
        """The engine of the run recorded in ``run_dir`` (to continue it)."""
        return cls(RunSetup.from_run_dir(run_dir, plugins, console=console), plugins,
                   callbacks=callbacks)

    def __getattr__(self, name: str) -> Any:
        # the set-up's members, through the engine (only called for names it lacks)
        if name == "setup":
            raise AttributeError(name)
        return getattr(self.setup, name)

    @property
    def run(self) -> RunSettings:
        return self.setup.run

    @property
    def distributed(self) -> Distributed:
        return self.setup.distributed


    # -- running -------------------------------------------------------------------
    def execute(self) -> RunSummary:
        """Run every learner for every seed; write and return the results.

        SIGTERM is handled like Ctrl-C while the run executes (a batch
        scheduler's preemption also leaves a resumable run directory).
        Under torchrun every rank calls it (see :mod:`metalora.distributed`).
        """
        self._join_ranks()
        if self.setup.resume_dir is not None:
            self._state = load_state(self.setup.resume_dir)  # fail fast, before loading anything
            if self.distributed.is_main:
                remove_stale_temporaries(self.setup.resume_dir)  # of writes killed mid-way
        if self.distributed.is_main:
            where = self.setup.resume_dir or Path(self.run.output_dir)
            require_writable_directory(where, "run directory" if self.setup.resume_dir
                                       else "output directory")
        suite = self.setup.load_suite()
        if not suite.test:
            raise MetaloraError(f"suite '{suite.name}' has no test tasks")
        self.setup.load_model()
        for note in suite.notes:
            self.setup.console.print(f"[dim]{suite.name}: {note}[/dim]")
        if self.setup.recommended:
            self.setup.console.print(f"[dim]{suite.name}: its recommended settings "
                               f"{', '.join(self.setup.recommended)} (an option overrides "
                               "each)[/dim]", soft_wrap=True)
        metrics = self.setup.metrics()
        validated = self.run.eval_every > 0 and bool(suite.validation)
        if self.run.eval_every > 0 and not suite.validation:
            self.setup.console.print(f"[dim]{suite.name} has no validation tasks: test metrics are "
                               "taken at the last epoch[/dim]")
        validation_metrics = dict(metrics)
        select = self.run.select_metric
        if select not in validation_metrics:
            validation_metrics[select] = self.setup.make_metric(select)
        # the episodes before the run directory: a problem of the data leaves no directory
        validation = [self.setup.episodes.episode(t) for t in suite.validation] if validated else []
        test = [self.setup.episodes.episode(t) for t in suite.test]
        run_dir = self._open_run_dir()
        self.record = RunRecord(run_dir)
        self.record.start_session(session_record(self.plugins, self.setup.device(), self.run.dtype),
                                  model_record(self.run.model, self.setup.loaded.model))
        self._state.update(pid=os.getpid(), host=socket.gethostname(),
                           resume=resume_command(run_dir))
        write_state(run_dir, self._state, "running")
        if self.distributed.is_main:
            self.progress_log.open(run_dir / PROGRESS_FILE)
        self._progress_line(f"run directory {run_dir}: {', '.join(self.run.learner)} on "
                            f"{suite.name} ({len(suite.train)} training, "
                            f"{len(suite.validation)} validation, {len(suite.test)} test tasks)")
        protocol = _Protocol(
            run_dir=run_dir, tasks=suite.train, validation=validation, test=test,
            metrics=metrics, validation_metrics=validation_metrics, select_metric=select,
            higher_is_better=bool(validation_metrics[select].higher_is_better))
        summary = RunSummary(run_dir=run_dir, suite=suite.name, metric_names=list(metrics),
                             protocol=protocol_record(self.run, validated, metrics))
        try:
            with terminate_as_interrupt():
                for name in self.run.learner:
                    summary.results[name] = []
                    for seed in self.run.seeds:
                        summary.results[name].append(self.run_seed(name, seed, protocol))
                        self._current = "writing the results"
                        summary.protocol["test_at"] = summary.test_at()
                        write_json(run_dir / METRICS_FILE, summary.to_dict())
                        write_results(summary, run_dir)
                if self.distributed.is_main:
                    self.write_plots(summary)
        except KeyboardInterrupt:
            write_state(run_dir, self._state, "interrupted")
            raise RunInterrupted(run_dir, self._current) from None
        except BaseException as exc:
            tag(exc, f"running {self._current}" if self._current else "running")
            write_state(run_dir, self._state, "failed")
            raise
        else:
            write_state(run_dir, self._state, "finished")
            self._progress_line("finished")
        finally:
            self.progress_log.close()
            if not self.distributed.is_main:  # a rank's private copy of the run directory
                shutil.rmtree(run_dir, ignore_errors=True)
        return summary

    def _join_ranks(self) -> None:
        """Join a torchrun process group, if any; refuse learners that cannot train in one."""
        self.setup.distributed = from_environment(resolve_device(self.run.device))
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
            self.setup.console = Console(quiet=True)

    def _open_run_dir(self) -> Path:
        """The run directory, created (or resumed) by rank 0.

        Every other rank of a torchrun run works in a private temporary copy
        (deleted at the end), so that only rank 0 writes the real one.
        """
        if self.distributed.is_main:
            if self.setup.resume_dir is not None:
                run_dir = self.setup.resume_dir
                self.setup.console.print(f"Resuming {run_dir}")
            else:
                run_dir = self.setup.make_run_dir()
                write_json(run_dir / CONFIG_FILE, self.setup.resolved_config())
                self._state = {"pairs": {}}
            self.distributed.broadcast(str(run_dir))
            return run_dir
        shared = Path(self.distributed.broadcast(""))
        private = Path(tempfile.mkdtemp(prefix=f"metalora-rank{self.distributed.rank}-"))
        if self.setup.resume_dir is not None:
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
        if self.setup.resume_dir is not None and (out / METRICS_FILE).exists():
            rebuilt = rebuild_tested_adapters(out)  # a damaged run: its tested adapters gone
            self.setup.note(f"{name} seed {seed}: finished earlier, kept" + (
                "" if rebuilt is None else f" ({ADAPTERS_FILE} rebuilt from epoch {rebuilt})"))
            return SeedResult.load(name, seed, out)
        self.record.start_seed(key, self.setup.device())
        log_path = run_dir / LOG_FILE
        store = CheckpointStore(out / CHECKPOINT_DIR)
        resumed = store.load("latest") if self.setup.resume_dir is not None else None
        learner = self.setup.build_learner(name, seed)
        try:
            if resumed is not None:
                learner.adapters.restore(resumed.adapters)
                learner.load_state_dict(resumed.learner_state)
                restore_rng(resumed.rng, learner.context.rng, learner.context.device)
                training = resumed.training
                truncate_file(log_path, training.log_offset)
                purge_step: int | None = training.global_step + 1
                self.setup.note(f"{name} seed {seed}: resuming after epoch {training.epoch}")
            else:
                pair = self._state["pairs"].get(key)
                if pair is not None:  # started before, interrupted before its first checkpoint
                    truncate_file(log_path, int(pair.get("log_offset", file_size(log_path))))
                shutil.rmtree(out, ignore_errors=True)
                training = TrainingState(log_offset=file_size(log_path))
                purge_step = None
            if not self.distributed.is_main:
                # same initial adapters as rank 0, but this rank's own batches and noise
                rank_seed = f"{seed}:{self.distributed.rank}:{training.epoch}"
                learner.context.rng.seed(rank_seed)
                torch.manual_seed(random.Random(rank_seed).getrandbits(63))
            self._state["pairs"][key] = {"status": "running", "log_offset": training.log_offset}
            write_state(run_dir, self._state)
            loggers = self.setup.make_loggers(run_dir, name, seed, purge_step)
            with RunLogger(log_path, name, seed, loggers) as logger, \
                    self._progress() as progress, \
                    self.setup.precision():
                self.train(learner, name, seed, protocol, training, store, logger, progress)
            if training.best_epoch is not None:
                best = store.best()
                learner.adapters.restore(best.adapters)
                learner.load_state_dict(best.learner_state)
                tested, selection = training.best_epoch, SELECTION_BEST
            else:
                tested, selection = training.epoch, SELECTION_LAST
            self._current = f"{name} seed {seed}, testing"
            with self.setup.precision():
                result = self.test(learner, name, seed, protocol.test, protocol.metrics)
            save_adapters(out / ADAPTERS_FILE, learner.adapters.snapshot(),
                          metadata={"epoch": str(tested)})
            result.save_predictions(out / PREDICTIONS_FILE)
            result.write_predictions_jsonl(out / PREDICTIONS_JSONL_FILE)
            seed_result = SeedResult(name, seed, result, out, tested_epoch=tested,
                                     selection=selection, history=list(training.history))
            write_json(out / METRICS_FILE, seed_result.to_dict())
            self._state["pairs"][key] = {"status": "done", "log_offset": file_size(log_path)}
            write_state(run_dir, self._state)
            return seed_result
        finally:
            learner.adapters.remove()
            self.record.end_seed(key, self.setup.device(), finished=(out / METRICS_FILE).exists(),
                                 gather=self.distributed.gather_all)

    def _progress(self) -> contextlib.AbstractContextManager[Progress]:
        """Progress bars in a terminal; elsewhere none (:meth:`_progress_line` reports)."""
        return progress_bars(self.setup.console)

    def _progress_line(self, text: str) -> None:
        """One plain progress line (rank 0 only): see :mod:`metalora.runs.progress`."""
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
        dealt = self.distributed.deal_epoch(protocol.tasks, seed, 0)
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
            terms = EpochTerms()
            tasks = self.distributed.deal_epoch(protocol.tasks, seed, epoch)
            for step in learner.train_epoch(tasks, epoch):
                terms.add(step)
                training.global_step += 1
                logger.step(step, training.global_step)
                for callback in self.callbacks:
                    callback.on_step(name, seed, step)
                if not self.distributed.all_finite(step.loss):
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
            if terms.steps == 0 and epoch == 0:
                training.trains = False
                progress.update(bar, total=0, description=f"{name} seed {seed}: no training")
                self._progress_line(f"{name} seed {seed}: no training (tested as it is)")
                break
            training.epoch += 1
            self._progress_line(
                f"{name} seed {seed}: epoch {training.epoch}/{epochs} done, "
                f"{time.perf_counter() - started:.1f} s elapsed, {terms.steps} steps, "
                f"{terms.describe()}")
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
        result = evaluate_across_ranks(self.distributed, learner, protocol.validation,
                                       protocol.validation_metrics, seed,
                                       on_task=task_progress(progress, bar, self._progress_line))
        progress.remove_task(bar)
        metrics = result.macro
        value = metrics[protocol.select_metric]
        best = training.best_value
        improved = best is None or improves(value, best, protocol.higher_is_better)
        if improved:
            training.best_epoch, training.best_value = training.epoch, value
        self._progress_line(
            f"{name} seed {seed}: validated epoch {training.epoch} "
            f"({len(protocol.validation)} tasks, {time.perf_counter() - started:.1f} s): "
            f"{format_metrics(metrics)}; best {protocol.select_metric} at epoch "
            f"{training.best_epoch}")
        record = {"epoch": training.epoch, **metrics}
        training.history.append(record)
        logger.validation(training.epoch, metrics, improved, training.global_step)
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
        progress.update(bar, description=epoch_description(
            f"{name} seed {seed}", training.epoch, self.run.epochs, self.run.select_metric,
            record, training.best_epoch))

    def test(self, learner: Learner, name: str, seed: int, episodes: list[Episode],
             metrics: dict[str, Metric]) -> EvalResult:
        """Evaluate on the test episodes with the shared protocol."""
        started = time.perf_counter()
        with self._progress() as progress:
            bar = progress.add_task(f"{name} seed {seed}: test", total=len(episodes))
            result = evaluate_across_ranks(self.distributed, learner, episodes, metrics, seed,
                                           on_task=task_progress(progress, bar,
                                                                 self._progress_line))
        result.example_se = result.bootstrap_se(metrics, seed=seed)
        self._progress_line(
            f"{name} seed {seed}: tested ({len(episodes)} tasks, "
            f"{time.perf_counter() - started:.1f} s): {format_metrics(result.macro)}")
        return result

    def write_plots(self, summary: RunSummary) -> list[Path]:
        """Validation curves and reliability diagrams (skipped with a note without matplotlib)."""
        from metalora.runs.plots import plot_run

        return plot_run(summary, self.setup.console) if self.run.plots else []
