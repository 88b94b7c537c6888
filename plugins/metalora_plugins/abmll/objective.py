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
from metalora_plugins.abmll.sampling import half_log_var

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


def _log_var(v_A: Tensor, v_B: Tensor, scaling: float,
             spec: LogVarSpec) -> tuple[Tensor, Tensor | None]:
    half, inside = half_log_var(v_A, v_B, scaling, spec)
    return half.mul_(2.0), inside


def _factor_grads(f: GaussianFactors, grad_mu: Tensor | None, grad_log_var: Tensor | None,
                  scaling: float) -> list[tuple[Tensor, Tensor]]:
    """(factor, gradient) pairs for the factors that require grad, from dense gradients."""
    out = []
    for grad, A, B in ((grad_mu, f.mu_A, f.mu_B), (grad_log_var, f.v_A, f.v_B)):
        if grad is None:
            continue
        if A.requires_grad:
            out.append((A, torch.mm(B.t(), grad).mul_(scaling)))
        if B.requires_grad:
            out.append((B, torch.mm(grad, A.t()).mul_(scaling)))
    return out


def _layer_backward(q: GaussianFactors, p: GaussianFactors, scaling: float, spec: LogVarSpec,
                    beta: float, gamma: float, prior: Prior | None) -> tuple[Tensor, Tensor]:
    """One layer of :func:`backward_regularisers`; returns the detached (KL, prior) values."""
    grad_on = torch.is_grad_enabled()
    need_q = grad_on and beta != 0 and any(t.requires_grad for t in q.tensors())
    need_p = grad_on and any(t.requires_grad for t in p.tensors())
    need_prior_grad = need_p and prior is not None and gamma != 0
    need_p = need_p and (beta != 0 or need_prior_grad)
    with torch.no_grad():
        lq, inside_q = _log_var(q.v_A, q.v_B, scaling, spec)
        lp, inside_p = _log_var(p.v_A, p.v_B, scaling, spec)
        n = lq.numel()
        # -log p(theta): autograd on this layer's dense tensors only
        nlp: Tensor = lq.new_zeros(())
        prior_grad_mu = prior_grad_lp = None
        if prior is not None:
            mu_p = torch.mm(p.mu_B, p.mu_A).mul_(scaling)
            if need_prior_grad:
                with torch.enable_grad():
                    mu_p.requires_grad_(True)
                    lp.requires_grad_(True)
                    nlp = prior.negative_log_density(mu_p, lp)
                    prior_grad_mu, prior_grad_lp = torch.autograd.grad(gamma * nlp, [mu_p, lp])
                lp.requires_grad_(False)
                nlp = nlp.detach()
            else:
                nlp = prior.negative_log_density(mu_p, lp).detach()
            del mu_p
        # KL in closed form, with its gradient w.r.t. the dense quantities
        diff = _mean_diff(q.detach(), p.detach(), scaling)  # mu_q - mu_p
        ratio = lq.sub_(lp)  # logv_q - logv_p (lq is not needed any more)
        sum_log_ratio = ratio.sum()
        ratio.exp_()  # var_q / var_p
        inv_var_p = lp.neg_().exp_()  # 1 / var_p (lp is not needed any more)
        grad_diff = diff.mul(inv_var_p)  # d/d diff of 0.5 * sum diff^2 / var_p
        kl = 0.5 * (ratio.sum() - sum_log_ratio + torch.dot(diff.flatten(), grad_diff.flatten())
                    - n)
        del inv_var_p
        pairs: list[tuple[Tensor, Tensor]] = []
        if need_q or need_p:
            ratio.sub_(1.0)  # var_q / var_p - 1
            if need_p:
                # d KL / d logv_p = 0.5 * (1 - var_q/var_p - diff^2/var_p)
                grad_lp = torch.addcmul(ratio, diff, grad_diff).mul_(-0.5 * beta)
                if prior_grad_lp is not None:
                    grad_lp.add_(prior_grad_lp)
                if inside_p is not None:
                    grad_lp.masked_fill_(~inside_p, 0.0)
                grad_mu_p = grad_diff.mul(-beta)
                if prior_grad_mu is not None:
                    grad_mu_p.add_(prior_grad_mu)
                pairs += _factor_grads(p, grad_mu_p, grad_lp, scaling)
                del grad_lp, grad_mu_p
            if need_q:
                # d KL / d logv_q = 0.5 * (var_q/var_p - 1); d KL / d mu_q = diff / var_p
                grad_lq = ratio.mul_(0.5 * beta)
                if inside_q is not None:
                    grad_lq.masked_fill_(~inside_q, 0.0)
                pairs += _factor_grads(q, grad_diff.mul_(beta), grad_lq, scaling)
        del ratio, diff, grad_diff
    if pairs:
        torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
    return kl, nlp


def backward_regularisers(layers: Iterable[AdaptedLinear], q_of: FactorsOf, p_of: FactorsOf,
                          spec: LogVarSpec, beta: float, gamma: float,
                          prior: Prior | None) -> Regularisers:
    """Accumulate the gradients of ``beta * KL + gamma * (-log p(theta))`` one layer at a time.

    ``q_of`` gives a layer's task-posterior factors, ``p_of`` its global
    factors; gradients flow into whichever of them require grad (through
    any autograd graph they carry, e.g. the straight-through task factors).
    Returns the detached totals (for logging). Under :func:`torch.no_grad`,
    or when nothing requires grad, the terms are only evaluated.
    """
    kl_total: Tensor | float = 0.0
    prior_total: Tensor | float = 0.0
    for layer in layers:
        kl, nlp = _layer_backward(q_of(layer), p_of(layer), layer.scaling, spec, beta, gamma,
                                  prior)
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
