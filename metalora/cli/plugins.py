"""``metalora plugins``: every registered implementation and who provides it, one section
per kind; descriptions wrap to the terminal and nothing is cut."""

from __future__ import annotations

import typer
from typer import _click as click

from metalora.cli.help import breakable, unbreakable
from metalora.cli.render import err_console
from metalora.config import setting_conflicts
from metalora.hookspecs import HOOK_KINDS
from metalora.plugins import PluginManager, Registration


def make_plugins_command(plugins: PluginManager):
    """The ``plugins`` command."""

    def list_plugins() -> None:
        """List every registered learner, prior, suite, metric, pruner and logger with its
        provider."""
        formatter = click.HelpFormatter()
        by_kind: dict[str, list[Registration]] = {kind: [] for kind in HOOK_KINDS.values()}
        for reg in plugins.registrations():
            by_kind[reg.kind].append(reg)
        for kind, registrations in by_kind.items():
            rows = []
            for reg in registrations:
                description = getattr(reg.implementation, "description", "") or ""
                origin = (f"package {reg.provider}" if reg.plugin == reg.name
                          else f"package {reg.provider}, plugin {reg.plugin}")
                rows.append((reg.name, unbreakable(f"{description} [{origin}]".strip())))
            with formatter.section(f"{kind.capitalize()}s ({len(rows)})"):
                formatter.write_dl(rows or [("(none)", "")])
        formatter.write_paragraph()
        formatter.write_text("`metalora settings NAME` describes a plugin's settings, "
                             "`metalora tasks NAME` a suite's tasks.")
        breakable(formatter)
        typer.echo(formatter.getvalue(), nl=False)
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
