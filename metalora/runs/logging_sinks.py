"""Where training records go: ``log.jsonl`` always, and every selected logger.

``log.jsonl`` gets one JSON object per line:

* a step: ``{"learner", "seed", "time", "global_step", "kind": "step", "epoch"
  (0-based, the learner's), "task", "step", "phase", "loss", <loss
  components>...}``;
* a validation: ``{"learner", "seed", "time", "global_step", "kind":
  "validation", "epoch" (epochs finished, 1-based; 0 for a learner that does
  not train), <metrics>..., "best": bool}``.

``time`` is the local wall-clock time of the line (ISO 8601, milliseconds);
``global_step`` counts this learner and seed's optimisation steps from 1
across epochs (the x axis of the TensorBoard curves; a validation carries the
count of steps before it).

Every selected :class:`~metalora.interfaces.Logger` (``--logger``: TensorBoard
by default, Weights & Biases, or a plugin's) gets the same records. On
resume, the log lines after the checkpoint are dropped, and each logger is
told the first step that will be logged again (``resume_step``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from metalora.interfaces.learner import StepLog
from metalora.interfaces.logger import Logger
from metalora.runs.rundir import file_size


class RunLogger:
    """Fans out the records of one learner and seed to ``log.jsonl`` and the loggers."""

    def __init__(self, log_path: Path, learner: str, seed: int,
                 loggers: Sequence[Logger] = ()) -> None:
        self.learner = learner
        self.seed = seed
        self.log_path = log_path
        self.loggers = list(loggers)
        self._log: TextIO = log_path.open("a", encoding="utf-8")

    def _write(self, record: dict[str, Any], global_step: int) -> None:
        now = datetime.now().isoformat(timespec="milliseconds")
        self._log.write(json.dumps({"learner": self.learner, "seed": self.seed, "time": now,
                                    "global_step": global_step, **record}) + "\n")

    def step(self, step: StepLog, global_step: int) -> None:
        """Log one optimisation step."""
        self._write({"kind": "step", **step.to_dict()}, global_step)
        for logger in self.loggers:
            logger.log_step(step, global_step)

    def validation(self, epoch: int, metrics: dict[str, float], best: bool,
                   global_step: int = 0) -> None:
        """Log one validation (macro-averaged metrics over the validation tasks)."""
        self._write({"kind": "validation", "epoch": epoch, **metrics, "best": best},
                    global_step)
        for logger in self.loggers:
            logger.log_validation(epoch, metrics, global_step)

    def flush(self) -> int:
        """Flush everything; return the size of ``log.jsonl`` in bytes."""
        self._log.flush()
        for logger in self.loggers:
            logger.flush()
        return file_size(self.log_path)

    def close(self) -> None:
        """Flush and close ``log.jsonl`` and every logger."""
        self._log.flush()
        self._log.close()
        for logger in self.loggers:
            logger.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
