"""Reading MetaICL/CrossFit jsonl files from a local data directory.

Layout (one folder per task, as MetaICL writes it)::

    <data_dir>/<task>/<task>_<k>_<seed>_<split>.jsonl   # k-shot files; split: train, dev, test
    <data_dir>/<task>/<task>_test.jsonl                 # a larger held-out split

or, for a task folder without any file named that way, any ``*.jsonl``
files (``<data_dir>/<task>/*.jsonl``, read in name order): a training task
uses every record; a validation or test task a seeded half of them, the
other half going to the other role, so that validation and test never share
an example (the split is seeded by the task name and the k-shot seed; see
:func:`plain_half`).

Each line is one record ``{"task", "input", "output", "options"}``. Which
files a task reads depends on its role:

* **train**: every row available: ``<task>_test.jsonl`` if present, then
  every k-shot file of the task (all ``k``, all seeds, splits train < dev <
  test), in that order. Identical records are later kept once (the sampler
  deduplicates and reports how many it dropped).
* **validation**: the k-shot files ``<task>_<k>_<seed>_train.jsonl`` and
  ``<task>_<k>_<seed>_dev.jsonl`` with ``k`` = :data:`DEFAULT_K` and ``seed``
  = :data:`DEFAULT_SEED` unless the suite was built with others (2k records).
* **test**: ``<task>_test.jsonl``, else MetaICL's ``<task>_<k>_<seed>_test.jsonl``.
  When neither exists (the benchmark data holds the test splits of its
  test tasks back), the task is tested on its *other* k-shot files: every
  ``<task>_<k>_<s>_{train,dev}.jsonl`` with the same ``k`` and another seed
  ``s``, without the records that are also validation records, so test and
  validation examples never overlap. Only if nothing is left does it fall
  back to the validation files themselves. Either fallback is reported in
  the suite's notes.

Bad data raises a one-line :class:`MetaloraError` naming the file and line:
malformed JSON, a line that is not an object, a missing or mistyped field,
a record without options, an output that is not one of its options. With
``skip_bad_records`` such records are skipped instead, a warning with the
count per file is logged, and the count is returned for the suite's notes.

A task in which *no* record has options (``"options": []`` throughout, as
MetaICL writes open-ended QA tasks) is not a bad file but a task that is not
multiple choice: it is returned empty with its count, and the sampler removes
and reports it like a task with too many options.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from metalora import MetaloraError, TaskRecord, TaskRole, option_problem
from metalora_plugins.crossfit.suites import OVERSIZED

DEFAULT_K = 16
"""Shots per k-shot file read for validation (MetaICL's default; files also exist for k=8)."""
DEFAULT_SEED = 100
"""Seed of the k-shot files read for validation (MetaICL's first seed: 100, 13, 21, 42, 87)."""
KSHOT_SPLITS: tuple[str, ...] = ("train", "dev")
"""The k-shot files that make a validation task: 2k records."""
SPLIT_ORDER: Mapping[str, int] = {"train": 0, "dev": 1, "test": 2}

LOGGER = logging.getLogger("metalora_plugins.crossfit")
"""The plugin's logger: filtered tasks, skipped records and fallbacks are logged as warnings."""

SKIP_HINT = "fix the file, or pass --skip-bad-records to skip bad records"


class BadRecord(ValueError):
    """A record that cannot be used; the message says why (without file and line)."""


@dataclass
class SourcedTask:
    """One task's records as a source read them, with what the source left out or chose.

    The sampler turns these into a :class:`metalora.records.Task` (after
    deduplication and the option filter) and into :attr:`Suite.notes`.
    """

    name: str
    records: list[TaskRecord]
    origin: str
    """Where the records came from (files or a hub dataset), for messages."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Bad records skipped (``skip_bad_records``), per file or dataset."""
    not_multiple_choice: int = 0
    """Records without options, when the whole task has none (the task is then empty)."""
    dropped: int = 0
    """Rows a hub converter left out by design (no label, annotator tie, empty text)."""
    fallback: str = ""
    """For a test task without a held-out file: ``"kshot"`` (its other k-shot files, minus the
    validation records) or ``"validation"`` (its validation files); ``""`` otherwise."""
    excluded: int = 0
    """Records left out of a ``"kshot"`` fallback because they are validation records."""
    kshot_only: bool = False
    """A training task with no ``<task>_test.jsonl``: only its k-shot files were read."""


@dataclass
class FileContents:
    """The usable records of one file, with what was set aside."""

    path: Path
    records: list[TaskRecord] = field(default_factory=list)
    open_lines: list[int] = field(default_factory=list)
    """Lines of records with an empty options list."""
    skipped: list[tuple[int, str]] = field(default_factory=list)
    """``(line, reason)`` of bad records skipped."""


def parse_record(task: str, obj: Any, source: str | None = None) -> TaskRecord | None:
    """Validate one decoded JSON line; ``None`` for a record with an empty options list.

    Raises :class:`BadRecord` for anything unusable: fewer than two options,
    an empty or repeated option, an output that is not an option. The
    record's ``task`` is set to ``task`` (the folder name), whatever the
    line's own ``task`` says; ``source`` (``file:line``) is kept with it.
    """
    if not isinstance(obj, dict):
        raise BadRecord(f"expected a JSON object, got {type(obj).__name__}")
    if "options" not in obj:
        raise BadRecord("record has no options (no 'options' field)")
    for key in ("input", "output"):
        if key not in obj:
            raise BadRecord(f"record has no '{key}' field")
        if not isinstance(obj[key], str):
            raise BadRecord(f"'{key}' must be a string, got {type(obj[key]).__name__}")
    options = obj["options"]
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise BadRecord("'options' must be a list of strings")
    if not options:
        return None
    problem = option_problem(options)
    if problem is not None:
        raise BadRecord(problem)
    if obj["output"] not in options:
        raise BadRecord(f"output {obj['output']!r} is not one of its options {options!r}")
    return TaskRecord(task=task, input=obj["input"], output=obj["output"], options=tuple(options),
                      source=source)


def read_jsonl(path: Path, task: str, *, skip_bad: bool = False) -> FileContents:
    """Read one MetaICL jsonl file. Blank lines are ignored.

    A bad record raises :class:`MetaloraError` naming ``path`` and the line,
    or with ``skip_bad`` is recorded in :attr:`FileContents.skipped` and a
    warning with the file's count is logged.
    """
    contents = FileContents(path=path)
    try:
        with path.open(encoding="utf-8-sig") as handle:  # a byte-order mark is not data
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise BadRecord(f"malformed JSON ({exc.msg}, column {exc.colno})") from exc
                    record = parse_record(task, obj, source=f"{path}:{lineno}")
                except BadRecord as exc:
                    if not skip_bad:
                        raise MetaloraError(f"{path}, line {lineno}: {exc}; {SKIP_HINT}") from None
                    contents.skipped.append((lineno, str(exc)))
                    continue
                if record is None:
                    contents.open_lines.append(lineno)
                else:
                    contents.records.append(record)
    except UnicodeDecodeError as exc:
        raise MetaloraError(f"{path} is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise MetaloraError(f"cannot read {path}: {exc.strerror or exc}") from None
    if contents.skipped:
        _warn_skipped(path, contents.skipped)
    return contents


def _shorten(names: Sequence[str], limit: int = 12) -> str:
    """``names`` comma-separated, the first ``limit`` of them and a count of the rest."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def _warn_skipped(path: Path | str, skipped: Sequence[tuple[int, str]]) -> None:
    line, reason = skipped[0]
    LOGGER.warning(
        "%s: skipped %d bad record(s) (first at line %d: %s)", path, len(skipped), line, reason
    )


def kshot_name(task: str, k: int, seed: int, split: str) -> str:
    """The file name of a k-shot split, e.g. ``glue-sst2_16_100_train.jsonl``."""
    return f"{task}_{k}_{seed}_{split}.jsonl"


def held_out_name(task: str) -> str:
    """The file name of a task's held-out split, ``<task>_test.jsonl``."""
    return f"{task}_test.jsonl"


@dataclass(frozen=True, order=True)
class KShotFile:
    """One k-shot file of a task; sorts by k, seed and split (train, dev, test)."""

    k: int
    seed: int
    split_order: int
    split: str = field(compare=False)
    path: Path = field(compare=False)


def kshot_index(task_dir: Path, task: str) -> list[KShotFile]:
    """Every ``<task>_<k>_<seed>_<split>.jsonl`` file in ``task_dir``, sorted."""
    pattern = re.compile(rf"^{re.escape(task)}_(\d+)_(\d+)_(train|dev|test)\.jsonl$")
    found = []
    for path in task_dir.iterdir():
        match = pattern.match(path.name)
        if match and path.is_file():
            k, seed, split = match.groups()
            found.append(KShotFile(int(k), int(seed), SPLIT_ORDER[split], split, path))
    return sorted(found)


def kshot_files(task_dir: Path, task: str) -> list[Path]:
    """Every k-shot file of a task, ordered by k, seed and split (train, dev, test)."""
    return [f.path for f in kshot_index(task_dir, task)]


def plain_files(task_dir: Path, task: str) -> list[Path]:
    """``<task>/*.jsonl``, sorted by name, for a task with no MetaICL-named file (else [])."""
    if (task_dir / held_out_name(task)).is_file() or kshot_index(task_dir, task):
        return []
    return sorted(p for p in task_dir.glob("*.jsonl") if p.is_file())


def plain_half(records: Sequence[TaskRecord], task: str, role: TaskRole,
               seed: int) -> list[TaskRecord]:
    """Validation's or test's half of a plain-layout task, in file order.

    A seeded shuffle of the record positions (seed: the task name and
    ``seed``) is cut in two: the first ``n // 2`` positions are validation's,
    the rest test's.
    """
    if len(records) < 2:
        raise MetaloraError(f"task '{task}' has {len(records)} record(s): too few to split "
                            "into validation and test halves")
    order = list(range(len(records)))
    random.Random(f"{task}:{seed}").shuffle(order)
    half = len(records) // 2
    chosen = order[:half] if role == TaskRole.VALIDATION else order[half:]
    return [records[i] for i in sorted(chosen)]


class LocalSource:
    """Tasks read from a directory of MetaICL-format files (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        k: int = DEFAULT_K,
        seed: int = DEFAULT_SEED,
        skip_bad: bool = False,
    ) -> None:
        self.root = Path(root)
        self.k = k
        self.seed = seed
        self.skip_bad = skip_bad

    def describe(self) -> str:
        """One line saying where and how the tasks are read, for the suite's notes."""
        k, s = self.k, self.seed
        return (
            f"read MetaICL files from {self.root}: training tasks use every file of the task; "
            f"validation tasks <task>_{k}_{s}_train/dev.jsonl; "
            f"test tasks <task>_test.jsonl, else <task>_{k}_{s}_test.jsonl, else their "
            f"k-shot files of other seeds"
        )

    def task_dir(self, task: str) -> Path:
        """The folder of ``task``."""
        return self.root / task

    def check(self, roles: Mapping[TaskRole, Sequence[str]]) -> dict[str, int]:
        """Fail early, naming everything missing at once: task folders and k-shot files.

        A missing folder of a task in :data:`~metalora_plugins.crossfit.suites.OVERSIZED`
        (more than four options: the filter would remove it) is not an error;
        such tasks are returned, with their option count, to be left out.
        """
        if not self.root.is_dir():
            raise MetaloraError(f"data directory {self.root} does not exist")
        tasks = list(dict.fromkeys(t for names in roles.values() for t in names))
        absent = [t for t in tasks if not self.task_dir(t).is_dir()]
        missing_dirs = [t for t in absent if t not in OVERSIZED]
        if missing_dirs:
            raise MetaloraError(
                f"data directory {self.root} has no folder for {len(missing_dirs)} task(s): "
                f"{_shorten(missing_dirs)} (expected <data-dir>/<task>/<task>_*.jsonl in "
                f"MetaICL format){self._hint(missing_dirs[0])}"
            )
        missing_files = [
            str(self.task_dir(t) / kshot_name(t, self.k, self.seed, split))
            for t in roles.get(TaskRole.VALIDATION, [])
            if t not in absent and not plain_files(self.task_dir(t), t)
            for split in KSHOT_SPLITS
            if not (self.task_dir(t) / kshot_name(t, self.k, self.seed, split)).is_file()
        ]
        if missing_files:
            raise MetaloraError(
                f"missing k-shot file(s) for validation (k={self.k}, seed={self.seed}): "
                + _shorten(missing_files)
            )
        return {t: OVERSIZED[t] for t in absent}

    def _hint(self, task: str) -> str:
        """``"; did you mean --data-dir <sub>?"`` when a subfolder holds ``task``'s folder."""
        for sub in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if (sub / task).is_dir():
                return f"; did you mean --data-dir {sub}?"
        return ""

    def files(self, task: str, role: TaskRole) -> tuple[list[Path], str]:
        """The files ``task`` reads in ``role``, and the fallback taken (see module), if any."""
        task_dir = self.task_dir(task)
        if not task_dir.is_dir():
            raise MetaloraError(f"task folder {task_dir} does not exist")
        plain = plain_files(task_dir, task)
        if plain:
            return plain, "" if role == TaskRole.TRAIN else "plain"
        held_out = task_dir / held_out_name(task)
        kshot = [task_dir / kshot_name(task, self.k, self.seed, s) for s in KSHOT_SPLITS]
        if role == TaskRole.TRAIN:
            files = ([held_out] if held_out.is_file() else []) + kshot_files(task_dir, task)
            if not files:
                raise MetaloraError(
                    f"task folder {task_dir} has no data files (expected {held_out_name(task)} or "
                    f"{kshot_name(task, self.k, self.seed, 'train')} and the like)"
                )
            return files, ""
        if role == TaskRole.TEST:
            metaicl_test = task_dir / kshot_name(task, self.k, self.seed, "test")
            for candidate in (held_out, metaicl_test):
                if candidate.is_file():
                    return [candidate], ""
            others = [
                f.path for f in kshot_index(task_dir, task)
                if f.k == self.k and f.seed != self.seed and f.split in KSHOT_SPLITS
            ]
            if others:
                return others, "kshot"
        for path in kshot:
            if not path.is_file():
                raise MetaloraError(f"missing k-shot file {path}")
        return kshot, "validation" if role == TaskRole.TEST else ""

    def read(self, task: str, role: TaskRole) -> SourcedTask:
        """Read ``task`` for ``role``; see the module docstring for which files and errors."""
        paths, fallback = self.files(task, role)
        contents = [read_jsonl(path, task, skip_bad=self.skip_bad) for path in paths]
        records = [r for c in contents for r in c.records]
        excluded = 0
        if fallback == "plain":
            records = plain_half(records, task, role, self.seed)
        if fallback == "kshot":
            validation = set(self.read(task, TaskRole.VALIDATION).records)
            kept = [r for r in records if r not in validation]
            excluded = len(records) - len(kept)
            if records and not kept:
                return replace(self.read(task, TaskRole.VALIDATION), fallback="validation")
            records = kept
        open_lines = [(c.path, line) for c in contents for line in c.open_lines]
        not_mc = 0
        if open_lines and not records:
            not_mc = len(open_lines)
        elif open_lines:
            # A record without options in a multiple-choice task is a bad record.
            if not self.skip_bad:
                path, line = open_lines[0]
                raise MetaloraError(
                    f"{path}, line {line}: record has no options (empty 'options'); {SKIP_HINT}"
                )
            for c in contents:
                if c.open_lines:
                    reason = "record has no options (empty 'options')"
                    c.skipped.extend((line, reason) for line in c.open_lines)
                    _warn_skipped(c.path, [(line, reason) for line in c.open_lines])
        if not records and not not_mc:
            skipped = sum(len(c.skipped) for c in contents)
            detail = f" ({skipped} bad record(s) skipped)" if skipped else ""
            raise MetaloraError(
                f"task '{task}' has no records{detail}: " + ", ".join(str(p) for p in paths)
            )
        has_held_out = (self.task_dir(task) / held_out_name(task)).is_file()
        return SourcedTask(
            name=task,
            records=records,
            origin=", ".join(str(p) for p in paths),
            skipped={str(c.path): len(c.skipped) for c in contents if c.skipped},
            not_multiple_choice=not_mc,
            fallback=fallback,
            excluded=excluded,
            kshot_only=role == TaskRole.TRAIN and not has_held_out
            and not plain_files(self.task_dir(task), task),
        )
