"""``metalora eval RUN_DIR``: evaluate a finished run's tested adapters again.

Each learner and seed of the run is rebuilt with the run's recorded
settings, its tested adapters (``<learner>/seed-<s>/adapters.safetensors``)
are loaded, and the shared protocol (test-time adaptation on each task's
support set, metrics on its query set) runs on the test tasks of the run's
suite, or of another suite (``--tasks``, ``--data-dir``). The run itself is
only read; results go to ``RUN_DIR/eval/<time>-<suite>/results.{csv,json}``.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from metalora.engine import RunSummary, SeedResult
from metalora.errors import MetaloraError
from metalora.evaluation import evaluate
from metalora.plugins import PluginManager
from metalora.pruning import load_tested_learner, open_run
from metalora.reporting import write_results
from metalora.rundir import METRICS_FILE, read_json, seed_dir, write_json

EVAL_DIR = "eval"
EVAL_HELP = ("Evaluate a finished run's tested adapters again with the shared protocol, on its "
             "own suite's test tasks or another suite's (--tasks). The run is only read; "
             "results go to RUN_DIR/eval/.")


def evaluate_run(run_dir: Path | str, plugins: PluginManager, *, tasks: str | None = None,
                 data_dir: str | None = None, overrides: dict[str, Any] | None = None,
                 console: Console | None = None) -> RunSummary:
    """Re-evaluate every learner and seed of a finished run; write and return the results."""
    run_dir = Path(run_dir)
    engine = open_run(run_dir, plugins, console=console, overrides=overrides)
    changes: dict[str, Any] = {}
    if tasks is not None:
        plugins.registry("suite").get(tasks)
        changes["tasks"] = tasks
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise MetaloraError(f"data directory {data_dir!r} does not exist")
        changes["data_dir"] = data_dir
    if changes:
        engine.run = dataclasses.replace(engine.run, **changes)
    suite, metrics, episodes = engine.load_test_episodes()
    out_dir = run_dir / EVAL_DIR / f"{datetime.now():%Y%m%d-%H%M%S}-{suite.name}"
    summary = RunSummary(run_dir=out_dir, suite=suite.name, metric_names=list(metrics),
                         protocol=dict(read_json(run_dir / METRICS_FILE, "run metrics")
                                       .get("protocol", {})))
    for name in engine.run.learner:
        summary.results[name] = []
        for seed in engine.run.seeds:
            recorded = SeedResult.load(name, seed, seed_dir(run_dir, name, seed))
            learner = load_tested_learner(engine, run_dir, name, seed)
            try:
                with engine._progress() as progress, engine.precision():
                    bar = progress.add_task(f"{name} seed {seed}: eval", total=len(episodes))
                    result = evaluate(learner, episodes, metrics, seed=seed,
                                      on_task=lambda _task, bar=bar: progress.advance(bar))
            finally:
                learner.adapters.remove()
            result.example_se = result.bootstrap_se(metrics, seed=seed)
            summary.results[name].append(dataclasses.replace(recorded, test=result))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results(summary, out_dir)
    write_json(out_dir / METRICS_FILE, summary.to_dict())
    return summary


def make_eval_command(plugins: PluginManager):
    """The ``eval`` command."""

    def eval_run(
        run_dir: Path = typer.Argument(..., metavar="RUN_DIR", show_default=False,
                                       help="A run directory written by `metalora run`."),
        tasks: str | None = typer.Option(None, "--tasks", help="Evaluate on this suite's test "
                                         "tasks instead of the run's (see `metalora tasks`)."),
        data_dir: str | None = typer.Option(None, "--data-dir", help="Data directory for "
                                            "--tasks (MetaICL-format files)."),
        learner: str | None = typer.Option(None, "--learner", help="Comma-separated subset "
                                           "of the run's learners."),
        seeds: str | None = typer.Option(None, "--seeds", help="Comma-separated subset of "
                                         "the run's seeds."),
        device: str | None = typer.Option(None, "--device", help="Device to evaluate on."),
        per_task: bool = typer.Option(True, "--per-task/--no-per-task",
                                      help="Print the per-task table too."),
    ) -> None:
        from metalora import cli

        overrides: dict[str, Any] = {}
        if learner:
            overrides["learner"] = [n.strip() for n in learner.split(",") if n.strip()]
        if seeds:
            try:
                overrides["seeds"] = [int(s) for s in seeds.split(",") if s.strip()]
            except ValueError:
                raise MetaloraError(f"--seeds must be comma-separated integers, got {seeds!r}"
                                    ) from None
        if device:
            overrides["device"] = device
        summary = evaluate_run(run_dir, plugins, tasks=tasks, data_dir=data_dir,
                               overrides=overrides, console=cli.err_console)
        cli.print_results(summary, per_task=per_task)

    return eval_run
