"""The ``metalora`` command line; :func:`main` is the console script's entry point.

This module imports nothing heavy: torch, the plugins and the commands are
imported inside :func:`main`, so that an error or a Ctrl-C at any moment,
start-up included, ends in one line instead of a traceback. ``--debug``
(anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

DEBUG_FLAG = "--debug"
DEBUG_HINT = "run again with --debug for the traceback"


def build_app(plugins: Any = None) -> Any:
    """The Typer application for a plugin manager (see :func:`metalora.cli.app.build_app`)."""
    from metalora.cli.app import build_app as build

    return build(plugins)


def _say(text: str) -> None:
    """One line on stderr, without rich (which may not be importable yet)."""
    print(text, file=sys.stderr, flush=True)


def _command_name(argv: list[str]) -> str:
    words = [a for a in argv if not a.startswith("-")]
    return f"metalora {words[0]}" if words else "metalora"


def main(argv: list[str] | None = None) -> None:
    """Run the command line; every failure ends in one line and a non-zero exit status.

    * :class:`~metalora.errors.MetaloraError` (bad input): ``Error: <message>``, status 1;
    * Ctrl-C outside a run (a run reports where it stopped itself): status 130;
    * any other exception, at any depth: ``Error: while <what was being done>:
      <type>: <message> (run again with --debug for the traceback)``, status 1.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    if debug:  # anywhere on the command line: the application reads it before the command
        argv = [DEBUG_FLAG, *(a for a in argv if a != DEBUG_FLAG)]
    activity = "starting metalora"
    try:
        from metalora.activity import activity_of
        from metalora.errors import MetaloraError

        try:
            cli_app = importlib.import_module("metalora.cli.app")

            activity = "loading plugins"
            cli_app.install_warning_format()
            application = cli_app.build_app()
            activity = f"running '{_command_name(argv)}'"
            application(args=argv, prog_name="metalora", standalone_mode=True)
        except MetaloraError as exc:
            if debug:
                raise
            _say(f"Error: {exc}")
            raise SystemExit(1) from None
        except Exception as exc:
            if debug:
                raise
            where = activity_of(exc) or activity
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
            _say(f"Error: while {where}: {detail} ({DEBUG_HINT})")
            raise SystemExit(1) from None
    except KeyboardInterrupt:
        if debug:
            raise
        _say(f"Interrupted while {activity}.")
        raise SystemExit(130) from None
