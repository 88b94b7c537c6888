"""The seven plug-in interfaces of metalora.

Every built-in implementation in ``plugins/`` and every third-party package
implements one of these and registers it through a hook in
:mod:`metalora.hookspecs`.
"""

from metalora.interfaces.calibrator import Calibrator
from metalora.interfaces.learner import Learner, LearnerContext, StepLog
from metalora.interfaces.logger import Logger
from metalora.interfaces.metric import Metric
from metalora.interfaces.prior import Prior
from metalora.interfaces.pruner import Pruner
from metalora.interfaces.task_sampler import DataOptions, TaskSampler

__all__ = [
    "Calibrator",
    "DataOptions",
    "Learner",
    "LearnerContext",
    "Logger",
    "Metric",
    "Prior",
    "Pruner",
    "StepLog",
    "TaskSampler",
]
