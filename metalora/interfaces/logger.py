"""The :class:`Logger` interface: where training records go besides ``log.jsonl``.

``log.jsonl`` is always written by the core (:mod:`metalora.runs.logging_sinks`);
a logger sends the same records elsewhere: TensorBoard event files, a
Weights & Biases run, a database. The engine makes one logger per selected
name (``--logger``), learner and seed, and calls it after every optimisation
step and every validation; it never lets a logger decide anything about the
run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from metalora.interfaces.learner import StepLog
from metalora.settings import NoSettings


class Logger(ABC):
    """Receives one learner and seed's training records (see the module).

    Subclasses set ``name`` (how ``--logger`` selects them), optionally
    ``description`` and ``Settings`` (a settings dataclass, see
    :mod:`metalora.settings`), implement :meth:`log_step` and
    :meth:`log_validation`, and override :meth:`missing` when they need an
    optional package. Register them with ``@hookimpl def
    register_loggers(register): register(MyLogger)``.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings

    def __init__(self, run_dir: Path, learner: str, seed: int, settings: Any = None,
                 resume_step: int | None = None) -> None:
        """``resume_step``: on ``--resume``, the first global step that will be logged again
        (records from it on were lost with the interruption; a logger may drop its own)."""
        self.run_dir = run_dir
        self.learner = learner
        self.seed = seed
        self.settings = settings
        self.resume_step = resume_step

    @classmethod
    def missing(cls) -> str | None:
        """``None`` when this logger can work here, else why not, with what to install (one
        line). Checked before a run starts."""
        return None

    @abstractmethod
    def log_step(self, step: StepLog, global_step: int) -> None:
        """One optimisation step: ``step.loss`` and ``step.components`` at ``global_step``
        (counted from 1 across epochs for this learner and seed)."""

    @abstractmethod
    def log_validation(self, epoch: int, metrics: Mapping[str, float], global_step: int) -> None:
        """One validation after ``epoch`` epochs (0 for a learner that does not train):
        macro-averaged metrics over the validation tasks."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make everything logged so far durable (called before every checkpoint)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Finish (called once, when the learner and seed are done or interrupted)."""
