"""MAML's inner loop and meta-gradient as pure functions, through :mod:`torch.func`.

Everything here works on a *loss function* ``loss_fn(params, batch) -> scalar``
whose ``params`` is a ``{name: tensor}`` mapping, so the same code runs on the
LoRA adapters of a language model (``loss_fn`` is then a
:func:`torch.func.functional_call` of the model with the adapter tensors
swapped in) and on the small toy problems of the tests.

* Inner loop: one plain-SGD step per support batch,
  ``phi_{k+1} = phi_k - inner_lr * grad L(phi_k; support_k)``, with
  ``phi_0 = theta`` (:func:`torch.func.grad_and_value`).
* Meta-gradient: the gradient of the query loss ``L(phi_K; query)`` with
  respect to ``theta``.

  - first order (default): the inner gradients are treated as constants, so
    ``d phi_K / d theta = I`` and the meta-gradient is the query gradient at
    ``phi_K``. The inner loop runs under :func:`torch.no_grad` (no graph is
    kept), so memory is that of one forward/backward pass.
  - second order: the query loss is differentiated through the inner loop
    (nested :func:`torch.func.grad_and_value`, i.e. Hessian-vector products of
    the inner losses). Memory grows with the number of inner steps, and the
    model's operations need a double backward; see
    :mod:`metalora_plugins.maml.learner` for what that means for attention.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import grad_and_value

LossFn = Callable[[dict[str, Tensor], Any], Tensor]
"""``loss_fn(params, batch)``: a scalar loss of the parameters ``params`` on ``batch``."""


@dataclass
class MetaGradient:
    """The result of :func:`meta_gradient`."""

    grads: dict[str, Tensor]
    """Meta-gradient for each parameter of ``theta`` (detached)."""
    query_loss: float
    """The query loss at the adapted parameters ``phi_K``."""
    inner_losses: list[float]
    """The support loss before each inner step (``L(phi_k; support_k)``, k = 0..K-1)."""


def inner_loop(loss_fn: LossFn, params: Mapping[str, Tensor], batches: Sequence[Any],
               inner_lr: float, *, create_graph: bool = False
               ) -> tuple[dict[str, Tensor], list[Tensor]]:
    """One plain-SGD step per batch; returns the adapted parameters and the inner losses.

    With ``create_graph=False`` the steps run under :func:`torch.no_grad`: the
    result is detached from ``params`` (first order). With ``create_graph=True``
    the result is a differentiable function of ``params`` (for second order,
    call it inside a :mod:`torch.func` transform over ``params`` or with
    ``params`` that require grad).
    """
    step = grad_and_value(loss_fn)
    fast = dict(params)
    losses: list[Tensor] = []
    with torch.set_grad_enabled(create_graph):
        for batch in batches:
            grads, loss = step(fast, batch)
            fast = {name: value - inner_lr * grads[name] for name, value in fast.items()}
            losses.append(loss.detach())
    return fast, losses


def meta_gradient(loss_fn: LossFn, theta: Mapping[str, Tensor], support: Sequence[Any],
                  query: Any, inner_lr: float, *, second_order: bool = False) -> MetaGradient:
    """MAML's meta-gradient of ``L(phi_K(theta); query)`` for one task (see the module doc)."""
    start = {name: value.detach() for name, value in theta.items()}
    if second_order:
        def objective(params: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
            fast, losses = inner_loop(loss_fn, params, support, inner_lr, create_graph=True)
            return loss_fn(fast, query), losses

        with torch.enable_grad():
            grads, (query_loss, losses) = grad_and_value(objective, has_aux=True)(start)
    else:
        with torch.no_grad():
            fast, losses = inner_loop(loss_fn, start, support, inner_lr, create_graph=False)
            grads, query_loss = grad_and_value(loss_fn)(fast, query)
    return MetaGradient(
        grads={name: g.detach() for name, g in grads.items()},
        query_loss=float(query_loss.detach()),
        inner_losses=[float(loss) for loss in losses],
    )
