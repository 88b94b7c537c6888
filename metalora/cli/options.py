"""The one place that turns declared settings into Typer options.

``metalora run`` and ``metalora prune`` get one option per setting of the
core and of every registered plugin (:mod:`metalora.settings`): a flag pair
for a bool, a value otherwise, with the default(s) and choices in its help.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import typer
from rich.markup import escape

from metalora.errors import MetaloraError
from metalora.settings import SettingInfo, describe_bounds

OPTION_TYPES: dict[type, Any] = {
    bool: bool | None, int: str | None, float: str | None, str: str | None, list: str | None,
}
"""The Typer annotation of a setting's type (every option defaults to "not given"). Numbers
arrive as text and are read by :func:`metalora.settings.coerce`, so that a bad one is the
same one error line as in a config file, not a usage box."""
METAVARS: dict[type, str] = {int: "<int>", float: "<float>", list: "<list>"}


def option_help(info: SettingInfo) -> str:
    """A setting's help text with its default(s) (per owner where they differ) and choices."""
    text = info.help
    distinct = {repr(v) for v in info.defaults.values()}
    if len(distinct) > 1:
        text += " [default: " + "; ".join(f"{o} {v}" for o, v in info.defaults.items()) + "]"
    else:
        default = info.default
        if isinstance(default, list):
            default = ",".join(str(d) for d in default) or "(all)"
        text += f" [default: {'(none)' if default is None else default}]"
    if info.choices:
        text += f" [choices: {', '.join(info.choices)}]"
    if info.bounds:
        text += f" [range: {describe_bounds(info.bounds)}]"
    return escape(text)


def settings_panel(info: SettingInfo) -> str:
    """The help panel of a setting: ``Run`` for the core's, else its plugins'."""
    if "run" in info.owners:
        return "Run"
    return "Settings of " + ", ".join(info.owners)


def keyword(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    """A keyword-only parameter of a generated command."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=default)


def setting_parameters(infos: Mapping[str, SettingInfo], *, skip: Iterable[str] = (),
                       help_for: Callable[[SettingInfo], str] = option_help,
                       panel: Callable[[SettingInfo], str] = settings_panel,
                       ) -> list[inspect.Parameter]:
    """One keyword parameter (a Typer option that defaults to None) per setting."""
    skipped = set(skip)
    params = []
    for info in infos.values():
        if info.name in skipped:
            continue
        flag = info.name.replace("_", "-")
        decls = [f"--{flag}/--no-{flag}"] if info.type is bool else [f"--{flag}"]
        params.append(keyword(info.name, OPTION_TYPES[info.type], typer.Option(
            None, *decls, help=help_for(info), show_default=False,
            metavar=METAVARS.get(info.type), rich_help_panel=panel(info))))
    return params


def with_parameters(command: Callable[..., None], params: list[inspect.Parameter]
                    ) -> Callable[..., None]:
    """Give ``command(**kwargs)`` the signature Typer reads its options from."""
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def parse_set_values(items: list[str] | None) -> dict[str, str]:
    """``--set NAME=VALUE`` items as ``{name: raw value}`` (dashes in names read as
    underscores); an item without ``=`` is one error line."""
    settings: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise MetaloraError(f"--set takes NAME=VALUE, got {item!r}")
        settings[name.strip().replace("-", "_")] = value.strip()
    return settings


def run_dir_argument() -> Any:
    """The ``RUN_DIR`` argument of the commands that read a finished run."""
    return typer.Argument(..., metavar="RUN_DIR", show_default=False,
                          help="A run directory written by `metalora run`.")


def set_option(help_text: str) -> Any:
    """The repeatable ``--set NAME=VALUE`` option (read by :func:`parse_set_values`)."""
    return typer.Option(None, "--set", metavar="NAME=VALUE", help=help_text)
