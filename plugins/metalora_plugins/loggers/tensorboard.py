"""TensorBoard event files: ``RUN_DIR/tensorboard/<learner>/seed-<s>``.

Scalars: ``<phase>/loss`` and ``<phase>/<component>`` (x = global step) and
``validation/<metric>`` (x = epoch). Written by ``torch.utils.tensorboard``,
which needs the ``tensorboard`` package. On resume, events from the resumed
step on are purged (``purge_step``) so the curves are not drawn twice; a
fresh start of a learner and seed removes the events of an earlier try.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metalora import Logger, StepLog

EVENTS_DIR = "tensorboard"
"""The folder of the run directory that holds the event files."""


def writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter`` (imported only when a logger is made)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter


class TensorBoardLogger(Logger):
    """Training and validation curves as TensorBoard event files."""

    name = "tensorboard"
    description = ("TensorBoard event files in RUN_DIR/tensorboard/<learner>/seed-<s> "
                   "(needs: pip install tensorboard).")

    @classmethod
    def missing(cls) -> str | None:
        if importlib.util.find_spec("tensorboard") is None:
            return "needs the tensorboard package: pip install tensorboard"
        return None

    def __init__(self, run_dir: Path, learner: str, seed: int, settings: Any = None,
                 resume_step: int | None = None) -> None:
        super().__init__(run_dir, learner, seed, settings, resume_step)
        log_dir = run_dir / EVENTS_DIR / learner / f"seed-{seed}"
        if resume_step is None:  # a fresh start: events of an earlier, abandoned try go
            shutil.rmtree(log_dir, ignore_errors=True)
        self.writer = writer_class()(log_dir=str(log_dir), purge_step=resume_step)

    def log_step(self, step: StepLog, global_step: int) -> None:
        self.writer.add_scalar(f"{step.phase}/loss", step.loss, global_step)
        for name, value in step.components.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(f"{step.phase}/{name}", value, global_step)

    def log_validation(self, epoch: int, metrics: Mapping[str, float], global_step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(f"validation/{name}", value, epoch)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
