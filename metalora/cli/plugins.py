"""``metalora plugins``: every registered implementation and who provides it."""

from __future__ import annotations

from rich.table import Table

from metalora.cli.render import console, err_console
from metalora.plugins import PluginManager


def make_plugins_command(plugins: PluginManager):
    """The ``plugins`` command."""

    def list_plugins() -> None:
        """List every registered learner, prior, suite, metric and pruner with its provider."""
        table = Table(title="Registered implementations")
        for column in ("kind", "name", "package", "plugin", "description"):
            table.add_column(column)
        for reg in plugins.registrations():
            description = getattr(reg.implementation, "description", "") or ""
            table.add_row(reg.kind, reg.name, reg.provider, reg.plugin, description)
        console.print(table)
        for plugin, reason in plugins.failures.items():
            err_console.print(f"[yellow]Warning:[/yellow] plugin '{plugin}' {reason}")

    return list_plugins
