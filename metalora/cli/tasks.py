"""``metalora tasks [SUITE]``: the task suites, or one suite's tasks with their roles."""

from __future__ import annotations

import typer
from rich.table import Table

from metalora.cli.render import console
from metalora.plugins import PluginManager
from metalora.records import TaskRole


def make_tasks_command(plugins: PluginManager):
    """The ``tasks`` command."""

    def list_tasks(
        suite: str | None = typer.Argument(
            None, help="A suite, or a task folder or suite file, to list the tasks of."),
    ) -> None:
        """List the task suites, or the tasks of one suite with their roles."""
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
        roles = plugins.suite(suite).roles()
        table = Table(title=f"Tasks of '{suite}'")
        table.add_column("task")
        table.add_column("role")
        for role in TaskRole:
            for name in roles.get(role, []):
                table.add_row(name, role.value)
        console.print(table)

    return list_tasks
