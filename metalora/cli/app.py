"""The ``metalora`` application (Typer + rich); :func:`metalora.cli.main` runs it.

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
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from metalora import __version__
from metalora.config import all_setting_infos, read_config_file, resolve_config
from metalora.distributed import refuse_multi_process
from metalora.engine import SELECTION_BEST, SELECTION_LAST, Engine, RunInterrupted, RunSummary
from metalora.errors import MetaloraError
from metalora.export import EXPORT_HELP, make_export_command
from metalora.plugins import PluginLoadWarning, PluginManager, get_plugin_manager
from metalora.pruning import PRUNE_HELP, make_prune_command
from metalora.records import TaskRole
from metalora.reevaluation import EVAL_HELP, make_eval_command
from metalora.reporting import (
    format_mean_se,
    headline_columns,
    per_task_table,
    table_rows,
)
from metalora.settings import SettingInfo

console = Console()
err_console = Console(stderr=True)

OPTION_TYPES: dict[type, Any] = {
    bool: bool | None, int: int | None, float: float | None, str: str | None, list: str | None,
}


class MetaloraGroup(TyperGroup):
    """Turns :class:`MetaloraError` into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MetaloraError as exc:
            if ctx.params.get("debug"):
                raise
            err_console.print(f"[bold red]Error:[/bold red] {escape(str(exc))}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]Interrupted.[/bold red] Finished results are on disk.")
            raise typer.Exit(130) from None


def _print_version(value: bool) -> None:
    if value:
        console.print(f"metalora {__version__}", highlight=False)
        raise typer.Exit()


def build_app(plugins: PluginManager | None = None) -> typer.Typer:
    """The CLI application for a plugin manager (the process-wide one by default)."""
    plugins = plugins or get_plugin_manager()
    app = typer.Typer(
        name="metalora", cls=MetaloraGroup, no_args_is_help=True, add_completion=False,
        help="Meta-learning for LoRA fine-tuning of causal LMs: ABMLL, Reptile and baselines.")

    @app.callback()
    def main_options(
        ctx: typer.Context,
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
        version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                     help="Print the version and exit."),
    ) -> None:
        """Meta-learning for LoRA fine-tuning of causal LMs: ABMLL, Reptile and baselines."""
        if ctx.invoked_subcommand not in (None, "run"):
            refuse_multi_process(f"metalora {ctx.invoked_subcommand}")

    app.command(
        "run",
        help="Train learner(s) on a suite's training tasks for --epochs epochs, validating every "
             "--eval-every epochs, and evaluate each seed on the test tasks at its "
             "best-validation epoch (test-time adaptation on each task's support set, metrics "
             "on its query set). Prints the results table (mean ± SE over --seeds) and writes "
             "a run directory: results.csv/json, metrics.json, log.jsonl, checkpoints, plots. "
             "Ctrl-C leaves a run that --resume RUN_DIR continues.",
    )(make_run_command(plugins))
    app.command("plugins")(make_plugins_command(plugins))
    app.command("tasks")(make_tasks_command(plugins))
    app.command("prune", help=PRUNE_HELP)(make_prune_command(plugins))
    app.command("export", help=EXPORT_HELP)(make_export_command(plugins))
    app.command("eval", help=EVAL_HELP)(make_eval_command(plugins))
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
        text += f" [default: {'(none)' if default is None else default}]"
    if info.choices:
        text += f" [choices: {', '.join(info.choices)}]"
    return escape(text)


def _panel(info: SettingInfo) -> str:
    if "run" in info.owners:
        return "Run"
    return "Settings of " + ", ".join(info.owners)


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
            engine = Engine.from_run_dir(resume, plugins, console=err_console)
        else:
            learners = plugins.registry("learner").names()
            file_values = read_config_file(config_path, learners) if config_path else {}
            resolved = resolve_config(infos, file_values, kwargs)
            engine = Engine(resolved, plugins, console=err_console)
        try:
            summary = engine.execute()
        except RunInterrupted as exc:
            if not engine.distributed.is_main:  # rank 0 says where the run is
                raise typer.Exit(130) from None
            where = f" ({exc.detail})" if exc.detail else ""
            err_console.print(
                f"[bold red]Interrupted[/bold red]{where}. Finished learners/seeds and the latest "
                f"epoch checkpoint are in {exc.run_dir}", highlight=False, soft_wrap=True)
            err_console.print(f"Resume with: {exc.resume_command}", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        if engine.distributed.is_main:
            print_results(summary, per_task=per_task)

    params = [
        inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
            default=typer.Option(None, "--config", "-c", help="TOML or YAML file of settings "
                                 "(names as below, with underscores); the command line "
                                 "overrides it.", rich_help_panel="Run")),
        inspect.Parameter(
            "resume", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
            default=typer.Option(None, "--resume", metavar="RUN_DIR",
                                 help="Continue an interrupted run: keeps its finished "
                                      "learners/seeds, restarts the unfinished one from its "
                                      "latest epoch checkpoint (settings come from "
                                      "RUN_DIR/config.json).", rich_help_panel="Run")),
        inspect.Parameter(
            "per_task", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
            default=typer.Option(True, "--per-task/--no-per-task",
                                 help="Print the per-task test table before the Table-1 "
                                      "summary (it is always in results.json).",
                                 rich_help_panel="Run")),
    ]
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


def print_results(summary: RunSummary, per_task: bool = False) -> None:
    """The paper's Table 1 layout: one row per learner, test Acc and ECE as mean ± SE over
    seeds (each seed tested at its best-validation epoch); optionally the per-task table."""
    columns = headline_columns(summary.metric_names)
    seeds = len(summary.protocol.get("seeds", [])) or max(
        (len(r) for r in summary.results.values()), default=0)
    test_at = summary.protocol.get("test_at", SELECTION_LAST)
    when = {SELECTION_BEST: "the best-validation epoch", SELECTION_LAST: "the last epoch"}.get(
        test_at, "the best-validation epoch where validated, else the last epoch")
    table = Table(
        title=f"Test results on '{summary.suite}'",
        caption=(f"mean ± SE over {seeds} seeds" if seeds != 1 else
                 "1 seed: ± bootstrap SE over query examples")
                + f"; macro-average over test tasks; tested at {when}")
    table.add_column("Method")
    for col in columns:
        table.add_column(f"{col.label} {col.arrow}", justify="right")
    table.add_column("tested epoch(s)", justify="right")
    for row in table_rows(summary):
        epochs = ",".join("-" if e is None else str(e) for e in row["tested_epochs"])
        table.add_row(row["method"], *(row[col.label] for col in columns), epochs)
    if per_task:
        console.print(per_task_rich_table(summary))
    console.print(table)
    console.print(f"Run directory: {summary.run_dir}", soft_wrap=True)


def per_task_rich_table(summary: RunSummary) -> Table:
    """Per-task test accuracy and ECE of every learner (mean over seeds), plus the macro row."""
    columns = headline_columns(summary.metric_names)
    table = Table(title=f"Per-task test results on '{summary.suite}' (mean over seeds)")
    table.add_column("task")
    for learner in summary.results:
        for col in columns:
            table.add_column(f"{learner} {col.label}", justify="right")
    tasks = per_task_table(summary)
    names: list[str] = []
    for learner_tasks in tasks.values():
        names += [t for t in learner_tasks if t not in names]
    for task in names:
        row = [task]
        for learner in summary.results:
            for col in columns:
                value = tasks[learner].get(task, {}).get(col.metric)
                row.append("-" if value is None else format_mean_se(value["mean"], 0.0,
                                                                     col.percent, 1))
        table.add_row(*row)
    table.add_section()
    macro = ["macro"]
    agg = summary.summary()
    for learner, seeds in summary.results.items():
        for col in columns:
            mean, se = agg[learner][col.metric]
            macro.append(format_mean_se(mean, se, col.percent, len(seeds)))
    table.add_row(*macro, style="bold")
    return table


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
    return _original_formatwarning(message, category, filename, lineno, line)


_original_formatwarning = warnings.formatwarning


def install_warning_format() -> None:
    """Show plugin load warnings as one ``Warning:`` line (other warnings as usual)."""
    warnings.formatwarning = _format_plugin_warning  # type: ignore[assignment]
