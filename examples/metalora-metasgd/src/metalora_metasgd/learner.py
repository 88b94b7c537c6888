"""Meta-SGD (Li et al. 2017) on one LoRA pair, first order.

Meta-SGD learns an initialisation ``theta`` of the adapter tensors *and* a
learning rate for every one of their elements, ``alpha`` (same shapes). A
task is learned by plain gradient steps with those rates::

    phi_0 = theta
    phi_k = phi_{k-1} - alpha * g_k,   g_k = grad L(phi_{k-1}; support batch k)

One epoch, for each training task (order shuffled per epoch with the run's
seeded RNG):

1. ``inner_steps`` steps of the rule above, in place on the adapters, each on
   a fresh batch of the task;
2. the loss of one more fresh batch (the query) at ``phi_K``, and its
   gradient ``g_q``;
3. the adapters are put back to ``theta`` and one outer AdamW step is taken
   with the first-order meta-gradients (the inner gradients ``g_k`` are
   treated as constants, as first-order MAML does)::

       dL/dtheta = g_q
       dL/dalpha = -(g_1 + ... + g_K) * g_q      (elementwise)

Test-time adaptation (``metasgd_test_adapt = "learned"``, the default) runs
the same rule with the learned ``alpha`` for the run's ``adapt_steps`` steps
on the support batches; ``"adamw"`` adapts as every other learner does (a
fresh AdamW, ``adapt_steps`` steps at ``adapt_lr``).

Where ``alpha`` lives: it has exactly the shapes of a LoRA pair's ``A`` and
``B``, so the learner attaches two pairs per layer, ``default`` (``theta``,
the only pair the forward pass reads) and ``lr`` (``alpha``, never read by
the forward pass). Being adapter tensors, the rates are checkpointed, saved
in the run directory's ``adapters.safetensors`` and restored by the
evaluation protocol without any code here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from metalora import (
    AdapterHandle,
    Batch,
    Learner,
    LearnerContext,
    MetaloraError,
    StepLog,
    Task,
    answer_loss,
    attach_adapters,
    fit_steps,
    option_probs,
    setting,
)

THETA = "default"
"""The adapter pair holding the initialisation (read by the forward pass)."""
ALPHA = "lr"
"""The adapter pair holding the per-element inner learning rates."""
TEST_ADAPT = ("learned", "adamw")

# The "--8<--" comments mark the parts that the documentation's tutorial
# (docs/writing-a-plugin.md) includes, so that it always shows this very code.


# --8<-- [start:settings]
@dataclass(frozen=True)
class MetaSGDSettings:
    """Settings of ``metasgd``.

    ``inner_steps`` and ``weight_decay`` are shared with the built-in learners
    (same name, same type, same meaning); the others carry a ``metasgd_``
    prefix so that they cannot clash with another plugin's settings.
    """

    inner_steps: int = setting(5, "Inner-loop steps per training task (paper: K = 5).")
    weight_decay: float = setting(0.01, "AdamW weight decay.", ge=0)
    metasgd_lr: float = setting(
        5e-5, "metasgd: outer AdamW learning rate of the initialisation theta.", gt=0)
    metasgd_alpha_init: float = setting(
        1e-3, "metasgd: initial value of every per-parameter inner learning rate alpha.", ge=0)
    metasgd_alpha_lr: float = setting(
        1e-5, "metasgd: outer AdamW learning rate of alpha (no weight decay).", ge=0)
    metasgd_test_adapt: str = setting(
        "learned", "metasgd: test-time adaptation: learned (adapt_steps steps of "
                   "phi <- phi - alpha * grad with the learned alpha) or adamw (adapt_steps "
                   "AdamW steps at adapt_lr, like every learner).", choices=TEST_ADAPT)
# --8<-- [end:settings]


# --8<-- [start:init]
class MetaSGDLearner(Learner):
    """Meta-SGD: a learned initialisation and learned per-parameter inner learning rates."""

    name = "metasgd"
    description = ("Meta-SGD: learned LoRA initialisation and per-parameter inner learning "
                   "rates, first order (example third-party plugin).")
    Settings = MetaSGDSettings
    evaluation_settings = ("metasgd_test_adapt",)

    def __init__(self, context: LearnerContext) -> None:
        super().__init__(context)
        s: MetaSGDSettings = self.settings
        if s.inner_steps < 0:
            raise MetaloraError(f"metasgd: inner_steps must be at least 0, got {s.inner_steps}")
        if s.metasgd_test_adapt not in TEST_ADAPT:
            raise MetaloraError(f"metasgd: unknown metasgd_test_adapt {s.metasgd_test_adapt!r}; "
                                f"valid choices: {', '.join(TEST_ADAPT)}")
        # Two pairs per layer; the default delta is the LoRA update of the FIRST pair only.
        self._adapters = attach_adapters(context.model, context.adapter, [THETA, ALPHA])
        self.pairs: list[tuple[nn.Parameter, nn.Parameter]] = [
            (getattr(layer.pairs[THETA], side), getattr(layer.pairs[ALPHA], side))
            for layer in self._adapters.layers.values() for side in ("A", "B")
        ]
        """``(theta, alpha)`` for every adapter tensor."""
        with torch.no_grad():
            for _, alpha in self.pairs:
                alpha.fill_(s.metasgd_alpha_init)
        self.optimizer = torch.optim.AdamW([
            {"params": self._adapters.parameters([THETA]), "lr": s.metasgd_lr,
             "weight_decay": s.weight_decay},
            {"params": self._adapters.parameters([ALPHA]), "lr": s.metasgd_alpha_lr,
             "weight_decay": 0.0},
        ])

    @property
    def adapters(self) -> AdapterHandle:
        return self._adapters
# --8<-- [end:init]

# --8<-- [start:rule]
    # -- the Meta-SGD rule -------------------------------------------------------------
    def _loss_and_grads(self, batch: Batch) -> tuple[float, list[Tensor]]:
        """The answer loss of ``batch`` and its gradient for every ``theta`` tensor."""
        loss = answer_loss(self.context.model, batch, over=self.context.train_loss)
        grads = torch.autograd.grad(loss, [theta for theta, _ in self.pairs])
        return float(loss.detach()), list(grads)

    @torch.no_grad()
    def _sgd_step(self, grads: Sequence[Tensor]) -> None:
        """``phi <- phi - alpha * g``, elementwise, in place."""
        for (theta, alpha), grad in zip(self.pairs, grads, strict=True):
            theta.sub_(alpha * grad)
# --8<-- [end:rule]

# --8<-- [start:train]
    def steps_per_epoch(self, tasks: Sequence[Task]) -> int:
        """``inner_steps`` inner logs plus one outer log per task."""
        return len(tasks) * (self.settings.inner_steps + 1)

    def train_epoch(self, tasks: Sequence[Task], epoch: int) -> Iterator[StepLog]:
        """Per task (shuffled): the inner rule in place, then one first-order outer step.

        Yields one ``phase="inner"`` log per inner step and one ``phase="outer"``
        log whose loss is the query loss at the adapted parameters
        (``alpha_mean`` is the mean inner learning rate after the step).
        """
        episodes, rng = self.context.batches, self.context.rng
        k_steps = self.settings.inner_steps
        order = list(tasks)
        rng.shuffle(order)
        for task in order:
            theta = self._adapters.snapshot([THETA])
            grad_sums = [torch.zeros_like(t) for t, _ in self.pairs]
            for k in range(k_steps):
                loss, grads = self._loss_and_grads(episodes.train_batch(task, rng))
                self._sgd_step(grads)
                for total, grad in zip(grad_sums, grads, strict=True):
                    total.add_(grad)
                yield StepLog(epoch=epoch, task=task.name, step=k, loss=loss, phase="inner",
                              components={"nll": loss})
            query = episodes.train_batch(task, self.context.stream("query", epoch, task.name))
            query_loss, query_grads = self._loss_and_grads(query)
            self._adapters.restore(theta)
            for (t, alpha), g_q, total in zip(self.pairs, query_grads, grad_sums, strict=True):
                t.grad = g_q
                alpha.grad = -total * g_q
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            yield StepLog(epoch=epoch, task=task.name, step=k_steps, loss=query_loss,
                          phase="outer",
                          components={"nll": query_loss, "alpha_mean": self.alpha_mean()})
# --8<-- [end:train]

    def alpha_mean(self) -> float:
        """The mean of every learned inner learning rate."""
        total = sum(float(alpha.detach().sum()) for _, alpha in self.pairs)
        return total / sum(alpha.numel() for _, alpha in self.pairs)

# --8<-- [start:adapt]
    # -- test time ---------------------------------------------------------------------
    def adapt(self, support: Sequence[Batch]) -> None:
        """``adapt_steps`` steps on the support batches, with the learned rates by default."""
        protocol = self.context.protocol
        if self.settings.metasgd_test_adapt == "adamw":
            fit_steps(self.context.model, self._adapters.parameters([THETA]), support,
                      protocol.adapt_steps, protocol.adapt_lr, self.context.train_loss)
            return
        if not support:
            return
        with torch.enable_grad():
            for step in range(protocol.adapt_steps):
                _, grads = self._loss_and_grads(support[step % len(support)])
                self._sgd_step(grads)

    def predict_proba(self, batch: Batch) -> Tensor:
        return option_probs(self.context.model, batch)
# --8<-- [end:adapt]

# --8<-- [start:state]
    # -- resume ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The outer optimiser's state (theta and alpha themselves are adapter tensors)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
# --8<-- [end:state]
