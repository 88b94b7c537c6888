"""User-facing errors.

Everything raised as :class:`MetaloraError` is shown by the CLI as one line
(no traceback unless ``--debug``) and exits non-zero.
"""

from __future__ import annotations

from collections.abc import Iterable


class MetaloraError(Exception):
    """An error caused by the user's input or environment, shown as one line."""


class PluginError(MetaloraError):
    """A plugin could not be registered (for example a name collision)."""


class TrainingDiverged(MetaloraError):
    """The training loss became NaN or infinite."""


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> MetaloraError:
    """An error for a value that is not one of the valid ``choices``.

    >>> str(unknown_choice("learner", "foo", ["lora", "abmll"]))
    "unknown learner 'foo'; valid choices: abmll, lora"
    """
    listed = ", ".join(sorted(choices)) or "(none registered)"
    return MetaloraError(f"unknown {kind} {value!r}; valid choices: {listed}")
