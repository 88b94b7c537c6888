"""MAML (Finn et al. 2017) on one LoRA pair, through :mod:`torch.func`.

One outer step per training task (meta-batch of 1 task), tasks in an order
shuffled per epoch with the run's seeded RNG:

1. draw ``inner_steps`` support batches and one fresh query batch from the task;
2. inner loop: ``inner_steps`` plain-SGD steps at ``maml_inner_lr`` from
   ``theta`` (the adapter tensors), computed functionally
   (:func:`torch.func.functional_call` of the model with the adapters swapped
   in), so the adapters themselves are not touched;
3. outer step: the meta-gradient of the query loss at the adapted parameters
   (:func:`metalora_plugins.maml.meta.meta_gradient`) is written into the
   adapters' ``.grad`` and one AdamW step at ``lr`` is taken.

Defaults and why:

* First order by default (as ABMLL is read here: first-order meta-updates); ``second_order``
  differentiates through the inner loop.
* ``maml_inner_lr = 1e-3`` (plain SGD, not in the paper, which has no MAML
  baseline): on SmolLM2-135M and the demo suite the RMS gradient of the LoRA
  ``B`` factors is about 0.02-0.05, so one SGD step moves a coordinate by
  about 2-5e-5, the same order as one AdamW step at 1e-5 (about 1e-5 per
  coordinate), the inner step size of every other learner here.
* ``lr = 5e-5`` for the outer AdamW, like ABMLL's outer learning rate.
* Test time (``maml_test_adapt``): ``adamw`` (default) adapts like every
  other learner (the shared protocol: a fresh AdamW, ``adapt_steps`` steps at
  ``adapt_lr``), so all learners share one evaluation protocol; ``sgd`` runs
  MAML's own inner loop instead (``adapt_steps`` SGD steps at
  ``maml_inner_lr``), the procedure the initialisation was meta-trained for.

Gradient checkpointing: not supported (``supports_gradient_checkpointing =
False``, refused before anything loads). :mod:`torch.func` transforms do not
support the saved-tensor hooks that activation checkpointing relies on, and
running the meta-step without checkpointing would quietly give up the memory
saving the setting promises.

Second order and attention: PyTorch's scaled-dot-product attention kernels
(``sdpa``, and flash/flex kernels) have no double backward on CPU, so while
a second-order meta-gradient is computed the model is switched to eager
attention (``model.set_attn_implementation("eager")``) and switched back
right after, so evaluation and other learners of the same run keep the
attention the model was loaded with. A model that cannot switch gets a
one-line error asking to load it with eager attention or to drop
``--second-order``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalora import (
    Batch,
    LearnerContext,
    MetaloraError,
    SinglePairLearner,
    StepLog,
    Task,
    adamw,
    answer_loss,
    setting,
)
from metalora_plugins.maml.meta import inner_loop, meta_gradient

_PREFIX = "model."


@dataclass(frozen=True)
class MamlSettings:
    """Settings of ``maml``."""

    lr: float = setting(5e-5, "maml: learning rate of the outer AdamW step.", gt=0)
    weight_decay: float = setting(0.01, "AdamW weight decay.", ge=0)
    inner_steps: int = setting(5, "Inner-loop steps per training task (paper: K = 5).", ge=1)
    maml_inner_lr: float = setting(
        1e-3, "maml: inner-loop learning rate (plain SGD, functional).", gt=0)
    second_order: bool = setting(
        False, "maml: differentiate through the inner loop (full meta-gradient; needs eager "
               "attention, switched to automatically during the meta step). Default: first order.")
    maml_test_adapt: str = setting(
        "adamw", "maml: test-time adaptation: adamw (adapt_steps steps at adapt_lr, like every "
                 "learner) or sgd (adapt_steps of MAML's own SGD inner loop at maml_inner_lr).",
        choices=("adamw", "sgd"))


class AnswerLossModule(nn.Module):
    """``forward(batch)`` = :func:`metalora.scoring.answer_loss` of the wrapped model.

    The scoring functions call the decoder and the output embeddings rather
    than ``model.forward``, so :func:`torch.func.functional_call` is applied to
    this wrapper; the model's parameters are named ``model.<name>`` in it.
    """

    def __init__(self, model: nn.Module, over: str = "vocab") -> None:
        super().__init__()
        self.model = model
        self.over = over

    def forward(self, batch: Batch) -> Tensor:
        return answer_loss(self.model, batch, over=self.over)


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run the body with eager attention (double-backward capable), then switch back."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if config is None or current in (None, "eager"):
        yield
        return
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None:
        raise MetaloraError(
            f"second-order maml needs eager attention but this model uses {current!r} and cannot "
            f"switch; load it with attn_implementation='eager' or run without --second-order")
    setter("eager")
    try:
        yield
    finally:
        setter(current)


class MamlLearner(SinglePairLearner):
    """MAML: meta-learn the LoRA initialisation for a few SGD steps on a new task."""

    name = "maml"
    description = ("MAML through torch.func: K SGD inner steps, AdamW outer step on a query "
                   "batch, first-order by default (--second-order for the full meta-gradient).")
    Settings = MamlSettings
    supports_distributed = True
    supports_gradient_checkpointing = False  # torch.func has no saved-tensor hooks
    evaluation_settings = ("maml_test_adapt", "maml_inner_lr")

    def __init__(self, context: LearnerContext) -> None:
        super().__init__(context)
        self.optimizer = adamw(self._adapters.parameters(), self.settings.lr,
                               self.settings.weight_decay)
        self._loss_module = AnswerLossModule(context.model, context.train_loss)

    def loss_fn(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        """The answer loss with the adapter tensors replaced by ``params`` (functional)."""
        swapped = {_PREFIX + name: value for name, value in params.items()}
        return functional_call(self._loss_module, swapped, (batch,))

    def steps_per_epoch(self, tasks: Sequence[Task]) -> int:
        """One outer step per task."""
        return len(tasks)

    def meta_step(self, support: Sequence[Batch], query: Batch) -> StepLog:
        """One outer step on one task; returns its log (epoch and task left to the caller)."""
        params = self._adapters.named_parameters()
        context = (eager_attention(self.context.model) if self.settings.second_order
                   else nullcontext())
        with context:
            result = meta_gradient(self.loss_fn, params, support, query,
                                   self.settings.maml_inner_lr,
                                   second_order=self.settings.second_order)
        for name, param in params.items():
            param.grad = result.grads[name].to(param.dtype)
        query_loss = self.context.ranks.average_gradients(params.values(),
                                                                result.query_loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        inner = result.inner_losses
        components = {"nll": query_loss}
        if inner:
            components.update(inner_nll_first=inner[0], inner_nll_last=inner[-1])
        return StepLog(epoch=0, task=None, step=len(support), loss=query_loss,
                       phase="outer", components=components)

    def train_epoch(self, tasks: Sequence[Task], epoch: int) -> Iterator[StepLog]:
        """Per task (shuffled): ``inner_steps`` support batches, one query batch, one outer step."""
        episodes, rng = self.context.batches, self.context.rng
        order = list(tasks)
        rng.shuffle(order)
        for task in order:
            support = [episodes.train_batch(task, rng) for _ in range(self.settings.inner_steps)]
            # the query batch from a stream of its own (common random numbers: rng stays
            # where every task-structured learner has it)
            query = episodes.train_batch(task, self.context.stream("query", epoch, task.name))
            log = self.meta_step(support, query)
            log.epoch, log.task = epoch, task.name
            yield log

    def adapt(self, support: Sequence[Batch]) -> None:
        """Test-time adaptation (``maml_test_adapt``; see the module docstring)."""
        protocol = self.context.protocol
        if self.settings.maml_test_adapt == "sgd":
            if protocol.adapt_steps <= 0 or not support:
                return
            params = self._adapters.named_parameters()
            batches = [support[k % len(support)] for k in range(protocol.adapt_steps)]
            fast, _ = inner_loop(self.loss_fn, {n: p.detach() for n, p in params.items()},
                                 batches, self.settings.maml_inner_lr)
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(fast[name])
            return
        super().adapt(support)
