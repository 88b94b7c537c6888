"""The ``metalora`` command line (Typer + rich).

The ``run`` command's options are generated from the settings the core and
every registered plugin declare (:mod:`metalora.settings`), so a plugin's
settings appear in ``metalora run --help`` and can come from ``--config``.
Errors that come from the user's input are printed as one line and exit with
status 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from metalora import __version__
from metalora.config import all_setting_infos, read_config_file, resolve_config
from metalora.engine import Engine, RunSummary
from metalora.errors import MetaloraError
from metalora.plugins import PluginLoadWarning, PluginManager, get_plugin_manager
from metalora.records import TaskRole
from metalora.settings import SettingInfo

console = Console()
err_console = Console(stderr=True)

OPTION_TYPES: dict[type, Any] = {
    bool: bool | None, int: int | None, float: float | None, str: str | None, list: str | None,
}
TABLE_METRICS = ("accuracy", "ece")


class MetaloraGroup(TyperGroup):
    """Turns :class:`MetaloraError` into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MetaloraError as exc:
            if ctx.params.get("debug"):
                raise
            err_console.print(f"[bold red]Error:[/bold red] {exc}", highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]Interrupted.[/bold red] Finished results are on disk.")
            raise typer.Exit(130) from None


def build_app(plugins: PluginManager | None = None) -> typer.Typer:
    """The CLI application for a plugin manager (the process-wide one by default)."""
    plugins = plugins or get_plugin_manager()
    app = typer.Typer(
        name="metalora", cls=MetaloraGroup, no_args_is_help=True, add_completion=False,
        help="Meta-learning for LoRA fine-tuning of causal LMs: ABMLL, Reptile and baselines.")

    @app.callback()
    def main_options(
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
        version: bool = typer.Option(False, "--version", help="Print the version and exit."),
    ) -> None:
        """Meta-learning for LoRA fine-tuning of causal LMs: ABMLL, Reptile and baselines."""
        if version:
            console.print(f"metalora {__version__}")
            raise typer.Exit()

    app.command(
        "run",
        help="Train learner(s) on a suite's training tasks and evaluate on its test tasks "
             "(test-time adaptation on each task's support set, metrics on its query set). "
             "Writes a run directory and prints the results table.",
    )(make_run_command(plugins))
    app.command("plugins")(make_plugins_command(plugins))
    app.command("tasks")(make_tasks_command(plugins))
    plugins.add_commands(app)
    return app


# -- run -----------------------------------------------------------------------------
def _option_help(info: SettingInfo) -> str:
    text = info.help
    distinct = {repr(v) for v in info.defaults.values()}
    if len(distinct) > 1:
        text += " [default: " + "; ".join(f"{o} {v}" for o, v in info.defaults.items()) + "]"
    else:
        default = info.default
        if isinstance(default, list):
            default = ",".join(str(d) for d in default) or "(all)"
        text += f" [default: {default}]"
    if info.choices:
        text += f" [choices: {', '.join(info.choices)}]"
    return text


def _panel(info: SettingInfo) -> str:
    if "run" in info.owners:
        return "Run"
    return "Settings of " + ", ".join(info.owners)


def make_run_command(plugins: PluginManager):
    """The ``run`` command, with one option per declared setting."""
    infos = all_setting_infos(plugins)

    def run(**kwargs: Any) -> None:
        config_path: Path | None = kwargs.pop("config")
        file_values = read_config_file(config_path) if config_path else {}
        resolved = resolve_config(infos, file_values, kwargs)
        engine = Engine(resolved, plugins, console=err_console)
        summary = engine.execute()
        print_results(summary)

    params = [inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
        default=typer.Option(None, "--config", "-c", help="TOML or YAML file of settings "
                             "(names as below, with underscores); the command line overrides it.",
                             rich_help_panel="Run"))]
    for info in infos.values():
        flag = info.name.replace("_", "-")
        decls = [f"--{flag}/--no-{flag}"] if info.type is bool else [f"--{flag}"]
        params.append(inspect.Parameter(
            info.name, inspect.Parameter.KEYWORD_ONLY, annotation=OPTION_TYPES[info.type],
            default=typer.Option(None, *decls, help=_option_help(info), show_default=False,
                                 rich_help_panel=_panel(info))))
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def _fmt(mean: float, se: float, percent: bool, seeds: int) -> str:
    if percent:
        text = f"{100 * mean:.1f}%"
        return text + (f" ± {100 * se:.1f}%" if seeds > 1 else "")
    return f"{mean:.3f}" + (f" ± {se:.3f}" if seeds > 1 else "")


def print_results(summary: RunSummary) -> None:
    """Per-task and macro accuracy and ECE of every learner (mean ± SE over seeds)."""
    shown = [m for m in TABLE_METRICS if m in summary.metric_names]
    table = Table(title=f"Test results on '{summary.suite}'", show_lines=False)
    table.add_column("task")
    for learner in summary.results:
        for metric in shown:
            table.add_column(f"{learner} {'Acc' if metric == 'accuracy' else metric.upper()}",
                             justify="right")
    first = next(iter(summary.results.values()))
    task_names = [t.task for t in first[0].test.tasks] if first else []
    for i, task in enumerate(task_names):
        row = [task]
        for seeds in summary.results.values():
            for metric in shown:
                values = [s.test.tasks[i].metrics[metric] for s in seeds]
                row.append(_fmt(sum(values) / len(values), 0.0, metric == "accuracy", 1))
        table.add_row(*row)
    table.add_section()
    macro = ["macro"]
    agg = summary.summary()
    for learner, seeds in summary.results.items():
        for metric in shown:
            mean, se = agg[learner][metric]
            macro.append(_fmt(mean, se, metric == "accuracy", len(seeds)))
    table.add_row(*macro, style="bold")
    console.print(table)
    console.print(f"Run directory: {summary.run_dir}")


# -- plugins and tasks ---------------------------------------------------------------
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


def make_tasks_command(plugins: PluginManager):
    """The ``tasks`` command."""

    def list_tasks(
        suite: str | None = typer.Argument(None, help="A suite to list the tasks of."),
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
        roles = registry.get(suite).roles()
        table = Table(title=f"Tasks of '{suite}'")
        table.add_column("task")
        table.add_column("role")
        for role in TaskRole:
            for name in roles.get(role, []):
                table.add_row(name, role.value)
        console.print(table)

    return list_tasks


def _format_plugin_warning(message, category, filename, lineno, line=None) -> str:
    if issubclass(category, PluginLoadWarning):
        return f"Warning: {message}\n"
    return warnings._formatwarning_orig(message, category, filename, lineno, line)  # type: ignore[attr-defined]


def main() -> None:
    """Entry point of the ``metalora`` console script."""
    warnings._formatwarning_orig = warnings.formatwarning  # type: ignore[attr-defined]
    warnings.formatwarning = _format_plugin_warning  # type: ignore[assignment]
    try:
        app = build_app()
    except MetaloraError as exc:
        err_console.print(f"[bold red]Error:[/bold red] {exc}", highlight=False)
        raise SystemExit(1) from None
    app()
