"""Plain progress lines a person can follow, in a terminal or not.

In a terminal a run draws rich progress bars. Where the output is not a
terminal (``nohup``, CI, a batch scheduler's log) bars would appear only when
a learner/seed ends, so the run prints one plain line per finished epoch,
evaluated task, validation and test instead. The same lines, with a timestamp,
always go to ``RUN_DIR/progress.log`` (``metalora eval``'s to
``RUN_DIR/eval/progress.log``)::

    2026-12-01T10:31:07 lora seed 0: epoch 1/3 done, 41.2 s elapsed, mean loss 0.6931
    2026-12-01T10:31:13 lora seed 0: validate ag_news done (1/5, 2.4 s)
    2026-12-01T10:31:19 lora seed 0: validated epoch 1 (5 tasks, 12.0 s): accuracy 45.0%, ...
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from metalora.runs.reporting import format_mean_se

TERM_LABELS = {"kl": "KL", "prior": "-log p(theta)"}
"""The loss terms shown beside the NLL after each epoch, and how they are named there."""


class EpochTerms:
    """The mean NLL of an epoch's steps (the number comparable across learners) and the
    means of the other terms learners log (ABMLL's KL and prior), for the epoch's line."""

    def __init__(self) -> None:
        self.steps = 0
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, step: Any) -> None:
        """One :class:`~metalora.interfaces.StepLog`."""
        self.steps += 1
        terms = {"loss": step.loss, **step.components}
        for name in ("loss", "nll", *TERM_LABELS):
            if name in terms:
                self._sums[name] = self._sums.get(name, 0.0) + float(terms[name])
                self._counts[name] = self._counts.get(name, 0) + 1

    def mean(self, name: str) -> float | None:
        return self._sums[name] / self._counts[name] if self._counts.get(name) else None

    def describe(self) -> str:
        """``mean NLL 0.8612, KL 1.2e+05, -log p(theta) 993.1, objective 1.23``."""
        nll = self.mean("nll")
        parts = [f"mean NLL {nll:.4f}" if nll is not None else f"mean loss {self.mean('loss'):.4f}"]
        parts += [f"{label} {value:.4g}" for name, label in TERM_LABELS.items()
                  if (value := self.mean(name)) is not None]
        loss = self.mean("loss")
        if nll is not None and loss is not None and abs(loss - nll) > 1e-6 * max(1.0, nll):
            parts.append(f"objective {loss:.4g}")
        return ", ".join(parts)


def format_metrics(metrics: dict[str, float]) -> str:
    """``accuracy 45.0%, ece 0.123``: accuracy as a percentage, the rest with 4 digits."""
    parts = []
    for name, value in metrics.items():
        parts.append(f"{name} {100 * value:.1f}%" if name == "accuracy" else f"{name} {value:.4g}")
    return ", ".join(parts)


def epoch_description(who: str, epoch: int, epochs: int, select: str,
                      record: dict[str, Any] | None, best_epoch: int | None) -> str:
    """A training bar's text after an epoch: ``lora seed 0: epoch 2/3, val acc 61.0%, best
    @2`` (the validation part only when the epoch was validated)."""
    text = f"{who}: epoch {epoch}/{epochs}"
    if record is not None:
        percent = select == "accuracy"
        label = "acc" if percent else select
        text += (f", val {label} {format_mean_se(record[select], 0.0, percent, 1)}, "
                 f"best @{best_epoch}")
    return text


class ProgressLog:
    """Writes progress lines to the console (when it is not a terminal) and to a file."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._file: TextIO | None = None

    @property
    def bars(self) -> bool:
        """Whether rich progress bars are shown (only in a terminal)."""
        return self.console.is_terminal

    def open(self, path: Path) -> None:
        """Append the lines to ``path`` from now on (a resumed run continues the file)."""
        self.close()
        self._file = path.open("a", encoding="utf-8")

    def line(self, text: str) -> None:
        """One progress line."""
        stamp = datetime.now().isoformat(timespec="seconds")
        if not self.bars:
            self.console.print(f"[{stamp[11:]}] {text}", markup=False, highlight=False,
                               soft_wrap=True)
        if self._file is not None:
            self._file.write(f"{stamp} {text}\n")
            self._file.flush()

    def close(self) -> None:
        """Stop writing to the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


def task_progress(progress: Progress, bar: Any, line: Callable[[str], None]
                  ) -> Callable[[str], None]:
    """An evaluation's ``on_task``: advances ``bar`` and reports each finished task as a
    progress line, ``<bar's description> TASK done (3/15, 41.0 s)``, so that a long
    evaluation shows in the log while it runs, not only when it ends."""
    task = progress.tasks[progress.task_ids.index(bar)]
    started, done = time.perf_counter(), 0

    def on_task(name: str) -> None:
        nonlocal done
        done += 1
        progress.advance(bar)
        line(f"{task.description} {name} done ({done}/{task.total:.0f}, "
             f"{time.perf_counter() - started:.1f} s)")

    return on_task


@contextmanager
def progress_bars(console: Console) -> Iterator[Progress]:
    """Rich progress bars on ``console`` in a terminal; elsewhere a disabled (silent) one."""
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        disable=not console.is_terminal)
    with progress:
        yield progress
