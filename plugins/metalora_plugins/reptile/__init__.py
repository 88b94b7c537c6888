"""``reptile``: Reptile meta-learning of one LoRA pair (baseline)."""

from metalora import hookimpl
from metalora_plugins.reptile.learner import ReptileLearner, ReptileSettings


@hookimpl
def register_learners(register):
    register(ReptileLearner)


__all__ = ["ReptileLearner", "ReptileSettings"]
