"""A base for learners that train one LoRA pair (no particular algorithm).

Regular LoRA, structured LoRA, Reptile, MAML and the zero-shot baseline all
keep one adapter pair, adapt at test time with a fresh AdamW for
``adapt_steps`` steps at ``adapt_lr`` and predict with the
option probabilities; :class:`SinglePairLearner` provides exactly that, and
a subclass writes :meth:`~metalora.interfaces.Learner.train_epoch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from metalora.adapters import AdapterHandle, attach_adapters
from metalora.interfaces.learner import Learner, LearnerContext
from metalora.optim import fit_steps
from metalora.prompts import Batch
from metalora.scoring import answer_loss, option_probs


class SinglePairLearner(Learner):
    """One LoRA pair named ``"default"``, the shared test-time adaptation and prediction.

    ``optimizer`` is the learner's persistent training optimiser, if it has
    one; its state is what :meth:`state_dict` saves for resuming.
    """

    pair = "default"
    extra_pairs: tuple[str, ...] = ()
    """More pairs attached beside :attr:`pair` (e.g. a variational learner's variance
    parameters); the forward pass uses :attr:`pair` alone unless the learner installs
    its own delta, and test-time adaptation changes :attr:`pair` alone."""

    def __init__(self, context: LearnerContext) -> None:
        super().__init__(context)
        self._adapters = attach_adapters(context.model, context.adapter,
                                         [self.pair, *self.extra_pairs])
        self.optimizer: torch.optim.Optimizer | None = None

    @property
    def adapters(self) -> AdapterHandle:
        return self._adapters

    def gradient_step(self, batch: Batch, optimizer: torch.optim.Optimizer,
                      synchronise: bool = False) -> float:
        """One optimiser step on the answer loss of ``batch``; returns the loss.

        With ``synchronise`` (a global step) the gradients, and the returned
        loss, are averaged over the ranks of a ``torchrun`` run first.
        """
        loss = answer_loss(self.context.model, batch, over=self.context.train_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = float(loss.detach())
        if synchronise:
            value = self.context.ranks.average_gradients(self._adapters.parameters(),
                                                               value)
        optimizer.step()
        return value

    def adapt(self, support: Sequence[Batch]) -> None:
        """Test-time adaptation: ``adapt_steps`` fresh-AdamW steps at ``adapt_lr`` on
        :attr:`pair`."""
        protocol = self.context.protocol
        fit_steps(self.context.model, self._adapters.parameters([self.pair]), support,
                  protocol.adapt_steps, protocol.adapt_lr, self.context.train_loss)

    def predict_proba(self, batch: Batch) -> Tensor:
        return option_probs(self.context.model, batch)

    def state_dict(self) -> dict[str, Any]:
        """The persistent optimiser's state (``None`` without one)."""
        return {"optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("optimizer")
        if saved is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(saved)
