"""Hooks into a run, for code that drives the engine from Python."""

from __future__ import annotations

from metalora.interfaces import StepLog


class RunCallback:
    """Optional hooks into a run (subclass and override; every method is a no-op here)."""

    def on_step(self, learner: str, seed: int, step: StepLog) -> None:
        """After each optimisation step has been logged."""

    def on_epoch_end(self, learner: str, seed: int, epoch: int,
                     validation: dict[str, float] | None) -> None:
        """After ``epoch`` epochs are done, validated (if due) and checkpointed."""
