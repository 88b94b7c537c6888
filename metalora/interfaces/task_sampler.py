"""The :class:`TaskSampler` interface: a suite of tasks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from metalora.records import Suite, TaskRole


@dataclass(frozen=True)
class DataOptions:
    """Where and how a suite reads its data."""

    data_dir: Path | None = None
    """A local directory of MetaICL-format files; ``None`` means the sampler's default source."""
    seed: int = 0
    """Seed for anything the sampler draws or generates."""
    skip_bad_records: bool = False
    """Warn about (and count) malformed records instead of failing on the first one."""
    settings: Any = None
    """The sampler's own settings (an instance of its ``Settings`` class, resolved from the
    run's configuration), or ``None`` when it declares none."""


class TaskSampler(ABC):
    """A named suite: which tasks train, validate and test, and their records.

    Registered instances are looked up by :attr:`name`, the value of
    ``--tasks``. :meth:`roles` must be cheap (no data loading) so that
    ``metalora tasks`` can list a suite offline; :meth:`load` reads or
    generates the records. Support/query splits and batches are drawn by the
    core (:mod:`metalora.episodes`), identically for every suite.
    """

    name: str
    description: str = ""
    needs_data: ClassVar[bool] = False
    """True when the suite reads external data (a data directory or the hub)."""
    recommended: ClassVar[dict[str, Any]] = {}
    """Settings this suite is meant to run with, used wherever the user gives none (on the
    command line or in a config file): ``{"epochs": 2}`` for a shared setting, or
    ``{"lora": {"lr": 3e-4}}`` for one learner's. Empty: the settings' own defaults."""

    @abstractmethod
    def roles(self) -> dict[TaskRole, list[str]]:
        """Task names per role, without loading any data."""

    @abstractmethod
    def load(self, options: DataOptions) -> Suite:
        """Read or generate the suite's records."""
