"""``metalora eval RUN_DIR``: evaluate a finished run's tested adapters again."""

from __future__ import annotations

from pathlib import Path

import typer

from metalora import api
from metalora.cli.options import parse_set_values, run_dir_argument, set_option
from metalora.cli.render import err_console, print_results
from metalora.errors import MetaloraError
from metalora.plugins import PluginManager

EVAL_HELP = ("Evaluate a finished run's tested adapters again with the shared protocol, on its "
             "own suite's test tasks, another suite's (--tasks) or the validation tasks "
             "(--split), optionally with evaluation-time settings changed (--set "
             "eval_samples=8). The run is only read; results go to RUN_DIR/eval/.")


def make_eval_command(plugins: PluginManager):
    """The ``eval`` command."""

    def eval_run(
        run_dir: Path = run_dir_argument(),
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
        split: str = typer.Option("test", "--split", help="Which tasks: test or validation."),
        set_values: list[str] | None = set_option(
            "Change a setting for this evaluation (repeatable), e.g. eval_samples=8 or "
            "adapt_lr=2e-4; the adapters stay the run's."),
    ) -> None:
        chosen_seeds = None
        if seeds:
            try:
                chosen_seeds = [int(s) for s in seeds.split(",") if s.strip()]
            except ValueError:
                raise MetaloraError(f"--seeds must be comma-separated integers, got {seeds!r}"
                                    ) from None
        summary = api.evaluate(
            run_dir, split=split, tasks=tasks, data_dir=data_dir,
            learner=[n.strip() for n in learner.split(",") if n.strip()] if learner else None,
            seeds=chosen_seeds, device=device or None, settings=parse_set_values(set_values),
            plugins=plugins, console=err_console)
        print_results(summary, per_task=per_task)

    return eval_run
