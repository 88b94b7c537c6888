"""The ``TaskSampler`` of the CrossFit/MetaICL suites: sources in, a reported ``Suite`` out.

:class:`CrossFitSuite` reads each task of a :class:`SuiteSpec` from a source
(local MetaICL files with ``--data-dir``, else the Hugging Face hub), keeps
identical records once, applies the option filter (tasks and examples with
more than :data:`metalora.records.MAX_OPTIONS` options are removed) and
reports everything it removed, skipped or fell back on in
:attr:`Suite.notes` and as logged warnings; nothing is dropped silently.
Records stay in source order; support/query splits are drawn by the core.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from metalora import (
    MAX_OPTIONS,
    DataOptions,
    MetaloraError,
    Suite,
    Task,
    TaskRecord,
    TaskRole,
    TaskSampler,
    filter_by_options,
    setting,
)
from metalora_plugins.crossfit.hub import HUB_TRAIN_ROWS, HubSource
from metalora_plugins.crossfit.reader import (
    DEFAULT_K,
    DEFAULT_SEED,
    LOGGER,
    LocalSource,
    SourcedTask,
)
from metalora_plugins.crossfit.suites import SuiteSpec

ROLES: tuple[TaskRole, ...] = (TaskRole.TRAIN, TaskRole.VALIDATION, TaskRole.TEST)


@dataclass(frozen=True)
class CrossFitSettings:
    """Settings of the CrossFit suites: which k-shot sample makes a validation task."""

    kshot_k: int = setting(
        DEFAULT_K, "CrossFit suites: k of the MetaICL k-shot sample read for validation (a "
                   "validation task is its train and dev files, 2k records; the data has k = 16 "
                   "and 8).", ge=1)
    kshot_seed: int = setting(
        DEFAULT_SEED, "CrossFit suites: seed of that k-shot sample (MetaICL's seeds: 100, 13, "
                      "21, 42, 87).")
    hub_train_rows: int = setting(
        HUB_TRAIN_ROWS, "CrossFit suites read from the Hugging Face hub (no --data-dir): rows "
                        "per training task.", ge=1)


class Source(Protocol):
    """Where a suite's records come from: :class:`LocalSource` or :class:`HubSource`."""

    def describe(self) -> str:
        """One line for the suite's notes."""
        ...

    def check(self, roles: Mapping[TaskRole, Sequence[str]]) -> dict[str, int]:
        """Fail early on missing data; return tasks removed up front with their option count."""
        ...

    def read(self, task: str, role: TaskRole) -> SourcedTask:
        """The records of ``task`` in ``role``."""
        ...


def dedupe(records: Sequence[TaskRecord]) -> tuple[list[TaskRecord], int]:
    """Keep the first of identical records (same input, output and options), in order."""
    seen: set[TaskRecord] = set()
    kept = []
    for record in records:
        if record not in seen:
            seen.add(record)
            kept.append(record)
    return kept, len(records) - len(kept)


@dataclass
class LoadReport:
    """What loading a suite removed, skipped and chose, turned into notes and warnings."""

    suite: str
    notes: list[str] = field(default_factory=list)
    removed_tasks: list[str] = field(default_factory=list)
    """``"<role> <task>"`` of every task the option filter removed."""
    removed_examples: int = 0
    skipped_records: int = 0
    duplicates: dict[TaskRole, list[str]] = field(default_factory=dict)
    """``"<task> (<count>)"`` of the tasks that had duplicate records, per role."""
    fallbacks: dict[str, list[str]] = field(default_factory=dict)
    """Tasks per fallback kind (``"kshot"``, ``"validation"``, ``"plain"``)."""
    excluded: int = 0
    kshot_only: list[str] = field(default_factory=list)

    def note(self, text: str, *, warn: bool = False) -> None:
        """Add a note (whoever loads the suite shows its notes, once); with ``warn`` it is
        also logged, at INFO level so that a console that prints the notes does not say it
        twice (Python code without the notes can turn the logger up)."""
        self.notes.append(text)
        if warn:
            LOGGER.info("suite %s: %s", self.suite, text)


def _listing(names: Sequence[str]) -> str:
    return ", ".join(names)


class CrossFitSuite(TaskSampler):
    """One CrossFit/MetaICL suite (cls45, cls23, nli, para or mcqa).

    Roles come from the :class:`SuiteSpec` (no data is read by :meth:`roles`).
    :meth:`load` reads local MetaICL files when ``options.data_dir`` is set
    (see :mod:`metalora_plugins.crossfit.reader`), and otherwise converts the
    tasks from the Hugging Face hub (see :mod:`metalora_plugins.crossfit.hub`).
    ``k`` and ``seed`` pick the k-shot files (or sample) used for validation,
    unless the run's settings (:class:`CrossFitSettings`, in
    ``options.settings``) say otherwise; ``options.seed`` is not used: the
    k-shot sample is part of the benchmark's definition, and the core draws
    the run's random splits.
    """

    needs_data: ClassVar[bool] = True
    Settings: ClassVar[type] = CrossFitSettings

    def __init__(
        self,
        spec: SuiteSpec,
        *,
        k: int = DEFAULT_K,
        seed: int = DEFAULT_SEED,
        hub_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.description = spec.description
        self.k = k
        self.seed = seed
        self._hub_factory = hub_factory or HubSource

    def roles(self) -> dict[TaskRole, list[str]]:
        """Task names per role, from the embedded lists (no data is read)."""
        return self.spec.roles()

    def source(self, options: DataOptions) -> Source:
        """The source ``options`` selects: local files with a data directory, else the hub."""
        settings = options.settings
        k = settings.kshot_k if settings is not None else self.k
        seed = settings.kshot_seed if settings is not None else self.seed
        if k < 1:
            raise MetaloraError(f"kshot_k must be at least 1, got {k}")
        if options.data_dir is not None:
            return LocalSource(
                Path(options.data_dir), k=k, seed=seed, skip_bad=options.skip_bad_records,
            )
        if settings is not None:
            if settings.hub_train_rows < 1:
                raise MetaloraError(
                    f"hub_train_rows must be at least 1, got {settings.hub_train_rows}")
            return self._hub_factory(k=k, seed=seed, train_rows=settings.hub_train_rows)
        return self._hub_factory(k=k, seed=seed)

    def load(self, options: DataOptions) -> Suite:
        """Read every task, filter by options, and report what was removed or skipped."""
        source = self.source(options)
        roles = self.roles()
        report = LoadReport(self.name)
        report.note(source.describe())
        for remark in self.spec.remarks:
            report.note(remark)
        removed_up_front = source.check(roles)
        tasks: dict[TaskRole, list[Task]] = {}
        for role in ROLES:
            tasks[role] = []
            for name in roles[role]:
                if name in removed_up_front:
                    self._removed(report, role, name, f"its label set has "
                                  f"{removed_up_front[name]} options (not read)")
                    continue
                sourced = source.read(name, role)
                if sourced.fallback:
                    report.fallbacks.setdefault(sourced.fallback, []).append(name)
                    report.excluded += sourced.excluded
                if sourced.kshot_only:
                    report.kshot_only.append(name)
                task = self._build(report, role, sourced)
                if task is not None:
                    tasks[role].append(task)
        self._summarise(report, tasks)
        return Suite(
            name=self.name,
            train=tasks[TaskRole.TRAIN],
            validation=tasks[TaskRole.VALIDATION],
            test=tasks[TaskRole.TEST],
            notes=report.notes,
        )

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _removed(report: LoadReport, role: TaskRole, name: str, why: str) -> None:
        report.removed_tasks.append(f"{role} {name}")
        report.note(f"removed {role} task '{name}': {why}")

    def _build(self, report: LoadReport, role: TaskRole, sourced: SourcedTask) -> Task | None:
        name = sourced.name
        for origin, count in sourced.skipped.items():
            report.skipped_records += count
            report.note(f"skipped {count} bad record(s) of {role} task '{name}' in {origin}")
        if sourced.dropped:
            report.note(
                f"{role} task '{name}': {sourced.dropped} row(s) of {sourced.origin} have no "
                "usable label or text and were left out by its converter"
            )
        if sourced.not_multiple_choice:
            self._removed(report, role, name, f"not multiple choice "
                          f"({sourced.not_multiple_choice} examples without options)")
            return None
        records, duplicates = dedupe(sourced.records)
        if duplicates:
            report.duplicates.setdefault(role, []).append(f"{name} ({duplicates})")
        kept, removed = filter_by_options(records)
        if not kept:
            self._removed(report, role, name, f"all {len(records)} examples have more than "
                          f"{MAX_OPTIONS} options")
            return None
        if removed:
            report.removed_examples += removed
            report.note(f"{role} task '{name}': removed {removed} of {len(records)} examples "
                        f"with more than {MAX_OPTIONS} options")
        return Task(name=name, records=kept)

    def _summarise(self, report: LoadReport, tasks: Mapping[TaskRole, list[Task]]) -> None:
        for role, listed in report.duplicates.items():
            report.note(f"dropped duplicate records (a record identical to an earlier one of "
                        f"the same task, in one file or across its files; count per task) in "
                        f"{len(listed)} {role} task(s): {_listing(listed)}")
        if report.kshot_only:
            report.note(f"training task(s) without <task>_test.jsonl, read from their k-shot "
                        f"files only: {_listing(report.kshot_only)}")
        if "kshot" in report.fallbacks:
            report.note(
                f"test task(s) without a held-out test file are tested on their k-shot files "
                f"of seeds other than {self.seed} (k={self.k}), leaving out {report.excluded} "
                f"record(s) that are validation records: {_listing(report.fallbacks['kshot'])}")
        if "plain" in report.fallbacks:
            report.note(
                f"validation/test task(s) read from <task>/*.jsonl (no MetaICL file names) use "
                f"disjoint seeded halves of their records: "
                f"{_listing(list(dict.fromkeys(report.fallbacks['plain'])))}")
        if "validation" in report.fallbacks:
            report.note(
                f"test task(s) without a held-out test file or other k-shot files are tested on "
                f"their validation examples: {_listing(report.fallbacks['validation'])}",
                warn=True)
        if report.removed_tasks or report.removed_examples:
            report.note(
                f"option filter (at most {MAX_OPTIONS} options) removed "
                f"{len(report.removed_tasks)} task(s)"
                + (f" ({_listing(report.removed_tasks)})" if report.removed_tasks else "")
                + f" and {report.removed_examples} example(s) from the remaining tasks",
                warn=True,
            )
        else:
            report.note(f"option filter (at most {MAX_OPTIONS} options) removed nothing")
        if report.skipped_records:
            LOGGER.info("suite %s: skipped %d bad record(s) in total (see the suite notes)",
                           self.name, report.skipped_records)
        counts = ", ".join(
            f"{len(tasks[role])} {role} tasks ({sum(len(t) for t in tasks[role])} examples)"
            for role in ROLES
        )
        report.note(f"loaded {counts}")
        for role in (TaskRole.TRAIN, TaskRole.TEST):
            if not tasks[role]:
                raise MetaloraError(
                    f"suite {self.name} has no {role} tasks left: the option filter removed "
                    f"{_listing(report.removed_tasks)}"
                )
