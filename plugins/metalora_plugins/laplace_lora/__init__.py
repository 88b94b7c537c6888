"""``laplace-lora``: a Laplace approximation over the adapted LoRA weights, at test time.

Trained exactly as ``lora``. For each test task, after the protocol's test-time
adaptation has moved the LoRA weights from ``theta_0`` (the trained weights) to
``theta*`` on the support set, the posterior over them is approximated by the
Gaussian ``N(theta*, diag(F + lambda)^-1)``:

- **likelihood**: the categorical over each example's options (the distribution
  the protocol scores). ``F`` is the diagonal of its generalised Gauss-Newton
  matrix (for a categorical, its Fisher) summed over the support examples: per
  example ``sum_o p_o J_o^2 - (sum_o p_o J_o)^2``, with ``J_o`` the gradient of
  option ``o``'s logit;
- **prior**: ``N(theta_0, lambda^-1 I)``, centred on the weights before adaptation
  (the trained weights are where every task starts);
- **prior precision** ``lambda``: as Laplace-LoRA (Yang et al., ICLR 2024)
  prescribes, the maximiser of the Laplace approximation of the marginal
  likelihood, ``log p(D|theta*) - lambda/2 |theta* - theta_0|^2 + P/2 log lambda
  - 1/2 sum_i log(F_i + lambda)``; its stationary point is MacKay's fixed point
  ``lambda = gamma / |theta* - theta_0|^2`` with ``gamma = sum_i F_i / (F_i + lambda)``
  (solved to float precision). ``prior_precision`` may instead fix it; ``inf`` gives the
  adapted (MAP) prediction, ``lora``'s, exactly;
- **predictive**: linearised, as Laplace-LoRA's: the option logits are
  ``N(f(theta*), J diag(F + lambda)^-1 J^T)`` and the probabilities average the
  softmax over ``laplace_samples`` draws of them.

Readings: the adapted weights are taken as the posterior mode, as Laplace-LoRA takes
its fine-tuned weights, though ``adapt_steps`` AdamW steps do not solve the MAP
problem; with no adaptation (``theta* = theta_0``) the evidence sends ``lambda`` to
infinity and the prediction is the MAP one. The curvature is diagonal, not
Laplace-LoRA's Kronecker-factored one. This is our own implementation, not
laplace-torch: laplace-torch's likelihoods are a classifier's softmax over a fixed
output vector and its curvature backends would be new dependencies, while ours is a
categorical over each query's options scored by label tokens, and a diagonal GGN
needs only autograd. Its price: a forward pass and one backward pass per option for
every support and query example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metalora import (
    Batch,
    LearnerContext,
    MetaloraError,
    hookimpl,
    option_logits,
    option_probs,
    setting,
)
from metalora_plugins.lora import LoraLearner, LoraSettings

BISECTION_STEPS = 100
"""Halvings of the bracket on ``log lambda`` (under 100 natural-log units wide): to 1e-28."""
SMALLEST_PRECISION = 1e-12
"""The bracket's floor, reached only when the logits do not depend on the weights."""


@dataclass(frozen=True)
class LaplaceLoraSettings(LoraSettings):
    """Settings of ``laplace-lora`` (``lora``'s, and the Laplace approximation's)."""

    lr: float = setting(5e-5, "laplace-lora: AdamW learning rate (as lora's).", gt=0)
    prior_precision: str = setting(
        "marglik", "laplace-lora: the prior precision lambda: 'marglik' = maximise the Laplace "
                   "marginal likelihood on each task's support set (MacKay's fixed point), or a "
                   "positive number; 'inf' = the adapted (MAP) prediction.")
    laplace_samples: int = setting(
        1000, "laplace-lora: draws of the linearised logits averaged per prediction.", ge=1)

    def check(self) -> None:
        if self.prior_precision == "marglik":
            return
        try:
            value = float(self.prior_precision)
        except ValueError:
            value = float("nan")
        if not value > 0:
            raise MetaloraError(
                f"laplace-lora: prior_precision {self.prior_precision!r} is neither 'marglik' nor "
                "a positive number (or 'inf')")


def logits_and_jacobian(model: nn.Module, example: Batch,
                        params: Sequence[nn.Parameter]) -> tuple[Tensor, Tensor]:
    """One example's ``(O,)`` option logits (``-inf`` on options it lacks) and their
    ``(O, P)`` Jacobian in ``params`` flattened (zero rows on options it lacks)."""
    with torch.enable_grad():
        logits = option_logits(model, example)[0]
        rows = []
        for option in range(logits.numel()):
            if not bool(example.option_mask[0, option]):
                rows.append(torch.zeros(sum(p.numel() for p in params), device=logits.device))
                continue
            grads = torch.autograd.grad(logits[option], list(params), retain_graph=True,
                                        allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float()
                                   for g, p in zip(grads, params, strict=True)]))
    return logits.detach(), torch.stack(rows)


def ggn_diagonal(model: nn.Module, params: Sequence[nn.Parameter],
                 examples: Sequence[Batch]) -> Tensor:
    """``(P,)``: the diagonal of ``sum_n J_n^T (diag p_n - p_n p_n^T) J_n`` over ``examples``
    (the option-categorical's Gauss-Newton matrix, equal to its Fisher)."""
    total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64,
                        device=params[0].device)
    for example in examples:
        logits, jacobian = logits_and_jacobian(model, example, params)
        p = torch.softmax(logits, dim=-1).double()
        j = jacobian.double()
        total += p @ j.square() - (p @ j).square()
    return total


def marglik_precision(ggn: Tensor, shift_squared: float) -> float:
    """The prior precision maximising the Laplace marginal likelihood (see the module):
    the root of ``lambda * shift_squared = gamma(lambda)``, MacKay's fixed point; ``inf``
    when nothing moved. The left side grows and ``gamma`` falls with ``lambda``, so the root
    is unique and lies below ``P / shift_squared``; bisection on ``log lambda`` finds it (the
    plain fixed-point iteration converges slowly when ``gamma`` is large)."""
    if shift_squared <= 0:
        return math.inf
    ggn = ggn.double()
    low, high = math.log(SMALLEST_PRECISION), math.log(max(ggn.numel() / shift_squared,
                                                            SMALLEST_PRECISION))
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        precision = math.exp(middle)
        if precision * shift_squared < float((ggn / (ggn + precision)).sum()):
            low = middle
        else:
            high = middle
    return math.exp((low + high) / 2)


def laplace_log_evidence(ggn: Tensor, shift_squared: float, precision: float) -> float:
    """The part of the Laplace log marginal likelihood that depends on ``precision``."""
    ggn = ggn.double()
    return (-0.5 * precision * shift_squared + 0.5 * ggn.numel() * math.log(precision)
            - 0.5 * float(torch.log(ggn + precision).sum()))


def linearised_probs(logits: Tensor, jacobian: Tensor, variance: Tensor,
                     samples: int) -> Tensor:
    """``(O,)``: softmax averaged over ``samples`` draws of ``N(logits, J diag(v) J^T)``
    on the example's options (zero elsewhere)."""
    valid = torch.isfinite(logits)
    j = jacobian[valid].double()
    covariance = (j * variance.double()) @ j.T
    values, vectors = torch.linalg.eigh(covariance)
    root = vectors * values.clamp_min(0).sqrt()
    noise = torch.randn(samples, root.shape[0], dtype=torch.float64, device=logits.device)
    draws = logits[valid].double() + noise @ root.T
    probs = torch.zeros_like(logits)
    probs[valid] = torch.softmax(draws, dim=-1).mean(0).to(logits.dtype)
    return probs


class LaplaceLoraLearner(LoraLearner):
    """``lora`` with a Laplace posterior over the adapted weights (see the module)."""

    name = "laplace-lora"
    description = ("LoRA with a diagonal Laplace posterior over the adapted weights at test "
                   "time (prior precision by marginal likelihood, linearised predictive).")
    Settings = LaplaceLoraSettings
    evaluation_settings = ("prior_precision", "laplace_samples")

    def __init__(self, context: LearnerContext) -> None:
        super().__init__(context)
        self.variance: Tensor | None = None
        """``(P,)`` posterior variances after :meth:`adapt` (None before)."""
        self.precision: float | None = None
        """The prior precision of the last :meth:`adapt`."""

    def _flat(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.adapters.parameters([self.pair])])

    def adapt(self, support: Sequence[Batch]) -> None:
        """The protocol's adaptation, then the Laplace posterior around its result (none at
        an infinite prior precision: the posterior is the point itself)."""
        start = self._flat().clone()
        super().adapt(support)
        self.variance, chosen = None, self.settings.prior_precision
        if chosen != "marglik":
            self.precision = float(chosen)
            if math.isinf(self.precision):
                return
        params = self.adapters.parameters([self.pair])
        examples = [batch.example(i) for batch in support for i in range(len(batch))]
        ggn = ggn_diagonal(self.context.model, params, examples)
        if chosen == "marglik":
            shift = float((self._flat() - start).double().square().sum())
            self.precision = marglik_precision(ggn, shift)
        if not math.isinf(self.precision):
            self.variance = (1.0 / (ggn + self.precision)).float()

    def predict_proba(self, batch: Batch) -> Tensor:
        """The linearised Laplace predictive; the MAP one before any :meth:`adapt` and at an
        infinite prior precision (no Jacobians: ``lora``'s cost and predictions)."""
        if self.variance is None:
            return option_probs(self.context.model, batch)
        params = self.adapters.parameters([self.pair])
        return torch.stack([
            linearised_probs(*logits_and_jacobian(self.context.model, batch.example(i), params),
                             self.variance, self.settings.laplace_samples)
            for i in range(len(batch))])


@hookimpl
def register_learners(register):
    register(LaplaceLoraLearner)
