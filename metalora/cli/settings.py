"""``metalora settings [NAME]``: the settings of the core or of one plugin, in full."""

from __future__ import annotations

import typer
from typer import _click as click

from metalora.cli.help import breakable, plain, unbreakable
from metalora.cli.options import METAVARS, option_help
from metalora.config import all_setting_infos
from metalora.errors import unknown_choice
from metalora.plugins import PluginManager
from metalora.settings import SettingInfo

CORE = "run"
"""The owner name of the core's settings (``metalora settings run``)."""


def make_settings_command(plugins: PluginManager):
    """The ``settings`` command."""

    def settings(
        name: str | None = typer.Argument(
            None, metavar="[NAME]", help="A plugin (learner, prior, suite, ...) or 'run' for the "
                                         "core's settings; without it, who has which settings."),
    ) -> None:
        """Describe every setting of one plugin (or of the core, 'run') in full: its option,
        default, range or choices, and which other plugins share it. Without NAME, list every
        plugin that has settings and their names."""
        infos = list(all_setting_infos(plugins).values())
        owners = sorted({o for info in infos for o in info.owners} - {CORE})
        formatter = click.HelpFormatter()
        if name is None:
            with formatter.section("Settings per plugin ('run' is the core)"):
                formatter.write_dl([(owner, unbreakable(", ".join(
                    i.name for i in infos if owner in i.owners))) for owner in (CORE, *owners)])
        else:
            if name not in (CORE, *owners):
                raise unknown_choice("plugin with settings", name, (CORE, *owners))
            with formatter.section(f"Settings of {name}"):
                formatter.write_dl([describe(info, name) for info in infos
                                    if name in info.owners])
        breakable(formatter)
        typer.echo(formatter.getvalue(), nl=False)

    return settings


def describe(info: SettingInfo, owner: str) -> tuple[str, str]:
    """The option (with metavar) and the full description of one setting."""
    flag = info.name.replace("_", "-")
    option = (f"--{flag} / --no-{flag}" if info.type is bool
              else f"--{flag} {METAVARS.get(info.type, '<str>')}")
    text = plain(option_help(info))
    others = [o for o in info.owners if o != owner]
    if others:
        text += f" (also a setting of {', '.join(others)})"
    return option, unbreakable(text)
