"""``metalora run``: train and test learners on a suite, or resume a run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from metalora import api
from metalora.cli.options import keyword, setting_parameters, with_parameters
from metalora.cli.render import err_console, print_results
from metalora.config import all_setting_infos
from metalora.errors import MetaloraError
from metalora.plugins import PluginManager
from metalora.runs.state import RunInterrupted

RUN_HELP = (
    "Train learner(s) on a suite's training tasks for --epochs epochs, validating every "
    "--eval-every epochs, and evaluate each seed on the test tasks at its "
    "best-validation epoch (test-time adaptation on each task's support set, metrics "
    "on its query set). Prints the results table (mean ± SE over --seeds) and writes "
    "a run directory: results.csv/json, metrics.json, log.jsonl, checkpoints, plots. "
    "Ctrl-C leaves a run that --resume RUN_DIR continues.")


def make_run_command(plugins: PluginManager):
    """The ``run`` command, with one option per declared setting."""
    infos = all_setting_infos(plugins)

    def run(**kwargs: Any) -> None:
        config_path: Path | None = kwargs.pop("config")
        resume: Path | None = kwargs.pop("resume")
        per_task: bool = kwargs.pop("per_task")
        if resume is not None:
            given = [f"--{k.replace('_', '-')}" for k, v in kwargs.items() if v is not None]
            if config_path is not None:
                given.insert(0, "--config")
            if given:
                raise MetaloraError(
                    f"--resume continues a run with its recorded settings; remove {given[0]}")
        main_rank = os.environ.get("RANK", "0").strip() in ("", "0")
        try:
            if resume is not None:
                summary = api.resume(resume, plugins=plugins, console=err_console)
            else:
                spec = api.run_spec(config_path, plugins=plugins, **kwargs)
                summary = api.train(spec, plugins=plugins, console=err_console)
        except RunInterrupted as exc:
            if not main_rank:  # rank 0 says where the run is
                raise typer.Exit(130) from None
            where = f" ({exc.detail})" if exc.detail else ""
            err_console.print(
                f"[bold red]Interrupted[/bold red]{where}. Finished learners/seeds and the latest "
                f"epoch checkpoint are in {exc.run_dir}", highlight=False, soft_wrap=True)
            err_console.print(f"Resume with: {exc.resume_command}", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        if main_rank:
            print_results(summary, per_task=per_task)

    params = [
        keyword("config", Path | None, typer.Option(
            None, "--config", "-c", rich_help_panel="Run",
            help="TOML or YAML file of settings (names as below, with underscores); the "
                 "command line overrides it.")),
        keyword("resume", Path | None, typer.Option(
            None, "--resume", metavar="RUN_DIR", rich_help_panel="Run",
            help="Continue an interrupted run: keeps its finished learners/seeds, restarts "
                 "the unfinished one from its latest epoch checkpoint (settings come from "
                 "RUN_DIR/config.json).")),
        keyword("per_task", bool, typer.Option(
            True, "--per-task/--no-per-task", rich_help_panel="Run",
            help="Print the per-task test table before the Table-1 summary (it is always in "
                 "results.json).")),
    ]
    return with_parameters(run, params + setting_parameters(infos))
