"""``abmll``: Amortized Bayesian Meta-Learning for LoRA.

Modules: :mod:`~metalora_plugins.abmll.pairs` (the four LoRA pairs and their
dense means/log-variances), :mod:`~metalora_plugins.abmll.sampling` (weight
sampling without storing the noise), :mod:`~metalora_plugins.abmll.objective`
(KL and prior, layer by layer) and :mod:`~metalora_plugins.abmll.learner`
(Algorithm 1). The prior p(theta) comes from the prior registry by name
(``--prior``, default ``normal-gamma``).
"""

from metalora import hookimpl
from metalora_plugins.abmll.learner import ABMLLLearner, ABMLLSettings


@hookimpl
def register_learners(register):
    register(ABMLLLearner)


__all__ = ["ABMLLLearner", "ABMLLSettings"]
