"""The built-in loggers: ``tensorboard`` (the default) and ``wandb`` (Weights & Biases).

Both are optional packages: ``pip install tensorboard`` and
``pip install 'metalora[wandb]'``. A logger whose package is missing is
skipped without a word when it is only the default, and is one error line
before the run starts when ``--logger`` names it.
"""

from __future__ import annotations

from metalora import Register, hookimpl
from metalora_plugins.loggers.tensorboard import TensorBoardLogger
from metalora_plugins.loggers.wandb import WandbLogger, WandbSettings

__all__ = ["TensorBoardLogger", "WandbLogger", "WandbSettings", "register_loggers"]


@hookimpl
def register_loggers(register: Register) -> None:
    """Register the ``tensorboard`` and ``wandb`` loggers."""
    register(TensorBoardLogger)
    register(WandbLogger)
