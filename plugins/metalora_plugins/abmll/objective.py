"""The KL and prior terms of ABMLL's objective (SPEC section 3.3), layer by layer.

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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from metalora.adapters import AdaptedLinear
from metalora.interfaces import Prior
from metalora_plugins.abmll.pairs import GaussianFactors, LogVarSpec
from metalora_plugins.abmll.sampling import Workspace, scaled_log_var

FactorsOf = Callable[[AdaptedLinear], GaussianFactors]
"""Picks a layer's factors of one distribution (e.g. :func:`~.pairs.global_factors`)."""


@dataclass
class Regularisers:
    """Summed KL and ``-log p(theta)`` over layers."""

    kl: Tensor
    prior: Tensor


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
    return kl, prior.negative_log_density(scaling * (p.mu_B @ p.mu_A), log_var_p)


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
        if A.requires_grad:
            out.append((A, torch.mm(B.detach().t(), grad).mul_(scaling * scale)))
        if B.requires_grad:
            out.append((B, torch.mm(grad, A.detach().t()).mul_(scaling * scale)))
    return out


def _layer_backward(q: GaussianFactors, p: GaussianFactors, scaling: float, spec: LogVarSpec,
                    beta: float, gamma: float, prior: Prior | None,
                    workspace: Workspace | None = None) -> tuple[Tensor, Tensor]:
    """One layer of :func:`backward_regularisers`; returns the detached (KL, prior) values."""
    grad_on = torch.is_grad_enabled()
    need_q = grad_on and beta != 0 and any(t.requires_grad for t in q.tensors())
    need_p = grad_on and any(t.requires_grad for t in p.tensors())
    need_prior_grad = need_p and prior is not None and gamma != 0
    need_p = need_p and (beta != 0 or need_prior_grad)
    qd, pd = q.detach(), p.detach()
    shape = (pd.v_B.shape[0], pd.v_A.shape[1])

    def buffer(slot: int) -> Tensor | None:
        return None if workspace is None else workspace.get(slot, shape, pd.v_A)

    with torch.no_grad():
        lq, inside_q = scaled_log_var(qd.v_A, qd.v_B, scaling, spec, 1.0, out=buffer(0))
        neg_lp, inside_p = scaled_log_var(pd.v_A, pd.v_B, scaling, spec, -1.0, out=buffer(1))
        # -log p(theta): autograd on this layer's dense tensors only
        nlp: Tensor = lq.new_zeros(())
        prior_grad_mu = prior_grad_lp = None
        if prior is not None:
            mu_p = torch.mm(pd.mu_B, pd.mu_A).mul_(scaling)
            lp = torch.neg(neg_lp)
            if need_prior_grad:
                with torch.enable_grad():
                    mu_p.requires_grad_(True)
                    lp.requires_grad_(True)
                    nlp = prior.negative_log_density(mu_p, lp)
                    prior_grad_mu, prior_grad_lp = torch.autograd.grad(gamma * nlp, [mu_p, lp])
                nlp = nlp.detach()
            else:
                nlp = prior.negative_log_density(mu_p, lp).detach()
            del mu_p, lp
        # KL in closed form, with its gradients w.r.t. the dense quantities
        diff_B = torch.cat([qd.mu_B * scaling, pd.mu_B * -scaling], dim=1)
        diff_A = torch.cat([qd.mu_A, pd.mu_A], dim=0)
        diff = torch.mm(diff_B, diff_A, out=buffer(2))  # mu_q - mu_p
        ratio = lq.add_(neg_lp)  # logv_q - logv_p
        sum_log_ratio = ratio.sum()
        ratio.exp_().sub_(1.0)  # var_q / var_p - 1 (summed as is: no cancellation against n)
        inv_var_p = neg_lp.exp_()  # 1 / var_p
        grad_diff = torch.mul(diff, inv_var_p, out=buffer(3))  # d(0.5 diff^2 / var_p)/d diff
        quadratic = torch.dot(diff.view(-1), grad_diff.view(-1))
        kl = 0.5 * (ratio.sum() - sum_log_ratio + quadratic)
        pairs: list[tuple[Tensor, Tensor]] = []
        if need_q or need_p:
            if need_p:
                # d KL / d logv_p = -0.5 * (var_q/var_p - 1 + diff^2/var_p)
                # 1 / var_p is not needed any more: its buffer takes the result
                grad_lp = torch.addcmul(ratio, diff, grad_diff, out=inv_var_p)
                lp_scale = -0.5 * beta
                if prior_grad_lp is not None:
                    grad_lp, lp_scale = prior_grad_lp.add_(grad_lp, alpha=lp_scale), 1.0
                if inside_p is not None:
                    grad_lp.masked_fill_(~inside_p, 0.0)
                grad_mu_p, mu_scale = grad_diff, -beta  # d KL / d mu_p = -diff / var_p
                if prior_grad_mu is not None:
                    grad_mu_p, mu_scale = prior_grad_mu.add_(grad_diff, alpha=-beta), 1.0
                pairs += _factor_grads(p, grad_mu_p, mu_scale, grad_lp, lp_scale, scaling)
            if need_q:
                # d KL / d logv_q = 0.5 * (var_q/var_p - 1); d KL / d mu_q = diff / var_p
                if inside_q is not None:
                    ratio.masked_fill_(~inside_q, 0.0)
                pairs += _factor_grads(q, grad_diff, beta, ratio, 0.5 * beta, scaling)
    if pairs:
        torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
    return kl, nlp


def prior_terms(layers: Iterable[AdaptedLinear], p_of: FactorsOf, spec: LogVarSpec,
                prior: Prior, workspace: Workspace | None = None) -> Tensor:
    """``-log p(theta)`` summed over layers (evaluated only, no gradient), one layer at a time."""
    total: Tensor | float = 0.0
    with torch.no_grad():
        for layer in layers:
            p = p_of(layer).detach()
            shape = (p.v_B.shape[0], p.v_A.shape[1])
            out = (None, None) if workspace is None else (workspace.get(0, shape, p.v_A),
                                                          workspace.get(1, shape, p.v_A))
            log_var, _ = scaled_log_var(p.v_A, p.v_B, layer.scaling, spec, 1.0, out=out[0])
            mu = (torch.mm(p.mu_B, p.mu_A, out=out[1]) if out[1] is not None
                  else p.mu_B @ p.mu_A).mul_(layer.scaling)
            total = total + prior.negative_log_density(mu, log_var)
    return torch.as_tensor(total).cpu()


def backward_regularisers(layers: Iterable[AdaptedLinear], q_of: FactorsOf, p_of: FactorsOf,
                          spec: LogVarSpec, beta: float, gamma: float, prior: Prior | None,
                          workspace: Workspace | None = None) -> Regularisers:
    """Accumulate the gradients of ``beta * KL + gamma * (-log p(theta))`` one layer at a time.

    ``q_of`` gives a layer's task-posterior factors, ``p_of`` its global
    factors; gradients flow into whichever of them require grad (through
    any autograd graph they carry, e.g. the straight-through task factors).
    Returns the detached totals (for logging). Under :func:`torch.no_grad`,
    or when nothing requires grad, the terms are only evaluated. A
    :class:`~metalora_plugins.abmll.sampling.Workspace` lets the dense
    temporaries reuse buffers.
    """
    kl_total: Tensor | float = 0.0
    prior_total: Tensor | float = 0.0
    for layer in layers:
        kl, nlp = _layer_backward(q_of(layer), p_of(layer), layer.scaling, spec, beta, gamma,
                                  prior, workspace)
        kl_total = kl_total + kl
        prior_total = prior_total + nlp
    return Regularisers(kl=torch.as_tensor(kl_total).cpu(),
                        prior=torch.as_tensor(prior_total).cpu())


def regulariser_terms(layers: Iterable[AdaptedLinear], q_of: FactorsOf, p_of: FactorsOf,
                      spec: LogVarSpec, prior: Prior | None) -> Regularisers:
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
                               _layer.scaling, spec, prior)

        inputs = (*q.tensors(), *p.tensors())
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            kl, nlp = checkpoint(terms, *inputs, use_reentrant=False)
        else:
            kl, nlp = terms(*inputs)
        kl_total = kl_total + kl
        prior_total = prior_total + nlp
    return Regularisers(kl=torch.as_tensor(kl_total), prior=torch.as_tensor(prior_total))
