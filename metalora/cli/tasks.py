"""``metalora tasks [SUITE]``: the task suites, or one suite's tasks, checked as a run would."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from metalora.cli.render import console, err_console
from metalora.config import RunSettings
from metalora.errors import MetaloraError
from metalora.interfaces import DataOptions
from metalora.plugins import PluginManager
from metalora.records import Suite, Task, TaskRole


def make_tasks_command(plugins: PluginManager):
    """The ``tasks`` command."""

    def list_tasks(
        suite: str | None = typer.Argument(
            None, help="A suite, or a task folder or suite file, to list the tasks of."),
        data_dir: str | None = typer.Option(
            None, "--data-dir", help="Data directory, for a suite that reads one (cls45, "
                                     "...): its tasks are then read and checked too."),
        skip_bad_records: bool = typer.Option(
            False, "--skip-bad-records", help="Count malformed records instead of failing, "
                                              "as `metalora run --skip-bad-records` does."),
    ) -> None:
        """List the task suites; or read one suite's tasks with exactly the checks `metalora
        run` makes (a dry run: exit 1 on what would stop the run) and show each task's role,
        examples and option counts."""
        registry = plugins.registry("suite")
        if suite is None:
            table = Table(title="Task suites")
            for column in ("suite", "train", "validation", "test", "package", "description"):
                table.add_column(column)
            for reg in registry:
                roles = reg.implementation.roles()
                table.add_row(reg.name, *(str(len(roles.get(r, []))) for r in TaskRole),
                              reg.provider, reg.implementation.description)
            console.print(table)
            return
        sampler = plugins.suite(suite)
        if getattr(sampler, "needs_data", False) and data_dir is None:
            roles = sampler.roles()  # names only: the data is elsewhere
            table = Table(title=f"Tasks of '{suite}' (give --data-dir to read and check them)")
            table.add_column("task")
            table.add_column("role")
            for role in TaskRole:
                for name in roles.get(role, []):
                    table.add_row(name, role.value)
            console.print(table)
            return
        if data_dir is not None and not Path(data_dir).is_dir():
            raise MetaloraError(f"data directory {data_dir!r} does not exist")
        loaded = sampler.load(DataOptions(data_dir=Path(data_dir) if data_dir else None,
                                          seed=0, skip_bad_records=skip_bad_records))
        check_as_a_run_would(loaded)
        for note in loaded.notes:
            err_console.print(f"{loaded.name}: {note}", markup=False, highlight=False,
                              soft_wrap=True)
        console.print(tasks_table(loaded))

    return list_tasks


def check_as_a_run_would(suite: Suite) -> None:
    """What a run checks of a loaded suite before training: test tasks exist, and every
    evaluated task has more records than the default support set."""
    if not suite.test:
        raise MetaloraError(f"suite '{suite.name}' has no test tasks")
    defaults = RunSettings()
    support = defaults.support_batches * defaults.batch_size
    for task in [*suite.validation, *suite.test]:
        if len(task.records) <= support:
            raise MetaloraError(f"task '{task.name}' has {len(task.records)} records; "
                                f"evaluation needs more than the {support} support examples")


def _option_counts(task: Task) -> str:
    counts = sorted({len(r.options) for r in task.records})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def _file_of(task: Task) -> str:
    """The file a task was read from (its first record's ``file:line``), if it came from one."""
    source = next((r.source for r in task.records if r.source), None) or ""
    path, _, line = source.rpartition(":")
    return path if path and line.isdigit() else ""


def tasks_table(suite: Suite) -> Table:
    """One row per task: its role, examples, option counts and where it was read from."""
    table = Table(title=f"Tasks of '{suite.name}'")
    files = {task.name: _file_of(task) for role in TaskRole for task in suite.tasks(role)}
    table.add_column("task", no_wrap=True)
    for column in ("role", "examples", "options"):
        table.add_column(column)
    if any(files.values()):
        table.add_column("file", overflow="fold")
    for role in TaskRole:
        for task in suite.tasks(role):
            row = [task.name, role.value, str(len(task.records)), _option_counts(task)]
            table.add_row(*row, *([files[task.name]] if any(files.values()) else []))
    return table
