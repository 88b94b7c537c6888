"""``metalora eval RUN_DIR``: evaluate a finished run's tested adapters again.

Each learner and seed of the run is rebuilt with the run's recorded
settings, its tested adapters (``<learner>/seed-<s>/adapters.safetensors``)
are loaded, and the shared protocol (test-time adaptation on each task's
support set, metrics on its query set) runs on the test tasks of the run's
suite, or of another suite (``--tasks``, ``--data-dir``), or on the
validation tasks (``--split validation``). Settings that act at evaluation
time only may be changed for it (``--set eval_samples=8``, ``--set
adapt_lr=2e-4``): the adapters stay the run's, so anything that changes their
shape is refused when they are loaded. The run itself is only read; results go
to ``RUN_DIR/eval/<time>-<suite>[-validation]/results.{csv,json}``,
``metrics.json`` (which records the split and the changed settings) and, per
learner and seed, ``<learner>/seed-<s>/predictions.{safetensors,jsonl}`` (every
query's option probabilities, as the run's own test writes them). Progress lines, one
per evaluated task, go to ``RUN_DIR/eval/progress.log``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from metalora.episodes import Episode
from metalora.errors import MetaloraError, unknown_choice
from metalora.evaluation import EvalResult, evaluate
from metalora.files import require_writable_directory
from metalora.interfaces import Metric
from metalora.plugins import PluginManager
from metalora.runs.progress import ProgressLog, format_metrics, progress_bars, task_progress
from metalora.runs.reporting import write_results
from metalora.runs.results import RunSummary, SeedResult
from metalora.runs.rundir import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    PREDICTIONS_JSONL_FILE,
    PROGRESS_FILE,
    new_stamped_dir,
    read_json,
    seed_dir,
    time_stamp,
    write_json,
)
from metalora.runs.setup import RunSetup, check_tested_adapters, load_tested_learner, open_run
from metalora.settings import coerce

EVAL_DIR = "eval"
SPLITS: tuple[str, ...] = ("test", "validation")
"""The task roles a finished run can be evaluated on."""
FIXED_SETTINGS: tuple[str, ...] = (
    "learner", "seeds", "tasks", "data_dir", "device", "model", "rank", "alpha",
    "target_modules", "output_dir", "run_name")
"""Settings ``--set`` may not change (what the run is, or options of their own)."""


EVALUATION_SETTINGS: tuple[str, ...] = (
    "adapt_steps", "adapt_lr", "support_batches", "batch_size", "query_cap", "eval_batch_size",
    "metrics", "calibrate", "in_context", "max_eval_tasks", "train_loss", "max_length",
    "dtype", "autocast", "tf32", "gradient_checkpointing")
"""The core settings that act when trained adapters are evaluated: the protocol (support
set, test-time adaptation, calibration, queries, metrics) and the precision."""


def evaluation_settings(setup: RunSetup) -> set[str]:
    """What ``--set`` may change for an evaluation of ``setup``'s run: the core's
    :data:`EVALUATION_SETTINGS` and each selected learner's ``evaluation_settings``."""
    learners = setup.plugins.registry("learner")
    return {*EVALUATION_SETTINGS,
            *(n for name in setup.run.learner for n in learners.get(name).evaluation_settings)}


def change_settings(setup: RunSetup, values: Mapping[str, Any]) -> dict[str, Any]:
    """Apply evaluation-time setting changes to a reopened run; return them, typed.

    Each name must be a declared setting outside :data:`FIXED_SETTINGS`; the value is
    read as that setting's type, and every setting is checked again afterwards.
    """
    infos = setup.config.infos
    changed: dict[str, Any] = {}
    for name, raw in values.items():
        if name in FIXED_SETTINGS:
            raise MetaloraError(f"--set {name}=... cannot change what the run is; settings "
                                "that can: any but " + ", ".join(FIXED_SETTINGS))
        info = infos.get(name)
        if info is None:
            raise unknown_choice("setting", name, sorted(set(infos) - set(FIXED_SETTINGS)))
        used = {"run", *setup.run.learner, setup.run.tasks,
                *setup.plugins.registry("prior").names()}
        if not used & set(info.owners):
            raise MetaloraError(f"setting {name!r} ({', '.join(info.owners)}) is not used by "
                                f"this run ({', '.join(setup.run.learner)})")
        acting = evaluation_settings(setup)
        if name not in acting:
            raise MetaloraError(f"--set {name}=...: it acts in training, not in an evaluation "
                                "of the trained adapters, so it would change nothing; "
                                f"settings that can: {', '.join(sorted(acting))}")
        value = coerce(info, raw)
        changed[name] = value
        setup.config.values[name] = value
        for learner_values in setup.config.learner_values.values():
            if name in learner_values:
                learner_values[name] = value
        if "run" in info.owners:
            setup.change_run(**{name: value})
    setup.validate_settings()
    return changed


def evaluate_run(run_dir: Path | str, plugins: PluginManager, *, tasks: str | None = None,
                 data_dir: str | None = None, overrides: dict[str, Any] | None = None,
                 split: str = "test", settings: Mapping[str, Any] | None = None,
                 console: Console | None = None) -> RunSummary:
    """Re-evaluate every learner and seed of a finished run on the ``split`` tasks, with
    ``settings`` changed for the evaluation; write and return the results."""
    if split not in SPLITS:
        raise unknown_choice("split", split, SPLITS)
    run_dir = Path(run_dir)
    setup = open_run(run_dir, plugins, console=console, overrides=overrides)
    changed = change_settings(setup, settings or {})
    require_writable_directory(run_dir / EVAL_DIR, "evaluation directory")
    changes: dict[str, Any] = {}
    if tasks is not None:
        plugins.suite(tasks)
        changes["tasks"] = tasks
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise MetaloraError(f"data directory {data_dir!r} does not exist")
        changes["data_dir"] = data_dir
    if changes:
        setup.change_run(**changes)
    suite, metrics, episodes = setup.load_test_episodes()
    if split == "validation":
        if not suite.validation:
            raise MetaloraError(f"suite '{suite.name}' has no validation tasks")
        episodes = [setup.episodes.episode(t) for t in suite.validation]
    check_tested_adapters(setup, run_dir)
    protocol = dict(read_json(run_dir / METRICS_FILE, "run metrics").get("protocol", {}))
    protocol.update(split=split, changed_settings=changed)
    log = ProgressLog(setup.console)
    log.open(run_dir / EVAL_DIR / PROGRESS_FILE)
    try:
        log.line(f"evaluating {run_dir}: {len(episodes)} {split} tasks of {suite.name}, "
                 f"settings changed: {changed or 'none'}")
        results, predictions = _evaluate_every_pair(setup, run_dir, episodes, metrics, log)
    finally:
        log.close()
    # a directory of its own, claimed only now that there is something to write: never
    # another evaluation's, even one started in the same second
    stamp = f"{time_stamp()}-{suite.name}"
    out_dir = new_stamped_dir(run_dir / EVAL_DIR,
                              stamp if split == "test" else f"{stamp}-{split}")
    summary = RunSummary(run_dir=out_dir, suite=suite.name, metric_names=list(metrics),
                         protocol=protocol, results=results)
    for (name, seed), result in predictions.items():  # per query, as the run's test writes
        where = seed_dir(out_dir, name, seed)
        where.mkdir(parents=True, exist_ok=True)
        result.save_predictions(where / PREDICTIONS_FILE)
        result.write_predictions_jsonl(where / PREDICTIONS_JSONL_FILE)
    write_results(summary, out_dir)
    write_json(out_dir / METRICS_FILE, summary.to_dict())
    return summary


def _evaluate_every_pair(setup: RunSetup, run_dir: Path, episodes: list[Episode],
                         metrics: dict[str, Metric], log: ProgressLog
                         ) -> tuple[dict[str, list[SeedResult]], dict[tuple[str, int],
                                                                       EvalResult]]:
    """Each learner and seed of the run, its tested adapters evaluated on ``episodes``;
    a progress line per task and per pair (see :mod:`metalora.runs.progress`)."""
    results: dict[str, list[SeedResult]] = {}
    predictions: dict[tuple[str, int], EvalResult] = {}
    for name in setup.run.learner:
        results[name] = []
        for seed in setup.run.seeds:
            recorded = SeedResult.load(name, seed, seed_dir(run_dir, name, seed))
            learner = load_tested_learner(setup, run_dir, name, seed)
            started = time.perf_counter()
            try:
                with progress_bars(setup.console) as progress, setup.precision():
                    bar = progress.add_task(f"{name} seed {seed}: eval", total=len(episodes))
                    result = evaluate(learner, episodes, metrics, seed=seed,
                                      on_task=task_progress(progress, bar, log.line))
            finally:
                learner.adapters.remove()
            log.line(f"{name} seed {seed}: evaluated ({len(episodes)} tasks, "
                     f"{time.perf_counter() - started:.1f} s): {format_metrics(result.macro)}")
            result.example_se = result.bootstrap_se(metrics, seed=seed)
            results[name].append(dataclasses.replace(recorded, test=result))
            predictions[(name, seed)] = result
    return results, predictions
