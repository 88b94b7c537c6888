"""Task records: the data every suite is made of.

A record is one multiple-choice example in the MetaICL/CrossFit format
``{"task", "input", "output", "options"}``. A :class:`Task` is a named list
of records; a :class:`Suite` groups tasks by their role in the protocol.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from metalora.errors import MetaloraError

MAX_OPTIONS = 4
"""Every example has at most this many options (paper section A.2)."""


class TaskRole(StrEnum):
    """The part a task plays in the meta-learning protocol."""

    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


@dataclass(frozen=True)
class TaskRecord:
    """One multiple-choice example: ``output`` must be one of ``options``."""

    task: str
    input: str
    output: str
    options: tuple[str, ...]
    source: str | None = field(default=None, compare=False)
    """Where the record came from, for tracing a prediction back: ``file:line`` for records
    read from files, a row id for a hub dataset (``None`` when unknown). Not part of the
    record's identity: identical records from two places are one record."""

    def __post_init__(self) -> None:
        if not self.options:
            raise MetaloraError(f"record of task '{self.task}' has no options")
        if self.output not in self.options:
            raise MetaloraError(
                f"record of task '{self.task}': output {self.output!r} is not one of its "
                f"options {list(self.options)!r}"
            )

    @property
    def answer_index(self) -> int:
        """Position of the correct option."""
        return self.options.index(self.output)

    @classmethod
    def from_dict(cls, data: dict) -> TaskRecord:
        """Build a record from a MetaICL-style mapping."""
        return cls(
            task=str(data["task"]),
            input=str(data["input"]),
            output=str(data["output"]),
            options=tuple(str(o) for o in data["options"]),
        )

    def to_dict(self) -> dict:
        """The MetaICL-style mapping of this record."""
        return {
            "task": self.task,
            "input": self.input,
            "output": self.output,
            "options": list(self.options),
        }


@dataclass
class Task:
    """A named task: a list of records sharing one instruction format."""

    name: str
    records: list[TaskRecord]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[TaskRecord]:
        return iter(self.records)


@dataclass
class Suite:
    """Tasks grouped by role. Validation may be empty (then nothing is validated)."""

    name: str
    train: list[Task] = field(default_factory=list)
    validation: list[Task] = field(default_factory=list)
    test: list[Task] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Human-readable remarks, e.g. what a filter removed."""

    def tasks(self, role: TaskRole) -> list[Task]:
        """The tasks playing ``role``."""
        return {
            TaskRole.TRAIN: self.train,
            TaskRole.VALIDATION: self.validation,
            TaskRole.TEST: self.test,
        }[TaskRole(role)]


def option_problem(options: Sequence[str]) -> str | None:
    """Why ``options`` cannot be a multiple-choice record's (``None`` if they can): fewer
    than two options, an empty one, or one that appears twice."""
    if len(options) < 2:
        return (f"record has {len(options)} option; a multiple-choice record needs at "
                "least 2")
    for i, option in enumerate(options):
        if not option.strip():
            return f"option {i + 1} of {list(options)!r} is empty"
    for i, option in enumerate(options):
        if option in options[:i]:
            return f"option {option!r} appears twice in {list(options)!r}"
    return None


def filter_by_options(
    records: Sequence[TaskRecord], max_options: int = MAX_OPTIONS
) -> tuple[list[TaskRecord], int]:
    """Keep records with at most ``max_options`` options; return them and how many were removed."""
    kept = [r for r in records if len(r.options) <= max_options]
    return kept, len(records) - len(kept)
