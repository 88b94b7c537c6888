"""The ``metalora`` application (Typer + rich); :func:`metalora.cli.main` runs it.

One module per command (:mod:`~metalora.cli.run`, :mod:`~metalora.cli.eval`,
:mod:`~metalora.cli.prune`, :mod:`~metalora.cli.export`,
:mod:`~metalora.cli.plugins`, :mod:`~metalora.cli.tasks`); options generated
from declared settings come from :mod:`metalora.cli.options`, and everything
printed from :mod:`metalora.cli.render`. Errors that come from the user's
input are printed as one line and exit with status 1 (``--debug`` shows the
traceback).
"""

from __future__ import annotations

from typing import Any

import click
import typer
from rich.markup import escape
from typer.core import TyperGroup

from metalora import __version__
from metalora.cli.adapt import ADAPT_HELP, make_adapt_command
from metalora.cli.compare import COMPARE_HELP, make_compare_command
from metalora.cli.eval import EVAL_HELP, make_eval_command
from metalora.cli.export import EXPORT_HELP, make_export_command
from metalora.cli.help import PanelledCommand
from metalora.cli.plugins import make_plugins_command
from metalora.cli.prune import PRUNE_HELP, make_prune_command
from metalora.cli.render import console, err_console, install_warning_format
from metalora.cli.run import RUN_HELP, make_run_command
from metalora.cli.settings import make_settings_command
from metalora.cli.tasks import make_tasks_command
from metalora.distributed import refuse_multi_process
from metalora.errors import MetaloraError
from metalora.plugins import PluginManager, get_plugin_manager

__all__ = ["build_app", "install_warning_format"]


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

    app.command("run", help=RUN_HELP, cls=PanelledCommand)(make_run_command(plugins))
    app.command("plugins", cls=PanelledCommand)(make_plugins_command(plugins))
    app.command("tasks", cls=PanelledCommand)(make_tasks_command(plugins))
    app.command("prune", help=PRUNE_HELP, cls=PanelledCommand)(make_prune_command(plugins))
    app.command("export", help=EXPORT_HELP, cls=PanelledCommand)(make_export_command(plugins))
    app.command("eval", help=EVAL_HELP, cls=PanelledCommand)(make_eval_command(plugins))
    app.command("adapt", help=ADAPT_HELP, cls=PanelledCommand)(make_adapt_command(plugins))
    app.command("compare", help=COMPARE_HELP, cls=PanelledCommand)(
        make_compare_command(plugins))
    app.command("settings", cls=PanelledCommand)(make_settings_command(plugins))
    plugins.add_commands(app)
    return app
