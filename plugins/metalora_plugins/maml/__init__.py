"""``maml``: MAML of one LoRA pair through :mod:`torch.func`, first- or second-order."""

from metalora import hookimpl
from metalora_plugins.maml.learner import MamlLearner, MamlSettings
from metalora_plugins.maml.meta import inner_loop, meta_gradient


@hookimpl
def register_learners(register):
    register(MamlLearner)


__all__ = ["MamlLearner", "MamlSettings", "inner_loop", "meta_gradient"]
