"""What metalora is doing, so that an unexpected error can say so in one line.

Code that does a step a person would name ("loading model 'tiny'",
"running lora seed 0, training epoch 2") wraps it in :func:`doing`. If an
exception escapes, the innermost description is attached to it, and the
command line prints it with the exception's message instead of a traceback::

    with doing(f"loading suite {name!r}"):
        suite = sampler.load(options)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager

_ATTRIBUTE = "_metalora_activity"


def tag(exc: BaseException, what: str) -> None:
    """Record on ``exc`` that it happened while doing ``what`` (the first record is kept)."""
    if what and getattr(exc, _ATTRIBUTE, None) is None:
        with contextlib.suppress(AttributeError):  # exceptions with __slots__
            setattr(exc, _ATTRIBUTE, what)


def activity_of(exc: BaseException) -> str | None:
    """What was being done when ``exc`` was raised, if anything recorded it."""
    return getattr(exc, _ATTRIBUTE, None)


@contextmanager
def doing(what: str) -> Iterator[None]:
    """Attach ``what`` to any exception that escapes the block (innermost wins)."""
    try:
        yield
    except BaseException as exc:
        tag(exc, what)
        raise
