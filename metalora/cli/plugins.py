"""``metalora plugins``: every registered implementation and who provides it."""

from __future__ import annotations

from rich.table import Table

from metalora.cli.render import console, err_console
from metalora.config import setting_conflicts
from metalora.hookspecs import HOOK_KINDS
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
        for kind in HOOK_KINDS.values():
            registry = plugins.registry(kind)
            for name in registry.conflicts:
                err_console.print(f"[yellow]Warning:[/yellow] {registry.conflict_error(name)}",
                                  highlight=False, soft_wrap=True)
        for owner, reason in setting_conflicts(plugins).items():
            err_console.print(f"[yellow]Warning:[/yellow] {owner!r} cannot run: {reason}",
                              highlight=False, soft_wrap=True)

    return list_plugins
