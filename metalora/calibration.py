"""Post-hoc calibration inside the evaluation protocol (``--calibrate NAME``).

:class:`CalibratedLearner` wraps any learner. Its :meth:`~CalibratedLearner.adapt`
adapts the wrapped learner on the support batches as usual, predicts those same
support examples with the adapted adapters, and fits the calibrator on them; its
:meth:`~CalibratedLearner.predict_proba` passes the wrapped learner's query
predictions through the fitted calibrator. Training, checkpoints, adapters and
pruning see the wrapped learner unchanged, so every learner gets the same
calibration under the same protocol without a copy of itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from metalora.errors import MetaloraError
from metalora.interfaces.calibrator import Calibrator
from metalora.interfaces.learner import Learner, StepLog
from metalora.settings import build_settings

if TYPE_CHECKING:
    from metalora.adapters import AdapterHandle
    from metalora.plugins import PluginManager
    from metalora.prompts import Batch
    from metalora.records import Task

NO_CALIBRATION = "none"
"""The ``calibrate`` value that leaves predictions as the learner makes them."""


def build_calibrator(plugins: PluginManager, name: str,
                     values: Mapping[str, Any]) -> Calibrator | None:
    """The registered calibrator ``name`` with its settings read from ``values``, or None
    for ``none``; an unknown name, or a bad value for any calibrator's setting, is one
    error line."""
    registry = plugins.registry("calibrator")
    settings = {reg.name: build_settings(reg.implementation.Settings, values, owner=reg.name)
                for reg in registry}  # every calibrator's settings are checked, selected or not
    if name == NO_CALIBRATION:
        return None
    if name not in registry:
        raise MetaloraError(f"unknown calibrator {name!r}; valid choices: "
                            + ", ".join([NO_CALIBRATION, *registry.names()]))
    return registry.get(name)(settings[name])


class CalibratedLearner(Learner):
    """``inner`` with its test-time predictions recalibrated by ``calibrator``."""

    def __init__(self, inner: Learner, calibrator: Calibrator) -> None:
        super().__init__(inner.context)
        self.inner = inner
        self.calibrator = calibrator
        self.name = inner.name  # type: ignore[misc]
        self.mean_pair = inner.mean_pair  # type: ignore[misc]
        self.adapted_pairs = inner.adapted_pairs  # type: ignore[misc]
        self.fitted = False

    @property
    def adapters(self) -> AdapterHandle:
        return self.inner.adapters

    def steps_per_epoch(self, tasks: Sequence[Task]) -> int:
        return self.inner.steps_per_epoch(tasks)

    def train_epoch(self, tasks: Sequence[Task], epoch: int) -> Iterator[StepLog]:
        return self.inner.train_epoch(tasks, epoch)

    def adapt(self, support: Sequence[Batch]) -> None:
        """Adapt the wrapped learner, then fit the calibrator on its support predictions."""
        self.inner.adapt(support)
        if not support:
            raise MetaloraError(f"--calibrate {self.calibrator.name} needs a support set to "
                                "fit on; this task has none")
        with torch.no_grad():
            probs = torch.cat([self.inner.predict_proba(b).float().cpu() for b in support])
        targets = torch.cat([b.targets.cpu() for b in support])
        mask = torch.cat([b.option_mask.cpu() for b in support])
        self.calibrator.fit(probs, targets, mask)
        self.fitted = True

    def predict_proba(self, batch: Batch) -> Tensor:
        """The wrapped learner's probabilities, recalibrated (unchanged before any fit)."""
        probs = self.inner.predict_proba(batch)
        if not self.fitted:
            return probs
        out = self.calibrator.apply(probs.float().cpu(), batch.option_mask.cpu())
        return out.to(probs.device)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
