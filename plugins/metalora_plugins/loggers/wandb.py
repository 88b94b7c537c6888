"""Weights & Biases: one W&B run per learner and seed, grouped by the run directory.

Offline by default (``wandb_mode = offline``): the runs are written under
``RUN_DIR/wandb/`` and need no network or account; ``wandb sync RUN_DIR/wandb/offline-run-*``
uploads them later. ``online`` logs as the run goes (after ``wandb login``);
``disabled`` makes every call a no-op. Needs ``pip install 'metalora[wandb]'``.

Each W&B run is named ``<run directory>/<learner>/seed-<s>``, grouped by the
run directory and typed by the learner; its id is derived from the run
directory, learner and seed, so ``--resume`` continues the same W&B run
(``resume = "allow"``). Steps are the global step; the validation metrics
carry their ``epoch``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metalora import Logger, StepLog, setting

MODES: tuple[str, ...] = ("offline", "online", "disabled")


@dataclass(frozen=True)
class WandbSettings:
    """Where the W&B runs go."""

    wandb_project: str = setting("metalora", "W&B project of the runs (logger wandb).")
    wandb_entity: str | None = setting(
        None, "W&B entity (user or team) of the runs; unset: your default (logger wandb).")
    wandb_mode: str = setting(
        "offline", "W&B mode: offline (written under RUN_DIR/wandb, no network; `wandb sync` "
                   "uploads it), online, or disabled (logger wandb).", choices=MODES)


class WandbLogger(Logger):
    """Training and validation curves as Weights & Biases runs (see the module)."""

    name = "wandb"
    description = ("Weights & Biases, offline by default: runs under RUN_DIR/wandb, no network "
                   "(needs: pip install 'metalora[wandb]').")
    Settings = WandbSettings

    @classmethod
    def missing(cls) -> str | None:
        if importlib.util.find_spec("wandb") is None:
            return "needs the wandb package: pip install 'metalora[wandb]'"
        return None

    def __init__(self, run_dir: Path, learner: str, seed: int, settings: Any = None,
                 resume_step: int | None = None) -> None:
        super().__init__(run_dir, learner, seed, settings, resume_step)
        settings = settings or WandbSettings()
        wandb = importlib.import_module("wandb")
        key = f"{run_dir.resolve()}/{learner}/seed-{seed}"
        self.run = wandb.init(
            project=settings.wandb_project, entity=settings.wandb_entity,
            mode=settings.wandb_mode, dir=str(run_dir), group=run_dir.name, job_type=learner,
            name=f"{run_dir.name}/{learner}/seed-{seed}", resume="allow",
            id=hashlib.sha1(key.encode()).hexdigest()[:16],
            config={"learner": learner, "seed": seed, "run_dir": str(run_dir)})

    def log_step(self, step: StepLog, global_step: int) -> None:
        values = {f"{step.phase}/loss": step.loss}
        values.update({f"{step.phase}/{name}": value for name, value in step.components.items()
                       if isinstance(value, int | float) and math.isfinite(value)})
        self.run.log(values, step=global_step)

    def log_validation(self, epoch: int, metrics: Mapping[str, float], global_step: int) -> None:
        self.run.log({**{f"validation/{k}": v for k, v in metrics.items()}, "epoch": epoch},
                     step=global_step)

    def close(self) -> None:
        self.run.finish()
