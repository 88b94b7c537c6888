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

from rich.console import Console

from metalora.errors import MetaloraError
from metalora.evaluation import evaluate
from metalora.plugins import PluginManager
from metalora.runs.progress import progress_bars
from metalora.runs.reporting import write_results
from metalora.runs.results import RunSummary, SeedResult
from metalora.runs.rundir import METRICS_FILE, read_json, seed_dir, write_json
from metalora.runs.setup import load_tested_learner, open_run

EVAL_DIR = "eval"


def evaluate_run(run_dir: Path | str, plugins: PluginManager, *, tasks: str | None = None,
                 data_dir: str | None = None, overrides: dict[str, Any] | None = None,
                 console: Console | None = None) -> RunSummary:
    """Re-evaluate every learner and seed of a finished run; write and return the results."""
    run_dir = Path(run_dir)
    setup = open_run(run_dir, plugins, console=console, overrides=overrides)
    changes: dict[str, Any] = {}
    if tasks is not None:
        plugins.registry("suite").get(tasks)
        changes["tasks"] = tasks
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise MetaloraError(f"data directory {data_dir!r} does not exist")
        changes["data_dir"] = data_dir
    if changes:
        setup.change_run(**changes)
    suite, metrics, episodes = setup.load_test_episodes()
    out_dir = run_dir / EVAL_DIR / f"{datetime.now():%Y%m%d-%H%M%S}-{suite.name}"
    summary = RunSummary(run_dir=out_dir, suite=suite.name, metric_names=list(metrics),
                         protocol=dict(read_json(run_dir / METRICS_FILE, "run metrics")
                                       .get("protocol", {})))
    for name in setup.run.learner:
        summary.results[name] = []
        for seed in setup.run.seeds:
            recorded = SeedResult.load(name, seed, seed_dir(run_dir, name, seed))
            learner = load_tested_learner(setup, run_dir, name, seed)
            try:
                with progress_bars(setup.console) as progress, setup.precision():
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
