"""metalora: a plug-in meta-learning toolkit for LoRA fine-tuning of causal LMs.

The core defines the interfaces (:mod:`metalora.interfaces`), the hook
specifications (:mod:`metalora.hookspecs`), the plugin manager, the adapter
machinery, the evaluation protocol, the run engine and the CLI. Every
learner, prior, task suite, metric and pruner is a plugin.
"""

from metalora.errors import MetaloraError
from metalora.hookspecs import hookimpl
from metalora.records import Suite, Task, TaskRecord, TaskRole

__version__ = "0.1.0"

__all__ = ["MetaloraError", "Suite", "Task", "TaskRecord", "TaskRole", "__version__", "hookimpl"]
