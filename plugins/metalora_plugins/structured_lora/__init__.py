"""``structured-lora``: one LoRA pair trained task by task, never reset (baseline)."""

from metalora import hookimpl
from metalora_plugins.structured_lora.learner import StructuredLoraLearner, StructuredLoraSettings


@hookimpl
def register_learners(register):
    register(StructuredLoraLearner)


__all__ = ["StructuredLoraLearner", "StructuredLoraSettings"]
