"""Where training records go: ``log.jsonl`` always, TensorBoard when it is installed.

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

TensorBoard (``torch.utils.tensorboard``, which needs the optional
``tensorboard`` package) gets one event directory per learner and seed,
``RUN_DIR/tensorboard/<learner>/seed-<s>``, with the scalars
``<phase>/loss``, ``<phase>/<component>`` (x = global step) and
``validation/<metric>`` (x = epoch). On resume, events after the
checkpoint are purged (``purge_step``) so the curves are not duplicated.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from metalora.interfaces.learner import StepLog
from metalora.runs.rundir import TENSORBOARD_DIR, file_size


def tensorboard_writer_class() -> Any | None:
    """``SummaryWriter`` if the ``tensorboard`` package is installed, else ``None``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class RunLogger:
    """Fans out the records of one learner and seed to ``log.jsonl`` and TensorBoard."""

    def __init__(self, run_dir: Path, log_path: Path, learner: str, seed: int, *,
                 tensorboard: bool = True, purge_step: int | None = None) -> None:
        self.learner = learner
        self.seed = seed
        self.log_path = log_path
        self._log: TextIO = log_path.open("a", encoding="utf-8")
        self._writer = None
        writer_cls = tensorboard_writer_class() if tensorboard else None
        if writer_cls is not None:
            log_dir = run_dir / TENSORBOARD_DIR / learner / f"seed-{seed}"
            self._writer = writer_cls(log_dir=str(log_dir), purge_step=purge_step)

    @property
    def has_tensorboard(self) -> bool:
        """Whether TensorBoard event files are written."""
        return self._writer is not None

    def _write(self, record: dict[str, Any], global_step: int) -> None:
        now = datetime.now().isoformat(timespec="milliseconds")
        self._log.write(json.dumps({"learner": self.learner, "seed": self.seed, "time": now,
                                    "global_step": global_step, **record}) + "\n")

    def step(self, step: StepLog, global_step: int) -> None:
        """Log one optimisation step."""
        self._write({"kind": "step", **step.to_dict()}, global_step)
        if self._writer is not None:
            self._writer.add_scalar(f"{step.phase}/loss", step.loss, global_step)
            for name, value in step.components.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self._writer.add_scalar(f"{step.phase}/{name}", value, global_step)

    def validation(self, epoch: int, metrics: dict[str, float], best: bool,
                   global_step: int = 0) -> None:
        """Log one validation (macro-averaged metrics over the validation tasks)."""
        self._write({"kind": "validation", "epoch": epoch, **metrics, "best": best},
                    global_step)
        if self._writer is not None:
            for name, value in metrics.items():
                self._writer.add_scalar(f"validation/{name}", value, epoch)

    def flush(self) -> int:
        """Flush everything; return the size of ``log.jsonl`` in bytes."""
        self._log.flush()
        if self._writer is not None:
            self._writer.flush()
        return file_size(self.log_path)

    def close(self) -> None:
        """Flush and close."""
        self._log.flush()
        self._log.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
