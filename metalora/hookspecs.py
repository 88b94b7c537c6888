"""Pluggy hook specifications: how a plugin tells metalora what it provides.

Each ``register_*`` hook receives a ``register`` callable. A plugin calls it
once per implementation, in the manner of simonw/llm's ``register_models``::

    from metalora import hookimpl

    @hookimpl
    def register_learners(register):
        register(MyLearner)

Learners, priors, metrics, calibrators, pruners and loggers are registered as classes (with a
``name`` class attribute); task samplers as instances (one per suite, so one
class can provide several suites). ``register`` also takes an explicit name:
``register(obj, name="alias")``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from metalora.interfaces import TaskSampler

PROJECT = "metalora"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]
"""``register(implementation, name=None)``."""


@hookspec
def register_learners(register: Register) -> None:
    """Register :class:`metalora.interfaces.Learner` subclasses."""


@hookspec
def register_priors(register: Register) -> None:
    """Register :class:`metalora.interfaces.Prior` subclasses."""


@hookspec
def register_task_samplers(register: Register) -> None:
    """Register :class:`metalora.interfaces.TaskSampler` instances (one per suite)."""


@hookspec(firstresult=True)
def suite_from_path(path: Path) -> TaskSampler | None:
    """A suite read from ``path``, a folder or suite file given as ``--tasks PATH``, or
    ``None`` when this plugin does not read such a path (the first answer is used)."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register :class:`metalora.interfaces.Metric` subclasses."""


@hookspec
def register_calibrators(register: Register) -> None:
    """Register :class:`metalora.interfaces.Calibrator` subclasses (``--calibrate NAME``)."""


@hookspec
def register_pruners(register: Register) -> None:
    """Register :class:`metalora.interfaces.Pruner` subclasses."""


@hookspec
def register_loggers(register: Register) -> None:
    """Register :class:`metalora.interfaces.Logger` subclasses (``--logger NAME``)."""


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Add commands to the ``metalora`` CLI (``@app.command()``)."""


HOOK_KINDS: dict[str, str] = {
    "register_learners": "learner",
    "register_priors": "prior",
    "register_task_samplers": "suite",
    "register_metrics": "metric",
    "register_calibrators": "calibrator",
    "register_pruners": "pruner",
    "register_loggers": "logger",
}
"""Each registration hook and the kind of implementation it registers."""

