"""``lora``: regular LoRA, one adapter pair trained on the union of the training tasks."""

from metalora import hookimpl
from metalora_plugins.lora.learner import LoraLearner, LoraSettings


@hookimpl
def register_learners(register):
    register(LoraLearner)


__all__ = ["LoraLearner", "LoraSettings"]
