"""Your own tasks as a suite: ``--tasks PATH``, a folder or a suite file of MetaICL jsonl files.

A **folder**::

    my-tasks/
      train/<task>.jsonl        # required: the tasks meta-training draws from
      validation/<task>.jsonl   # optional: validated after every --eval-every epochs
      test/<task>.jsonl         # required: the unseen tasks the run is scored on

A **suite file** (TOML, or YAML with a ``.yaml``/``.yml`` name) lists the files
per role, relative to the file itself, with glob patterns allowed::

    name = "my-tasks"                      # optional; default: the file's name
    description = "sentiment and topics"   # optional
    train = ["train/*.jsonl", "../shared/extra.jsonl"]
    validation = ["held-out/dev-*.jsonl"]  # optional
    test = ["held-out/test-*.jsonl"]

A task is named by its file (``sst2.jsonl`` is task ``sst2``); each line is one
MetaICL record ``{"task", "input", "output", "options"}`` (``task`` is
ignored; the file names the task). Records pass through the same checks as the
CrossFit suites: a bad record is one error naming the file and line (or is
skipped with ``--skip-bad-records``), identical records are kept once, tasks
and examples with more than four options are removed, and every removal is
reported in the suite's notes. A task listed both for training and for
validation or test is used for the latter only (nothing leaks), and said so.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import yaml

from metalora import DataOptions, MetaloraError, TaskRole
from metalora_plugins.crossfit.reader import SourcedTask, read_jsonl
from metalora_plugins.crossfit.sampler import CrossFitSuite
from metalora_plugins.crossfit.suites import SuiteSpec

SUITE_FILE_KEYS: tuple[str, ...] = ("name", "description", "train", "validation", "test")
"""The keys a suite file may have."""
REQUIRED_ROLES: tuple[TaskRole, ...] = (TaskRole.TRAIN, TaskRole.TEST)

TaskFiles = dict[TaskRole, dict[str, Path]]
"""Per role, each task's file."""


class FolderSource:
    """The records of a folder suite: one jsonl file per task and role."""

    def __init__(self, origin: Path, files: TaskFiles, *, skip_bad: bool = False) -> None:
        self.origin = origin
        self.files = files
        self.skip_bad = skip_bad

    def describe(self) -> str:
        """One line for the suite's notes."""
        return f"task files listed by {self.origin}"

    def check(self, roles: Mapping[TaskRole, Sequence[str]]) -> dict[str, int]:
        """Nothing is removed up front: every file was found when the suite was made."""
        return {}

    def read(self, task: str, role: TaskRole) -> SourcedTask:
        """The records of ``task`` in ``role``, from its one file (an empty file is one error
        line: a task cannot be made of nothing)."""
        path = self.files[role][task]
        contents = read_jsonl(path, task, skip_bad=self.skip_bad)
        if not (contents.records or contents.open_lines or contents.skipped):
            raise MetaloraError(f"{path} is empty: a task file needs at least one record "
                                "(one JSON object per line)")
        sourced = SourcedTask(name=task, records=contents.records, origin=str(path))
        if contents.skipped:
            sourced.skipped[str(path)] = len(contents.skipped)
        if not contents.records and contents.open_lines:
            sourced.not_multiple_choice = len(contents.open_lines)
        return sourced


class FolderSuite(CrossFitSuite):
    """A suite made of the user's own task files (see the module)."""

    needs_data: ClassVar[bool] = False
    Settings: ClassVar[type | None] = None

    def __init__(self, origin: Path, name: str, description: str, files: TaskFiles,
                 remarks: tuple[str, ...] = ()) -> None:
        spec = SuiteSpec(name=name, description=description,
                         train=tuple(files[TaskRole.TRAIN]), test=tuple(files[TaskRole.TEST]),
                         remarks=remarks)
        super().__init__(spec)
        self.origin = origin
        self.files = files

    def roles(self) -> dict[TaskRole, list[str]]:
        """Task names per role, from the file names (no file is read)."""
        return {role: list(self.files[role]) for role in TaskRole}

    def source(self, options: DataOptions) -> FolderSource:
        """The task files (``options.data_dir`` plays no part)."""
        return FolderSource(self.origin, self.files, skip_bad=options.skip_bad_records)


def folder_suite(path: Path) -> FolderSuite:
    """The suite of the folder or suite file ``path``; any problem is one error line."""
    if path.is_file() and path.suffix.lower() == ".jsonl":
        raise MetaloraError(f"{str(path)!r} is a task file, not a suite: give a folder with "
                            "train/ and test/ task files, or a TOML/YAML suite file listing them")
    if path.is_dir():
        files = _files_of_folder(path)
        name, description = path.resolve().name, f"task files of the folder {path}"
    elif path.is_file():
        name, description, files = _read_suite_file(path)
    else:
        raise MetaloraError(f"task folder or suite file {str(path)!r} does not exist")
    for role in REQUIRED_ROLES:
        if not files[role]:
            raise MetaloraError(f"{str(path)!r} lists no {role} task ({role}/<task>.jsonl in a "
                                f"folder, '{role} = [...]' in a suite file); a run needs "
                                f"{' and '.join(str(r) for r in REQUIRED_ROLES)} tasks")
    remarks = _held_out_of_training(files)
    return FolderSuite(path.resolve(), name, description, files, remarks)


KEPT_BESIDE_DATA: tuple[str, ...] = ("readme", "license", "licence", "notice", "changelog",
                                     "citation", "thumbs.db", "desktop.ini")
"""Names (without their extension, any case) of files people keep beside data: accepted in a
task folder and its role folders, and never read. Hidden files (``.DS_Store``) too."""


def kept_beside_data(path: Path) -> bool:
    """Whether ``path`` is a file people keep beside data (see :data:`KEPT_BESIDE_DATA`)."""
    return (path.name.startswith(".") or path.stem.lower() in KEPT_BESIDE_DATA
            or path.name.lower() in KEPT_BESIDE_DATA)


def is_task_file(path: Path) -> bool:
    """A ``<task>.jsonl`` file (the extension in any case: ``.JSONL`` too)."""
    return path.is_file() and path.suffix.lower() == ".jsonl"


def _files_of_folder(root: Path) -> TaskFiles:
    """``root/<role>/<task>.jsonl`` per role. Anything else in ``root`` or a role folder (a
    ``.csv``, notes, a subfolder) is one error naming it: nothing is silently left out. Files
    people keep beside data (README, LICENSE, hidden files) are accepted and not read."""
    known = {str(role) for role in TaskRole}
    others = sorted(p.name for p in root.iterdir()
                    if p.name not in known and not kept_beside_data(p))
    if others:
        raise MetaloraError(f"task folder {str(root)!r} has {', '.join(others)}; it may hold "
                            f"only the folders {', '.join(sorted(known))} (and README, "
                            "LICENSE or hidden files)")
    files: TaskFiles = {}
    for role in TaskRole:
        folder = root / str(role)
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
        paths = [p for p in entries if is_task_file(p)]
        strays = [p.name + ("/" if p.is_dir() else "") for p in entries
                  if p not in paths and not kept_beside_data(p)]
        if strays:
            raise MetaloraError(
                f"{folder} holds {', '.join(strays)}, which {'is' if len(strays) == 1 else 'are'}"
                " not a task file (<task>.jsonl, one JSON record per line); move or rename "
                f"{'it' if len(strays) == 1 else 'them'} (README, LICENSE and hidden files may "
                "stay)")
        files[role] = _by_task(paths, f"{folder}")
    return files


def _read_suite_file(path: Path) -> tuple[str, str, TaskFiles]:
    """Name, description and task files of a TOML or YAML suite file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MetaloraError(f"suite file {str(path)!r} is not UTF-8 text") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0]
        raise MetaloraError(f"suite file {str(path)!r} cannot be read: {reason}") from None
    if not isinstance(data, dict):
        raise MetaloraError(f"suite file {str(path)!r} must be a table of "
                            f"{', '.join(SUITE_FILE_KEYS)}")
    unknown = sorted(set(data) - set(SUITE_FILE_KEYS))
    if unknown:
        raise MetaloraError(f"suite file {str(path)!r}: unknown key(s) {', '.join(unknown)}; "
                            f"valid keys: {', '.join(SUITE_FILE_KEYS)}")
    files: TaskFiles = {}
    for role in TaskRole:
        patterns = data.get(str(role), [])
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise MetaloraError(f"suite file {str(path)!r}: '{role}' must be a list of file "
                                "paths or glob patterns")
        files[role] = _by_task(_expand(path.parent, patterns, f"{path}: {role}"), str(path))
    for key in ("name", "description"):
        if not isinstance(data.get(key, ""), str):
            raise MetaloraError(f"suite file {str(path)!r}: '{key}' must be a string")
    name = data.get("name") or path.stem
    return name, data.get("description") or f"task files listed by {path}", files


def _expand(base: Path, patterns: Sequence[str], where: str) -> list[Path]:
    """The files each pattern names, relative to ``base``; a pattern naming none is an error."""
    paths: list[Path] = []
    for pattern in patterns:
        full = Path(pattern).expanduser()
        full = full if full.is_absolute() else base / full
        if any(ch in pattern for ch in "*?["):
            matched = sorted(full.parent.glob(full.name))
        else:
            matched = [full] if full.is_file() else []
        if not matched:
            raise MetaloraError(f"{where}: {pattern!r} names no file (looked for {full})")
        paths += [p for p in matched if p not in paths]
    return paths


def _by_task(paths: Sequence[Path], where: str) -> dict[str, Path]:
    """Each file under its task name (its stem); two files of one name are an error."""
    tasks: dict[str, Path] = {}
    for path in paths:
        if path.stem in tasks:
            raise MetaloraError(f"{where}: two files name task {path.stem!r}: "
                                f"{tasks[path.stem]} and {path}")
        tasks[path.stem] = path
    return tasks


def _held_out_of_training(files: TaskFiles) -> tuple[str, ...]:
    """Remove from training every task also listed for validation or test; say which."""
    held_out = set(files[TaskRole.VALIDATION]) | set(files[TaskRole.TEST])
    both = [task for task in files[TaskRole.TRAIN] if task in held_out]
    for task in both:
        del files[TaskRole.TRAIN][task]
    if not both:
        return ()
    return (f"{', '.join(both)} listed for training and for validation or test; used for "
            "validation or test only",)


__all__ = ["KEPT_BESIDE_DATA", "SUITE_FILE_KEYS", "FolderSource", "FolderSuite", "folder_suite",
           "is_task_file", "kept_beside_data"]
