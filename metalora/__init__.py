"""metalora: a plug-in meta-learning toolkit for LoRA fine-tuning of causal LMs.

This package is the public surface a plugin is written against: everything
in ``__all__`` below, imported as ``from metalora import Learner, setting``.
The rest (``metalora.runs``, ``metalora.cli`` and the other submodules) is
internal and may change between versions.

* registering: :data:`hookimpl`, :class:`Register`;
* the seven interfaces: :class:`Learner` (with :class:`LearnerContext`,
  :class:`StepLog` and what a context holds: :class:`BatchSource`,
  :class:`ProtocolSpec`, :class:`Ranks`), :class:`Prior`, :class:`TaskSampler` (with
  :class:`DataOptions`), :class:`Metric`, :class:`Calibrator`, :class:`Pruner`, :class:`Logger`;
* settings: :func:`setting`, :class:`NoSettings`;
* data: :class:`Task`, :class:`TaskRecord`, :class:`TaskRole`,
  :class:`Suite`, :data:`MAX_OPTIONS`, :func:`filter_by_options`, :func:`option_problem`,
  :class:`Batch`;
* adapters: :func:`attach_adapters`, :class:`AdapterHandle`,
  :class:`AdaptedLinear`, :class:`LoRAPair`, :class:`AdapterConfig`,
  :class:`SinglePairLearner` (a learner with one LoRA pair);
* scoring and optimisation: :func:`answer_loss`, :func:`option_logits`, :func:`option_probs`,
  :func:`adamw`, :func:`fit_steps`;
* precision: :func:`float32_products_are_exact` (False under TF32 on a GPU);
* selective prediction: :func:`risk_coverage`, :func:`confidence_and_correct`;
* errors: :class:`MetaloraError` (one line for the user, no traceback);
* the hub: :func:`hub_reachable`, :func:`offline_hub` (fail at once offline).

Names are imported on first use, so ``import metalora`` (and the command line
built on it) does not import torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SOURCES: dict[str, str] = {
    "hookimpl": "metalora.hookspecs",
    "Register": "metalora.hookspecs",
    "Learner": "metalora.interfaces.learner",
    "Logger": "metalora.interfaces.logger",
    "LearnerContext": "metalora.interfaces.learner",
    "StepLog": "metalora.interfaces.learner",
    "BatchSource": "metalora.interfaces.contract",
    "ProtocolSpec": "metalora.interfaces.contract",
    "Ranks": "metalora.interfaces.contract",
    "Prior": "metalora.interfaces.prior",
    "TaskSampler": "metalora.interfaces.task_sampler",
    "DataOptions": "metalora.interfaces.task_sampler",
    "Metric": "metalora.interfaces.metric",
    "Calibrator": "metalora.interfaces.calibrator",
    "Pruner": "metalora.interfaces.pruner",
    "setting": "metalora.settings",
    "NoSettings": "metalora.settings",
    "Task": "metalora.records",
    "TaskRecord": "metalora.records",
    "TaskRole": "metalora.records",
    "Suite": "metalora.records",
    "MAX_OPTIONS": "metalora.records",
    "filter_by_options": "metalora.records",
    "option_problem": "metalora.records",
    "Batch": "metalora.prompts",
    "attach_adapters": "metalora.adapters",
    "AdapterHandle": "metalora.adapters",
    "AdaptedLinear": "metalora.adapters",
    "LoRAPair": "metalora.adapters",
    "AdapterConfig": "metalora.adapter_config",
    "SinglePairLearner": "metalora.single_pair",
    "answer_loss": "metalora.scoring",
    "option_probs": "metalora.scoring",
    "option_logits": "metalora.scoring",
    "adamw": "metalora.optim",
    "fit_steps": "metalora.optim",
    "float32_products_are_exact": "metalora.precision",
    "risk_coverage": "metalora.selective",
    "confidence_and_correct": "metalora.selective",
    "MetaloraError": "metalora.errors",
    "hub_reachable": "metalora.hub",
    "offline_hub": "metalora.hub",
}

__all__ = [
    "__version__",
    "hookimpl",
    "Register",
    "Learner",
    "Logger",
    "LearnerContext",
    "StepLog",
    "BatchSource",
    "ProtocolSpec",
    "Ranks",
    "Prior",
    "TaskSampler",
    "DataOptions",
    "Metric",
    "Calibrator",
    "Pruner",
    "setting",
    "NoSettings",
    "Task",
    "TaskRecord",
    "TaskRole",
    "Suite",
    "MAX_OPTIONS",
    "filter_by_options",
    "option_problem",
    "Batch",
    "attach_adapters",
    "AdapterHandle",
    "AdaptedLinear",
    "LoRAPair",
    "AdapterConfig",
    "SinglePairLearner",
    "answer_loss",
    "option_probs",
    "option_logits",
    "adamw",
    "fit_steps",
    "float32_products_are_exact",
    "risk_coverage",
    "confidence_and_correct",
    "MetaloraError",
    "hub_reachable",
    "offline_hub",
]

if TYPE_CHECKING:
    from metalora.adapter_config import AdapterConfig
    from metalora.adapters import AdaptedLinear, AdapterHandle, LoRAPair, attach_adapters
    from metalora.errors import MetaloraError
    from metalora.hookspecs import Register, hookimpl
    from metalora.hub import hub_reachable, offline_hub
    from metalora.interfaces.calibrator import Calibrator
    from metalora.interfaces.contract import BatchSource, ProtocolSpec, Ranks
    from metalora.interfaces.learner import Learner, LearnerContext, StepLog
    from metalora.interfaces.logger import Logger
    from metalora.interfaces.metric import Metric
    from metalora.interfaces.prior import Prior
    from metalora.interfaces.pruner import Pruner
    from metalora.interfaces.task_sampler import DataOptions, TaskSampler
    from metalora.optim import adamw, fit_steps
    from metalora.precision import float32_products_are_exact
    from metalora.prompts import Batch
    from metalora.records import (
        MAX_OPTIONS,
        Suite,
        Task,
        TaskRecord,
        TaskRole,
        filter_by_options,
        option_problem,
    )
    from metalora.scoring import answer_loss, option_logits, option_probs
    from metalora.selective import confidence_and_correct, risk_coverage
    from metalora.settings import NoSettings, setting
    from metalora.single_pair import SinglePairLearner


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'metalora' has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SOURCES})
