"""The CrossFit/MetaICL suites: ``cls45``, ``cls23``, ``nli``, ``para`` and ``mcqa``.

The paper's benchmarks (appendix A.2): multiple-choice tasks from CrossFit
(Ye et al. 2021) in MetaICL's format (Min et al. 2022), filtered to at most
four options. Each suite is a separate :class:`CrossFitSuite` instance:

* :mod:`~metalora_plugins.crossfit.suites`: the embedded task lists and roles;
* :mod:`~metalora_plugins.crossfit.reader`: MetaICL jsonl files (``--data-dir``);
* :mod:`~metalora_plugins.crossfit.hub`: converters from Hugging Face hub datasets
  (the source without ``--data-dir``);
* :mod:`~metalora_plugins.crossfit.sampler`: the ``TaskSampler`` that puts them
  together, filters by options and reports what it removed in ``Suite.notes``;
* :mod:`~metalora_plugins.crossfit.folder`: the user's own tasks in the same
  format, as a folder or a suite file (``--tasks PATH``).

Importing this package reads no data and does not import :mod:`datasets`.
"""

from __future__ import annotations

from pathlib import Path

from metalora import Register, hookimpl
from metalora_plugins.crossfit.folder import FolderSuite, folder_suite
from metalora_plugins.crossfit.hub import HUB_TASKS, HUB_TRAIN_ROWS, HubSource, HubTask
from metalora_plugins.crossfit.reader import DEFAULT_K, DEFAULT_SEED, LocalSource, read_jsonl
from metalora_plugins.crossfit.sampler import CrossFitSuite
from metalora_plugins.crossfit.suites import (
    CLS23_TRAIN,
    CLS45_TEST,
    CLS45_TRAIN,
    OVERSIZED,
    SUITE_SPECS,
    SuiteSpec,
)

__all__ = [
    "CLS23_TRAIN",
    "CLS45_TEST",
    "CLS45_TRAIN",
    "DEFAULT_K",
    "DEFAULT_SEED",
    "HUB_TASKS",
    "HUB_TRAIN_ROWS",
    "OVERSIZED",
    "SUITES",
    "SUITE_SPECS",
    "CrossFitSuite",
    "FolderSuite",
    "HubSource",
    "HubTask",
    "LocalSource",
    "SuiteSpec",
    "read_jsonl",
    "folder_suite",
    "register_task_samplers",
    "suite_from_path",
]

SUITES: tuple[CrossFitSuite, ...] = tuple(CrossFitSuite(spec) for spec in SUITE_SPECS)
"""One registered sampler per suite."""


@hookimpl
def register_task_samplers(register: Register) -> None:
    """Register the ``cls45``, ``cls23``, ``nli``, ``para`` and ``mcqa`` suites."""
    for suite in SUITES:
        register(suite)


@hookimpl
def suite_from_path(path: Path) -> FolderSuite:
    """Read a folder or suite file of MetaICL jsonl task files as a suite."""
    return folder_suite(path)
