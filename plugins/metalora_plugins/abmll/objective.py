"""The KL and prior terms of ABMLL's objective, layer by layer.

Per adapted layer, with dense ``d_out x d_in`` means and clamped log-variances
built from the low-rank factors::

    KL(q(phi) || p(phi | theta)) = 0.5 * sum[ logv_theta - logv_phi
                                   + (exp(logv_phi) + (mu_phi - mu_theta)^2) / exp(logv_theta) - 1 ]
    -log p(theta)                = prior.negative_log_density(mu_theta, logv_theta)

(``W0`` cancels in the KL.) The dense matrices of one layer exist only while
that layer is processed. Two ways to get gradients, neither of which ever
holds the dense matrices of every layer at once:

* :func:`backward_regularisers` (what the learner uses): one layer at a
  time, the KL's gradient with respect to the dense means and log-variances
  is computed in closed form, the prior's by autograd on that layer's dense
  tensors (any registered :class:`~metalora.interfaces.Prior` works), and
  both are pushed through the low-rank factors with
  :func:`torch.autograd.backward` before the next layer is built. The
  learner calls it before the NLL forward pass, so these temporaries never
  coexist with the network's activations, and nothing is recomputed.
* :func:`regulariser_terms`: differentiable totals by plain autograd, each
  layer wrapped in :func:`torch.utils.checkpoint.checkpoint` so that
  backward recomputes one layer's dense matrices at a time (for callers that
  need a single loss tensor; also the reference the fast path is tested
  against).

Fused with the NLL (what the learner uses with the default exact weight
sample): a :class:`KLRequest` asks the fused sampled layers
(:class:`~metalora_plugins.abmll.sampling.SampledLinear`) to add the KL's
gradient inside their own backward pass, where the task posterior's standard
deviation and the layer's dense gradient buffers already exist
(:func:`add_kl_gradients`); the KL then costs one more low-rank product, one
exponential and a few elementwise passes per layer, and its factor gradients
share the NLL's matrix products. Layers that did not take the request (other
sampling modes, low-precision weights) go through
:func:`backward_regularisers` afterwards, which also adds the prior.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from metalora import AdaptedLinear, Prior
from metalora_plugins.abmll.dense import (
    Workspace,
    factor_grads,
    low_rank_sum,
    scaled_log_var,
    scratch,
)
from metalora_plugins.abmll.pairs import GaussianFactors, LogVarSpec, Specs, spec_of

FactorsOf = Callable[[AdaptedLinear], GaussianFactors]
"""Picks a layer's factors of one distribution (e.g. :func:`~.pairs.global_factors`)."""


@dataclass
class Regularisers:
    """Summed KL and ``-log p(theta)`` over layers."""

    kl: Tensor
    prior: Tensor


@dataclass
class KLRequest:
    """Asks the fused sampled layers of one backward pass to add ``weight * KL(q || p)``.

    ``detach_theta``: the global factors are constants (inner steps); else the
    KL's gradient reaches them too (outer step). Each layer takes the request
    once (:meth:`take`) and records its KL value (:attr:`values`).
    """

    weight: float
    detach_theta: bool
    done: set[int] = field(default_factory=set)
    values: list[Tensor] = field(default_factory=list)

    def take(self, key: int) -> bool:
        """True the first time the layer ``key`` asks: a layer adds its KL once."""
        if key in self.done:
            return False
        self.done.add(key)
        return True

    def total(self) -> Tensor:
        """Summed KL over the layers that took the request (0-dim, CPU)."""
        if not self.values:
            return torch.zeros(())
        return torch.stack(self.values).sum().cpu()


def add_kl_gradients(q: GaussianFactors, p: GaussianFactors, scaling: float, spec: LogVarSpec,
                     weight: float, sigma_q: Tensor, grad_mu: Tensor, grad_log_var2: Tensor,
                     inside_q: Tensor | None, need_p: bool,
                     workspace: Workspace | None = None) -> tuple[Tensor, Tensor | None,
                                                                  Tensor | None]:
    """One layer's ``weight * KL(q || p)`` added to its dense NLL gradients (the fused path).

    ``sigma_q = exp(logv_q / 2)`` is the task posterior's dense standard
    deviation (from the clamped log-variance, clamp mask ``inside_q``).
    Updated in place: ``grad_mu`` (dL/dmu_q) gains ``weight * (mu_q - mu_p) /
    var_p`` and ``grad_log_var2`` (twice dL/dlogv_q, before masking) gains
    ``weight * (var_q / var_p - 1)``. Returns the KL value (0-dim, float32,
    detached) and, with ``need_p``, the dense gradients of ``weight * KL``
    with respect to ``mu_p`` and ``logv_p`` (the latter masked by p's clamp);
    else ``(kl, None, None)``. Uses ``workspace`` slots 3 to 5.
    """
    shape = tuple(sigma_q.shape)
    qd, pd = q.detach(), p.detach()

    def buffer(slot: int) -> Tensor:
        return scratch(workspace, slot, shape, sigma_q)

    neg_lp, inside_p = scaled_log_var(pd.v_A, pd.v_B, scaling, spec, -1.0, out=buffer(3))
    if inside_q is None and inside_p is None:  # nothing clamped: sum(logv_q - logv_p) from factors
        log_ratio_sum = scaling * (low_rank_sum(qd.v_A, qd.v_B) - low_rank_sum(pd.v_A, pd.v_B))
    else:
        log_var_q, _ = scaled_log_var(qd.v_A, qd.v_B, scaling, spec, 1.0, out=buffer(4))
        log_ratio_sum = log_var_q.add_(neg_lp).sum()
    inv_var_p = neg_lp.exp_()
    ratio = torch.mul(sigma_q, sigma_q, out=buffer(4)).mul_(inv_var_p).sub_(1.0)  # var_q/var_p - 1
    diff = torch.mm(torch.cat([qd.mu_B * scaling, pd.mu_B * -scaling], dim=1),
                    torch.cat([qd.mu_A, pd.mu_A], dim=0), out=buffer(5))  # mu_q - mu_p
    grad_diff = inv_var_p.mul_(diff)  # (mu_q - mu_p) / var_p
    quadratic = torch.dot(diff.view(-1), grad_diff.view(-1))
    kl = 0.5 * (ratio.sum() - log_ratio_sum + quadratic)
    grad_log_var2.add_(ratio, alpha=weight)
    grad_mu.add_(grad_diff, alpha=weight)
    if not need_p:
        return kl, None, None
    # d KL / d logv_p = -0.5 * (var_q/var_p - 1 + diff^2 / var_p); d KL / d mu_p = -diff / var_p
    grad_log_var_p = ratio.addcmul_(diff, grad_diff).mul_(-0.5 * weight)
    if inside_p is not None:
        grad_log_var_p.masked_fill_(~inside_p, 0.0)
    return kl, grad_diff.mul_(-weight), grad_log_var_p


def kl_diag_gaussians(mu_diff: Tensor, log_var_q: Tensor, log_var_p: Tensor) -> Tensor:
    """``KL(N(mu_q, e^log_var_q) || N(mu_p, e^log_var_p))`` summed over elements.

    ``mu_diff = mu_q - mu_p``.
    """
    return 0.5 * (log_var_p - log_var_q + torch.exp(log_var_q - log_var_p)
                  + mu_diff.square() * torch.exp(-log_var_p) - 1.0).sum()


def _mean_diff(q: GaussianFactors, p: GaussianFactors, scaling: float) -> Tensor:
    """``mu_q - mu_p = s * [B_q, -B_p] @ [A_q; A_p]``: one rank-2r product."""
    return scaling * (torch.cat([q.mu_B, -p.mu_B], dim=1) @ torch.cat([q.mu_A, p.mu_A], dim=0))


def layer_terms(q: GaussianFactors, p: GaussianFactors, scaling: float, spec: LogVarSpec,
                prior: Prior | None) -> tuple[Tensor, Tensor]:
    """``(KL(q || p), -log p(theta))`` of one layer by plain autograd (0 without a prior).

    ``q`` is the task posterior, ``p`` the global distribution (theta).
    """
    log_var_q = spec.dense(q.v_A, q.v_B, scaling)
    log_var_p = spec.dense(p.v_A, p.v_B, scaling)
    kl = kl_diag_gaussians(_mean_diff(q, p, scaling), log_var_q, log_var_p)
    if prior is None:
        return kl, kl.new_zeros(())
    return kl, prior.negative_log_density(scaling * (p.mu_B @ p.mu_A),
                                          log_var_p - spec.prior_origin)


def _factor_grads(f: GaussianFactors, grad_mu: Tensor | None, mu_scale: float,
                  grad_log_var: Tensor | None, log_var_scale: float,
                  scaling: float) -> list[tuple[Tensor, Tensor]]:
    """(factor, gradient) pairs for the factors that require grad.

    ``mu_scale * grad_mu`` and ``log_var_scale * grad_log_var`` are the
    gradients w.r.t. the dense mean and log-variance (scaled here, in the
    small products, rather than in a pass over the dense matrices).
    """
    out = []
    for grad, scale, A, B in ((grad_mu, mu_scale, f.mu_A, f.mu_B),
                              (grad_log_var, log_var_scale, f.v_A, f.v_B)):
        if grad is None:
            continue
        grad_A, grad_B = factor_grads(grad, A, B, scaling * scale,
                                      (A.requires_grad, B.requires_grad))
        out += [(t, g) for t, g in ((A, grad_A), (B, grad_B)) if g is not None]
    return out


def _prior_gradients(p: GaussianFactors, scaling: float, gamma: float, prior: Prior,
                     need_grad: bool, neg_log_var: Tensor,
                     origin: float = 0.0) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One layer's ``-log p(theta)`` and the gradients of ``gamma * -log p(theta)``.

    Returns ``(value, d/dmu_theta, d/dlogv_theta)``, by autograd on the
    layer's dense tensors; ``neg_log_var`` is its dense ``-logv_theta``
    (clamped); the prior reads ``logv_theta - origin`` (see
    :attr:`LogVarSpec.prior_origin`). The gradients are ``None`` without
    ``need_grad``.
    """
    mu_p = torch.mm(p.mu_B, p.mu_A).mul_(scaling)
    lp = torch.neg(neg_log_var)
    if not need_grad:
        return prior.negative_log_density(mu_p, lp.sub_(origin)).detach(), None, None
    with torch.enable_grad():
        mu_p.requires_grad_(True)
        lp.requires_grad_(True)
        nlp = prior.negative_log_density(mu_p, lp - origin if origin else lp)
        grad_mu, grad_lp = torch.autograd.grad(gamma * nlp, [mu_p, lp])
    return nlp.detach(), grad_mu, grad_lp


def _layer_backward(q: GaussianFactors, p: GaussianFactors, scaling: float, spec: LogVarSpec,
                    beta: float, gamma: float, prior: Prior | None,
                    workspace: Workspace | None = None,
                    with_kl: bool = True) -> tuple[Tensor, Tensor]:
    """One layer of :func:`backward_regularisers`; returns the detached (KL, prior) values.

    The KL and its gradients come from :func:`add_kl_gradients` (the closed
    form the fused path uses too), the prior's from autograd on the layer's
    dense tensors. Without ``with_kl`` only the prior term is evaluated and
    back-propagated (the KL is 0 in the returned values).
    """
    grad_on = torch.is_grad_enabled()
    need_q = with_kl and grad_on and beta != 0 and any(t.requires_grad for t in q.tensors())
    need_p = grad_on and any(t.requires_grad for t in p.tensors())
    need_prior_grad = need_p and prior is not None and gamma != 0
    need_p = need_p and ((with_kl and beta != 0) or need_prior_grad)
    pd = p.detach()
    shape = (pd.v_B.shape[0], pd.v_A.shape[1])

    def buffer(slot: int) -> Tensor:
        return scratch(workspace, slot, shape, pd.v_A)

    with torch.no_grad():
        kl = nlp = pd.v_A.new_zeros(())
        grad_mu_p = grad_log_var_p = None
        if prior is not None:
            # -log p(theta): autograd on this layer's dense tensors only
            neg_lp, inside_p = scaled_log_var(pd.v_A, pd.v_B, scaling, spec, -1.0, out=buffer(1))
            nlp, grad_mu_p, grad_log_var_p = _prior_gradients(pd, scaling, gamma, prior,
                                                              need_prior_grad, neg_lp,
                                                              spec.prior_origin)
            if grad_log_var_p is not None and inside_p is not None:
                grad_log_var_p.masked_fill_(~inside_p, 0.0)
        pairs: list[tuple[Tensor, Tensor]] = []
        if with_kl:
            sigma_q, inside_q = scaled_log_var(q.v_A.detach(), q.v_B.detach(), scaling, spec,
                                               0.5, out=buffer(0))
            grad_mu_q, grad_log_var2_q = buffer(1).zero_(), buffer(2).zero_()
            kl, kl_mu_p, kl_log_var_p = add_kl_gradients(
                q, p, scaling, spec, beta, sigma_q.exp_(), grad_mu_q, grad_log_var2_q,
                inside_q, need_p, workspace)
            if kl_mu_p is not None and kl_log_var_p is not None:
                grad_mu_p = kl_mu_p if grad_mu_p is None else grad_mu_p.add_(kl_mu_p)
                grad_log_var_p = (kl_log_var_p if grad_log_var_p is None
                                  else grad_log_var_p.add_(kl_log_var_p))
            if need_q:
                if inside_q is not None:
                    grad_log_var2_q.masked_fill_(~inside_q, 0.0)
                pairs += _factor_grads(q, grad_mu_q, 1.0, grad_log_var2_q, 0.5, scaling)
        if need_p:
            pairs += _factor_grads(p, grad_mu_p, 1.0, grad_log_var_p, 1.0, scaling)
    if pairs:
        torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
    return kl, nlp


def prior_terms(layers: Iterable[AdaptedLinear], p_of: FactorsOf, specs: Specs,
                prior: Prior, workspace: Workspace | None = None) -> Tensor:
    """``-log p(theta)`` summed over layers (evaluated only, no gradient), one layer at a time."""
    total: Tensor | float = 0.0
    with torch.no_grad():
        for layer in layers:
            if torch.is_autocast_enabled(layer.base.weight.device.type):
                with torch.autocast(layer.base.weight.device.type, enabled=False):
                    total = total + prior_terms([layer], p_of, specs, prior, workspace)
                continue
            p = p_of(layer).detach()
            shape = (p.v_B.shape[0], p.v_A.shape[1])
            out = (None, None) if workspace is None else (workspace.get(0, shape, p.v_A),
                                                          workspace.get(1, shape, p.v_A))
            spec = spec_of(specs, layer)
            log_var, _ = scaled_log_var(p.v_A, p.v_B, layer.scaling, spec, 1.0, out=out[0])
            mu = (torch.mm(p.mu_B, p.mu_A, out=out[1]) if out[1] is not None
                  else p.mu_B @ p.mu_A).mul_(layer.scaling)
            total = total + prior.negative_log_density(mu, log_var.sub_(spec.prior_origin))
    return torch.as_tensor(total).cpu()


def backward_regularisers(layers: Iterable[AdaptedLinear], q_of: FactorsOf, p_of: FactorsOf,
                          specs: Specs, beta: float, gamma: float, prior: Prior | None,
                          workspace: Workspace | None = None,
                          kl_done: Collection[int] = ()) -> Regularisers:
    """Accumulate the gradients of ``beta * KL + gamma * (-log p(theta))`` one layer at a time.

    ``q_of`` gives a layer's task-posterior factors, ``p_of`` its global
    factors; gradients flow into whichever of them require grad (through
    any autograd graph they carry, e.g. the straight-through task factors).
    Returns the detached totals (for logging). Under :func:`torch.no_grad`,
    or when nothing requires grad, the terms are only evaluated. A
    :class:`~metalora_plugins.abmll.sampling.Workspace` lets the dense
    temporaries reuse buffers. Layers whose ``id`` is in ``kl_done`` (their
    KL went through a :class:`KLRequest`) get the prior term only.
    """
    kl_total: Tensor | float = 0.0
    prior_total: Tensor | float = 0.0
    for layer in layers:
        with_kl = id(layer) not in kl_done
        if not with_kl and prior is None:
            continue
        # float32 arithmetic also inside the engine's autocast context (the adapters' own)
        with torch.autocast(layer.base.weight.device.type, enabled=False):
            kl, nlp = _layer_backward(q_of(layer), p_of(layer), layer.scaling,
                                      spec_of(specs, layer), beta, gamma, prior, workspace,
                                      with_kl)
        kl_total = kl_total + kl
        prior_total = prior_total + nlp
    return Regularisers(kl=torch.as_tensor(kl_total).cpu(),
                        prior=torch.as_tensor(prior_total).cpu())


def regulariser_terms(layers: Iterable[AdaptedLinear], q_of: FactorsOf, p_of: FactorsOf,
                      specs: Specs, prior: Prior | None) -> Regularisers:
    """Differentiable summed KL and ``-log p(theta)``, each layer checkpointed.

    The forward pass keeps no dense matrix; backward recomputes them one layer
    at a time.
    """
    kl_total: Tensor | float = 0.0
    prior_total: Tensor | float = 0.0
    for layer in layers:
        q, p = q_of(layer), p_of(layer)

        def terms(*factors: Tensor, _layer: AdaptedLinear = layer) -> tuple[Tensor, Tensor]:
            return layer_terms(GaussianFactors(*factors[:4]), GaussianFactors(*factors[4:]),
                               _layer.scaling, spec_of(specs, _layer), prior)

        inputs = (*q.tensors(), *p.tensors())
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            kl, nlp = checkpoint(terms, *inputs, use_reentrant=False)
        else:
            kl, nlp = terms(*inputs)
        kl_total = kl_total + kl
        prior_total = prior_total + nlp
    return Regularisers(kl=torch.as_tensor(kl_total), prior=torch.as_tensor(prior_total))
